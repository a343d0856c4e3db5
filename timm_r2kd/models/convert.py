"""Load the CIFAR-100 teacher checkpoints the KD community shares (RepDistiller/mdistiller layout).

Those files are ``{'model': state_dict, ...}`` (sometimes with a DataParallel ``module.`` prefix).
The models of this package carry the same parameter names, so conversion only unwraps, strips
the prefix and maps the one naming difference (MobileNetV2's ``classifier.0`` -> ``classifier``),
then checks every key and shape against the model.
"""
import re
from typing import Any, Dict, Mapping

import torch
import torch.nn as nn

_RENAMES = (
    (re.compile(r'^classifier\.0\.'), 'classifier.'),  # MobileNetV2 head: Sequential(Linear) there
)


def unwrap_checkpoint(checkpoint: Any) -> Dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint ('model', 'state_dict' or 'net' key), unprefixed."""
    if isinstance(checkpoint, Mapping):
        for key in ('model', 'state_dict', 'net'):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError('Not a state dict of tensors (nor a checkpoint holding one under model/state_dict/net).')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in checkpoint.items()}


def convert_kd_checkpoint(checkpoint: Any, model: nn.Module) -> Dict[str, torch.Tensor]:
    """Map a community CIFAR checkpoint onto ``model``'s state dict, or raise naming what does not fit.

    Args:
        checkpoint: Loaded checkpoint (dict) or state dict.
        model: The timm_r2kd model it should load into.
    """
    state_dict = {}
    own = model.state_dict()
    for key, value in unwrap_checkpoint(checkpoint).items():
        if key not in own:
            for pattern, replacement in _RENAMES:
                renamed = pattern.sub(replacement, key)
                if renamed in own:
                    key = renamed
                    break
        state_dict[key] = value
    missing = sorted(k for k in own if k not in state_dict and not k.endswith('num_batches_tracked'))
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatched = sorted(f'{k} {tuple(v.shape)} vs {tuple(own[k].shape)}'
                        for k, v in state_dict.items() if k in own and v.shape != own[k].shape)
    if missing or unexpected or mismatched:
        def _few(keys):
            return ', '.join(keys[:6]) + (f' and {len(keys) - 6} more' if len(keys) > 6 else '')
        problems = '; '.join(f'{label}: {_few(keys)}' for label, keys in (
            ('missing', missing), ('unexpected', unexpected), ('shape mismatch (file vs model)', mismatched)) if keys)
        raise ValueError(f'{problems}.')
    for key in own:  # older BatchNorm checkpoints lack the counter
        if key.endswith('num_batches_tracked') and key not in state_dict:
            state_dict[key] = own[key]
    return state_dict
