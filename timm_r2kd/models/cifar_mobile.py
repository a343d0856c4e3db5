"""Mobile students of the CIFAR KD literature: MobileNetV2 (half width), ShuffleNet V1 and V2.

Their CIFAR forms as RepDistiller/mdistiller define them (layer names included, so shared
checkpoints load): MobileNetV2 at width 0.5 with expansion 6 and a stride-2 stem; ShuffleNet V1
with 3 groups (240/480/960 channels, 4/8/4 blocks) and ShuffleNet V2 at 1.0x (116/232/464
channels, 1024 final), both with a 1x1 stride-1 stem.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ._common import ClassifierMixin, cifar_cfg

__all__ = ['CifarMobileNetV2', 'CifarShuffleNetV1', 'CifarShuffleNetV2']


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 project (linear), residual when shape is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class CifarMobileNetV2(ClassifierMixin, nn.Module):
    """MobileNetV2 for CIFAR as used for KD ("mobile_half": width 0.5, expansion 6).

    Args:
        width: Width multiplier.
        expansion: Expansion ratio of all but the first stage.
        num_classes: Number of classes.
        in_chans: Input channels.
    """

    classifier_name = 'classifier'

    def __init__(self, width: float = 0.5, expansion: int = 6, num_classes: int = 100, in_chans: int = 3, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        # (expansion, channels, blocks, stride); the second stage keeps stride 1 for 32x32 inputs
        setting = [[1, 16, 1, 1], [expansion, 24, 2, 1], [expansion, 32, 3, 2], [expansion, 64, 4, 2],
                   [expansion, 96, 3, 1], [expansion, 160, 3, 2], [expansion, 320, 1, 1]]
        input_channel = int(32 * width)
        self.conv1 = nn.Sequential(nn.Conv2d(in_chans, input_channel, 3, 2, 1, bias=False),
                                   nn.BatchNorm2d(input_channel), nn.ReLU(inplace=True))
        blocks = []
        for t, c, n, s in setting:
            output_channel = int(c * width)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)
        self.last_channel = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = nn.Sequential(nn.Conv2d(input_channel, self.last_channel, 1, bias=False),
                                   nn.BatchNorm2d(self.last_channel), nn.ReLU(inplace=True))
        self.num_features = self.head_hidden_size = self.last_channel
        self.classifier = nn.Linear(self.last_channel, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.conv2(x)


class ShuffleV1Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        mid_planes = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the first block after the stem is not grouped
        self.groups_in = g
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride=stride, padding=1, groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = _channel_shuffle(out, self.groups_in)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return F.relu(torch.cat([out, res], 1)) if self.stride == 2 else F.relu(out + res)


class CifarShuffleNetV1(ClassifierMixin, nn.Module):
    """ShuffleNet V1 (g=3) for CIFAR.

    Args:
        num_classes: Number of classes.
        in_chans: Input channels.
    """

    classifier_name = 'linear'

    def __init__(self, num_classes: int = 100, in_chans: int = 3, out_planes=(240, 480, 960), num_blocks=(4, 8, 4),
                 groups: int = 3, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        for i, (planes, n) in enumerate(zip(out_planes, num_blocks)):
            layers = []
            for j in range(n):
                # a downsampling block concatenates its pooled input, so it computes the remainder
                cat_planes = in_planes if j == 0 else 0
                layers.append(ShuffleV1Bottleneck(in_planes, planes - cat_planes, 2 if j == 0 else 1, groups))
                in_planes = planes
            setattr(self, f'layer{i + 1}', nn.Sequential(*layers))
        self.num_features = self.head_hidden_size = in_planes
        self.linear = nn.Linear(in_planes, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))


class ShuffleV2Block(nn.Module):
    """Stride-1 unit: half the channels pass through, the other half go 1x1-dw3x3-1x1."""

    def __init__(self, in_channels: int, split_ratio: float = 0.5):
        super().__init__()
        self.split = int(in_channels * split_ratio)
        c = self.split
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, :self.split], x[:, self.split:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return _channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: two branches on the full input, concatenated and shuffled."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return _channel_shuffle(torch.cat([left, right], 1), 2)


class CifarShuffleNetV2(ClassifierMixin, nn.Module):
    """ShuffleNet V2 1.0x for CIFAR.

    Args:
        num_classes: Number of classes.
        in_chans: Input channels.
    """

    classifier_name = 'linear'

    def __init__(self, num_classes: int = 100, in_chans: int = 3, out_channels=(116, 232, 464, 1024),
                 num_blocks=(3, 7, 3), **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 24, 1, bias=False)  # 1x1 as in the community's checkpoints
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        for i, (c, n) in enumerate(zip(out_channels[:3], num_blocks)):
            setattr(self, f'layer{i + 1}', nn.Sequential(
                ShuffleV2DownBlock(in_channels, c), *[ShuffleV2Block(c) for _ in range(n)]))
            in_channels = c
        self.conv2 = nn.Conv2d(in_channels, out_channels[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.num_features = self.head_hidden_size = out_channels[3]
        self.linear = nn.Linear(out_channels[3], num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return F.relu(self.bn2(self.conv2(x)))


default_cfgs = generate_default_cfgs({
    'mobilenetv2.untrained': cifar_cfg(classifier='classifier', first_conv='conv1.0'),
    'shufflenet_v1.untrained': cifar_cfg(classifier='linear'),
    'shufflenet_v2.untrained': cifar_cfg(classifier='linear'),
})


@register_model
def mobilenetv2(pretrained: bool = False, **kwargs) -> CifarMobileNetV2:
    """MobileNetV2 at width 0.5 for CIFAR (the KD literature's 'MobileNetV2')."""
    return build_model_with_cfg(CifarMobileNetV2, 'mobilenetv2', pretrained, **kwargs)


@register_model
def shufflenet_v1(pretrained: bool = False, **kwargs) -> CifarShuffleNetV1:
    """ShuffleNet V1 (g=3) for CIFAR."""
    return build_model_with_cfg(CifarShuffleNetV1, 'shufflenet_v1', pretrained, **kwargs)


@register_model
def shufflenet_v2(pretrained: bool = False, **kwargs) -> CifarShuffleNetV2:
    """ShuffleNet V2 1.0x for CIFAR."""
    return build_model_with_cfg(CifarShuffleNetV2, 'shufflenet_v2', pretrained, **kwargs)
