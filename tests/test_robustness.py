"""Corruptions of the robustness evaluation: each degrades by its documented amount, reproducibly, in range."""
import argparse
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from timm_r2kd import loop
from timm_r2kd.robustness import CORRUPTIONS, SEVERITIES, corrupt

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _normalised(pixels):
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - m) / s, lambda x: x * s + m


def _pixels(n=4, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_noise_adds_the_documented_std():
    flat = torch.full((8, 3, 32, 32), 0.5)  # far from 0 and 1: clipping is negligible
    x, back = _normalised(flat)
    noise = back(corrupt(x, 'gaussian_noise', MEAN, STD, seed=3)) - flat
    assert abs(noise.std().item() - 0.08) < 0.004 and abs(noise.mean().item()) < 0.004


def test_blur_is_a_gaussian_of_sigma_1_over_5_pixels():
    pixels = _pixels()
    x, back = _normalised(pixels)
    ax = torch.arange(5, dtype=torch.float32) - 2
    g = torch.exp(-ax ** 2 / 2)
    kernel = (g[:, None] * g[None, :]) / g.sum() ** 2
    padded = F.pad(pixels, (2, 2, 2, 2), mode='reflect')
    expected = F.conv2d(padded, kernel.expand(3, 1, 5, 5), groups=3)
    torch.testing.assert_close(back(corrupt(x, 'blur', MEAN, STD)), expected, atol=1e-5, rtol=1e-5)


def test_contrast_pulls_pixels_60_percent_to_the_image_mean():
    pixels = _pixels()
    x, back = _normalised(pixels)
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(back(corrupt(x, 'contrast', MEAN, STD)), mean + 0.4 * (pixels - mean),
                               atol=1e-5, rtol=1e-5)


def test_jpeg_is_a_quality_20_round_trip():
    pixels = (_pixels(2) * 255).round() / 255
    x, back = _normalised(pixels)
    out = back(corrupt(x, 'jpeg', MEAN, STD))
    for img, got in zip(pixels, out):
        buffer = io.BytesIO()
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            buffer, format='JPEG', quality=20)
        expected = torch.from_numpy(np.asarray(Image.open(buffer), dtype=np.float32) / 255).permute(2, 0, 1)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (out - pixels).abs().mean() > 0.01


@pytest.mark.parametrize('name', CORRUPTIONS)
def test_each_corruption_changes_the_image_reproducibly_and_stays_in_range(name):
    pixels = _pixels()
    x, back = _normalised(pixels)
    a, b = corrupt(x, name, MEAN, STD, seed=1), corrupt(x, name, MEAN, STD, seed=1)
    assert torch.equal(a, b)
    out = back(a)
    assert out.min() >= -1e-5 and out.max() <= 1 + 1e-5
    assert (out - pixels).abs().mean() > 0.01
    if name == 'gaussian_noise':
        assert not torch.equal(a, corrupt(x, name, MEAN, STD, seed=2))


def test_unknown_corruption():
    with pytest.raises(ValueError, match='Unknown corruption'):
        corrupt(torch.zeros(1, 3, 8, 8), 'fog', MEAN, STD)


@pytest.mark.parametrize('severity, noise, keep, sigma, quality', [(1, 0.04, 0.7, 0.5, 40), (3, 0.16, 0.2, 2.0, 8)])
def test_other_severities_use_their_documented_amounts(severity, noise, keep, sigma, quality):
    flat = torch.full((8, 3, 32, 32), 0.5)
    x, back = _normalised(flat)
    measured = (back(corrupt(x, 'gaussian_noise', MEAN, STD, seed=3, severity=severity)) - flat).std().item()
    assert abs(measured - noise) < 0.06 * noise + 0.002  # clipping trims the widest noise a little
    pixels = _pixels()
    x, back = _normalised(pixels)
    mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(back(corrupt(x, 'contrast', MEAN, STD, severity=severity)), mean + keep * (pixels - mean),
                               atol=1e-5, rtol=1e-5)
    size = 2 * int(np.ceil(2 * sigma)) + 1
    ax = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-ax ** 2 / (2 * sigma ** 2))
    kernel = (g[:, None] * g[None, :]) / g.sum() ** 2
    padded = F.pad(pixels, (size // 2,) * 4, mode='reflect')
    torch.testing.assert_close(back(corrupt(x, 'blur', MEAN, STD, severity=severity)),
                               F.conv2d(padded, kernel.expand(3, 1, size, size), groups=3), atol=1e-5, rtol=1e-5)
    img = (pixels[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format='JPEG', quality=quality)
    expected = torch.from_numpy(np.asarray(Image.open(buffer), dtype=np.float32) / 255).permute(2, 0, 1)
    x8, back8 = _normalised(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    torch.testing.assert_close(back8(corrupt(x8, 'jpeg', MEAN, STD, severity=severity))[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('name', CORRUPTIONS)
def test_higher_severity_degrades_more(name):
    pixels = _pixels()
    x, back = _normalised(pixels)
    change = [(back(corrupt(x, name, MEAN, STD, seed=1, severity=s)) - pixels).abs().mean() for s in SEVERITIES]
    assert change[0] < change[1] < change[2]
    with pytest.raises(ValueError, match='severity'):
        corrupt(x, name, MEAN, STD, severity=4)


class _CountedImages(torch.utils.data.Dataset):
    """Normalised random images with labels; counts the reads."""

    def __init__(self, n=40):
        self.images = _normalised(_pixels(n, size=16, seed=1))[0]
        self.labels = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(2))
        self.reads = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        return self.images[i], self.labels[i]


@pytest.mark.parametrize('budget', [1 << 30, 600, 0])  # all kept; foretold too large after one batch; none
def test_corruption_passes_read_the_set_once_when_it_fits(monkeypatch, budget):
    """--eval-corruptions' twelve passes give the same numbers from kept batches, reading the set once."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 5))
    args = argparse.Namespace(prefetcher=False, channels_last=False, tta=0, log_interval=100, distributed=False,
                              rank=0, corruption_severities=[1, 2, 3])

    def run(cache_bytes):
        monkeypatch.setattr(loop, '_CACHE_BYTES', cache_bytes)
        data = _CountedImages()
        loader = torch.utils.data.DataLoader(data, batch_size=8)
        results = loop.validate_corruptions(model, loader, args, torch.device('cpu'), dict(mean=MEAN, std=STD))
        return results, data.reads

    reread, reads = run(-1)
    assert reads == 8 + 12 * 40  # the first batch, read to size the set, then twelve passes
    kept, reads = run(budget)
    assert kept == reread  # exactly: same batches, same corruption seeds
    # kept: one pass; else as above
    assert reads == (40 if budget > 40 * (3 * 16 * 16 * 4 + 8) else 8 + 12 * 40)
    loader = torch.utils.data.DataLoader(_CountedImages(), batch_size=8)
    kept = loop.cache_batches(loader)
    assert len(kept) == len(loader) and kept.sampler is loader.sampler  # the evaluators' sample limit reads it
    for _ in range(2):  # the batches the loader reads, in its order, each time
        assert all(torch.equal(x, x_read) and torch.equal(y, y_read) for (x, y), (x_read, y_read) in zip(kept, loader))
