"""L1-unstructured pruning of a model's Conv/Linear weights (R2KD's perturbed teacher copy)."""
from typing import List, Tuple

import torch
import torch.nn as nn
from torch.nn.utils import prune

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_weights(model: nn.Module) -> List[Tuple[nn.Module, str]]:
    """(module, 'weight') for every Conv/Linear layer of ``model``, the ones R2KD prunes."""
    return [
        (m, 'weight') for m in model.modules()
        if isinstance(m, _PRUNABLE) and isinstance(getattr(m, 'weight', None), torch.Tensor)
    ]


def check_prune_args(rate: float, scope: str) -> None:
    if not 0 <= rate < 1:
        raise ValueError(f'prune rate must be in [0, 1), got {rate}')
    if scope not in ('layer', 'global'):
        raise ValueError(f"prune scope must be 'layer' or 'global', got '{scope}'")


def l1_prune(model: nn.Module, rate: float, scope: str = 'layer') -> nn.Module:
    """Zero the smallest-magnitude Conv/Linear weights of ``model`` in place, permanently.

    Args:
        model: Model to prune (modified in place and returned).
        rate: Fraction of weights to zero, in [0, 1).
        scope: 'layer' prunes round(rate * n) weights in each layer (as the R2KD reference does);
            'global' ranks all those weights together against one threshold.
    """
    check_prune_args(rate, scope)
    targets = prunable_weights(model)
    if not targets:
        raise ValueError(f'{type(model).__name__} has no Conv or Linear layer to prune.')
    if rate == 0:
        return model
    # torch's pruning flattens weights with .view(), which channels_last weights do not allow
    channels_last = [module.weight.dim() == 4 and not module.weight.is_contiguous() for module, _ in targets]
    for module, _ in targets:
        module.weight.data = module.weight.data.contiguous()
    if scope == 'layer':
        for module, name in targets:
            prune.l1_unstructured(module, name, amount=rate)
    else:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=rate)
    for (module, name), was_channels_last in zip(targets, channels_last):
        prune.remove(module, name)  # bake the mask into the weight, drop the reparametrization
        if was_channels_last:
            module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    return model
