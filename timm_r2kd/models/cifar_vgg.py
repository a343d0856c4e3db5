"""CIFAR VGGs with BatchNorm (Simonyan & Zisserman 2015, CIFAR form of the KD literature).

Five conv blocks (the last ReLU of each applied after the block), max-pooling after the first
three, global average pooling and one linear classifier. As in the community's definition, the
fourth pooling runs only for 64 px high inputs (Tiny-ImageNet), so block4 sees 4x4 maps at 32 and
64 px alike; its checkpoints compute their published accuracy only this way. timm already has ImageNet ``vgg11``...``vgg19``,
so these register as ``cifar_vgg8``...``cifar_vgg19``. Layer names follow RepDistiller/mdistiller.
"""
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ._common import ClassifierMixin, cifar_cfg

__all__ = ['CifarVGG']

_CFGS = {
    'cifar_vgg8': [[64], [128], [256], [512], [512]],
    'cifar_vgg11': [[64], [128], [256, 256], [512, 512], [512, 512]],
    'cifar_vgg13': [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    'cifar_vgg16': [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    'cifar_vgg19': [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(widths: List[int], in_chs: int) -> nn.Sequential:
    layers = []
    for w in widths:
        layers += [nn.Conv2d(in_chs, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_chs = w
    return nn.Sequential(*layers[:-1])  # the block's last ReLU runs after it (feature hooks see pre-ReLU)


class CifarVGG(ClassifierMixin, nn.Module):
    """VGG-BN for 32x32 inputs.

    Args:
        cfg: Conv widths of the five blocks.
        num_classes: Number of classes.
        in_chans: Input channels.
    """

    classifier_name = 'classifier'

    def __init__(self, cfg: List[List[int]], num_classes: int = 100, in_chans: int = 3, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        in_chs = in_chans
        self.feature_info = []
        for i, widths in enumerate(cfg):
            setattr(self, f'block{i}', _block(widths, in_chs))
            setattr(self, f'relu{i}', nn.ReLU(inplace=True))
            if i < 4:
                setattr(self, f'pool{i}', nn.MaxPool2d(2, 2))
            in_chs = widths[-1]
            self.feature_info.append(dict(num_chs=in_chs, reduction=2 ** min(i, 3), module=f'relu{i}'))
        self.num_features = self.head_hidden_size = in_chs
        self.classifier = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                nn.init.zeros_(m.bias)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the output of each block (after its ReLU), as timm's models do.

        Args:
            x: Input images.
            indices: Take the last n blocks if int, all if None, the listed ones if a sequence.
            norm: Unused (no final norm layer).
            stop_early: Stop after the last block taken.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the intermediates.
        """
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        take_indices, max_index = feature_take_indices(5, indices)
        pool3 = x.shape[-2] == 64
        intermediates = []
        for i in range(max_index + 1 if stop_early or intermediates_only else 5):
            x = getattr(self, f'relu{i}')(getattr(self, f'block{i}')(x))
            if i in take_indices:
                intermediates.append(x)
            if i < 3 or (i == 3 and pool3):
                x = getattr(self, f'pool{i}')(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x, indices=1)[0]


default_cfgs = generate_default_cfgs({f'{name}.untrained': cifar_cfg(classifier='classifier', first_conv='block0.0')
                                      for name in _CFGS})


def _create(variant: str, pretrained: bool = False, **kwargs) -> CifarVGG:
    # the pooling rule depends on the input size, so features come from forward_intermediates
    return build_model_with_cfg(CifarVGG, variant, pretrained, cfg=_CFGS[variant],
                                feature_cfg=dict(feature_cls='getter'), **kwargs)


@register_model
def cifar_vgg8(pretrained: bool = False, **kwargs) -> CifarVGG:
    """CIFAR VGG-8 with BatchNorm."""
    return _create('cifar_vgg8', pretrained, **kwargs)


@register_model
def cifar_vgg11(pretrained: bool = False, **kwargs) -> CifarVGG:
    """CIFAR VGG-11 with BatchNorm."""
    return _create('cifar_vgg11', pretrained, **kwargs)


@register_model
def cifar_vgg13(pretrained: bool = False, **kwargs) -> CifarVGG:
    """CIFAR VGG-13 with BatchNorm."""
    return _create('cifar_vgg13', pretrained, **kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs) -> CifarVGG:
    """CIFAR VGG-16 with BatchNorm."""
    return _create('cifar_vgg16', pretrained, **kwargs)


@register_model
def cifar_vgg19(pretrained: bool = False, **kwargs) -> CifarVGG:
    """CIFAR VGG-19 with BatchNorm."""
    return _create('cifar_vgg19', pretrained, **kwargs)
