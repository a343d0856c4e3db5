"""Creating and checking teachers for the trainer: safe weight loading and clear failures."""
import argparse
import logging
import os
from typing import Any, Optional, Sequence, Tuple

import safetensors.torch
import torch
import torch.nn as nn
from timm.models import create_model, is_model

from .models.convert import convert_kd_checkpoint

_logger = logging.getLogger(__name__)


class TeacherError(ValueError):
    """A teacher that cannot be used as given; the message says how to fix it."""


def _read_checkpoint(path: str) -> Any:
    if path.endswith('.safetensors'):
        return safetensors.torch.load_file(path, device='cpu')
    # timm training checkpoints store their args as an argparse.Namespace, the one object allowed
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def load_weights(model: nn.Module, checkpoint_path: str, what: str = 'teacher') -> Optional[Tuple[tuple, tuple]]:
    """Load a timm/torch checkpoint or a .safetensors file into ``model``, strictly.

    Pickled checkpoints are read with ``weights_only=True`` (never arbitrary objects). The state
    dict may sit under 'state_dict' (timm), 'model' (RepDistiller/mdistiller) or 'net', with or
    without a DataParallel 'module.' prefix (see ``timm_r2kd.models.convert_kd_checkpoint``).

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
        checkpoint = _read_checkpoint(checkpoint_path)
    except Exception as e:  # truncated zip, bad safetensors header, pickled objects refused, ...
        raise TeacherError(
            f"Could not read the {what} checkpoint '{checkpoint_path}': {type(e).__name__}: {e}. It may be "
            f"truncated or not a checkpoint, or hold pickled objects that are never loaded; re-copy it or "
            f"re-export its state_dict (torch.save or safetensors).") from e
    try:
        state_dict = convert_kd_checkpoint(checkpoint, model)
    except ValueError as e:
        raise TeacherError(
            f"The {what} checkpoint '{checkpoint_path}' does not fit {type(model).__name__}: {e} Was it trained "
            f"as another architecture or with another --num-classes/--in-chans?") from e
    model.load_state_dict(state_dict, strict=True)
    args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    mean, std = getattr(args, 'mean', None), getattr(args, 'std', None)
    return None if mean is None or std is None else (tuple(mean), tuple(std))


def create_teacher_model(
        name: str,
        num_classes: int,
        in_chans: int,
        checkpoint_path: Optional[str] = None,
        pretrained: Optional[bool] = None,
        **kwargs,
) -> nn.Module:
    """Create a teacher by timm name (or hf-hub:/local-dir:) and load its weights.

    The teacher's ``pretrained_cfg`` mean/std become those its checkpoint was trained with, when
    the checkpoint records them, so the teacher sees its input normalised as in training.

    Args:
        name: Model name.
        num_classes: Classes of the student (the teacher must match).
        in_chans: Input channels.
        checkpoint_path: Weights to load (timm/torch checkpoint or safetensors).
        pretrained: Load pretrained weights; default: only when no checkpoint is given.
        **kwargs: Passed to ``timm.create_model``.
    """
    if pretrained is None:
        pretrained = checkpoint_path is None
    prefixed = name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:'))
    if not prefixed and not is_model(name):
        raise TeacherError(f"Unknown teacher model '{name}'. List names with timm.list_models('*pattern*').")
    try:
        model = create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except Exception as e:
        if pretrained:
            raise TeacherError(
                f"Could not create teacher '{name}' with pretrained weights ({type(e).__name__}: {e}). Without "
                f"network access, train a teacher first and pass --teacher-checkpoint PATH, or use "
                f"--no-teacher-pretrained for a random teacher (testing only).") from e
        raise TeacherError(f"Could not create teacher '{name}': {type(e).__name__}: {e}") from e
    if checkpoint_path:
        normalization = load_weights(model, checkpoint_path)
        if normalization is not None:
            model.pretrained_cfg = dict(model.pretrained_cfg, mean=normalization[0], std=normalization[1])
    return model


def is_weak(top1: float, num_classes: int) -> bool:
    """True when a top-1 accuracy (percent) is below twice chance: a random head or the wrong classes."""
    return top1 < 2 * 100. / num_classes


def match_channels(values: Sequence[float], channels: int) -> tuple:
    """Per-channel normalisation values for ``channels`` channels (averaged when the count differs)."""
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return (sum(values) / len(values),) * channels
