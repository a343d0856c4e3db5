"""train_r2kd: timm's training loop with a teacher and R2KD, on one process or many (torchrun).

Without ``--teacher`` it trains a model as timm's train.py does (that is how teachers are made).
With ``--teacher NAME --r2kd`` the student learns from the teacher blended with its pruned copy,
on the clean batch and an augmented view. Outputs follow timm: args.yaml, summary.csv,
checkpoint-N / last / model_best (.pth.tar, timm's format), recovery checkpoints, EMA.
"""
import json
import logging
import math
import os
import shlex
import signal
import sys
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext, suppress
from datetime import datetime
from functools import partial
from typing import Any, Dict, List, Optional

import timm
import torch
import torch.nn as nn
import torchvision.utils
from timm import utils
from timm.data import AugMixDataset, FastCollateMixup, Mixup, create_loader, resolve_data_config
from timm.data.random_erasing import RandomErasing
from timm.layers import convert_splitbn_model, convert_sync_batchnorm, set_fast_norm
from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import create_model, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import (
    ClassificationEvaluator, ClassificationTask, DistillationTeacher, FeatureDistillationTask, TokenDistillationTask,
    evaluation_sample_limit, load_task_ema_checkpoint, resume_task_checkpoint,
)
from timm.utils import NativeScaler
from timm.utils.checkpoint_saver import load_checkpoint_metadata

from .args import parse_args
from .checks import UsageError
from .data import create_r2kd_dataset, dataset_label_names, use_pad_crop
from .hub import HubPushError, push_folder, resolve_token, save_hf
from .losses import create_distill_loss
from .progress import ProgressBar
from .robustness import CORRUPTIONS, corrupt
from .task import R2KDTask
from .teacher import PrunedTeacher
from .teacher_io import TeacherError, create_teacher_model, is_weak, match_channels
from .version import __version__
from .sampling import SeededDataset, install_resumable_sampler, next_position, seed_step
from .views import BATCH_VIEWS, IMAGE_VIEWS, ViewDataset, create_batch_view, create_image_view

_logger = logging.getLogger('train_r2kd')

try:
    import wandb
    has_wandb = True
except ImportError:
    has_wandb = False


class NonFiniteLossError(RuntimeError):
    """The training loss stopped being finite."""


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped training at a safe point, after saving ``resume_path``."""

    def __init__(self, signum: int, resume_path: Optional[str]):
        super().__init__(signum, resume_path)
        self.signum = signum
        self.resume_path = resume_path


class StopSignal:
    """Context that turns SIGINT/SIGTERM into a request to stop after the current update.

    A second signal stops at once (KeyboardInterrupt). Under DDP every process stops at the same
    update: the request is all-reduced when it is checked.
    """

    def __init__(self, distributed: bool = False):
        self.distributed = distributed
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> 'StopSignal':
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        _logger.warning(f'{signal.Signals(signum).name}: stopping after the current update, saving a checkpoint '
                        f'(send it again to stop at once, without saving).')

    def requested(self, device: torch.device) -> bool:
        """Whether any process was asked to stop (a collective call under DDP)."""
        if not self.distributed:
            return self.signum is not None
        flag = torch.tensor([0 if self.signum is None else self.signum], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())


def _autoaug_policy(args) -> str:
    if args.r2kd_autoaug_policy != 'auto':
        return args.r2kd_autoaug_policy
    return 'cifar10' if (args.dataset or '').lower() in ('torch/cifar10', 'torch/cifar100') else 'imagenet'


def _init_device(args) -> torch.device:
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        _logger.warning(f'--device {args.device} asked for but CUDA is not available: using the CPU.')
        args.device = 'cpu'
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(f'Distributed training: process {args.rank} of {args.world_size}, device {args.device}.')
    else:
        _logger.info(f'Training with a single process on {args.device}.')
    return device


def _create_student(args, in_chans: int) -> nn.Module:
    factory_kwargs = {}
    if args.pretrained_path:
        factory_kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path, num_classes=-1)
    try:
        model = create_model(
            args.model,
            pretrained=args.pretrained,
            in_chans=in_chans,
            num_classes=args.num_classes,
            drop_rate=args.drop,
            drop_path_rate=args.drop_path if args.drop_path is not None else args.drop_connect,
            drop_block_rate=args.drop_block,
            global_pool=args.gp,
            bn_momentum=args.bn_momentum,
            bn_eps=args.bn_eps,
            scriptable=args.torchscript,
            checkpoint_path=args.initial_checkpoint,
            **factory_kwargs,
            **args.model_kwargs,
        )
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise UsageError(f"Unknown model '{args.model}'. List names with timm.list_models('*pattern*').") from e
        raise
    if args.head_init_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(args.head_init_scale)
            model.get_classifier().bias.mul_(args.head_init_scale)
    if args.head_init_bias is not None:
        nn.init.constant_(model.get_classifier().bias, args.head_init_bias)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def _train_loss_fn(args, mixup_active: bool, num_aug_splits: int) -> nn.Module:
    if args.jsd_loss:
        if num_aug_splits < 2:
            raise UsageError('--jsd-loss needs --aug-splits >= 2.')
        return JsdCrossEntropy(num_splits=num_aug_splits, smoothing=args.smoothing)
    bce = dict(target_threshold=args.bce_target_thresh, sum_classes=args.bce_sum, pos_weight=args.bce_pos_weight)
    if mixup_active:
        return BinaryCrossEntropy(**bce) if args.bce_loss else SoftTargetCrossEntropy()
    if args.smoothing:
        if args.bce_loss:
            return BinaryCrossEntropy(smoothing=args.smoothing, **bce)
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def _build_teacher(args, data_config: Dict[str, Any], device: torch.device, model_dtype) -> nn.Module:
    in_chans = data_config['input_size'][0]
    model = create_teacher_model(
        args.teacher, args.num_classes, in_chans,
        checkpoint_path=args.teacher_checkpoint, pretrained=args.teacher_pretrained,
    )
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
        _fuse_teacher_bn(teacher, args)
    if args.channels_last:
        teacher.to(memory_format=torch.channels_last)
    return teacher.to(device)


def _fuse_teacher_bn(teacher: DistillationTeacher, args) -> None:
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


def _create_task(args, model, teacher, train_loss_fn, view_transform, num_aug_splits, device, model_dtype):
    verbose = utils.is_primary(args)
    if teacher is None:
        return ClassificationTask(model=model, criterion=train_loss_fn, device=device, dtype=model_dtype,
                                  verbose=verbose)
    weights = dict(distill_loss_weight=args.distill_loss_weight, task_loss_weight=args.task_loss_weight)
    if args.kd_distill_type == 'feature':
        return FeatureDistillationTask(
            student_model=model, teacher_model=teacher, criterion=train_loss_fn,
            student_feature_dim=args.kd_student_feature_dim, teacher_feature_dim=args.kd_teacher_feature_dim,
            device=device, dtype=model_dtype, verbose=verbose, **weights)
    if args.kd_distill_type == 'token':
        return TokenDistillationTask(
            student_model=model, teacher_model=teacher, criterion=train_loss_fn,
            distill_type=args.kd_token_distill_type, temperature=args.kd_temperature,
            device=device, dtype=model_dtype, verbose=verbose, **weights)
    if args.kd_loss == 'r2kd':
        loss = create_distill_loss(
            'r2kd', temperature=args.r2kd_temperature, value_weight=args.r2kd_value_weight,
            rank_weight=args.r2kd_rank_weight, rank_mode=args.r2kd_rank, rank_smoothing=args.r2kd_rank_smoothing,
            reference_parity=args.reference_parity)
    else:
        loss = create_distill_loss(args.kd_loss, temperature=args.kd_temperature)
    if args.distill_loss_weight is None and args.task_loss_weight is not None:
        weights['distill_loss_weight'] = 1. - args.task_loss_weight  # timm's complementary mode
    batch_views = {'auto': None, 'batched': True, 'split': False}[args.teacher_views]
    return R2KDTask(
        model, teacher, criterion=train_loss_fn, distill_loss=loss, view_transform=view_transform,
        num_aug_splits=num_aug_splits,
        task_loss_weight=1.0 if weights['task_loss_weight'] is None else weights['task_loss_weight'],
        distill_loss_weight=1.0 if weights['distill_loss_weight'] is None else weights['distill_loss_weight'],
        batch_views=batch_views, reference_parity=args.reference_parity, device=device, dtype=model_dtype,
        verbose=verbose,
    )


def validate(
        model,
        loader,
        args,
        device: torch.device,
        amp_autocast=suppress,
        model_dtype=None,
        log_suffix: str = '',
        corruption: Optional[str] = None,
        data_config: Optional[Dict[str, Any]] = None,
) -> Dict[str, float]:
    """Evaluate ``model`` on ``loader`` (optionally under a corruption); returns loss, top1, top5."""
    model.eval()
    evaluator = ClassificationEvaluator(device=device, max_samples=evaluation_sample_limit(loader))
    batch_time = utils.AverageMeter()
    last_idx = len(loader) - 1
    end = time.time()
    with torch.inference_mode():
        for batch_idx, (input, target) in enumerate(loader):
            if not args.prefetcher:
                input, target = input.to(device=device, dtype=model_dtype), target.to(device=device)
            if corruption is not None:
                input = corrupt(input, corruption, data_config['mean'], data_config['std'], seed=batch_idx)
            if args.channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                output = model(input)
            if isinstance(output, (tuple, list)):
                output = output[0]
            if args.tta > 1:
                output = output.unfold(0, args.tta, args.tta).mean(dim=2)
                target = target[0:target.size(0):args.tta]
            evaluator.update(output, target)
            batch_time.update(time.time() - end)
            end = time.time()
            if utils.is_primary(args) and corruption is None and (
                    batch_idx == last_idx or batch_idx % args.log_interval == 0):
                _logger.info(f'Test{log_suffix}: [{batch_idx:>4d}/{last_idx}]  Time: {batch_time.val:.3f} '
                             f'({batch_time.avg:.3f})')
    metrics = evaluator.compute(distributed=args.distributed)
    if utils.is_primary(args):
        _logger.info(f'Test{log_suffix}: Loss {metrics["loss"]:.4f}  Acc@1 {metrics["top1"]:.3f}  '
                     f'Acc@5 {metrics["top5"]:.3f}')
    return metrics


def validate_corruptions(model, loader, args, device, data_config, amp_autocast=suppress, model_dtype=None):
    """Top-1 under each corruption of robustness.CORRUPTIONS, and their mean."""
    results = OrderedDict()
    for name in CORRUPTIONS:
        m = validate(model, loader, args, device, amp_autocast, model_dtype, log_suffix=f' ({name})',
                     corruption=name, data_config=data_config)
        results[f'top1_{name}'] = m['top1']
    results['top1_corrupt_mean'] = sum(results.values()) / len(CORRUPTIONS)
    if utils.is_primary(args):
        _logger.info('Robustness: ' + '  '.join(f'{k[5:]} {v:.2f}' for k, v in results.items()))
    return results


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


def evaluate_teacher(teacher, loader, args, device, data_config, amp_autocast, model_dtype):
    """Top-1/top-5 of the dense teacher (and of the pruned copy and the blend, for a PrunedTeacher)."""
    models = OrderedDict(teacher=teacher.model)
    if isinstance(teacher, PrunedTeacher) and teacher.pruned_model is not None:
        models['pruned_teacher'] = teacher.pruned_model
        models['teacher_blend'] = teacher
    results = OrderedDict()
    for name, module in models.items():
        wrapped = _TeacherInput(teacher, module, data_config['mean'], data_config['std']).to(device)
        results[name] = validate(wrapped, loader, args, device, amp_autocast, model_dtype,
                                 log_suffix=f' [{name}]')
    teacher.train(False)  # validate() put the wrapped models in eval; restore the teacher's own mode rules
    return results


def train_one_epoch(
        epoch: int,
        task,
        loader,
        optimizer,
        args,
        device: torch.device,
        lr_scheduler=None,
        saver=None,
        output_dir: Optional[str] = None,
        amp_autocast=suppress,
        loss_scaler=None,
        model_dtype=None,
        mixup_fn=None,
        num_epochs: int = 1,
        stop: Optional[StopSignal] = None,
        start_batch: int = 0,
        random_erasing=None,
) -> Dict[str, float]:
    """One epoch of updates (from ``start_batch`` on, when resuming mid-epoch).

    Raises NonFiniteLossError when the loss stops being finite, and TrainingStopped (after saving a
    recovery checkpoint) when ``stop`` was signalled mid-epoch.
    """
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and getattr(loader, 'mixup_enabled', False):
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False

    second_order = getattr(optimizer, 'is_second_order', False)
    has_no_sync = args.distributed and hasattr(task.get_trainable_module(), 'no_sync')
    update_time_m, data_time_m, losses_m = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    extra_m: Dict[str, utils.AverageMeter] = OrderedDict()
    task.train()

    accum_steps = args.grad_accum_steps
    last_accum_steps = len(loader) % accum_steps
    updates_per_epoch = (len(loader) + accum_steps - 1) // accum_steps
    num_updates = epoch * updates_per_epoch + start_batch // accum_steps
    last_batch_idx = len(loader) - 1
    last_batch_idx_to_accum = len(loader) - last_accum_steps
    progress = ProgressBar(updates_per_epoch, f'Epoch {epoch}', enabled=(
        utils.is_primary(args) and not args.no_progress and sys.stderr.isatty()))
    epoch_start = data_start_time = update_start_time = time.time()
    optimizer.zero_grad()
    update_sample_count = 0
    for batch_idx, (input, target) in enumerate(loader, start=start_batch):  # r2kd: mid-epoch resume
        last_batch = batch_idx == last_batch_idx
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        update_idx = batch_idx // accum_steps
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps
        if isinstance(input, (tuple, list)):  # splits without the prefetcher: [clean; view ...]
            input = torch.cat(list(input))
            target = target.repeat(len(input) // target.shape[0])
        # r2kd: this step's draws (mixup, views, erasing, dropout) are a function of (seed, epoch, step)
        seed_step(args.seed, args.rank, epoch, batch_idx)
        if not args.prefetcher:
            input, target = input.to(device=device, dtype=model_dtype), target.to(device=device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        elif random_erasing is not None:
            input = random_erasing(input)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        data_time_m.update(accum_steps * (time.time() - data_start_time))

        def _step():
            with amp_autocast():
                result = task(input, target)
            loss = result['loss'] / accum_steps if accum_steps > 1 else result['loss']
            clip_parameters = None
            if args.clip_grad is not None:
                clip_parameters = task.get_clip_parameters(exclude_head='agc' in args.clip_mode)
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=clip_parameters, create_graph=second_order, need_update=need_update)
            else:
                loss.backward(create_graph=second_order)
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(clip_parameters, value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
            return loss, result

        with task.no_sync() if has_no_sync and not need_update else nullcontext():
            loss, result = _step()

        batch_size = result['output'].shape[0]
        global_batch_size = batch_size * args.world_size
        loss_value = loss.item() * accum_steps
        if not math.isfinite(loss_value):
            parts = ', '.join(f'{k}={v.item():.4g}' for k, v in result.items()
                              if k != 'output' and torch.is_tensor(v) and v.ndim == 0)
            raise NonFiniteLossError(
                f'Loss is {loss_value} at epoch {epoch}, step {update_idx} (batch {batch_idx}) [{parts}]. Stopped '
                f'before saving anything from this epoch. Lower --lr, add --clip-grad, or check the data/teacher.')
        losses_m.update(loss_value, batch_size)
        for k, v in result.items():
            if k not in ('loss', 'output') and torch.is_tensor(v) and v.ndim == 0:
                extra_m.setdefault(k, utils.AverageMeter()).update(v.item(), batch_size)
        update_sample_count += global_batch_size

        if not need_update:
            data_start_time = time.time()
            continue

        num_updates += 1
        optimizer.zero_grad()
        task.update_ema(step=num_updates)
        if args.synchronize_step and device.type == 'cuda':
            torch.cuda.synchronize()
        time_now = time.time()
        update_time_m.update(time_now - update_start_time)
        update_start_time = time_now
        progress.update(update_idx + 1, f'loss {losses_m.avg:.4g}')

        if update_idx % args.log_interval == 0 or last_batch:
            lrl = [group['lr'] for group in optimizer.param_groups]
            lr = sum(lrl) / len(lrl)
            loss_avg, loss_now = losses_m.avg, losses_m.val
            if args.distributed:
                loss_avg = utils.reduce_tensor(loss.new([loss_avg]), args.world_size).item()
                loss_now = utils.reduce_tensor(loss.new([loss_now]), args.world_size).item()
            if utils.is_primary(args):
                remaining = (updates_per_epoch - update_idx - 1) + (num_epochs - epoch - 1) * updates_per_epoch
                eta = remaining * update_time_m.avg
                parts = '  '.join(f'{k}: {m.val:#.3g}' for k, m in extra_m.items())
                progress.clear()
                _logger.info(
                    f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} '
                    f'({100. * (update_idx + 1) / updates_per_epoch:>3.0f}%)]  '
                    f'Loss: {loss_now:#.3g} ({loss_avg:#.3g})  {parts}  '
                    f'Time: {update_time_m.val:.3f}s, {update_sample_count / update_time_m.val:>7.2f}/s  '
                    f'({update_time_m.avg:.3f}s, {update_sample_count / update_time_m.avg:>7.2f}/s)  '
                    f'LR: {lr:.3e}  Data: {data_time_m.val:.3f} ({data_time_m.avg:.3f})  '
                    f'ETA: {_format_seconds(eta)}')
                if args.save_images and output_dir:
                    torchvision.utils.save_image(
                        input, os.path.join(output_dir, f'train-batch-{batch_idx}.jpg'), padding=0, normalize=True)

        if saver is not None:
            saver.next_position = next_position(epoch, batch_idx + 1, len(loader))
        if saver is not None and args.recovery_interval and (update_idx + 1) % args.recovery_interval == 0:
            saver.save_recovery(epoch, batch_idx=update_idx)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=losses_m.avg)
        if stop is not None and not last_batch and stop.requested(device):
            progress.close()
            if saver is not None:
                saver.save_recovery(epoch, batch_idx=update_idx)
            raise TrainingStopped(stop.signum, saver.curr_recovery_file if saver is not None else None)
        update_sample_count = 0
        data_start_time = time.time()

    progress.close()
    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()
    metrics = OrderedDict(loss=losses_m.avg)
    metrics.update((k, m.avg) for k, m in extra_m.items())
    if args.distributed:
        values = torch.tensor(list(metrics.values()), device=device, dtype=torch.float32)
        values = utils.reduce_tensor(values, args.world_size)
        metrics = OrderedDict(zip(metrics.keys(), values.tolist()))
    metrics['epoch_time'] = time.time() - epoch_start
    return metrics


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f'{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class RunSaver(utils.CheckpointSaver):
    """timm's checkpoint saver that also records where training continues from each checkpoint.

    ``next_position`` (epoch, batch) goes into the checkpoint's 'saver' entry, so a resume from a
    mid-epoch recovery checkpoint continues at the next batch, not the next epoch.
    """
    next_position = (0, 0)

    def state_dict(self, epoch=None, metric=None):
        return dict(super().state_dict(epoch, metric), next_position=tuple(self.next_position))


def _set_loader_epoch(loader, epoch: int) -> None:
    if hasattr(loader.dataset, 'set_epoch'):
        loader.dataset.set_epoch(epoch)
    if hasattr(loader.batch_sampler, 'set_epoch'):
        loader.batch_sampler.set_epoch(epoch)
    elif hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)


def _export(args, output_dir: str) -> str:
    """Write the Hub folder for the best checkpoint and push it if asked; returns the folder."""
    best = os.path.join(output_dir, 'model_best.pth.tar')
    checkpoint = best if os.path.isfile(best) else os.path.join(output_dir, 'last.pth.tar')
    # the run's own hf_export (in its folder) is replaced when a resumed run exports again
    folder = args.save_hf or os.path.join(output_dir, 'hf_export')
    save_hf(checkpoint, folder, repo_name=args.push_to_hub, overwrite=args.overwrite_export or not args.save_hf,
            flag='--save-hf')
    _logger.info(f'Hub folder written to {folder}')
    if args.push_to_hub:
        url = push_folder(folder, args.push_to_hub, token=resolve_token(args.hub_token_env),
                          private=args.hub_private, revision=args.hub_revision, timeout=args.hub_timeout)
        _logger.info(f'Pushed the student to {url}')
    return folder


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run training from command-line style arguments; returns a summary of the run.

    Args:
        argv: Arguments (default: sys.argv[1:]).

    Returns:
        dict with 'output_dir', 'best_metric', 'best_epoch', 'results' (per-epoch metrics), 'teacher'
        (teacher evaluation) and 'args'.
    """
    utils.setup_default_logging()
    command = 'python train_r2kd.py ' + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        args, args_text = parse_args(argv)
        return _main(args, args_text, command)
    except (UsageError, TeacherError) as e:
        _logger.error(str(e))
        raise SystemExit(2) from e
    except NonFiniteLossError as e:
        _logger.error(str(e))
        raise SystemExit(3) from e
    except HubPushError as e:
        _logger.error(str(e))
        raise SystemExit(4) from e
    except TrainingStopped as e:
        where = f'resume with --resume {e.resume_path}' if e.resume_path else 'this process saved nothing'
        _logger.error(f'Stopped by {signal.Signals(e.signum).name}: {where}. Nothing was exported or pushed.')
        raise SystemExit(128 + e.signum) from e
    except KeyboardInterrupt as e:
        _logger.error('Interrupted: nothing was saved at this point, and nothing was exported or pushed.')
        raise SystemExit(128 + signal.SIGINT) from e


def _main(args, args_text: str, command: str) -> Dict[str, Any]:
    if args.device_modules:
        import importlib
        for module in args.device_modules:
            importlib.import_module(module)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    device = _init_device(args)
    if args.distributed and args.sync_bn and device.type == 'cpu':
        raise UsageError('--sync-bn needs CUDA: PyTorch\'s SyncBatchNorm does not run on CPU (gloo). Drop --sync-bn '
                         '(per-process BatchNorm statistics are then averaged each epoch by --dist-bn).')
    if args.sync_bn and not args.distributed:
        _logger.warning('--sync-bn has no effect in a single process.')

    model_dtype = None
    if args.model_dtype:
        if args.model_dtype not in ('float32', 'float16', 'bfloat16'):
            raise UsageError(f'--model-dtype must be float32, float16 or bfloat16, got {args.model_dtype}.')
        model_dtype = getattr(torch, args.model_dtype)
    amp_dtype = torch.float16
    if args.amp:
        if model_dtype not in (None, torch.float32):
            raise UsageError('--amp needs a float32 model (drop --model-dtype).')
        if args.amp_dtype not in ('float16', 'bfloat16'):
            raise UsageError(f'--amp-dtype must be float16 or bfloat16, got {args.amp_dtype}.')
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    utils.random_seed(args.seed, args.rank)
    if args.fuser:
        utils.set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()

    in_chans = args.in_chans if args.in_chans is not None else (args.input_size[0] if args.input_size else 3)
    model = _create_student(args, in_chans)
    if utils.is_primary(args):
        _logger.info(f'Model {safe_model_name(args.model)} created, param count: '
                     f'{sum(p.numel() for p in model.parameters())}')
    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))
    data_config['mean'] = match_channels(data_config['mean'], in_chans)
    data_config['std'] = match_channels(data_config['std'], in_chans)
    # recorded in every checkpoint's args, so a later run using it as a teacher normalises alike
    args.mean, args.std = list(data_config['mean']), list(data_config['std'])
    # the student's config records the pipeline it was trained on (used for teacher input and export)
    model.pretrained_cfg = dict(model.pretrained_cfg, **{k: v for k, v in data_config.items() if k in (
        'input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')}, num_classes=args.num_classes)

    num_aug_splits = args.aug_splits if args.aug_splits > 1 else 0
    if args.split_bn:
        if not (num_aug_splits > 1 or args.resplit):
            raise UsageError('--split-bn needs --aug-splits >= 2 or --resplit.')
        model = convert_splitbn_model(model, max(num_aug_splits, 2))
    model.to(device=device, dtype=model_dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = convert_sync_batchnorm(model)
    if args.torchscript:
        model = torch.jit.script(model)

    amp_autocast = suppress
    loss_scaler = None
    if args.amp:
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if device.type == 'cuda' and amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)

    # data
    if args.data and not args.data_dir:
        args.data_dir = args.data
    input_img_mode = args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L')
    dataset_kwargs = dict(class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
                          input_img_mode=input_img_mode, input_key=args.input_key, target_key=args.target_key,
                          trust_remote_code=args.dataset_trust_remote_code)
    try:
        dataset_train = create_r2kd_dataset(
            args.dataset, args.data_dir, args.train_split, is_training=True, num_samples=args.train_num_samples,
            seed=args.seed, repeats=args.epoch_repeats, **dataset_kwargs)
        dataset_eval = None
        if args.val_split:
            dataset_eval = create_r2kd_dataset(
                args.dataset, args.data_dir, args.val_split, is_training=False, num_samples=args.val_num_samples,
                **dataset_kwargs)
    except (OSError, ValueError, AssertionError, RuntimeError) as e:  # timm asserts on unknown names/splits
        raise UsageError(f"Could not read the dataset '{args.dataset or args.data_dir}' ({type(e).__name__}: {e}). "
                         f"Check --dataset, --data-dir and --train-split/--val-split.") from e
    label_names = dataset_label_names(dataset_train)
    if label_names and args.num_classes is not None and args.num_classes < len(label_names):
        raise UsageError(f'--num-classes {args.num_classes} is below the {len(label_names)} classes of the '
                         f'dataset ({", ".join(map(str, label_names[:3]))}, ...): set --num-classes '
                         f'{len(label_names)}.')

    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    mixup_args = dict(
        mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax, prob=args.mixup_prob,
        switch_prob=args.mixup_switch_prob, mode=args.mixup_mode, label_smoothing=args.smoothing,
        num_classes=args.num_classes)
    collate_fn, mixup_fn = None, None
    if mixup_active:
        if args.prefetcher:
            if num_aug_splits:
                raise UsageError('--mixup/--cutmix with --aug-splits needs --no-prefetcher.')
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)

    view_transform = None
    loader_splits = num_aug_splits
    task_splits = 0
    if args.r2kd_view in IMAGE_VIEWS:
        dataset_train = ViewDataset(dataset_train, create_image_view(
            args.r2kd_view, data_config['input_size'][-1], data_config['mean'], train_interpolation, in_chans,
            autoaug_policy=_autoaug_policy(args)))
        loader_splits = task_splits = 2
    elif num_aug_splits > 1:
        dataset_train = AugMixDataset(dataset_train, num_splits=num_aug_splits)
    elif args.r2kd_view in BATCH_VIEWS:
        view_transform = create_batch_view(args.r2kd_view, args.num_classes, per_sample=not args.reference_parity)

    if not isinstance(dataset_train, torch.utils.data.IterableDataset):
        dataset_train = SeededDataset(dataset_train, args.seed)  # r2kd: augmentation draws per (seed, epoch, index)
    random_erasing = None
    if args.prefetcher and args.reprob > 0:
        # r2kd: timm's prefetcher erases one batch ahead of the step; erase in the step, after its reseed
        random_erasing = RandomErasing(
            probability=args.reprob, mode=args.remode, max_count=args.recount,
            num_splits=(loader_splits or 2) if args.resplit else 0, device=device)
    common_loader_kwargs = dict(mean=data_config['mean'], std=data_config['std'], pin_memory=args.pin_mem,
                                img_dtype=model_dtype or torch.float32, device=device,
                                distributed=args.distributed, use_prefetcher=args.prefetcher)
    loader_train = create_loader(
        dataset_train,
        input_size=data_config['input_size'],
        batch_size=args.batch_size,
        is_training=True,
        no_aug=args.no_aug,
        re_prob=0. if random_erasing is not None else args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        re_split=args.resplit,
        train_crop_mode=args.train_crop_mode,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob or 0.,
        gaussian_blur_prob=args.gaussian_blur_prob or 0.,
        auto_augment=args.aa,
        num_aug_repeats=args.aug_repeats,
        num_aug_splits=loader_splits,
        interpolation=train_interpolation,
        num_workers=args.workers,
        worker_seeding=args.worker_seeding,
        input_size_choices=args.train_img_sizes,
        batch_size_choices=args.train_batch_sizes,
        batch_choice_weights=args.train_size_probs,
        batch_choice_seed=args.seed,
        batch_choice_schedule=args.train_size_schedule,
        batch_schedule_epochs=args.epochs if args.train_size_schedule == 'progressive' else None,
        batch_schedule_spread=args.train_size_schedule_spread,
        batch_schedule_random_mix=args.train_size_random_mix,
        num_batches=args.train_batches_per_epoch,
        collate_fn=collate_fn,
        use_multi_epochs_loader=args.use_multi_epochs_loader,
        **common_loader_kwargs,
    )
    if args.crop_padding is not None:
        use_pad_crop(loader_train.dataset, data_config['input_size'][-1], args.crop_padding)
    sampler = install_resumable_sampler(loader_train, args.seed, args.world_size, args.rank)
    if sampler is None and utils.is_primary(args):
        _logger.warning('This loader (iterable dataset, --aug-repeats, scheduled sizes or --use-multi-epochs-loader) '
                        'keeps timm\'s sample order: a resumed run will not repeat the uninterrupted one exactly.')
    if len(loader_train) == 0:
        raise UsageError(f'The training set ({len(dataset_train)} samples) gives no full batch of '
                         f'{args.batch_size}. Lower --batch-size or use more samples.')
    loader_eval = None
    if dataset_eval is not None:
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'],
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], num_workers=args.workers, crop_pct=data_config['crop_pct'],
            **common_loader_kwargs)

    if not args.lr:
        global_batch_size = args.batch_size * args.world_size * args.grad_accum_steps
        batch_ratio = global_batch_size / args.lr_base_size
        if not args.lr_base_scale:
            on = args.opt.lower()
            args.lr_base_scale = 'sqrt' if any(o in on for o in ('ada', 'lamb')) else 'linear'
        if args.lr_base_scale == 'sqrt':
            batch_ratio = batch_ratio ** 0.5
        args.lr = args.lr_base * batch_ratio
        if utils.is_primary(args):
            _logger.info(f'Learning rate ({args.lr}) from base learning rate ({args.lr_base}) and global batch '
                         f'size ({global_batch_size}) with {args.lr_base_scale} scaling.')

    train_loss_fn = _train_loss_fn(args, mixup_active, num_aug_splits).to(device=device)
    teacher = None
    teacher_metrics: Dict[str, Dict[str, float]] = {}
    if args.teacher is not None:
        teacher = _build_teacher(args, data_config, device, model_dtype)
        if loader_eval is not None:
            teacher_metrics = evaluate_teacher(
                teacher, loader_eval, args, device, data_config, amp_autocast, model_dtype)
            top1 = teacher_metrics['teacher']['top1']
            if is_weak(top1, args.num_classes):
                message = (f'The teacher scores {top1:.2f}% top-1 on the validation set, no better than chance '
                           f'({100 / args.num_classes:.2f}%) for {args.num_classes} classes: a random head or '
                           f'the wrong classes. Pass --teacher-checkpoint with trained weights, or '
                           f'--allow-weak-teacher to distil from it anyway.')
                if not args.allow_weak_teacher:
                    raise TeacherError(message)
                _logger.warning(message)
    task = _create_task(args, model, teacher, train_loss_fn, view_transform, task_splits, device, model_dtype)

    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    if utils.is_primary(args):
        _logger.info(f'Created {type(optimizer).__name__} ({args.opt}) optimizer, lr {args.lr}.')
    resume_epoch = None
    if args.resume:
        try:
            resume_epoch = resume_task_checkpoint(
                task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
                loss_scaler=None if args.no_resume_opt else loss_scaler, log_info=utils.is_primary(args))
        except FileNotFoundError as e:
            raise UsageError(f"--resume checkpoint '{args.resume}' does not exist.") from e
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device='cpu' if args.model_ema_force_cpu else None)
        if args.resume:
            load_task_ema_checkpoint(task, args.resume)
    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        if task.has_ema():
            task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb)
    eval_model = task.get_eval_model()

    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    decreasing_metric = eval_metric == 'loss'
    saver = None
    output_dir = None
    if utils.is_primary(args):
        exp_name = args.experiment or '-'.join([
            datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(data_config['input_size'][-1])])
        output_dir = utils.get_outdir(args.output if args.output else './output/train', exp_name)
        saver = RunSaver(
            model=task.get_trainable_module(), optimizer=optimizer, args=args, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=decreasing_metric,
            max_history=args.checkpoint_hist, task=task)
        if args.resume and os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(output_dir):
            saver.load_state_dict_from_checkpoint(args.resume)
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            f.write(args_text)
        run_info = dict(command=command, label_names=label_names, teacher=teacher_metrics,
                        data_config={k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
                        versions=dict(timm_r2kd=__version__, timm=timm.__version__, torch=torch.__version__))
        with open(os.path.join(output_dir, 'run.json'), 'w') as f:
            json.dump(run_info, f, indent=2)
        if args.log_wandb:
            if has_wandb:
                wandb.init(project=args.wandb_project, name=exp_name, config=args, tags=args.wandb_tags,
                           resume='must' if args.wandb_resume_id else None, id=args.wandb_resume_id or None)
            else:
                _logger.warning('--log-wandb asked for but wandb is not installed (pip install wandb): '
                                'metrics go to summary.csv only.')

    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=decreasing_metric), updates_per_epoch=updates_per_epoch)
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    start_batch = 0
    if args.resume and args.start_epoch is None:
        # r2kd: where the checkpoint says training continues (mid-epoch for a recovery checkpoint)
        saved = (load_checkpoint_metadata(args.resume).get('saver') or {}).get('next_position')
        if saved is not None:
            start_epoch, start_batch = saved
    if lr_scheduler is not None and (start_epoch > 0 or start_batch > 0):
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)
        if start_batch:
            lr_scheduler.step_update(num_updates=start_epoch * updates_per_epoch + start_batch // args.grad_accum_steps)
    if start_batch and utils.is_primary(args):
        _logger.info(f'Resuming epoch {start_epoch} at batch {start_batch} of {len(loader_train)}.')

    results = []
    best_metric, best_epoch = (saver.best_metric, saver.best_epoch) if saver is not None else (None, None)
    stop = StopSignal(distributed=args.distributed).__enter__()
    try:
        for epoch in range(start_epoch, num_epochs):
            _set_loader_epoch(loader_train, epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
                sampler.set_start(start_batch if epoch == start_epoch else 0)
            train_metrics = train_one_epoch(
                epoch, task, loader_train, optimizer, args, device, lr_scheduler=lr_scheduler, saver=saver,
                output_dir=output_dir, amp_autocast=amp_autocast, loss_scaler=loss_scaler, model_dtype=model_dtype,
                mixup_fn=mixup_fn, num_epochs=num_epochs, stop=stop,
                start_batch=start_batch if epoch == start_epoch else 0, random_erasing=random_erasing)
            trainable = task.get_trainable_module()
            if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                utils.distribute_bn(trainable, args.world_size, args.dist_bn == 'reduce')
            if (epoch + 1) % args.val_interval != 0 and epoch + 1 != num_epochs:
                if lr_scheduler is not None:
                    lr_scheduler.step(epoch + 1, metric=None)
                if stop.requested(device):
                    if saver is not None:
                        saver.next_position = (epoch + 1, 0)
                        saver.save_recovery(epoch, batch_idx=updates_per_epoch - 1)
                    raise TrainingStopped(stop.signum, saver.curr_recovery_file if saver is not None else None)
                continue

            eval_metrics = None
            if loader_eval is not None:
                eval_metrics = validate(eval_model, loader_eval, args, device, amp_autocast, model_dtype)
                if args.eval_corruptions:
                    eval_metrics.update(validate_corruptions(
                        eval_model, loader_eval, args, device, data_config, amp_autocast, model_dtype))
                ema_model = task.get_trainable_module(ema=True)
                if ema_model is not None and not args.model_ema_force_cpu:
                    if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                        utils.distribute_bn(ema_model, args.world_size, args.dist_bn == 'reduce')
                    ema_metrics = validate(task.get_eval_model(ema=True), loader_eval, args, device, amp_autocast,
                                           model_dtype, log_suffix=' (EMA)')
                    eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
            if output_dir is not None:
                lrs = [group['lr'] for group in optimizer.param_groups]
                utils.update_summary(
                    epoch, train_metrics, eval_metrics, filename=os.path.join(output_dir, 'summary.csv'),
                    lr=sum(lrs) / len(lrs), write_header=None,
                    log_wandb=args.log_wandb and has_wandb)
            latest_metric = (eval_metrics or train_metrics)[eval_metric]
            if saver is not None:
                saver.next_position = (epoch + 1, 0)
                best_metric, best_epoch = saver.save_checkpoint(epoch, metric=latest_metric)
            if lr_scheduler is not None:
                lr_scheduler.step(epoch + 1, latest_metric)
            results.append(OrderedDict(epoch=epoch, train=train_metrics, validation=eval_metrics))
            if stop.requested(device):  # even after the last epoch: a stop request never exports or pushes
                raise TrainingStopped(stop.signum, os.path.join(output_dir, 'last.pth.tar') if output_dir else None)
    finally:
        stop.__exit__()
        if args.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    if best_metric is not None:
        _logger.info(f'*** Best metric: {best_metric} (epoch {best_epoch})')
    export_dir = None
    if output_dir is not None and results and (args.save_hf or args.push_to_hub):
        export_dir = _export(args, output_dir)
    summary = dict(output_dir=output_dir, export_dir=export_dir, best_metric=best_metric, best_epoch=best_epoch,
                   results=results, teacher=teacher_metrics, label_names=label_names, data_config=data_config, args=vars(args))
    if utils.is_primary(args):
        print(f'--result\n{json.dumps(results[-10:], indent=4)}')
    return summary


if __name__ == '__main__':
    main()
