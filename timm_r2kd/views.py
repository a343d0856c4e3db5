"""Augmented views for R2KD's second distillation pass, built from timm's own augmentations.

Two kinds of view:

* batch views (mixup, cutmix, cutout) act on the normalised batch on the device and are passed to
  ``R2KDTask`` as ``view_transform``;
* image views (randaug, autoaug, augmix) are PIL policies run per sample in the loader workers:
  ``ViewDataset`` returns (clean, view) for each image, both from the same random crop and flip,
  and timm's collate lays the batch out as [clean; view] for ``R2KDTask(num_aug_splits=2)``.

Every sample draws its own operation. ``per_sample=False`` reproduces the R2KD reference, which
draws one operation (one mixup weight, one box) for the whole batch.
"""
from typing import Callable, Optional, Sequence, Tuple

import torch
from timm.data import Mixup
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.transforms import str_to_pil_interp
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode

BATCH_VIEWS = ('mixup', 'cutmix', 'cutout')
IMAGE_VIEWS = ('randaug', 'autoaug', 'augmix')
VIEW_NAMES = ('none',) + BATCH_VIEWS + IMAGE_VIEWS

# timm policy strings for the image views (RandAugment as in timm's ImageNet recipes, AutoAugment's
# ImageNet policy, AugMix at timm's defaults)
_IMAGE_POLICIES = {
    'randaug': 'rand-m9-mstd0.5-inc1',
    'autoaug': 'original',
    'augmix': 'augmix-m5-w4-d2',
}
# The reference's AutoAugment view uses the CIFAR-10 policy on CIFAR-100 and the ImageNet policy on
# Tiny-ImageNet. timm has no CIFAR-10 policy, so that one comes from torchvision.
AUTOAUG_POLICIES = ('imagenet', 'cifar10')

# Reference settings: mixup lambda ~ Beta(0.2, 0.2), cutmix ~ Beta(1, 1), and a square cutout hole
# of a quarter of the image side (8 px at 32, 16 px at 64).
MIXUP_ALPHA = 0.2
CUTMIX_ALPHA = 1.0
CUTOUT_SIDE_FRACTION = 0.25


def autoaug_policy(dataset: str, policy: str = 'auto') -> str:
    """The AutoAugment policy of the 'autoaug' view: ``policy``, or for 'auto' the reference's choice
    for ``dataset`` (timm's dataset name): 'cifar10' on CIFAR-10/100, else 'imagenet'."""
    if policy != 'auto':
        return policy
    return 'cifar10' if (dataset or '').lower() in ('torch/cifar10', 'torch/cifar100') else 'imagenet'


def _check_name(name: str) -> None:
    if name not in VIEW_NAMES:
        raise ValueError(f"Unknown R2KD view '{name}'. Choose one of {', '.join(VIEW_NAMES)}.")


class MixView:
    """Mixup or CutMix of the batch with itself (timm ``Mixup``), returning only the images.

    Args:
        mixup_alpha: Beta parameter of the mixup weight (0 disables mixup).
        cutmix_alpha: Beta parameter of the cutmix area (0 disables cutmix).
        num_classes: Number of classes (timm's Mixup also mixes targets; they are not used here).
        per_sample: Each sample draws its own weight/box ('elem' mode) or one for the batch.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int, per_sample: bool = True):
        self.mixup = Mixup(
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=1.0,
            switch_prob=0.5,
            mode='elem' if per_sample else 'batch',
            label_smoothing=0.,
            num_classes=num_classes,
        )

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % 2:
            raise ValueError(
                f'Mixup/CutMix views pair samples and need an even batch, got {x.shape[0]}. '
                f'Use an even --batch-size.')
        # timm's Mixup works in place; the clean batch must survive for the first pass
        view, _ = self.mixup(x.clone(), target.clone())
        return view


class CutoutView:
    """One square hole per image, filled with zeros (the mean, in normalised space).

    Args:
        side_fraction: Hole side as a fraction of the image side.
        per_sample: Each image gets its own hole position, or one position for the batch.
    """

    def __init__(self, side_fraction: float = CUTOUT_SIDE_FRACTION, per_sample: bool = True):
        self.side_fraction = side_fraction
        self.per_sample = per_sample

    def __call__(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, _, height, width = x.shape
        side_h, side_w = max(1, round(height * self.side_fraction)), max(1, round(width * self.side_fraction))
        count = batch if self.per_sample else 1
        # hole centres anywhere in the image; the hole is clipped at the borders (DeVries & Taylor)
        cy = torch.randint(0, height, (count, 1, 1), device=x.device)
        cx = torch.randint(0, width, (count, 1, 1), device=x.device)
        ys = torch.arange(height, device=x.device).view(1, -1, 1)
        xs = torch.arange(width, device=x.device).view(1, 1, -1)
        top, left = cy - side_h // 2, cx - side_w // 2
        hole = (ys >= top) & (ys < top + side_h) & (xs >= left) & (xs < left + side_w)
        return x.masked_fill(hole.unsqueeze(1), 0)


def create_batch_view(name: str, num_classes: int, per_sample: bool = True) -> Optional[Callable]:
    """The ``view_transform`` for a batch view name, None for 'none' or an image view.

    Args:
        name: One of ``VIEW_NAMES``.
        num_classes: Number of classes.
        per_sample: Draw the operation per sample (default) or once per batch (reference parity).
    """
    _check_name(name)
    if name == 'mixup':
        return MixView(MIXUP_ALPHA, 0., num_classes, per_sample=per_sample)
    if name == 'cutmix':
        return MixView(0., CUTMIX_ALPHA, num_classes, per_sample=per_sample)
    if name == 'cutout':
        return CutoutView(per_sample=per_sample)
    return None


def create_image_view(
        name: str,
        img_size: int,
        mean: Sequence[float],
        interpolation: str = 'bilinear',
        in_chans: int = 3,
        autoaug_policy: str = 'imagenet',
) -> Callable:
    """A per-sample PIL augmentation policy for an image view name.

    Args:
        name: 'randaug', 'autoaug' or 'augmix'.
        img_size: Image side, scales translations as timm does.
        mean: Normalisation mean, the fill colour of geometric ops.
        interpolation: Interpolation of geometric ops.
        in_chans: 1 for grayscale ('L') images.
        autoaug_policy: AutoAugment policy of the 'autoaug' view: 'imagenet' (timm's 'original')
            or 'cifar10' (torchvision's, which the reference uses on CIFAR-100).
    """
    if name not in _IMAGE_POLICIES:
        raise ValueError(f"'{name}' is not an image view; choose one of {', '.join(IMAGE_VIEWS)}.")
    if autoaug_policy not in AUTOAUG_POLICIES:
        raise ValueError(f"Unknown AutoAugment policy '{autoaug_policy}'; choose one of {', '.join(AUTOAUG_POLICIES)}.")
    fill = tuple(round(255 * m) for m in mean)
    if name == 'autoaug' and autoaug_policy == 'cifar10':
        return AutoAugment(AutoAugmentPolicy.CIFAR10, interpolation=_torchvision_interp(interpolation),
                           fill=list(fill[:1] if in_chans == 1 else fill))
    hparams = dict(
        translate_const=int(img_size * 0.45),
        img_mean=fill[0] if in_chans == 1 else fill,
    )
    if interpolation and interpolation != 'random':
        hparams['interpolation'] = str_to_pil_interp(interpolation)
    policy = _IMAGE_POLICIES[name]
    if name == 'randaug':
        # timm clips the noisy magnitude at 10, where PosterizeIncreasing keeps 0 bits, which Pillow
        # (>= 10) refuses with a ValueError mid-epoch; just below 10 it keeps 1 bit
        hparams['magnitude_max'] = 9.99
        return rand_augment_transform(policy, hparams)
    if name == 'augmix':
        hparams['translate_pct'] = 0.3
        return augment_and_mix_transform(policy, hparams)
    return auto_augment_transform(policy, hparams)


def _torchvision_interp(name: str) -> InterpolationMode:
    # timm's 'random' picks per call; torchvision's policies take one mode, so use bilinear
    return InterpolationMode(name) if name in ('nearest', 'bilinear', 'bicubic') else InterpolationMode.BILINEAR


class ViewDataset(torch.utils.data.Dataset):
    """Dataset wrapper returning ((clean, view), target) with a per-sample image-level view.

    It takes the three-part training transform timm builds for augmentation splits
    (``create_transform(..., separate=True)``: crop/flip, colour/auto-augment, to-tensor/normalise,
    which ``timm.data.create_loader`` assigns to ``.transform``). The clean image is the full
    training transform; the view applies ``view_transform`` instead of the colour stage to the
    same crop and flip, as the reference augments the clean batch.

    Args:
        dataset: A timm dataset (with a ``transform`` attribute).
        view_transform: PIL policy for the view (see ``create_image_view``).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, view_transform: Callable):
        self.dataset = dataset
        self.view_transform = view_transform
        self._stages: Optional[Tuple[Callable, Callable, Callable]] = None

    @property
    def transform(self):
        return self._stages

    @transform.setter
    def transform(self, stages):
        if not (isinstance(stages, (tuple, list)) and len(stages) == 3):
            raise ValueError('ViewDataset needs the 3-stage transform timm creates with separate=True.')
        self._stages = tuple(stages)
        self.dataset.transform = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        img, target = self.dataset[index]
        if self._stages is None:
            raise RuntimeError('ViewDataset has no transform; create its loader with num_aug_splits=2.')
        geometric, colour, final = self._stages
        img = geometric(img)
        return (final(colour(img)), final(self.view_transform(img))), target
