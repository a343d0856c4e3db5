"""Shared pieces of the CIFAR models: their default config and timm's classifier interface."""
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def cifar_cfg(**kwargs) -> Dict[str, Any]:
    """Pretrained cfg of a CIFAR-100 model (no weights are hosted: the tag is 'untrained')."""
    return {
        'url': '', 'num_classes': 100, 'input_size': (3, 32, 32), 'pool_size': None, 'crop_pct': 1.0,
        'interpolation': 'bilinear', 'fixed_input_size': False, 'mean': CIFAR100_MEAN, 'std': CIFAR100_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'license': 'apache-2.0', **kwargs,
    }


class ClassifierMixin:
    """timm's head interface for models ending in global average pooling and one Linear layer.

    Subclasses set ``self.num_classes``, ``self.num_features`` and ``self.head_hidden_size``, name
    their classifier attribute in ``classifier_name`` and implement ``forward_features``.
    """

    classifier_name = 'fc'
    num_classes: int
    num_features: int

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool not in (None, 'avg'):
            raise ValueError(f'{type(self).__name__} supports only average pooling, got {global_pool!r}.')
        self.num_classes = num_classes
        old = self.get_classifier()
        factory = dict(device=old.weight.device, dtype=old.weight.dtype) if isinstance(old, nn.Linear) else {}
        head = nn.Linear(self.num_features, num_classes, **factory) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_name, head)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
