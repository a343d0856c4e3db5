"""R2KD as a timm training task."""
import logging
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.task import DistillationTeacher, LogitDistillationTask
from timm.utils import unwrap_model

from .losses import create_distill_loss
from .teacher import PrunedTeacher, create_teacher_model

_logger = logging.getLogger(__name__)

ViewTransform = Callable[[torch.Tensor, torch.Tensor], Union[torch.Tensor, Tuple[torch.Tensor, Any]]]

# Whether the clean batch and its augmented views go through a teacher as one concatenated call,
# per device type. On CPU one call per view measured faster (see docs/benchmarks.md); the CUDA
# entry assumes larger batches use the GPU better and awaits bench/gpu.sh.
_BATCH_VIEWS_DEFAULT = {'cpu': False, 'cuda': True}

class R2KDTask(LogitDistillationTask):
    """Robustness-reinforced knowledge distillation task (Kim et al., TKDE 2024).

    loss = task_loss_weight * CE(student(x), y)
         + distill_loss_weight * sum over views v in [x, aug(x), ...] of KD(student(v), teacher(v))

    With ``distill_loss='r2kd'`` the KD term is ``R2KDLoss`` against a ``PrunedTeacher`` (a name or
    plain module teacher is wrapped in one with the paper's defaults). 'kl' and 'dist' give the
    baselines with the same views and weights. Augmented views come from ``view_transform`` applied
    to the clean batch, or from a batch that carries them as splits (``num_aug_splits``, timm's
    layout: [clean; view 1; ...] along the batch with targets repeated).

    Args:
        student_model: Student model to train (a timm model, or any module with ``pretrained_cfg``
            holding its normalisation ``mean``/``std``).
        teacher_model: Teacher: model name, module, ``DistillationTeacher`` or ``PrunedTeacher``.
        criterion: Task loss. Created with timm's ``create_classification_loss`` when None.
        criterion_kwargs: Arguments for ``create_classification_loss`` when criterion is None.
        distill_loss: A ``DistillLoss`` module or a name for ``create_distill_loss``.
        distill_loss_kwargs: Arguments for ``create_distill_loss`` when distill_loss is a name.
        view_transform: ``fn(input, target)`` returning an augmented view of the clean batch (or
            a tuple whose first item is it), e.g. ``timm.data.Mixup``.
        num_aug_splits: Number of splits the batch carries (0 or 1: clean only).
        task_loss_weight: Weight of the task loss.
        distill_loss_weight: Weight of the distillation loss. As timm's ``LogitDistillationTask``
            resolves them: both None gives 1 and 1, only ``task_loss_weight`` gives the distillation
            1 - task_loss_weight, only ``distill_loss_weight`` keeps the task weight at 1.
        batch_views: Send all views through each teacher in one call (True) or one call per view
            (False). None picks the measured default for the device. Ignored (one call per view)
            while any teacher module is in train mode, as under ``reference_parity``.
        teacher_pretrained: Load pretrained weights for a teacher given by name.
        teacher_pretrained_path: Weights file for a teacher given by name.
        teacher_pretrained_cfg_overlay: Pretrained cfg overrides for a teacher given by name.
        prune_rate: Pruned-teacher rate when the teacher gets wrapped ('r2kd').
        teacher_weight: Dense teacher's weight in the blend when wrapped; 1.0 disables pruning.
        prune_scope: 'layer' or 'global' pruning when wrapped.
        reference_parity: Reproduce the released R2KD code (hard ranks without gradient, per-process
            batch, pruned teacher's BatchNorm in train mode). Applies to what the task creates.
        device: Device for task tensors/buffers.
        dtype: Dtype for task tensors/buffers.
        verbose: Log the configuration.
    """

    def __init__(
            self,
            student_model: nn.Module,
            teacher_model: Union[str, nn.Module, DistillationTeacher],
            criterion: Optional[nn.Module] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            distill_loss: Union[str, nn.Module] = 'r2kd',
            distill_loss_kwargs: Optional[Dict[str, Any]] = None,
            view_transform: Optional[ViewTransform] = None,
            num_aug_splits: int = 0,
            task_loss_weight: Optional[float] = None,
            distill_loss_weight: Optional[float] = None,
            batch_views: Optional[bool] = None,
            teacher_pretrained: bool = True,
            teacher_pretrained_path: Optional[str] = None,
            teacher_pretrained_cfg_overlay: Optional[Dict[str, Any]] = None,
            prune_rate: float = 0.1,
            teacher_weight: float = 0.7,
            prune_scope: str = 'layer',
            reference_parity: bool = False,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        student = unwrap_model(student_model)
        cfg = getattr(student, 'pretrained_cfg', None) or {}
        if 'mean' not in cfg or 'std' not in cfg:
            raise ValueError(
                'student_model needs a pretrained_cfg with its input mean and std (timm models have one); '
                'set e.g. model.pretrained_cfg = dict(mean=(0.5,), std=(0.5,)) for other modules.')
        if view_transform is not None and num_aug_splits > 1:
            raise ValueError('Pass either view_transform or num_aug_splits > 1, not both.')

        if isinstance(distill_loss, str):
            kwargs = dict(distill_loss_kwargs or {})
            if distill_loss.lower() == 'r2kd' and reference_parity:
                kwargs['reference_parity'] = True
            distill_loss = create_distill_loss(distill_loss, **kwargs)
        elif not isinstance(distill_loss, nn.Module):
            raise TypeError(f'distill_loss must be a name or nn.Module, got {type(distill_loss).__name__}')
        elif distill_loss_kwargs:
            raise ValueError('distill_loss_kwargs only applies when distill_loss is a name.')
        loss_name = getattr(distill_loss, 'name', type(distill_loss).__name__)

        if isinstance(teacher_model, DistillationTeacher):
            teacher = teacher_model
        else:
            # names, hub ids and weight files go through the one teacher path (teacher.py)
            module = create_teacher_model(
                teacher_model, getattr(student, 'num_classes', None), getattr(student, 'in_chans', 3),
                checkpoint_path=teacher_pretrained_path,
                pretrained=teacher_pretrained and not teacher_pretrained_path,
                pretrained_cfg_overlay=teacher_pretrained_cfg_overlay, device=device, dtype=dtype)
            if loss_name == 'r2kd':
                teacher = PrunedTeacher(
                    module,
                    prune_rate=prune_rate,
                    teacher_weight=teacher_weight,
                    prune_scope=prune_scope,
                    device=device,
                    dtype=dtype,
                    reference_parity=reference_parity,
                )
            else:
                teacher = DistillationTeacher(module, device=device, dtype=dtype)

        super().__init__(
            student_model,
            teacher,
            criterion=criterion,
            criterion_kwargs=criterion_kwargs,
            distill_loss_weight=distill_loss_weight,
            task_loss_weight=task_loss_weight,
            temperature=getattr(distill_loss, 'temperature', 1.0),
            device=device,
            dtype=dtype,
            verbose=False,
        )
        _check_num_classes(student, self.teacher)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.verbose = verbose
        self.loss_type = loss_name
        self.distill_loss = distill_loss
        self.view_transform = view_transform
        self.num_aug_splits = num_aug_splits
        self.batch_views = batch_views
        self.reference_parity = reference_parity
        self.train(self.training)
        if verbose:
            _logger.info(
                f'R2KDTask: distill_loss={distill_loss!r}, teacher={type(self.teacher).__name__}, '
                f'task_weight={self.task_loss_weight}, distill_weight={self.distill_loss_weight}, '
                f'views={"splits" if num_aug_splits > 1 else ("transform" if view_transform else "clean only")}'
            )

    def train(self, mode: bool = True) -> 'R2KDTask':
        """Set the student's mode; teachers stay in eval mode (see ``PrunedTeacher.train``)."""
        nn.Module.train(self, mode)
        if not isinstance(self.teacher, PrunedTeacher):
            self.teacher.eval()
        return self

    def _views(self, input: torch.Tensor, target: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Split a batch into [clean, view, ...] inputs and the clean batch's target."""
        if self.num_aug_splits > 1:
            if input.shape[0] % self.num_aug_splits:
                raise ValueError(
                    f'Batch of {input.shape[0]} does not divide into num_aug_splits={self.num_aug_splits}.')
            views = list(input.chunk(self.num_aug_splits, dim=0))
            return views, target[:views[0].shape[0]]
        if self.view_transform is None:
            return [input], target
        with torch.no_grad():
            view = self.view_transform(input, target)
        if isinstance(view, (tuple, list)):
            view = view[0]
        return [input, view], target

    def _match_channels(self, channels: int) -> None:
        """Make the normalisation buffers fit inputs of ``channels`` channels.

        timm keeps a 3-channel ImageNet mean/std in the ``pretrained_cfg`` of a model created with
        ``in_chans=1``; renormalising a 1-channel batch with them would broadcast it to 3 channels.
        A buffer of another channel count is replaced by its channel mean (as timm's data config
        does for grayscale input).
        """
        for owner, names in ((self, ('student_mean', 'student_std')), (self.teacher, ('mean_kd', 'std_kd'))):
            for name in names:
                buf = getattr(owner, name, None)
                if buf is not None and buf.shape[1] != channels:
                    owner._buffers[name] = buf.mean(dim=1, keepdim=True).expand(1, channels, 1, 1).contiguous()
                    _logger.info(f'{type(owner).__name__}.{name} has {buf.shape[1]} channels, the input {channels}: '
                                 f'using its channel mean.')

    def teacher_logits(self, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        """Teacher logits for each view (inputs normalised for the student), without gradient."""
        if self.student_mean.shape[1] != inputs[0].shape[1] or self.teacher.mean_kd.shape[1] != inputs[0].shape[1]:
            self._match_channels(inputs[0].shape[1])
        batch_views = self.batch_views
        if batch_views is None:
            batch_views = _BATCH_VIEWS_DEFAULT.get(inputs[0].device.type, False)
        if batch_views and any(m.training for m in self.teacher.modules()):
            # a teacher layer in train mode (the pruned copy's BatchNorm under reference_parity)
            # normalises with batch statistics: one call per view keeps each view's own statistics
            batch_views = False
        with torch.no_grad():
            inputs = [self.teacher.normalize_input(x, self.student_mean, self.student_std) for x in inputs]
            if batch_views and len(inputs) > 1:
                return list(self.teacher(torch.cat(inputs)).split([x.shape[0] for x in inputs]))
            return [self.teacher(x) for x in inputs]

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Forward pass with distillation on the clean batch and its views.

        Args:
            input: Input batch (normalised for the student), with its splits if ``num_aug_splits``.
            target: Targets for the task loss.

        Returns:
            'loss', 'output' (student logits on the clean batch), 'task_loss', 'kd_loss', and the
            weighted KD parts summed over views ('kd_value' and 'kd_rank' for R2KD).
        """
        views, target = self._views(input, target)
        # teachers first: their passes then do not overlap the lifetime of the student's activations
        teacher_logits = self.teacher_logits(views)
        student_logits = [self.trainable_module(x) for x in views]
        task_loss = self.criterion(student_logits[0], target)

        device_type = student_logits[0].device.type
        autocast_off = torch.autocast(device_type=device_type, enabled=False) \
            if device_type in ('cuda', 'cpu', 'xpu', 'mps') else nullcontext()
        parts: Dict[str, torch.Tensor] = {}
        with autocast_off:
            for s, t in zip(student_logits, teacher_logits):
                for name, value in self.distill_loss.parts(s.float(), t.float()).items():
                    parts[name] = parts[name] + value if name in parts else value
        kd_loss = sum(parts.values())
        loss = self.task_loss_weight * task_loss + self.distill_loss_weight * kd_loss

        result = {
            'loss': loss,
            'output': student_logits[0],
            'task_loss': task_loss,
            'kd_loss': kd_loss,
        }
        result.update({f'kd_{name}': value.detach() for name, value in parts.items()})
        return result


def _check_num_classes(student: nn.Module, teacher: nn.Module) -> None:
    student_classes = getattr(student, 'num_classes', None)
    teacher_model = teacher.model if isinstance(teacher, DistillationTeacher) else teacher
    teacher_classes = getattr(unwrap_model(teacher_model), 'num_classes', None)
    if student_classes is not None and teacher_classes is not None and student_classes != teacher_classes:
        raise ValueError(
            f'Teacher has {teacher_classes} classes but the student has {student_classes}. Create both '
            f'with the same num_classes (e.g. --num-classes, or a teacher trained on the same dataset).')
