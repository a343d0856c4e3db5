"""Augmented views: each view does what it says, per sample or (reference parity) per batch."""
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from timm_r2kd.views import (
    CUTMIX_ALPHA, IMAGE_VIEWS, MIXUP_ALPHA, CutoutView, MixView, ViewDataset, autoaug_policy, create_image_view,
)


@pytest.mark.parametrize('dataset, policy', [('torch/cifar100', 'cifar10'), ('torch/CIFAR10', 'cifar10'),
                                             ('', 'imagenet'), ('torch/fashion_mnist', 'imagenet')])
def test_autoaug_policy_follows_the_reference_per_dataset(dataset, policy):
    assert autoaug_policy(dataset) == policy
    assert autoaug_policy(dataset, 'imagenet') == 'imagenet'


def test_cifar10_autoaug_view_is_torchvisions_cifar10_policy():
    view = create_image_view('autoaug', 32, (0.5, 0.5, 0.5), autoaug_policy='cifar10')
    assert isinstance(view, AutoAugment) and view.policy == AutoAugmentPolicy.CIFAR10
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    changed = sum(not np.array_equal(np.asarray(view(img)), np.asarray(img)) for _ in range(20))
    assert changed >= 10  # each sub-policy applies its ops with probability; most draws change the image
    gray = create_image_view('autoaug', 28, (0.29,), in_chans=1, autoaug_policy='cifar10')
    assert np.asarray(gray(img.convert('L'))).shape == (32, 32)
    with pytest.raises(ValueError, match='AutoAugment policy'):
        create_image_view('autoaug', 32, (0.5,) * 3, autoaug_policy='svhn')


def _batch(n=8, size=32):
    return torch.rand(n, 3, size, size) * 2 - 1, torch.randint(0, 10, (n,))


def _mixup_weights(x, view):
    # view_i = lam_i * x_i + (1 - lam_i) * x_partner(i), partner = the batch reversed (timm's Mixup)
    partner = x.flip(0)
    a, b = (x - partner).flatten(1), (view - partner).flatten(1)
    return (a * b).sum(1) / (a * a).sum(1)


@pytest.mark.parametrize('per_sample', [True, False])
def test_mixup_view_draws_per_sample_or_per_batch(per_sample):
    x, y = _batch()
    view = MixView(MIXUP_ALPHA, 0., 10, per_sample=per_sample)(x, y)
    lam = _mixup_weights(x, view)
    partner = x.flip(0)
    expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * partner
    torch.testing.assert_close(view, expected)  # it is a mixup with the reversed batch
    assert ((lam >= 0) & (lam <= 1)).all()
    if per_sample:
        assert lam.unique().numel() > 2  # pairs share a weight, the batch does not
    else:
        torch.testing.assert_close(lam, lam[:1].expand_as(lam))
    assert not torch.equal(view, x)


@pytest.mark.parametrize('per_sample', [True, False])
def test_cutmix_view_pastes_boxes_per_sample_or_per_batch(per_sample):
    x, y = _batch()
    view = MixView(0., CUTMIX_ALPHA, 10, per_sample=per_sample)(x, y)
    pasted = (view != x).all(dim=1)  # a pixel is either the sample's own or its partner's
    assert torch.equal(view, torch.where(pasted.unsqueeze(1), x.flip(0), x))
    masks = [m for m in pasted if m.any()]
    assert masks, 'no box was pasted'
    for m in masks:  # each pasted region is a rectangle
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert m[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    same = all(torch.equal(m, masks[0]) for m in masks)
    assert same != per_sample


@pytest.mark.parametrize('per_sample', [True, False])
def test_cutout_hole_size_and_placement(per_sample):
    x = torch.rand(64, 3, 32, 32) + 0.5  # no zeros of its own
    view = CutoutView(per_sample=per_sample)(x)
    holes = (view == 0).all(dim=1)
    assert torch.equal(view, x * ~holes.unsqueeze(1))
    interior = 0
    for h in holes:  # one square of a quarter of the side (8 px), clipped where it meets a border
        rows, cols = h.any(1).nonzero().flatten(), h.any(0).nonzero().flatten()
        assert h[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all() and len(rows) <= 8 and len(cols) <= 8
        if 0 < rows.min() and rows.max() < 31 and 0 < cols.min() and cols.max() < 31:
            assert h.sum() == 8 * 8
            interior += 1
    assert interior > 0 or not per_sample
    distinct = len({tuple(h.flatten().tolist()) for h in holes})
    assert (distinct > 1) == per_sample


def _stages():
    from torchvision import transforms
    geometric = transforms.Compose([transforms.RandomResizedCrop(24, scale=(0.3, 1.0)),
                                    transforms.RandomHorizontalFlip()])
    return geometric, (lambda img: img), transforms.PILToTensor()


class _Images(torch.utils.data.Dataset):
    transform = None

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], index


def test_view_dataset_clean_and_view_share_crop_and_flip():
    dataset = ViewDataset(_Images(), view_transform=lambda img: img)
    dataset.transform = _stages()
    for i in range(len(dataset)):
        (clean, view), target = dataset[i]
        assert target == i and torch.equal(clean, view)  # same random crop and flip for both
    crops = [dataset[0][0][0] for _ in range(5)]
    assert any(not torch.equal(crops[0], c) for c in crops[1:])  # and the crop is random


@pytest.mark.parametrize('name', IMAGE_VIEWS)
def test_image_views_change_the_image(name):
    dataset = ViewDataset(_Images(), create_image_view(name, 24, (0.5, 0.5, 0.5)))
    dataset.transform = _stages()
    changed = sum(not torch.equal(*dataset[i % 6][0]) for i in range(24))
    assert changed >= 12, f'{name} left {24 - changed} of 24 views unchanged'


def test_randaug_view_never_asks_pillow_for_zero_posterize_bits():
    # timm's noisy magnitude reaches its clip at 10, where PosterizeIncreasing keeps 0 bits
    view = create_image_view('randaug', 8, (0.5,), in_chans=1)
    img = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode='L')
    random.seed(0)
    for _ in range(3000):
        view(img)
