"""Teachers: created from a name, a checkpoint or a module; R2KD's pruned teacher; checked, folded, evaluated.

Every teacher goes through ``create_teacher_model`` (names, ``hf-hub:``/``local-dir:`` ids, checkpoint
files, modules), whether it is built by ``PrunedTeacher``, ``R2KDTask`` or the trainer.
"""
import copy
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import create_model, is_model, load_state_dict
from timm.task import DistillationTeacher
from timm.utils import unwrap_model
from timm.utils.checkpoint_saver import load_checkpoint_metadata

from .models.convert import convert_kd_checkpoint
from .pruning import check_prune_args, l1_prune, prunable_weights

_logger = logging.getLogger(__name__)


class TeacherError(ValueError):
    """A teacher that cannot be used as given; the message says how to fix it."""


def load_weights(model: nn.Module, checkpoint_path: str, what: str = 'teacher') -> Optional[Tuple[tuple, tuple]]:
    """Load a timm/torch checkpoint or a .safetensors file into ``model``, strictly.

    timm's ``load_state_dict`` reads the file (``weights_only``: pickled objects are never loaded;
    'state_dict' or 'model' key, DataParallel prefix removed); ``convert_kd_checkpoint`` maps the KD
    community's names and checks every key and shape.

    Args:
        model: Model to load into.
        checkpoint_path: File path.
        what: Name used in error messages.

    Returns:
        The (mean, std) the checkpoint records in its training ``args`` (train_r2kd always records
        them, timm when --mean/--std were given), else None.
    """
    if not os.path.isfile(checkpoint_path):
        raise TeacherError(f"The {what} checkpoint '{checkpoint_path}' does not exist.")
    try:
        state_dict = load_state_dict(checkpoint_path, use_ema=False, weights_only=True)
        # the args are metadata of the same file (memory-mapped, not read twice)
        meta = None if checkpoint_path.endswith('.safetensors') else load_checkpoint_metadata(checkpoint_path)
    except Exception as e:  # truncated zip, bad safetensors header, pickled objects refused, ...
        raise TeacherError(
            f"Could not read the {what} checkpoint '{checkpoint_path}': {type(e).__name__}: {e}. It may be "
            f"truncated or not a checkpoint, or hold pickled objects that are never loaded; re-copy it or "
            f"re-export its state_dict (torch.save or safetensors).") from e
    try:
        state_dict = convert_kd_checkpoint(state_dict, model)
    except ValueError as e:
        raise TeacherError(
            f"The {what} checkpoint '{checkpoint_path}' does not fit {type(model).__name__}: {e} Was it trained "
            f"as another architecture or with another --num-classes/--in-chans?") from e
    model.load_state_dict(state_dict, strict=True)
    args = meta.get('args') if isinstance(meta, dict) else None
    mean, std = getattr(args, 'mean', None), getattr(args, 'std', None)
    return None if mean is None or std is None else (tuple(mean), tuple(std))


def create_teacher_model(
        name_or_module: Union[str, nn.Module],
        num_classes: Optional[int] = None,
        in_chans: int = 3,
        checkpoint_path: Optional[str] = None,
        pretrained: Optional[bool] = None,
        pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """The teacher model for a timm name (or ``hf-hub:``/``local-dir:`` id) or a module, with its weights.

    The teacher's ``pretrained_cfg`` mean/std become those its checkpoint was trained with, when
    the checkpoint records them, so the teacher sees its input normalised as in training.

    Args:
        name_or_module: Model name or an existing module.
        num_classes: Classes of the student (the teacher must match).
        in_chans: Input channels.
        checkpoint_path: Weights to load (timm/torch checkpoint, KD-community checkpoint or safetensors).
        pretrained: Load a named teacher's pretrained weights; default: only when no checkpoint is given.
        pretrained_cfg_overlay: Pretrained cfg overrides for a named teacher.
        device: Device for the teacher.
        dtype: Teacher dtype.
    """
    if isinstance(name_or_module, nn.Module):
        model = name_or_module
    else:
        model = _create_named(name_or_module, num_classes, in_chans, checkpoint_path, pretrained,
                              pretrained_cfg_overlay)
    if checkpoint_path:
        normalization = load_weights(model, checkpoint_path)
        if normalization is not None:
            model.pretrained_cfg = dict(model.pretrained_cfg, mean=normalization[0], std=normalization[1])
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _create_named(name, num_classes, in_chans, checkpoint_path, pretrained, pretrained_cfg_overlay) -> nn.Module:
    if pretrained is None:
        pretrained = checkpoint_path is None
    prefixed = name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:'))
    if not prefixed and not is_model(name):
        raise TeacherError(f"Unknown teacher model '{name}'. List names with timm.list_models('*pattern*').")
    kwargs = dict(pretrained_cfg_overlay=pretrained_cfg_overlay) if pretrained_cfg_overlay else {}
    try:
        return create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except Exception as e:
        if pretrained:
            raise TeacherError(
                f"Could not create teacher '{name}' with pretrained weights ({type(e).__name__}: {e}). Without "
                f"network access, train a teacher first and pass --teacher-checkpoint PATH, or use "
                f"--no-teacher-pretrained for a random teacher (testing only).") from e
        raise TeacherError(f"Could not create teacher '{name}': {type(e).__name__}: {e}") from e


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
        pretrained_path: Weights file for the teacher (timm checkpoint, KD-community checkpoint or
            safetensors).
        pretrained_cfg_overlay: Pretrained cfg overrides for the named teacher.
        pretrained: Load pretrained weights for a named teacher without ``pretrained_path``. False
            creates it randomly initialised (tests, benchmarks, or weights loaded afterwards).
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
        check_prune_args(prune_rate, prune_scope)
        model = create_teacher_model(
            model_name_or_module, num_classes, in_chans, checkpoint_path=pretrained_path,
            pretrained=pretrained and not pretrained_path, pretrained_cfg_overlay=pretrained_cfg_overlay,
            device=device, dtype=dtype)
        super().__init__(model, device=device, dtype=dtype)
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


def fuse_batchnorm(teacher: DistillationTeacher) -> None:
    """Fold the frozen teachers' eval-mode BatchNorm into their convolutions (torch.fx), in place.

    Models torch.fx cannot trace keep their BatchNorm (with a warning).
    """
    from torch.fx.experimental.optimization import fuse
    for attr in ('model', 'pruned_model'):
        module = getattr(teacher, attr, None)
        if module is None:
            continue
        try:
            fused = fuse(module.eval())
        except Exception as e:  # models that torch.fx cannot trace keep their BatchNorm
            _logger.warning(f'Could not fold BatchNorm of the teacher ({type(e).__name__}); keeping it.')
            return
        for p in fused.parameters():
            p.requires_grad_(False)
        fused.pretrained_cfg = getattr(module, 'pretrained_cfg', {})
        fused.num_classes = getattr(module, 'num_classes', None)
        setattr(teacher, attr, fused)


def match_channels(values: Sequence[float], channels: int) -> tuple:
    """Per-channel normalisation values for ``channels`` channels (averaged when the count differs)."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels


class _TeacherInput(nn.Module):
    """Feeds a teacher model student-normalised input renormalised the teacher's way."""

    def __init__(self, teacher: DistillationTeacher, module: nn.Module, mean, std):
        super().__init__()
        self.teacher = teacher
        self.module = module
        self.register_buffer('mean', torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.teacher.normalize_input(x, self.mean.to(x), self.std.to(x)))


def evaluate_teacher(teacher: DistillationTeacher, loader, args, device, data_config, amp_autocast, model_dtype):
    """Top-1/top-5 of the dense teacher (and of the pruned copy and the blend, for a PrunedTeacher).

    The teachers see the validation batches through the student's data pipeline, renormalised for
    them, exactly as they see training batches.
    """
    from .loop import validate  # the trainer's loop; the library part of this module does not need it
    models = OrderedDict(teacher=teacher.model)
    if isinstance(teacher, PrunedTeacher) and teacher.pruned_model is not None:
        models['pruned_teacher'] = teacher.pruned_model
        models['teacher_blend'] = teacher
    results = OrderedDict()
    for name, module in models.items():
        wrapped = _TeacherInput(teacher, module, data_config['mean'], data_config['std']).to(device)
        results[name] = validate(wrapped, loader, args, device, amp_autocast, model_dtype, log_suffix=f' [{name}]')
    teacher.train(False)  # validate() put the wrapped models in eval; restore the teacher's own mode rules
    return results


def check_teacher_accuracy(top1: float, num_classes: int, allow_weak: bool = False) -> None:
    """Stop (``TeacherError``) when a teacher's top-1 (percent) is below twice chance: a random head or
    the wrong classes; with ``allow_weak`` only warn."""
    if top1 >= 2 * 100. / num_classes:
        return
    message = (f'The teacher scores {top1:.2f}% top-1 on the validation set, no better than chance '
               f'({100 / num_classes:.2f}%) for {num_classes} classes: a random head or the wrong classes. Pass '
               f'--teacher-checkpoint with trained weights, or --allow-weak-teacher to distil from it anyway.')
    if not allow_weak:
        raise TeacherError(message)
    _logger.warning(message)


def build_teacher(args, data_config: Dict[str, Any], device: torch.device, model_dtype) -> DistillationTeacher:
    """The trainer's teacher from its flags: created, normalised, wrapped (pruned for R2KD), folded, laid out."""
    in_chans = data_config['input_size'][0]
    model = create_teacher_model(args.teacher, args.num_classes, in_chans, checkpoint_path=args.teacher_checkpoint,
                                 pretrained=args.teacher_pretrained)
    # the teacher's own normalisation (from its checkpoint or pretrained cfg), for its input channels
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    cfg.update(mean=match_channels(cfg.get('mean', data_config['mean']), in_chans),
               std=match_channels(cfg.get('std', data_config['std']), in_chans))
    model.pretrained_cfg = cfg
    model.to(device=device, dtype=model_dtype)
    if args.kd_loss == 'r2kd' and args.kd_distill_type == 'logit':
        teacher = PrunedTeacher(
            model, prune_rate=args.prune_rate, teacher_weight=args.prune_weight, prune_scope=args.prune_scope,
            device=device, dtype=model_dtype, reference_parity=args.reference_parity)
    else:
        teacher = DistillationTeacher(model, device=device, dtype=model_dtype)
    if args.teacher_fuse_bn:
        fuse_batchnorm(teacher)
    if args.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher.to(device)
