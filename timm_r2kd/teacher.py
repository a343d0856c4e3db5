"""The R2KD teacher: a dense teacher blended with an L1-pruned, never retrained copy of itself."""
import copy
import logging
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.utils import prune

from timm.models import create_model
from timm.task import DistillationTeacher
from timm.utils import unwrap_model

_logger = logging.getLogger(__name__)

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_weights(model: nn.Module) -> List[Tuple[nn.Module, str]]:
    """(module, 'weight') for every Conv/Linear layer of ``model``, the ones R2KD prunes."""
    return [
        (m, 'weight') for m in model.modules()
        if isinstance(m, _PRUNABLE) and isinstance(getattr(m, 'weight', None), torch.Tensor)
    ]


def _check_prune_args(rate: float, scope: str) -> None:
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
    _check_prune_args(rate, scope)
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


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


class PrunedTeacher(DistillationTeacher):
    """R2KD teacher: ``teacher_weight * dense(x) + (1 - teacher_weight) * pruned(x)``.

    The pruned copy is the dense teacher with its Conv/Linear weights L1-unstructured pruned at
    ``prune_rate`` and never retrained: a slightly perturbed teacher whose logits soften the target
    where the teacher's decision is fragile. Both copies are frozen and stay in eval mode whatever
    ``train()`` is called with (``reference_parity`` keeps the released code's defect of running the
    pruned copy's BatchNorm in train mode while the task trains).

    Args:
        model_name_or_module: Teacher model name (any timm name, ``hf-hub:``, ``local-dir:``) or module.
        prune_rate: Fraction of Conv/Linear weights zeroed in the pruned copy.
        teacher_weight: Weight of the dense teacher's logits; 1.0 disables the pruned copy.
        prune_scope: 'layer' (each layer at the rate) or 'global' (one threshold for all layers).
        num_classes: Number of classes (when ``model_name_or_module`` is a name).
        in_chans: Input channels (when ``model_name_or_module`` is a name).
        pretrained_path: Weights file for the named teacher (timm checkpoint or safetensors).
        pretrained_cfg_overlay: Pretrained cfg overrides for the named teacher.
        pretrained: Load pretrained weights for a named teacher. False creates it randomly
            initialised (tests, benchmarks, or weights loaded afterwards).
        device: Device for the teacher.
        dtype: Teacher dtype.
        reference_parity: Run the pruned copy's BatchNorm in train mode while training, as the
            R2KD reference does.
    """

    def __init__(
            self,
            model_name_or_module: Union[str, nn.Module],
            prune_rate: float = 0.1,
            teacher_weight: float = 0.7,
            prune_scope: str = 'layer',
            num_classes: Optional[int] = None,
            in_chans: int = 3,
            pretrained_path: Optional[str] = None,
            pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            pretrained: bool = True,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            reference_parity: bool = False,
    ):
        if not 0 <= teacher_weight <= 1:
            raise ValueError(f'teacher_weight must be in [0, 1], got {teacher_weight}')
        _check_prune_args(prune_rate, prune_scope)
        if isinstance(model_name_or_module, str) and not (pretrained or pretrained_path):
            model_name_or_module = create_model(
                model_name_or_module, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                device=device, dtype=dtype,
            )
        super().__init__(
            model_name_or_module,
            num_classes=num_classes,
            in_chans=in_chans,
            pretrained_path=pretrained_path,
            pretrained_cfg_overlay=pretrained_cfg_overlay,
            device=device,
            dtype=dtype,
        )
        _frozen(self.model)
        self.prune_rate = prune_rate
        self.teacher_weight = teacher_weight
        self.prune_scope = prune_scope
        self.reference_parity = reference_parity
        if teacher_weight < 1:
            pruned = l1_prune(copy.deepcopy(unwrap_model(self.model)), prune_rate, prune_scope)
            self.pruned_model = _frozen(pruned)
        else:
            # the blend is the dense teacher alone: no copy, no extra forward
            self.pruned_model = None
        self.train(False)

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(unwrap_model(self.model), 'num_classes', None)

    def sparsity(self) -> float:
        """Fraction of zero weights over the pruned copy's Conv/Linear layers (0 without one)."""
        if self.pruned_model is None:
            return 0.
        weights = [getattr(m, n) for m, n in prunable_weights(unwrap_model(self.pruned_model))]
        zeros = sum(int((w == 0).sum()) for w in weights)
        return zeros / max(sum(w.numel() for w in weights), 1)

    def train(self, mode: bool = True) -> 'PrunedTeacher':
        # Teachers are inference-only: BatchNorm must use (and never update) running statistics.
        super().train(False)
        if self.reference_parity and self.pruned_model is not None:
            self.pruned_model.train(mode)
        return self

    def compile(
            self,
            backend: str = 'inductor',
            mode: Optional[str] = None,
            compile_model: bool = True,
            compile_features: bool = False,
            **compile_kwargs,
    ) -> 'PrunedTeacher':
        """Compile the dense teacher (and features path) as timm does, and the pruned copy."""
        super().compile(
            backend=backend, mode=mode, compile_model=compile_model, compile_features=compile_features,
            **compile_kwargs)
        if compile_model and self.pruned_model is not None:
            self.pruned_model = torch.compile(self.pruned_model, backend=backend, mode=mode, **compile_kwargs)
        return self

    def forward(self, input: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        """Blended logits for ``input`` (already normalised for the teacher).

        Args:
            input: Input batch.
            return_features: Return the dense teacher's pooled pre-logits features instead.
        """
        if return_features or self.pruned_model is None:
            return super().forward(input, return_features=return_features)
        return self.teacher_weight * self.model(input) + (1. - self.teacher_weight) * self.pruned_model(input)

    def extra_repr(self) -> str:
        return (
            f'prune_rate={self.prune_rate}, teacher_weight={self.teacher_weight}, '
            f'prune_scope={self.prune_scope}, reference_parity={self.reference_parity}'
        )
