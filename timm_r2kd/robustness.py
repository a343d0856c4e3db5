"""Top-1 under common corruptions of the validation set (R2KD's claim is robustness).

Each corruption acts on a normalised batch: it maps the batch back to [0, 1] pixels, degrades it
and normalises again, so it runs on whatever the validation loader produced, on any device. Three
severities each, fixed so numbers compare across runs (severity 2 is the moderate one):

| corruption | severity 1 | severity 2 | severity 3 |
| --- | --- | --- | --- |
| gaussian_noise: additive N(0, std^2) per pixel (seeded per batch), clipped to [0, 1] | std 0.04 | 0.08 | 0.16 |
| blur: Gaussian blur, kernel 2 * ceil(2 sigma) + 1, reflect padding | sigma 0.5 px | 1.0 | 2.0 |
| contrast: pixels pulled towards each image's mean, keeping this fraction of the deviation | 0.7 | 0.4 | 0.2 |
| jpeg: a real JPEG round trip (Pillow, on the CPU) | quality 40 | 20 | 8 |
"""
import io
import math
from typing import Callable, Dict, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image

CORRUPTIONS = ('gaussian_noise', 'blur', 'contrast', 'jpeg')
SEVERITIES = (1, 2, 3)
_LEVELS = {
    'gaussian_noise': (0.04, 0.08, 0.16),
    'blur': (0.5, 1.0, 2.0),
    'contrast': (0.7, 0.4, 0.2),
    'jpeg': (40, 20, 8),
}


def _gaussian_noise(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return (x + std * noise).clamp(0, 1)


def _blur(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    size = 2 * math.ceil(2 * sigma) + 1
    return TF.gaussian_blur(x, kernel_size=[size, size], sigma=[sigma, sigma])


def _contrast(x: torch.Tensor, keep: float, seed: int) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + keep * (x - mean)


def _jpeg(x: torch.Tensor, quality: int, seed: int) -> torch.Tensor:
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    decoded = []
    for img in pixels:
        buffer = io.BytesIO()
        TF.to_pil_image(img).save(buffer, format='JPEG', quality=quality)
        buffer.seek(0)
        decoded.append(TF.pil_to_tensor(Image.open(buffer)))
    return torch.stack(decoded).to(device=x.device, dtype=x.dtype) / 255


_CORRUPTION_FNS: Dict[str, Callable[[torch.Tensor, float, int], torch.Tensor]] = {
    'gaussian_noise': _gaussian_noise,
    'blur': _blur,
    'contrast': _contrast,
    'jpeg': _jpeg,
}


def corrupt(
        x: torch.Tensor,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        severity: int = 2,
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` to a batch normalised with ``mean``/``std``; returns it normalised.

    Args:
        x: Normalised images (B, C, H, W).
        name: One of ``CORRUPTIONS``.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        seed: Seed of random corruptions, so a batch degrades the same way every evaluation.
        severity: 1, 2 or 3 (see the module's table).
    """
    if name not in _CORRUPTION_FNS:
        raise ValueError(f"Unknown corruption '{name}'. Choose from {', '.join(CORRUPTIONS)}.")
    if severity not in SEVERITIES:
        raise ValueError(f'Unknown corruption severity {severity}. Choose from {SEVERITIES}.')
    m = torch.as_tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x.float() * s + m).clamp(0, 1)
    out = _CORRUPTION_FNS[name](pixels, _LEVELS[name][severity - 1], seed)
    return ((out - m) / s).to(dtype=x.dtype, memory_format=torch.preserve_format)
