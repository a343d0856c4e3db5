"""train_r2kd: timm's training with a teacher and R2KD, on one process or many (torchrun).

Without ``--teacher`` it trains a model as timm's train.py does (that is how teachers are made).
With ``--teacher NAME --r2kd`` the student learns from the teacher blended with its pruned copy,
on the clean batch and an augmented view. Outputs follow timm: args.yaml, summary.csv,
checkpoint-N / last / model_best (.pth.tar, timm's format), recovery checkpoints, EMA.

``_main`` runs the phases below in order; the epoch loops themselves are timm's (``loop.py``).
"""
import importlib
import json
import logging
import os
import shlex
import signal
import sys
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
import torch.nn as nn
from timm import utils
from timm.data import AugMixDataset, FastCollateMixup, Mixup, create_loader, resolve_data_config
from timm.data.random_erasing import RandomErasing
from timm.layers import convert_splitbn_model, convert_sync_batchnorm, set_fast_norm
from timm.loss import create_classification_loss
from timm.models import create_model, safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import (
    ClassificationTask, FeatureDistillationTask, TokenDistillationTask, load_task_ema_checkpoint,
    resume_task_checkpoint,
)
from timm.utils import NativeScaler
from timm.utils.checkpoint_saver import load_checkpoint_metadata
from tqdm.contrib.logging import logging_redirect_tqdm

from .args import parse_args
from .checks import UsageError
from .data import create_r2kd_dataset, dataset_label_names, use_pad_crop
from .hub import HubPushError, push_folder, resolve_token, save_hf
from .losses import create_distill_loss
from .loop import train_one_epoch, validate, validate_corruptions
from .run_control import NonFiniteLossError, RunSaver, StopSignal, TrainingStopped
from .sampling import SeededDataset, install_resumable_sampler
from .task import R2KDTask
from .teacher import TeacherError, build_teacher, check_teacher_accuracy, evaluate_teacher, match_channels
from .version import __version__
from .views import BATCH_VIEWS, IMAGE_VIEWS, ViewDataset, autoaug_policy, create_batch_view, create_image_view

_logger = logging.getLogger('train_r2kd')

try:
    import wandb
    has_wandb = True
except ImportError:
    has_wandb = False


@dataclass
class Precision:
    """Where and in which number format the run computes."""
    device: torch.device
    model_dtype: Optional[torch.dtype]
    amp_autocast: Callable
    loss_scaler: Optional[NativeScaler]


@dataclass
class Data:
    """The loaders and the augmentation pieces the training step applies itself."""
    loader_train: Any
    loader_eval: Any
    label_names: Optional[List[str]]
    mixup_fn: Optional[Mixup]
    mixup_active: bool
    random_erasing: Optional[RandomErasing]
    sampler: Any
    view_transform: Optional[Callable]
    task_splits: int
    num_aug_splits: int


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run training from command-line style arguments; returns a summary of the run.

    Exit codes (SystemExit): 2 bad input, 3 non-finite loss, 4 failed push, 128 + signal when stopped.

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
    precision = setup_device_and_precision(args)
    model, data_config = create_student(args, precision)
    data = create_data(args, data_config, precision)
    teacher, teacher_metrics = create_checked_teacher(args, data_config, data, precision)
    task = create_task(args, model, teacher, data, precision)
    optimizer, resume_epoch = create_optimizer_and_resume(args, task, precision)
    output_dir, saver = create_outputs(args, args_text, command, task, optimizer, precision, data_config,
                                       data.label_names, teacher_metrics)
    results, best_metric, best_epoch = fit(args, task, optimizer, data, precision, data_config, output_dir, saver,
                                           resume_epoch)
    export_dir = None
    if output_dir is not None and results and (args.save_hf or args.push_to_hub):
        export_dir = export(args, output_dir)
    summary = dict(output_dir=output_dir, export_dir=export_dir, best_metric=best_metric, best_epoch=best_epoch,
                   results=results, teacher=teacher_metrics, label_names=data.label_names, data_config=data_config,
                   args=vars(args))
    if utils.is_primary(args):
        print(f'--result\n{json.dumps(results[-10:], indent=4)}')
    return summary


def setup_device_and_precision(args) -> Precision:
    """Phase 1: device (and process group), number formats, seeds and global switches."""
    for module in args.device_modules or ():
        importlib.import_module(module)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        _logger.warning(f'--device {args.device} asked for but CUDA is not available: using the CPU.')
        args.device = 'cpu'
    device = utils.init_distributed_device(args)
    if args.distributed:
        _logger.info(f'Distributed training: process {args.rank} of {args.world_size}, device {args.device}.')
    else:
        _logger.info(f'Training with a single process on {args.device}.')
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
    amp_autocast, loss_scaler = suppress, None
    if args.amp:
        if model_dtype not in (None, torch.float32):
            raise UsageError('--amp needs a float32 model (drop --model-dtype).')
        if args.amp_dtype not in ('float16', 'bfloat16'):
            raise UsageError(f'--amp-dtype must be float16 or bfloat16, got {args.amp_dtype}.')
        amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if device.type == 'cuda' and amp_dtype == torch.float16:
            loss_scaler = NativeScaler(device=device.type)
    utils.random_seed(args.seed, args.rank)
    if args.fuser:
        utils.set_jit_fuser(args.fuser)
    if args.fast_norm:
        set_fast_norm()
    return Precision(device, model_dtype, amp_autocast, loss_scaler)


def create_student(args, precision: Precision):
    """Phase 2: the student as timm's train.py creates it, and the data config it trains on."""
    in_chans = args.in_chans if args.in_chans is not None else (args.input_size[0] if args.input_size else 3)
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
    if utils.is_primary(args):
        _logger.info(f'Model {safe_model_name(args.model)} created, param count: '
                     f'{sum(p.numel() for p in model.parameters())}')
    data_config = _student_data_config(args, model, in_chans)
    return _place_student(args, model, precision), data_config


def _student_data_config(args, model, in_chans: int) -> Dict[str, Any]:
    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))
    data_config['mean'] = match_channels(data_config['mean'], in_chans)
    data_config['std'] = match_channels(data_config['std'], in_chans)
    # recorded in every checkpoint's args, so a later run using it as a teacher normalises alike
    args.mean, args.std = list(data_config['mean']), list(data_config['std'])
    # the student's config records the pipeline it was trained on (used for teacher input and export)
    model.pretrained_cfg = dict(model.pretrained_cfg, **{k: v for k, v in data_config.items() if k in (
        'input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')}, num_classes=args.num_classes)
    return data_config


def _place_student(args, model, precision: Precision):
    if args.split_bn:
        num_aug_splits = args.aug_splits if args.aug_splits > 1 else 0
        if not (num_aug_splits > 1 or args.resplit):
            raise UsageError('--split-bn needs --aug-splits >= 2 or --resplit.')
        model = convert_splitbn_model(model, max(num_aug_splits, 2))
    model.to(device=precision.device, dtype=precision.model_dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = convert_sync_batchnorm(model)
    if args.torchscript:
        model = torch.jit.script(model)
    return model


def _datasets(args, in_chans: int):
    input_img_mode = args.input_img_mode or ('RGB' if in_chans == 3 else 'L')
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
    if label_names and args.num_classes < len(label_names):
        raise UsageError(f'--num-classes {args.num_classes} is below the {len(label_names)} classes of the '
                         f'dataset ({", ".join(map(str, label_names[:3]))}, ...): set --num-classes '
                         f'{len(label_names)}.')
    return dataset_train, dataset_eval, label_names


def create_data(args, data_config, precision: Precision) -> Data:
    """Phase 3: datasets, the R2KD view (per image in the loader, or per batch in the task), loaders."""
    in_chans = data_config['input_size'][0]
    dataset_train, dataset_eval, label_names = _datasets(args, in_chans)
    num_aug_splits = args.aug_splits if args.aug_splits > 1 else 0
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    mixup_active = args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None
    collate_fn, mixup_fn = None, None
    if mixup_active:
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            if num_aug_splits:
                raise UsageError('--mixup/--cutmix with --aug-splits needs --no-prefetcher.')
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)

    view_transform, loader_splits, task_splits = None, num_aug_splits, 0
    if args.r2kd_view in IMAGE_VIEWS:
        dataset_train = ViewDataset(dataset_train, create_image_view(
            args.r2kd_view, data_config['input_size'][-1], data_config['mean'], train_interpolation, in_chans,
            autoaug_policy=autoaug_policy(args.dataset, args.r2kd_autoaug_policy)))
        loader_splits = task_splits = 2
    elif num_aug_splits > 1:
        dataset_train = AugMixDataset(dataset_train, num_splits=num_aug_splits)
    elif args.r2kd_view in BATCH_VIEWS:
        view_transform = create_batch_view(args.r2kd_view, args.num_classes, per_sample=not args.reference_parity)
    if not isinstance(dataset_train, torch.utils.data.IterableDataset):
        dataset_train = SeededDataset(dataset_train, args.seed)  # augmentation draws per (seed, epoch, index)
    random_erasing = None
    if args.prefetcher and args.reprob > 0:
        # timm's prefetcher erases one batch ahead of the step; erase in the step, after its reseed
        random_erasing = RandomErasing(
            probability=args.reprob, mode=args.remode, max_count=args.recount,
            num_splits=(loader_splits or 2) if args.resplit else 0, device=precision.device)

    loader_train, loader_eval = _loaders(args, data_config, precision, dataset_train, dataset_eval, loader_splits,
                                         train_interpolation, collate_fn, random_erasing is not None)
    sampler = install_resumable_sampler(loader_train, args.seed, args.world_size, args.rank)
    if sampler is None and utils.is_primary(args):
        _logger.warning('This loader (iterable dataset, --aug-repeats, scheduled sizes or --use-multi-epochs-loader) '
                        'keeps timm\'s sample order: a resumed run will not repeat the uninterrupted one exactly.')
    return Data(loader_train, loader_eval, label_names, mixup_fn, mixup_active, random_erasing, sampler,
                view_transform, task_splits, num_aug_splits)


def _loaders(args, data_config, precision, dataset_train, dataset_eval, loader_splits, train_interpolation,
             collate_fn, erase_in_step: bool):
    common_loader_kwargs = dict(mean=data_config['mean'], std=data_config['std'], pin_memory=args.pin_mem,
                                img_dtype=precision.model_dtype or torch.float32, device=precision.device,
                                distributed=args.distributed, use_prefetcher=args.prefetcher)
    loader_train = create_loader(
        dataset_train,
        input_size=data_config['input_size'],
        batch_size=args.batch_size,
        is_training=True,
        no_aug=args.no_aug,
        re_prob=0. if erase_in_step else args.reprob,
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
    return loader_train, loader_eval


def create_checked_teacher(args, data_config, data: Data, precision: Precision):
    """Phase 4: the teacher (pruned for R2KD), evaluated on the validation set and stopped if near chance
    (unless ``--no-teacher-eval``)."""
    if args.teacher is None:
        return None, {}
    teacher = build_teacher(args, data_config, precision.device, precision.model_dtype)
    metrics: Dict[str, Dict[str, float]] = {}
    if data.loader_eval is not None and not args.no_teacher_eval:
        metrics = evaluate_teacher(teacher, data.loader_eval, args, precision.device, data_config,
                                   precision.amp_autocast, precision.model_dtype)
        check_teacher_accuracy(metrics['teacher']['top1'], args.num_classes, args.allow_weak_teacher)
    return teacher, metrics


def create_task(args, model, teacher, data: Data, precision: Precision):
    """Phase 5: the training task: timm's classification or distillation task, or R2KD's."""
    verbose = utils.is_primary(args)
    loss_type = 'jsd' if args.jsd_loss else ('bce' if args.bce_loss else 'ce')
    if args.jsd_loss and data.num_aug_splits < 2:
        raise UsageError('--jsd-loss needs --aug-splits >= 2.')
    bce = dict(bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum,
               pos_weight=args.bce_pos_weight) if args.bce_loss else {}
    criterion = create_classification_loss(
        loss_type, smoothing=args.smoothing, soft_targets=data.mixup_active, jsd_splits=data.num_aug_splits,
        **bce).to(device=precision.device)
    common = dict(criterion=criterion, device=precision.device, dtype=precision.model_dtype, verbose=verbose)
    if teacher is None:
        return ClassificationTask(model=model, **common)
    weights = dict(distill_loss_weight=args.distill_loss_weight, task_loss_weight=args.task_loss_weight)
    if args.kd_distill_type == 'feature':
        return FeatureDistillationTask(
            student_model=model, teacher_model=teacher, student_feature_dim=args.kd_student_feature_dim,
            teacher_feature_dim=args.kd_teacher_feature_dim, **weights, **common)
    if args.kd_distill_type == 'token':
        return TokenDistillationTask(
            student_model=model, teacher_model=teacher, distill_type=args.kd_token_distill_type,
            temperature=args.kd_temperature, **weights, **common)
    if args.kd_loss == 'r2kd':
        loss = create_distill_loss(
            'r2kd', temperature=args.r2kd_temperature, value_weight=args.r2kd_value_weight,
            rank_weight=args.r2kd_rank_weight, rank_mode=args.r2kd_rank, rank_smoothing=args.r2kd_rank_smoothing,
            value_metric=args.r2kd_value_metric, reference_parity=args.reference_parity)
    else:
        loss = create_distill_loss(args.kd_loss, temperature=args.kd_temperature)
    return R2KDTask(
        model, teacher, distill_loss=loss, view_transform=data.view_transform, num_aug_splits=data.task_splits,
        batch_views={'auto': None, 'batched': True, 'split': False}[args.teacher_views],
        reference_parity=args.reference_parity, **weights, **common)


def create_optimizer_and_resume(args, task, precision: Precision):
    """Phase 6: learning rate, optimizer, resumed state, EMA, compilation and DDP; returns the resume epoch."""
    if args.lr is None:
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
    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    if utils.is_primary(args):
        _logger.info(f'Created {type(optimizer).__name__} ({args.opt}) optimizer, lr {args.lr}.')
    resume_epoch = None
    if args.resume:
        resume_epoch = resume_task_checkpoint(
            task, args.resume, optimizer=None if args.no_resume_opt else optimizer,
            loss_scaler=None if args.no_resume_opt else precision.loss_scaler, log_info=utils.is_primary(args))
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
        device = precision.device
        task.prepare_distributed(device_ids=[device] if device.type == 'cuda' else None,
                                 broadcast_buffers=not args.no_ddp_bb)
    return optimizer, resume_epoch


def create_outputs(args, args_text, command, task, optimizer, precision, data_config, label_names, teacher_metrics):
    """Phase 7: the run folder (primary process), its checkpoint saver, args.yaml and run.json."""
    if not utils.is_primary(args):
        return None, None
    exp_name = args.experiment or '-'.join([
        datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(data_config['input_size'][-1])])
    output_dir = utils.get_outdir(args.output if args.output else './output/train', exp_name)
    decreasing = (args.eval_metric if args.val_split else 'loss') == 'loss'
    saver = RunSaver(
        model=task.get_trainable_module(), optimizer=optimizer, args=args, amp_scaler=precision.loss_scaler,
        checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=decreasing,
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
    return output_dir, saver


def _start_position(args, resume_epoch, lr_scheduler, updates_per_epoch):
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    start_batch = 0
    if args.resume and args.start_epoch is None:
        # where the checkpoint says training continues (mid-epoch for a recovery checkpoint)
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
        _logger.info(f'Resuming epoch {start_epoch} at batch {start_batch}.')
    return start_epoch, start_batch


def _evaluate_epoch(args, task, data: Data, precision: Precision, data_config):
    p = precision
    eval_metrics = validate(task.get_eval_model(), data.loader_eval, args, p.device, p.amp_autocast, p.model_dtype)
    if args.eval_corruptions:
        eval_metrics.update(validate_corruptions(
            task.get_eval_model(), data.loader_eval, args, p.device, data_config, p.amp_autocast, p.model_dtype))
    ema_model = task.get_trainable_module(ema=True)
    if ema_model is not None and not args.model_ema_force_cpu:
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(ema_model, args.world_size, args.dist_bn == 'reduce')
        ema_metrics = validate(task.get_eval_model(ema=True), data.loader_eval, args, p.device, p.amp_autocast,
                               p.model_dtype, log_suffix=' (EMA)')
        eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
    return eval_metrics


def fit(args, task, optimizer, data: Data, precision: Precision, data_config, output_dir, saver, resume_epoch):
    """Phase 8: the epochs: train, evaluate, record, checkpoint; a stop signal ends it at a saved point."""
    eval_metric = args.eval_metric if data.loader_eval is not None else 'loss'
    updates_per_epoch = (len(data.loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=eval_metric == 'loss'),
        updates_per_epoch=updates_per_epoch)
    start_epoch, start_batch = _start_position(args, resume_epoch, lr_scheduler, updates_per_epoch)
    results = []
    best_metric, best_epoch = (saver.best_metric, saver.best_epoch) if saver is not None else (None, None)
    p = precision
    try:
        with StopSignal(distributed=args.distributed) as stop, logging_redirect_tqdm():
            for epoch in range(start_epoch, num_epochs):
                first = start_batch if epoch == start_epoch else 0
                _set_loader_epoch(data, epoch, first)
                train_metrics = train_one_epoch(
                    epoch, task.get_trainable_module(), data.loader_train, optimizer, args, task=task,
                    device=p.device, lr_scheduler=lr_scheduler, saver=saver, output_dir=output_dir,
                    amp_autocast=p.amp_autocast, loss_scaler=p.loss_scaler, model_dtype=p.model_dtype,
                    mixup_fn=data.mixup_fn, num_updates_total=num_epochs * updates_per_epoch,
                    scheduled_batch_mode=args.train_img_sizes is not None, batch_size_reference=args.batch_size,
                    start_batch=first, random_erasing=data.random_erasing, stop=stop)
                if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                    utils.distribute_bn(task.get_trainable_module(), args.world_size, args.dist_bn == 'reduce')
                if (epoch + 1) % args.val_interval != 0 and epoch + 1 != num_epochs:
                    if lr_scheduler is not None:
                        lr_scheduler.step(epoch + 1, metric=None)
                    if stop.requested(p.device):
                        if saver is not None:
                            saver.next_position = (epoch + 1, 0)
                            saver.save_recovery(epoch, batch_idx=updates_per_epoch - 1)
                        raise TrainingStopped(stop.signum, saver.curr_recovery_file if saver is not None else None)
                    continue
                eval_metrics = _evaluate_epoch(args, task, data, p, data_config) if data.loader_eval else None
                if output_dir is not None:
                    lrs = [group['lr'] for group in optimizer.param_groups]
                    utils.update_summary(
                        epoch, train_metrics, eval_metrics, filename=os.path.join(output_dir, 'summary.csv'),
                        lr=sum(lrs) / len(lrs), write_header=None, log_wandb=args.log_wandb and has_wandb)
                latest_metric = (eval_metrics or train_metrics)[eval_metric]
                if saver is not None:
                    saver.next_position = (epoch + 1, 0)
                    best_metric, best_epoch = saver.save_checkpoint(epoch, metric=latest_metric)
                if lr_scheduler is not None:
                    lr_scheduler.step(epoch + 1, latest_metric)
                results.append(OrderedDict(epoch=epoch, train=train_metrics, validation=eval_metrics))
                if stop.requested(p.device):  # even after the last epoch: a stop request never exports or pushes
                    raise TrainingStopped(stop.signum, os.path.join(output_dir, 'last.pth.tar') if output_dir else None)
    finally:
        if args.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if best_metric is not None:
        _logger.info(f'*** Best metric: {best_metric} (epoch {best_epoch})')
    return results, best_metric, best_epoch


def _set_loader_epoch(data: Data, epoch: int, start_batch: int) -> None:
    loader = data.loader_train
    if hasattr(loader.dataset, 'set_epoch'):
        loader.dataset.set_epoch(epoch)
    if data.sampler is not None:
        data.sampler.set_epoch(epoch)
        data.sampler.set_start(start_batch)
    elif hasattr(loader.batch_sampler, 'set_epoch'):
        loader.batch_sampler.set_epoch(epoch)
    elif hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)


def export(args, output_dir: str) -> str:
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


if __name__ == '__main__':
    main()
