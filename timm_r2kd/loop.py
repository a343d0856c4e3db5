""" The training and validation loops of timm's train.py, with a task that distils.

Follows ``train_one_epoch`` and ``validate`` of timm's train.py at huggingface/pytorch-image-models
commit a6da4da1740cd57eaf864803f9dd65683cbcf6d7 (Apache-2.0, Copyright 2020 Ross Wightman), laid
out as there (one argument per line) so that a ``diff`` against that file shows only what changed.
Each deviation is marked ``# r2kd:``. The NaFlex branch stays as upstream, although train_r2kd
refuses ``--naflex-loader`` (``naflex_mode`` is always False). Everything specific to R2KD lives in the task
(``timm_r2kd.task``), the views, and ``timm_r2kd.run_control`` (stop requests, resume positions).
"""
import logging
import math
import os
import sys
import time
from collections import OrderedDict
from contextlib import suppress
from datetime import timedelta
from typing import List, Tuple

import torch
import torchvision.utils
from timm import utils
from timm.task import ClassificationEvaluator, evaluation_sample_limit
from tqdm import tqdm

from .robustness import CORRUPTIONS, corrupt
from .run_control import NonFiniteLossError, TrainingStopped
from .sampling import next_position, seed_step

_logger = logging.getLogger('train_r2kd')


def train_one_epoch(
        epoch,
        model,
        loader,
        optimizer,
        args,
        task=None,
        device=torch.device('cuda'),
        lr_scheduler=None,
        saver=None,
        output_dir=None,
        amp_autocast=suppress,
        loss_scaler=None,
        model_dtype=None,
        mixup_fn=None,
        num_updates_total=None,
        naflex_mode=False,
        scheduled_batch_mode=False,
        batch_size_reference=None,
        start_batch=0,  # r2kd: resume mid-epoch
        random_erasing=None,  # r2kd: erasing in the step (see sampling.py), not in the prefetcher
        stop=None,  # r2kd: a StopSignal, checked after each update
):
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and loader.mixup_enabled:
            loader.mixup_enabled = False
        elif mixup_fn is not None:
            mixup_fn.mixup_enabled = False

    second_order = hasattr(optimizer, 'is_second_order') and optimizer.is_second_order
    has_no_sync = args.distributed and hasattr(task.get_trainable_module(), 'no_sync')
    update_time_m = utils.AverageMeter()
    data_time_m = utils.AverageMeter()
    losses_m = utils.AverageMeter()
    extra_m = OrderedDict()  # r2kd: the task's loss parts (task_loss, kd_loss, kd_value, kd_rank)

    task.train()  # r2kd: the task's train() keeps the teachers in eval mode

    accum_steps = args.grad_accum_steps
    last_accum_steps = len(loader) % accum_steps
    updates_per_epoch = (len(loader) + accum_steps - 1) // accum_steps
    num_updates = epoch * updates_per_epoch + start_batch // accum_steps  # r2kd: + updates already done
    last_batch_idx = len(loader) - 1
    last_batch_idx_to_accum = len(loader) - last_accum_steps

    # r2kd: a progress bar on a terminal; log lines pass above it
    progress = tqdm(total=updates_per_epoch, initial=start_batch // accum_steps, desc=f'Epoch {epoch}',
                    leave=False, dynamic_ncols=True,
                    disable=not utils.is_primary(args) or args.no_progress or not sys.stderr.isatty())
    epoch_start = data_start_time = update_start_time = time.time()
    optimizer.zero_grad()
    update_sample_count = 0
    for batch_idx, (input, target) in enumerate(loader, start=start_batch):  # r2kd: start
        last_batch = batch_idx == last_batch_idx
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        update_idx = batch_idx // accum_steps
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps

        # r2kd: image views arrive as splits without the prefetcher: lay them out as [clean; view]
        if isinstance(input, (tuple, list)):
            input = torch.cat(list(input))
            target = target.repeat(len(input) // target.shape[0])
        # r2kd: this step's draws (mixup, views, erasing, dropout) are a function of (seed, epoch, step)
        seed_step(args.seed, args.rank, epoch, batch_idx)
        if not args.prefetcher:
            input, target = input.to(device=device, dtype=model_dtype), target.to(device=device)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        elif random_erasing is not None:  # r2kd
            input = random_erasing(input)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)

        # multiply by accum steps to get equivalent for full update
        data_time_m.update(accum_steps * (time.time() - data_start_time))

        def _forward():
            with amp_autocast():
                # Task handles the complete forward pass and loss computation
                result = task(input, target)
                _loss = result['loss']

            if accum_steps > 1:
                _loss /= accum_steps
            return _loss, result

        def _backward(_loss):
            clip_parameters = None
            if args.clip_grad is not None:
                clip_parameters = task.get_clip_parameters(exclude_head='agc' in args.clip_mode)
            if loss_scaler is not None:
                loss_scaler(
                    _loss,
                    optimizer,
                    clip_grad=args.clip_grad,
                    clip_mode=args.clip_mode,
                    parameters=clip_parameters,
                    create_graph=second_order,
                    need_update=need_update,
                )
            else:
                _loss.backward(create_graph=second_order)
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(
                            clip_parameters,
                            value=args.clip_grad,
                            mode=args.clip_mode,
                        )
                    optimizer.step()

        if naflex_mode:
            assert isinstance(input, dict)
            batch_size = input['patches'].shape[0]
        else:
            batch_size = input.shape[0] // max(getattr(task, 'num_aug_splits', 0), 1)  # r2kd: the clean batch

        if naflex_mode or scheduled_batch_mode:
            loss_scale_mode = args.naflex_loss_scale if naflex_mode else args.variable_batch_loss_scale
            if not loss_scale_mode or loss_scale_mode == 'none':
                local_scale = 1.0
            else:
                local_scale = batch_size / batch_size_reference
                if loss_scale_mode == 'sqrt':
                    local_scale = local_scale ** 0.5
                elif loss_scale_mode != 'linear':
                    raise ValueError(f'Invalid variable batch loss scale mode: {loss_scale_mode}')

            if naflex_mode and args.distributed:
                # scale gradient btw distributed ranks, each one can have different batch size
                global_batch_size = utils.reduce_tensor(
                    torch.tensor(batch_size, device=device, dtype=torch.float32),
                    1 # SUM
                )
                dist_scale = args.world_size * batch_size / global_batch_size
            else:
                dist_scale = None
                global_batch_size = batch_size
                if args.distributed:
                    global_batch_size *= args.world_size

            if has_no_sync and not need_update:
                with task.no_sync():
                    loss, result = _forward()
                    scaled_loss = local_scale * loss
                    if dist_scale is not None:
                        scaled_loss *= dist_scale
                    _backward(scaled_loss)
            else:
                loss, result = _forward()
                scaled_loss = local_scale * loss
                if dist_scale is not None:
                    scaled_loss *= dist_scale
                _backward(scaled_loss)
        else:
            global_batch_size = batch_size
            if args.distributed:
                global_batch_size *= args.world_size

            if has_no_sync and not need_update:
                with task.no_sync():
                    loss, result = _forward()
                    _backward(loss)
            else:
                loss, result = _forward()
                _backward(loss)

        # r2kd: stop before anything of this epoch is saved once the loss is not finite
        loss_value = loss.item() * accum_steps
        if not math.isfinite(loss_value):
            parts = ', '.join(f'{k}={v.item():.4g}' for k, v in result.items()
                              if k != 'output' and torch.is_tensor(v) and v.ndim == 0)
            raise NonFiniteLossError(
                f'Loss is {loss_value} at epoch {epoch}, step {update_idx} (batch {batch_idx}) [{parts}]. Stopped '
                f'before saving anything from this epoch. Lower --lr, add --clip-grad, or check the data/teacher.')
        losses_m.update(loss_value, batch_size)
        for k, v in result.items():  # r2kd
            if k not in ('loss', 'output') and torch.is_tensor(v) and v.ndim == 0:
                extra_m.setdefault(k, utils.AverageMeter()).update(v.item(), batch_size)
        update_sample_count += global_batch_size

        if not need_update:
            data_start_time = time.time()
            continue

        num_updates += 1
        optimizer.zero_grad()
        task.update_ema(step=num_updates)

        if args.synchronize_step:
            if device.type == 'cuda':
                torch.cuda.synchronize()
            elif device.type == 'npu':
                torch.npu.synchronize()
        time_now = time.time()

        update_time_m.update(time.time() - update_start_time)
        update_start_time = time_now
        progress.update()  # r2kd
        progress.set_postfix_str(f'loss {losses_m.avg:.4g}', refresh=False)  # r2kd

        if update_idx % args.log_interval == 0 or last_batch:
            lrl = [param_group['lr'] for param_group in optimizer.param_groups]
            lr = sum(lrl) / len(lrl)

            loss_avg, loss_now = losses_m.avg, losses_m.val
            if args.distributed:
                # synchronize current step and avg loss, each process keeps its own running avg
                loss_avg = utils.reduce_tensor(loss.new([loss_avg]), args.world_size).item()
                loss_now = utils.reduce_tensor(loss.new([loss_now]), args.world_size).item()

            if utils.is_primary(args):
                # r2kd: the loss parts and the time left for the run
                parts = '  '.join(f'{k}: {m.val:#.3g}' for k, m in extra_m.items())
                remaining = num_updates_total - num_updates if num_updates_total else 0
                _logger.info(
                    f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} '
                    f'({100. * (update_idx + 1) / updates_per_epoch:>3.0f}%)]  '
                    f'Loss: {loss_now:#.3g} ({loss_avg:#.3g})  {parts}  '
                    f'Time: {update_time_m.val:.3f}s, {update_sample_count / update_time_m.val:>7.2f}/s  '
                    f'({update_time_m.avg:.3f}s, {update_sample_count / update_time_m.avg:>7.2f}/s)  '
                    f'LR: {lr:.3e}  '
                    f'Data: {data_time_m.val:.3f} ({data_time_m.avg:.3f})  '
                    f'ETA: {timedelta(seconds=int(remaining * update_time_m.avg))}'
                )

                if args.save_images and output_dir:
                    torchvision.utils.save_image(
                        input,
                        os.path.join(output_dir, 'train-batch-%d.jpg' % batch_idx),
                        padding=0,
                        normalize=True
                    )

        if saver is not None:  # r2kd: where a checkpoint saved now resumes
            saver.next_position = next_position(epoch, batch_idx + 1, len(loader))
        if saver is not None and args.recovery_interval and (
                (update_idx + 1) % args.recovery_interval == 0):
            saver.save_recovery(epoch, batch_idx=update_idx)

        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=losses_m.avg)

        # r2kd: a stop request (SIGINT/SIGTERM) ends the epoch here, saved; the last batch ends it anyway
        if stop is not None and not last_batch and stop.requested(device):
            progress.close()
            if saver is not None:
                saver.save_recovery(epoch, batch_idx=update_idx)
            raise TrainingStopped(stop.signum, saver.curr_recovery_file if saver is not None else None)

        update_sample_count = 0
        data_start_time = time.time()
        # end for

    progress.close()  # r2kd
    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()

    # r2kd: the loss parts too, and the epoch's time
    metrics = OrderedDict(loss=losses_m.avg)
    metrics.update((k, m.avg) for k, m in extra_m.items())
    if args.distributed:
        # synchronize avg loss, each process keeps its own running avg
        values = torch.tensor(list(metrics.values()), device=device, dtype=torch.float32)
        values = utils.reduce_tensor(values, args.world_size)
        metrics = OrderedDict(zip(metrics.keys(), values.tolist()))
    metrics['epoch_time'] = time.time() - epoch_start
    return metrics


def validate(
        model,
        loader,
        args,
        device=torch.device('cuda'),
        amp_autocast=suppress,
        model_dtype=None,
        log_suffix='',
        corruption=None,  # r2kd: evaluate under this corruption (robustness.py)
        severity=2,  # r2kd: of the corruption
        data_config=None,  # r2kd: the normalisation the corruption undoes and redoes
):
    # r2kd: timm's ClassificationEvaluator accumulates and reduces the metrics (and drops the
    # padding a distributed sampler adds), where timm's train.py keeps its own meters
    evaluator = ClassificationEvaluator(device=device, max_samples=evaluation_sample_limit(loader))
    batch_time_m = utils.AverageMeter()

    model.eval()

    end = time.time()
    last_idx = len(loader) - 1
    with torch.inference_mode():
        for batch_idx, (input, target) in enumerate(loader):
            last_batch = batch_idx == last_idx
            if not args.prefetcher:
                input = input.to(device=device, dtype=model_dtype)
                target = target.to(device=device)
            if corruption is not None:  # r2kd
                input = corrupt(input, corruption, data_config['mean'], data_config['std'], seed=batch_idx,
                                severity=severity)
            if args.channels_last:
                input = input.contiguous(memory_format=torch.channels_last)

            with amp_autocast():
                output = model(input)
                if isinstance(output, (tuple, list)):
                    output = output[0]

                # augmentation reduction
                reduce_factor = args.tta
                if reduce_factor > 1:
                    output = output.unfold(0, reduce_factor, reduce_factor).mean(dim=2)
                    target = target[0:target.size(0):reduce_factor]

            evaluator.update(output, target)

            batch_time_m.update(time.time() - end)
            end = time.time()
            if utils.is_primary(args) and corruption is None and (last_batch or batch_idx % args.log_interval == 0):
                log_name = 'Test' + log_suffix
                _logger.info(
                    f'{log_name}: [{batch_idx:>4d}/{last_idx}]  '
                    f'Time: {batch_time_m.val:.3f} ({batch_time_m.avg:.3f})'
                )

    metrics = evaluator.compute(distributed=args.distributed)
    if utils.is_primary(args):  # r2kd: the totals, once
        _logger.info(f'Test{log_suffix}: Loss {metrics["loss"]:.4f}  Acc@1 {metrics["top1"]:.3f}  '
                     f'Acc@5 {metrics["top5"]:.3f}')

    return metrics


# Validation sets up to this size are read once for all of --eval-corruptions' passes (twelve by default)
# and kept in memory (on the device the loader delivers to); larger ones are read again for each pass.
_CACHE_BYTES = 512 << 20


class _CachedBatches:
    """A loader's batches, kept: iterated like the loader, with its sampler (``evaluation_sample_limit``)."""

    def __init__(self, batches: List[Tuple[torch.Tensor, torch.Tensor]], sampler):
        self.batches = batches
        self.sampler = sampler

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def cache_batches(loader):
    """The loader's batches in memory, or the loader itself where they would take more than ``_CACHE_BYTES``.

    The evaluation transforms draw nothing at random and the sampler is sequential, so the kept batches
    are the ones each pass would read; a pass over them is the pass over the loader without the decoding.
    """
    try:
        num_batches = len(loader)
    except TypeError:  # an iterable dataset of unknown length
        num_batches = None
    batches, size = [], 0
    for input, target in loader:
        size += input.nelement() * input.element_size() + target.nelement() * target.element_size()
        # after the first batch, its size times their number foretells a set too large to keep
        if size > _CACHE_BYTES or (not batches and num_batches is not None and size * num_batches > _CACHE_BYTES):
            return loader
        batches.append((input, target))
    return _CachedBatches(batches, getattr(loader, 'sampler', None))


def validate_corruptions(
        model,
        loader,
        args,
        device,
        data_config,
        amp_autocast=suppress,
        model_dtype=None,
):
    """Top-1 under each corruption of ``robustness.CORRUPTIONS`` at each of ``args.corruption_severities``,
    and their mean (R2KD's robustness); keys ``top1_<corruption>_s<severity>`` and ``top1_corrupt_mean``."""
    results = OrderedDict()
    loader = cache_batches(loader)
    for name in CORRUPTIONS:
        for severity in args.corruption_severities:
            metrics = validate(model, loader, args, device, amp_autocast, model_dtype,
                               log_suffix=f' ({name}, severity {severity})', corruption=name,
                               severity=severity, data_config=data_config)
            results[f'top1_{name}_s{severity}'] = metrics['top1']
    results['top1_corrupt_mean'] = sum(results.values()) / len(results)
    if utils.is_primary(args):
        _logger.info('Robustness: ' + '  '.join(f'{k[5:]} {v:.2f}' for k, v in results.items()))
    return results
