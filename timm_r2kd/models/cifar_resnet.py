"""CIFAR ResNets (He et al. 2016, section 4.2) and Wide ResNets (Zagoruyko & Komodakis 2016).

Layer names follow the definitions the KD literature uses (RepDistiller/mdistiller), so their
shared CIFAR-100 checkpoints load without renaming. ``resnet{8,14,20,32,44,56,110}`` use 16/32/64
channels, ``resnet8x4``/``resnet32x4`` four times as many (32 in the stem, 64/128/256 in the
stages); ``wrn_D_W`` is depth D and widening factor W with pre-activation blocks.
"""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._common import ClassifierMixin, cifar_cfg

__all__ = ['CifarResNet', 'WideResNet']


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus identity or 1x1 projection shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class CifarResNet(ClassifierMixin, nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, three stages, global average pooling, linear classifier.

    Args:
        blocks: Blocks per stage.
        widths: Stem width then the three stage widths.
        num_classes: Number of classes.
        in_chans: Input channels.
    """

    def __init__(self, blocks: List[int], widths: List[int], num_classes: int = 100, in_chans: int = 3, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        self.feature_info = []
        for i, (n, planes) in enumerate(zip(blocks, widths[1:])):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            setattr(self, f'layer{i + 1}', nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=planes, reduction=2 ** i, module=f'layer{i + 1}'))
        self.num_features = self.head_hidden_size = in_planes
        self.fc = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 shortcut when the width changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        # the projection shortcut reads the pre-activated input, the identity one the raw input
        shortcut = x if self.equal_in_out else self.convShortcut(pre)
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, planes: int, stride: int, drop_rate: float = 0.):
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, drop_rate)
            for i in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(ClassifierMixin, nn.Module):
    """Wide ResNet WRN-depth-width for 32x32 inputs.

    Args:
        depth: Total depth, 6n + 4.
        widen_factor: Width multiplier of the 16/32/64-channel stages.
        num_classes: Number of classes.
        in_chans: Input channels.
        drop_rate: Dropout between the two convolutions of each block.
    """

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_chans: int = 3,
                 drop_rate: float = 0., **kwargs):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f'WRN depth must be 6n + 4, got {depth}.')
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.num_features = self.head_hidden_size = channels[3]
        self.fc = nn.Linear(channels[3], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=c, reduction=2 ** i, module=f'block{i + 1}')
                             for i, c in enumerate(channels[1:])]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(x))


_RESNETS = {
    'resnet8': ([1, 1, 1], [16, 16, 32, 64]),
    'resnet14': ([2, 2, 2], [16, 16, 32, 64]),
    'resnet20': ([3, 3, 3], [16, 16, 32, 64]),
    'resnet32': ([5, 5, 5], [16, 16, 32, 64]),
    'resnet44': ([7, 7, 7], [16, 16, 32, 64]),
    'resnet56': ([9, 9, 9], [16, 16, 32, 64]),
    'resnet110': ([18, 18, 18], [16, 16, 32, 64]),
    'resnet8x4': ([1, 1, 1], [32, 64, 128, 256]),
    'resnet32x4': ([5, 5, 5], [32, 64, 128, 256]),
}
_WRNS = {'wrn_16_1': (16, 1), 'wrn_16_2': (16, 2), 'wrn_40_1': (40, 1), 'wrn_40_2': (40, 2)}

default_cfgs = generate_default_cfgs({f'{name}.untrained': cifar_cfg() for name in list(_RESNETS) + list(_WRNS)})


def _create_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    blocks, widths = _RESNETS[variant]
    return build_model_with_cfg(CifarResNet, variant, pretrained, blocks=blocks, widths=widths,
                                feature_cfg=dict(out_indices=(0, 1, 2)), **kwargs)


def _create_wrn(variant: str, pretrained: bool = False, **kwargs) -> WideResNet:
    depth, width = _WRNS[variant]
    return build_model_with_cfg(WideResNet, variant, pretrained, depth=depth, widen_factor=width,
                                feature_cfg=dict(out_indices=(0, 1, 2)), **kwargs)


@register_model
def resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-8 (0.08 M parameters at 100 classes)."""
    return _create_resnet('resnet8', pretrained, **kwargs)


@register_model
def resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-14."""
    return _create_resnet('resnet14', pretrained, **kwargs)


@register_model
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20."""
    return _create_resnet('resnet20', pretrained, **kwargs)


@register_model
def resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32."""
    return _create_resnet('resnet32', pretrained, **kwargs)


@register_model
def resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44."""
    return _create_resnet('resnet44', pretrained, **kwargs)


@register_model
def resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56."""
    return _create_resnet('resnet56', pretrained, **kwargs)


@register_model
def resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110."""
    return _create_resnet('resnet110', pretrained, **kwargs)


@register_model
def resnet8x4(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-8 at 4x width, the usual KD student of resnet32x4."""
    return _create_resnet('resnet8x4', pretrained, **kwargs)


@register_model
def resnet32x4(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 at 4x width, the usual KD teacher."""
    return _create_resnet('resnet32x4', pretrained, **kwargs)


@register_model
def wrn_16_1(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-1."""
    return _create_wrn('wrn_16_1', pretrained, **kwargs)


@register_model
def wrn_16_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-2."""
    return _create_wrn('wrn_16_2', pretrained, **kwargs)


@register_model
def wrn_40_1(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-40-1."""
    return _create_wrn('wrn_40_1', pretrained, **kwargs)


@register_model
def wrn_40_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-40-2."""
    return _create_wrn('wrn_40_2', pretrained, **kwargs)
