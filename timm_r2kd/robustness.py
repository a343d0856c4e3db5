"""Top-1 under common corruptions of the validation set (R2KD's claim is robustness).

Each corruption acts on a normalised batch: it maps the batch back to [0, 1] pixels, degrades it
and normalises again, so it runs on whatever the validation loader produced, on any device. One
moderate severity each, fixed so numbers compare across runs:

* gaussian_noise: additive N(0, 0.08^2) per pixel (seeded per batch), clipped to [0, 1];
* blur: Gaussian blur, sigma 1.0 px (kernel 5);
* contrast: pixels pulled 60 % of the way to each image's mean;
* jpeg: real JPEG round trip at quality 20 (Pillow, on the CPU).
"""
import io
from typing import Callable, Dict, Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image

CORRUPTIONS = ('gaussian_noise', 'blur', 'contrast', 'jpeg')


def _gaussian_noise(x: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return (x + 0.08 * noise).clamp(0, 1)


def _blur(x: torch.Tensor, seed: int) -> torch.Tensor:
    return TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[1.0, 1.0])


def _contrast(x: torch.Tensor, seed: int) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + 0.4 * (x - mean)


def _jpeg(x: torch.Tensor, seed: int) -> torch.Tensor:
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    decoded = []
    for img in pixels:
        buffer = io.BytesIO()
        TF.to_pil_image(img).save(buffer, format='JPEG', quality=20)
        buffer.seek(0)
        decoded.append(TF.pil_to_tensor(Image.open(buffer)))
    return torch.stack(decoded).to(device=x.device, dtype=x.dtype) / 255


_CORRUPTION_FNS: Dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
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
) -> torch.Tensor:
    """Apply corruption ``name`` to a batch normalised with ``mean``/``std``; returns it normalised.

    Args:
        x: Normalised images (B, C, H, W).
        name: One of ``CORRUPTIONS``.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation std.
        seed: Seed of random corruptions, so a batch degrades the same way every evaluation.
    """
    if name not in _CORRUPTION_FNS:
        raise ValueError(f"Unknown corruption '{name}'. Choose from {', '.join(CORRUPTIONS)}.")
    m = torch.as_tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (x.float() * s + m).clamp(0, 1)
    out = _CORRUPTION_FNS[name](pixels, seed)
    return ((out - m) / s).to(dtype=x.dtype, memory_format=torch.preserve_format)
