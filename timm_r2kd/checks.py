"""Checks of train_r2kd's arguments, all made before any model is built or any data is read.

Each bad input gets one sentence naming the flag and the fix (``UsageError``, exit code 2). Values
that come from a YAML recipe are checked like command-line ones (argparse only checks the latter).
"""
import argparse
import logging
import math
import os
import re
from typing import Iterable

from timm.utils.checkpoint_saver import load_checkpoint_metadata

from .data import DEBIAN_FASHION_MNIST, IDX_DATASETS, find_idx_files, idx_prefix
from .hub import ExportError, check_repo_id
from .outputs import OutputError, check_export_target, check_run_folder, check_writable
from .views import IMAGE_VIEWS

_logger = logging.getLogger(__name__)

# dataset names timm's create_dataset knows after 'torch/'
_TORCH_DATASETS = ('cifar10', 'cifar100', 'mnist', 'fashion_mnist', 'kmnist', 'inaturalist', 'inat', 'places365',
                   'qmnist', 'imagenet', 'image_folder', 'folder')
_DATASET_PREFIXES = ('torch', 'hfds', 'hfids', 'tfds', 'wds')
# what a Hugging Face token looks like (user access tokens start with hf_)
_TOKEN_LIKE = re.compile(r'^hf_[A-Za-z0-9]{16,}$')
_ENV_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')

# dest -> (bound, bound itself allowed); None values mean "not given" and are skipped
_LOWER_BOUNDS = {
    'batch_size': (1, True), 'validation_batch_size': (1, True), 'epochs': (1, True),
    'train_num_samples': (1, True), 'val_num_samples': (1, True), 'num_classes': (1, True),
    'img_size': (1, True), 'in_chans': (1, True), 'workers': (0, True), 'grad_accum_steps': (1, True),
    'log_interval': (1, True), 'recovery_interval': (0, True), 'checkpoint_hist': (1, True),
    'val_interval': (1, True), 'lr': (0, False), 'lr_base': (0, False), 'lr_base_size': (1, True),
    'momentum': (0, True), 'weight_decay': (0, True), 'r2kd_temperature': (0, False),
    'kd_temperature': (0, False), 'r2kd_value_weight': (0, True), 'r2kd_rank_weight': (0, True),
    'r2kd_rank_smoothing': (0, False), 'task_loss_weight': (0, True), 'distill_loss_weight': (0, True),
    'hub_timeout': (0, False), 'smoothing': (0, True), 'mixup': (0, True), 'cutmix': (0, True),
    'reprob': (0, True), 'drop': (0, True), 'model_ema_decay': (0, True),
}


class UsageError(ValueError):
    """Bad command-line input; the message says what to change."""


def _flag(dest: str) -> str:
    return '--' + dest.replace('_', '-')


def _values(value) -> Iterable:
    return value if isinstance(value, (list, tuple)) else [value]


def check_parsed_values(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Choices and finite numbers for every option, whether it came from the command line or YAML."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if value is None or not action.option_strings:
            continue
        if action.choices is not None and any(v not in action.choices for v in _values(value)):
            raise UsageError(f"{action.option_strings[-1]} {value!r} is not one of "
                             f"{', '.join(map(str, action.choices))}.")
        if action.type in (int, float):
            converted = [_number(v, action.type, action.option_strings[-1]) for v in _values(value)]
            setattr(args, action.dest, converted if isinstance(value, (list, tuple)) else converted[0])


def _number(value, kind: type, flag: str):
    # YAML gives strings for some numbers (PyYAML reads 5e-4 as text): convert them as argparse would
    if isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            pass
    if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        raise UsageError(f'{flag} {value!r} is not a whole number.')
    if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)):
        raise UsageError(f'{flag} {value!r} is not a finite number.')
    return value


def check_ranges(args: argparse.Namespace) -> None:
    """Numbers inside the range where they mean something."""
    for dest, (low, inclusive) in _LOWER_BOUNDS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if value < low or (value == low and not inclusive):
            bound = f'at least {low}' if inclusive else f'above {low}'
            extra = ' (leave --lr out to derive it from --lr-base and the batch size)' if dest == 'lr' else ''
            raise UsageError(f'{_flag(dest)} must be {bound}, got {value}{extra}.')
    if not 0 <= args.prune_weight <= 1:
        raise UsageError(f'--prune-weight must be in [0, 1], got {args.prune_weight}.')
    if not 0 <= args.prune_rate < 1:
        raise UsageError(f'--prune-rate must be in [0, 1), got {args.prune_rate}.')
    if args.aug_splits and args.aug_splits < 2:
        raise UsageError('--aug-splits must be 0 or >= 2.')


def check_data(args: argparse.Namespace) -> None:
    """The dataset name is known and its folder exists (filling in Debian's Fashion-MNIST when none is named)."""
    if args.data:
        if args.data_dir or not os.path.isdir(args.data):
            raise UsageError(
                f"Unexpected argument '{args.data}': not an option's value (--eval-corruptions and the other switches "
                f"take none) and not a data folder. Pass the data folder as --data-dir DIR.")
        args.data_dir = args.data
    name = args.dataset or ''
    prefix, sep, rest = name.partition('/')
    if name and not sep:
        raise UsageError(f"--dataset '{name}' has no type prefix: use e.g. 'torch/{name}' (torchvision), "
                         f"'hfds/{name}' (Hugging Face), or leave it empty for an image folder.")
    if sep and prefix.lower() not in _DATASET_PREFIXES:
        raise UsageError(f"--dataset '{name}': unknown type '{prefix}'; use one of "
                         f"{', '.join(p + '/' for p in _DATASET_PREFIXES)} or leave it empty for an image folder.")
    key = rest.lower()
    if prefix.lower() == 'torch' and key not in _TORCH_DATASETS:
        raise UsageError(f"--dataset '{name}': unknown torchvision dataset '{rest}'; known: "
                         f"{', '.join(_TORCH_DATASETS)}.")
    if prefix.lower() == 'torch' and key in IDX_DATASETS:
        _check_idx_data(args, key)
    elif not name or (prefix.lower() == 'torch' and not args.dataset_download):
        if not args.data_dir:
            raise UsageError('No data: pass --data-dir DIR' + (
                ' (or --dataset-download to let torchvision fetch it there).' if name else
                ' with one sub-folder per class (or --dataset NAME).'))
        if not os.path.isdir(args.data_dir):
            raise UsageError(f"--data-dir '{args.data_dir}' does not exist" + (
                '; pass --dataset-download to let torchvision fetch it there.' if name else '.'))


def _check_idx_data(args: argparse.Namespace, key: str) -> None:
    folder_name = IDX_DATASETS[key][0]
    if not args.data_dir:
        if key == 'fashion_mnist' and find_idx_files(DEBIAN_FASHION_MNIST, 'train'):
            args.data_dir = DEBIAN_FASHION_MNIST  # recorded in args.yaml as the folder actually read
            _logger.info(f'No --data-dir given: reading Fashion-MNIST from {DEBIAN_FASHION_MNIST}.')
            return
        raise UsageError(f'--dataset {args.dataset} needs --data-dir DIR holding its idx files'
                         + (' (Debian: apt-get install dataset-fashion-mnist puts them in '
                            f'{DEBIAN_FASHION_MNIST})' if key == 'fashion_mnist' else '')
                         + ', or --dataset-download with a folder to download into.')
    if args.dataset_download:
        return
    for split in filter(None, (args.train_split, args.val_split)):
        if not find_idx_files(args.data_dir, split, folder_name):
            prefix = idx_prefix(split)
            raise UsageError(f"--data-dir '{args.data_dir}' holds no {args.dataset} idx files for split '{split}' "
                             f"({prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz). Point it at the "
                             f"folder holding them, or pass --dataset-download.")


def check_hub(args: argparse.Namespace) -> None:
    """Hub repo id, token variable and export folder, so a finished training never fails on them."""
    token_env = args.hub_token_env
    if token_env:
        if _TOKEN_LIKE.match(token_env) or not _ENV_NAME.match(token_env):
            # never echo or keep the value: it may be the secret itself
            args.hub_token_env = None
            raise UsageError('--hub-token-env takes the NAME of an environment variable holding the token (e.g. '
                             'HF_TOKEN), not the token itself. Export the token in a variable and pass its name; '
                             'nothing was written.')
        if args.push_to_hub and not os.environ.get(token_env):
            raise UsageError(f'--hub-token-env names {token_env}, but that environment variable is empty. Export '
                             f'it, or drop the flag to use the token saved by `hf auth login`.')
    try:
        if args.push_to_hub:
            check_repo_id(args.push_to_hub, '--push-to-hub')
        if args.save_hf:
            check_export_target(args.save_hf, overwrite=args.overwrite_export, flag='--save-hf')
    except (ExportError, OutputError) as e:
        raise UsageError(str(e)) from None


def check_outputs(args: argparse.Namespace) -> None:
    """A named run folder holding another run is refused unless resumed; a --resume file must be readable."""
    if args.resume:
        if not os.path.isfile(args.resume):
            raise UsageError(f"--resume checkpoint '{args.resume}' does not exist.")
        try:
            meta = load_checkpoint_metadata(args.resume)
        except Exception as e:  # truncated, not a checkpoint, or pickled objects refused
            raise UsageError(f"--resume checkpoint '{args.resume}' cannot be read ({type(e).__name__}): it may be "
                             f"truncated or not a training checkpoint. Resume from another one (last.pth.tar, "
                             f"checkpoint-N.pth.tar or a recovery file).") from None
        if not isinstance(meta, dict) or 'state_dict' not in meta:
            raise UsageError(f"--resume '{args.resume}' is not a training checkpoint (no state_dict); use "
                             f"--initial-checkpoint for plain weights.")
    try:
        if args.experiment:
            check_run_folder(os.path.join(args.output or './output/train', args.experiment), args.resume)
        else:  # a new timestamped folder under --output
            check_writable(args.output or './output/train', '--output')
    except OutputError as e:
        raise UsageError(str(e)) from None


def resolve_kd(args: argparse.Namespace) -> None:
    """Fill args.kd_loss / args.r2kd_view and check the distillation flags against each other."""
    if args.kd_loss is not None and args.kd_loss not in ('kl', 'dist', 'r2kd'):
        raise UsageError(f"--kd-loss/--kd-loss-type '{args.kd_loss}' is not one of kl, dist, r2kd.")
    if args.r2kd:
        if args.kd_loss not in (None, 'r2kd'):
            raise UsageError(f'--r2kd conflicts with --kd-loss {args.kd_loss}; pass one of them.')
        args.kd_loss = 'r2kd'
    if args.teacher is None:
        if args.kd_loss is not None or args.r2kd_view not in (None, 'none') or args.teacher_checkpoint:
            raise UsageError('Distillation needs a teacher: add --teacher NAME (and --teacher-checkpoint PATH '
                             'for weights you trained), or drop --r2kd/--kd-loss/--r2kd-view.')
        args.r2kd_view = 'none'
        return
    if args.kd_distill_type != 'logit':
        if args.kd_loss not in (None, 'kl'):
            raise UsageError(f'--kd-distill-type {args.kd_distill_type} runs timm\'s own task; it takes no '
                             f'--kd-loss {args.kd_loss}.')
        args.r2kd_view = 'none'
        return
    args.kd_loss = args.kd_loss or 'kl'
    if args.r2kd_view is None:
        args.r2kd_view = 'cutmix' if args.kd_loss == 'r2kd' else 'none'


def check_combinations(args: argparse.Namespace) -> None:
    """Flags that cannot work together."""
    if args.naflex_loader:
        raise UsageError('--naflex-loader is not supported by train_r2kd: distillation views need fixed-size '
                         'image batches. Use timm\'s train.py for NaFlex training.')
    if args.teacher is None:
        return
    if args.aug_splits:
        raise UsageError('--aug-splits cannot be combined with a teacher: the batch splits carry the R2KD '
                         'view. Use --r2kd-view augmix for an AugMix view.')
    if args.r2kd_view in IMAGE_VIEWS and (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax):
        raise UsageError(f'--r2kd-view {args.r2kd_view} cannot be combined with --mixup/--cutmix on the base '
                         f'view (both reshape the batch). Use --r2kd-view mixup/cutmix, or drop --mixup/--cutmix.')
    per_class = args.kd_loss in ('r2kd', 'dist') and args.kd_distill_type == 'logit'
    if per_class and args.batch_size < 2:
        raise UsageError(f'--batch-size {args.batch_size} is too small for --kd-loss {args.kd_loss}: its '
                         f'per-class term compares columns of the batch and needs at least 2 samples.')
    if args.r2kd_view in ('mixup', 'cutmix') and args.batch_size % 2:
        raise UsageError(f'--r2kd-view {args.r2kd_view} pairs samples: use an even --batch-size.')
    if args.teacher_fuse_bn and args.reference_parity:
        raise UsageError('--teacher-fuse-bn folds eval-mode BatchNorm; --reference-parity runs the pruned '
                         'teacher\'s BatchNorm in train mode. Drop one of them.')


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Every check above, in order; raises ``UsageError`` at the first bad input.

    Args:
        args: Parsed arguments (modified: distillation defaults and the data folder are filled in).
        parser: The parser that produced them (for choices and types).
    """
    check_hub(args)  # first: a token pasted as a flag value is dropped before anything else can log it
    check_parsed_values(args, parser)
    check_ranges(args)
    resolve_kd(args)
    check_combinations(args)
    check_data(args)
    check_outputs(args)
