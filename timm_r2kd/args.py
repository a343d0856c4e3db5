"""Command line of train_r2kd.py: every flag of timm's train.py, plus the teacher and R2KD.

timm's flags keep timm's names, meanings and defaults, so an existing timm recipe (flags or a YAML
file for ``-c``) runs unchanged; the distillation flags are added in their own group.
"""
import argparse
import logging
from typing import List, Optional, Tuple

import yaml
from timm import utils

from .views import VIEW_NAMES

_logger = logging.getLogger(__name__)


def _dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('data', nargs='?', metavar='DIR', const=None,
                        help='path to dataset (positional is deprecated, use --data-dir)')
    g = parser.add_argument_group('Dataset parameters')
    g.add_argument('--data-dir', metavar='DIR', help='path to dataset (root dir)')
    g.add_argument('--dataset', metavar='NAME', default='',
                   help='dataset type + name ("<type>/<name>"), e.g. torch/fashion_mnist; '
                        'ImageFolder/ImageTar if empty')
    g.add_argument('--train-split', metavar='NAME', default='train', help='dataset train split')
    g.add_argument('--val-split', metavar='NAME', default='validation', help='dataset validation split')
    g.add_argument('--train-num-samples', default=None, type=int, metavar='N',
                   help='number of train samples (iterable datasets), or the first N of a map-style dataset')
    g.add_argument('--val-num-samples', default=None, type=int, metavar='N',
                   help='number of validation samples, as --train-num-samples')
    g.add_argument('--dataset-download', action='store_true', default=False,
                   help='allow download of torch/ and tfds/ datasets that support it')
    g.add_argument('--class-map', default='', type=str, metavar='FILENAME', help='class to idx mapping file')
    g.add_argument('--input-img-mode', default=None, type=str, help='dataset image conversion mode')
    g.add_argument('--input-key', default=None, type=str, help='dataset key for input images')
    g.add_argument('--target-key', default=None, type=str, help='dataset key for target labels')
    g.add_argument('--dataset-trust-remote-code', action='store_true', default=False,
                   help="allow a Hugging Face dataset to run code from the dataset's repo")


def _model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Model parameters')
    g.add_argument('--model', default='resnet50', type=str, metavar='MODEL', help='student model name')
    g.add_argument('--pretrained', action='store_true', default=False, help='start from pretrained weights')
    g.add_argument('--pretrained-path', default=None, type=str,
                   help='load this checkpoint as the pretrained weights (with head adaptation)')
    g.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                   help='load this checkpoint into the model after creation')
    g.add_argument('--resume', default='', type=str, metavar='PATH',
                   help='resume model, optimizer and epoch from a training checkpoint')
    g.add_argument('--no-resume-opt', action='store_true', default=False,
                   help='do not resume optimizer state with --resume')
    g.add_argument('--num-classes', type=int, default=None, metavar='N', help='number of classes (model default)')
    g.add_argument('--gp', default=None, type=str, metavar='POOL', help='global pool type (model default)')
    g.add_argument('--img-size', type=int, default=None, metavar='N', help='image size (model default)')
    g.add_argument('--in-chans', type=int, default=None, metavar='N', help='image input channels (default 3)')
    g.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N',
                   help='input dimensions (c h w), model default if empty')
    g.add_argument('--crop-pct', default=None, type=float, metavar='N', help='validation center crop percent')
    g.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='override mean pixel value')
    g.add_argument('--std', type=float, nargs='+', default=None, metavar='STD', help='override pixel std')
    g.add_argument('--interpolation', default='', type=str, metavar='NAME', help='resize interpolation')
    g.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='training batch size')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N',
                   help='validation batch size (default: --batch-size)')
    g.add_argument('--channels-last', action='store_true', default=False, help='use channels_last memory layout')
    g.add_argument('--fuser', default='', type=str, help="jit fuser ('', 'te', 'old', 'nvfuser')")
    g.add_argument('--grad-accum-steps', type=int, default=1, metavar='N', help='gradient accumulation steps')
    g.add_argument('--grad-checkpointing', action='store_true', default=False,
                   help='gradient checkpointing through model blocks/stages')
    g.add_argument('--fast-norm', default=False, action='store_true', help='experimental fast-norm')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=utils.ParseKwargs)
    g.add_argument('--head-init-scale', default=None, type=float, help='head initialization scale')
    g.add_argument('--head-init-bias', default=None, type=float, help='head initialization bias value')
    g.add_argument('--torchcompile-mode', type=str, default=None, help='torch.compile mode')
    scripting = g.add_mutually_exclusive_group()
    scripting.add_argument('--torchscript', dest='torchscript', action='store_true',
                           help='torch.jit.script the student')
    scripting.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor',
                           help='compile student and teachers with torch.compile (backend, default inductor)')


def _device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Device parameters')
    g.add_argument('--device', default='cuda', type=str,
                   help='device to use (falls back to cpu, with a warning, when CUDA is absent)')
    g.add_argument('--amp', action='store_true', default=False, help='mixed precision training')
    g.add_argument('--amp-dtype', default='float16', type=str, help='AMP dtype (float16 or bfloat16)')
    g.add_argument('--model-dtype', default=None, type=str, help='model dtype override (non-AMP)')
    g.add_argument('--no-ddp-bb', action='store_true', default=False, help='no DDP buffer broadcast')
    g.add_argument('--synchronize-step', action='store_true', default=False,
                   help='synchronize the device at the end of each step')
    g.add_argument('--local_rank', '--local-rank', dest='local_rank', default=0, type=int)
    g.add_argument('--device-modules', default=None, type=str, nargs='+',
                   help='python imports for device backend modules')


def _optimizer_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Optimizer parameters')
    g.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER', help='optimizer')
    g.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON', help='optimizer epsilon')
    g.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA', help='optimizer betas')
    g.add_argument('--momentum', type=float, default=0.9, metavar='M', help='optimizer momentum')
    g.add_argument('--weight-decay', type=float, default=2e-5, help='weight decay')
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM', help='clip gradient norm')
    g.add_argument('--clip-mode', type=str, default='norm', help='clipping mode ("norm", "value", "agc")')
    g.add_argument('--layer-decay', type=float, default=None, help='layer-wise learning rate decay')
    g.add_argument('--layer-decay-min-scale', type=float, default=0, help='layer-wise lr decay minimum scale')
    g.add_argument('--layer-decay-no-opt-scale', type=float, default=None,
                   help='layer-wise lr decay no-optimization scale')
    g.add_argument('--opt-kwargs', nargs='*', default={}, action=utils.ParseKwargs)


def _schedule_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Learning rate schedule parameters')
    g.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER', help='LR scheduler')
    g.add_argument('--sched-on-updates', action='store_true', default=False,
                   help='step the LR schedule per update instead of per epoch')
    g.add_argument('--lr', type=float, default=None, metavar='LR', help='learning rate, overrides --lr-base')
    g.add_argument('--lr-base', type=float, default=0.1, metavar='LR',
                   help='base learning rate: lr = lr_base * global_batch_size / base_size')
    g.add_argument('--lr-base-size', type=int, default=256, metavar='DIV', help='base learning rate batch size')
    g.add_argument('--lr-base-scale', type=str, default='', metavar='SCALE',
                   help='lr vs batch size scaling ("linear", "sqrt"; by optimizer if empty)')
    g.add_argument('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct',
                   help='learning rate noise on/off epoch percentages')
    g.add_argument('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT', help='lr noise limit percent')
    g.add_argument('--lr-noise-std', type=float, default=1.0, metavar='STDDEV', help='lr noise std-dev')
    g.add_argument('--lr-cycle-mul', type=float, default=1.0, metavar='MULT', help='lr cycle length multiplier')
    g.add_argument('--lr-cycle-decay', type=float, default=0.5, metavar='MULT', help='lr decay per cycle')
    g.add_argument('--lr-cycle-limit', type=int, default=1, metavar='N', help='lr cycle limit')
    g.add_argument('--lr-k-decay', type=float, default=1.0, help='lr k-decay for cosine/poly')
    g.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR', help='warmup learning rate')
    g.add_argument('--min-lr', type=float, default=0, metavar='LR', help='lower lr bound for cyclic schedulers')
    g.add_argument('--epochs', type=int, default=300, metavar='N', help='number of epochs')
    g.add_argument('--epoch-repeats', type=float, default=0., metavar='N', help='epoch repeat multiplier')
    g.add_argument('--start-epoch', default=None, type=int, metavar='N', help='manual start epoch')
    g.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES',
                   help='decay epochs for multistep lr')
    g.add_argument('--decay-epochs', type=float, default=90, metavar='N', help='epoch interval to decay LR')
    g.add_argument('--warmup-epochs', type=int, default=5, metavar='N', help='LR warmup epochs')
    g.add_argument('--warmup-prefix', action='store_true', default=False,
                   help='exclude warmup period from the decay schedule')
    g.add_argument('--cooldown-epochs', type=int, default=0, metavar='N', help='cooldown epochs at min_lr')
    g.add_argument('--patience-epochs', type=int, default=10, metavar='N', help='patience for plateau LR')
    g.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE', help='LR decay rate')


def _augment_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Augmentation and regularization parameters')
    g.add_argument('--no-aug', action='store_true', default=False, help='disable all training augmentation')
    g.add_argument('--train-crop-mode', type=str, default=None, help='training crop mode')
    g.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT',
                   help='random resize scale')
    g.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO',
                   help='random resize aspect ratio')
    g.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    g.add_argument('--vflip', type=float, default=0., help='vertical flip probability')
    g.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT', help='color jitter factor')
    g.add_argument('--color-jitter-prob', type=float, default=None, metavar='PCT',
                   help='probability of any color jitter')
    g.add_argument('--grayscale-prob', type=float, default=None, metavar='PCT', help='random grayscale probability')
    g.add_argument('--gaussian-blur-prob', type=float, default=None, metavar='PCT', help='gaussian blur probability')
    g.add_argument('--aa', type=str, default=None, metavar='NAME', help='AutoAugment policy for the base view')
    g.add_argument('--aug-repeats', type=float, default=0, help='augmentation repetitions (distributed)')
    g.add_argument('--aug-splits', type=int, default=0, help='augmentation splits (0 or >= 2)')
    g.add_argument('--jsd-loss', action='store_true', default=False, help='Jensen-Shannon + CE loss (aug splits)')
    g.add_argument('--bce-loss', action='store_true', default=False, help='BCE loss')
    g.add_argument('--bce-sum', action='store_true', default=False, help='sum over classes with BCE loss')
    g.add_argument('--bce-target-thresh', type=float, default=None, help='binarize BCE targets at this threshold')
    g.add_argument('--bce-pos-weight', type=float, default=None, help='BCE positive weighting')
    g.add_argument('--reprob', type=float, default=0., metavar='PCT', help='random erase probability')
    g.add_argument('--remode', type=str, default='pixel', help='random erase mode')
    g.add_argument('--recount', type=int, default=1, help='random erase count')
    g.add_argument('--resplit', action='store_true', default=False,
                   help='do not random erase the first (clean) augmentation split')
    g.add_argument('--mixup', type=float, default=0.0, help='mixup alpha, enabled if > 0')
    g.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha, enabled if > 0')
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None, help='cutmix min/max ratio')
    g.add_argument('--mixup-prob', type=float, default=1.0, help='probability of mixup or cutmix')
    g.add_argument('--mixup-switch-prob', type=float, default=0.5, help='probability of switching to cutmix')
    g.add_argument('--mixup-mode', type=str, default='batch', help='mixup mode: "batch", "pair" or "elem"')
    g.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N', help='turn mixup off after this epoch')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    g.add_argument('--train-interpolation', type=str, default='random', help='training interpolation')
    g.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout rate')
    g.add_argument('--drop-connect', type=float, default=None, metavar='PCT',
                   help='drop connect rate (deprecated, use --drop-path)')
    g.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='drop path rate')
    g.add_argument('--drop-block', type=float, default=None, metavar='PCT', help='drop block rate')
    g = parser.add_argument_group('Batch norm parameters')
    g.add_argument('--bn-momentum', type=float, default=None, help='BatchNorm momentum override')
    g.add_argument('--bn-eps', type=float, default=None, help='BatchNorm epsilon override')
    g.add_argument('--sync-bn', action='store_true', help='synchronized BatchNorm (distributed)')
    g.add_argument('--dist-bn', type=str, default='reduce',
                   help='distribute BatchNorm stats after each epoch ("broadcast", "reduce", or "")')
    g.add_argument('--split-bn', action='store_true', help='separate BN layers per augmentation split')
    g = parser.add_argument_group('Model exponential moving average parameters')
    g.add_argument('--model-ema', action='store_true', default=False, help='track an EMA of the weights')
    g.add_argument('--model-ema-force-cpu', action='store_true', default=False,
                   help='keep the EMA on CPU (rank 0 only), no EMA validation')
    g.add_argument('--model-ema-decay', type=float, default=0.9998, help='EMA decay')
    g.add_argument('--model-ema-warmup', action='store_true', help='EMA decay warmup')


def _misc_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Miscellaneous parameters')
    g.add_argument('--seed', type=int, default=42, metavar='S', help='random seed')
    g.add_argument('--worker-seeding', type=str, default='all', help='worker seed mode')
    g.add_argument('--log-interval', type=int, default=50, metavar='N', help='batches between log lines')
    g.add_argument('--val-interval', type=int, default=1, metavar='N', help='epochs between validations')
    g.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                   help='batches between recovery checkpoints')
    g.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='number of checkpoints to keep')
    g.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data loading workers')
    g.add_argument('--save-images', action='store_true', default=False, help='save input batches for debugging')
    g.add_argument('--pin-mem', action='store_true', default=False, help='pin CPU memory in the DataLoader')
    g.add_argument('--no-prefetcher', action='store_true', default=False, help='disable the fast prefetcher')
    g.add_argument('--output', default='', type=str, metavar='PATH', help='output folder (default ./output/train)')
    g.add_argument('--experiment', default='', type=str, metavar='NAME', help='experiment sub-folder name')
    g.add_argument('--eval-metric', default='top1', type=str, metavar='EVAL_METRIC', help='best-checkpoint metric')
    g.add_argument('--tta', type=int, default=0, metavar='N', help='test-time augmentation factor')
    g.add_argument('--use-multi-epochs-loader', action='store_true', default=False,
                   help='multi-epochs loader (faster epoch starts)')
    g.add_argument('--log-wandb', action='store_true', default=False, help='log to wandb (needs wandb)')
    g.add_argument('--wandb-project', default=None, type=str, help='wandb project name')
    g.add_argument('--wandb-tags', default=[], type=str, nargs='+', help='wandb tags')
    g.add_argument('--wandb-resume-id', default='', type=str, metavar='ID', help='wandb run id to resume')
    g = parser.add_argument_group('Scheduled resolution and NaFlex loaders')
    g.add_argument('--train-img-sizes', type=int, nargs='+', default=None,
                   help='per-batch square image sizes for scheduled resolution training')
    g.add_argument('--train-batch-sizes', type=int, nargs='+', default=None,
                   help='batch size for each --train-img-sizes choice')
    g.add_argument('--train-size-probs', type=float, nargs='+', default=None,
                   help='sampling weights for --train-img-sizes')
    g.add_argument('--train-size-schedule', type=str, default='constant', choices=('constant', 'progressive'),
                   help='resolution choice schedule')
    g.add_argument('--train-size-schedule-spread', type=float, default=0.65, help='progressive schedule spread')
    g.add_argument('--train-size-random-mix', type=float, default=0.1,
                   help='fraction of random choices mixed into a progressive schedule')
    g.add_argument('--train-batches-per-epoch', '--train-steps-per-epoch', type=int, default=None,
                   help='fixed loader batches per epoch')
    g.add_argument('--variable-batch-loss-scale', default='none', type=str, choices=('none', 'sqrt', 'linear'),
                   help='scale gradients relative to the average scheduled batch size')
    g.add_argument('--naflex-loader', action='store_true', default=False,
                   help='NaFlex loader (not supported by train_r2kd)')
    g.add_argument('--naflex-train-seq-lens', type=int, nargs='+', default=[128, 256, 576, 784, 1024])
    g.add_argument('--naflex-max-seq-len', type=int, default=576)
    g.add_argument('--naflex-patch-sizes', type=int, nargs='+', default=None)
    g.add_argument('--naflex-patch-size-probs', type=float, nargs='+', default=None)
    g.add_argument('--naflex-loss-scale', default='linear', type=str, choices=('none', 'sqrt', 'linear'))
    g.add_argument('--naflex-patchify-channels-first', action='store_true', default=False)


def _timm_kd_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("timm's knowledge distillation parameters (aliases)")
    g.add_argument('--kd-model-name', dest='teacher', default=None, type=str, help='alias of --teacher')
    g.add_argument('--kd-distill-type', default='logit', type=str, choices=['logit', 'feature', 'token'],
                   help="timm's distillation type; 'feature' and 'token' run timm's own tasks")
    g.add_argument('--kd-loss-type', dest='kd_loss', default=None, type=str, help='alias of --kd-loss')
    g.add_argument('--distill-loss-weight', default=None, type=float,
                   help='weight of the distillation loss (default 1.0)')
    g.add_argument('--task-loss-weight', '--kd-task-weight', dest='task_loss_weight', default=None, type=float,
                   help='weight of the task (classification) loss; alone, distill weight = 1 - this')
    g.add_argument('--kd-temperature', default=4.0, type=float,
                   help='temperature of kl/dist losses (R2KD: --r2kd-temperature)')
    g.add_argument('--kd-student-feature-dim', default=None, type=int, help='student feature dim (feature KD)')
    g.add_argument('--kd-teacher-feature-dim', default=None, type=int, help='teacher feature dim (feature KD)')
    g.add_argument('--kd-token-distill-type', default='soft', type=str, choices=['soft', 'hard'],
                   help='token distillation type')


def _r2kd_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Teacher and R2KD parameters')
    g.add_argument('--teacher', default=None, type=str, metavar='NAME',
                   help='teacher model: any timm name, hf-hub:ORG/NAME or local-dir:PATH')
    g.add_argument('--teacher-checkpoint', default=None, type=str, metavar='PATH',
                   help='teacher weights: timm/torch checkpoint (loaded with weights_only) or .safetensors')
    g.add_argument('--teacher-pretrained', action=argparse.BooleanOptionalAction, default=None,
                   help="load the teacher's pretrained weights (default: yes unless --teacher-checkpoint)")
    g.add_argument('--r2kd', action='store_true', default=False,
                   help="distil with R2KD at the paper's defaults (same as --kd-loss r2kd)")
    g.add_argument('--kd-loss', dest='kd_loss', default=None, choices=['kl', 'dist', 'r2kd'],
                   help='logit distillation loss (default: r2kd with --r2kd, else kl)')
    g.add_argument('--r2kd-temperature', type=float, default=4.0, help='R2KD softmax temperature')
    g.add_argument('--r2kd-value-weight', type=float, default=2.0, help='R2KD value (cosine) term weight')
    g.add_argument('--r2kd-rank-weight', type=float, default=2.0, help='R2KD rank (Spearman) term weight')
    g.add_argument('--r2kd-rank', default='soft', choices=['soft', 'hard'],
                   help='soft (differentiable) or hard (exact, no gradient) ranks')
    g.add_argument('--r2kd-value-metric', default='cosine', choices=['cosine', 'pearson'],
                   help='value term distance: cosine (R2KD) or pearson (centred, as DIST; an ablation)')
    g.add_argument('--r2kd-rank-smoothing', type=float, default=0.5,
                   help='soft-rank width in standard deviations of the log-probabilities')
    g.add_argument('--prune-rate', type=float, default=0.1, help='L1 prune rate of the pruned teacher')
    g.add_argument('--prune-weight', type=float, default=0.7,
                   help='weight of the dense teacher in the blend (1.0 turns the pruned teacher off)')
    g.add_argument('--prune-scope', default='layer', choices=['layer', 'global'],
                   help='prune each layer at the rate, or all layers against one threshold')
    g.add_argument('--r2kd-view', default=None, choices=list(VIEW_NAMES),
                   help='augmented view distilled besides the clean batch (default: cutmix for r2kd, else none)')
    g.add_argument('--r2kd-autoaug-policy', default='auto', choices=['auto', 'imagenet', 'cifar10'],
                   help='AutoAugment policy of --r2kd-view autoaug (auto: cifar10 on torch/cifar10 and '
                        'torch/cifar100 datasets, as the reference, else imagenet)')
    g.add_argument('--reference-parity', action='store_true', default=False,
                   help="reproduce the authors' released code: hard ranks, pruned teacher BatchNorm in "
                        "train mode, one augmentation draw per batch, per-process batch")
    g.add_argument('--teacher-views', default='auto', choices=['auto', 'batched', 'split'],
                   help='send views through each teacher in one call or one call per view (auto: measured '
                        'fastest for the device)')
    g.add_argument('--teacher-fuse-bn', action='store_true', default=False,
                   help='fold BatchNorm into the frozen teachers\' convolutions')
    g.add_argument('--allow-weak-teacher', action='store_true', default=False,
                   help='train even if the teacher scores near chance on the validation set')
    g.add_argument('--no-teacher-eval', action='store_true', default=False,
                   help='skip evaluating the teacher on the validation set before training (and so the '
                        'near-chance check): for repeated runs from one teacher already checked')
    g.add_argument('--eval-corruptions', action='store_true', default=False,
                   help='also report top-1 under Gaussian noise, blur, contrast and JPEG corruptions of the val set')
    g.add_argument('--corruption-severities', type=int, nargs='+', default=[1, 2, 3], choices=[1, 2, 3],
                   metavar='N', help='severities of --eval-corruptions (1 mild, 2 moderate, 3 strong; default all)')
    g.add_argument('--crop-padding', type=int, default=None, metavar='N',
                   help='CIFAR-style training crop: pad N pixels and crop at the image size, instead of timm\'s '
                        'random-resized crop')
    g.add_argument('--no-progress', action='store_true', default=False,
                   help='no progress bar on a terminal (log lines only)')


def _hub_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group('Hugging Face Hub export')
    g.add_argument('--push-to-hub', default=None, metavar='REPO_ID',
                   help='after training, push the best student (EMA when it scored higher) to this model repo')
    g.add_argument('--hub-private', action='store_true', default=False, help='create the repo as private')
    g.add_argument('--hub-revision', default=None, metavar='BRANCH', help='branch to push to')
    g.add_argument('--hub-token-env', default=None, metavar='NAME',
                   help='environment variable holding the token (default: huggingface_hub\'s own login)')
    g.add_argument('--hub-timeout', type=float, default=1800., metavar='SECONDS',
                   help='seconds the push may take before it is abandoned (the export stays)')
    g.add_argument('--save-hf', default=None, metavar='DIR',
                   help='write the Hub folder (safetensors, config.json, model card) here after training; DIR '
                        'must be new or empty')
    g.add_argument('--overwrite-export', action='store_true', default=False,
                   help='let --save-hf replace an earlier export in DIR (never a folder holding other files)')


def create_parser() -> Tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(config parser, main parser) for train_r2kd.py."""
    config_parser = argparse.ArgumentParser(description='Training config', add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE',
                               help='YAML config file specifying default arguments')
    parser = argparse.ArgumentParser(
        description='Distil a timm teacher into a timm student with R2KD (or train a model like timm).',
        parents=[config_parser],
    )
    for add in (_dataset_args, _model_args, _device_args, _optimizer_args, _schedule_args, _augment_args,
                _misc_args, _timm_kd_args, _r2kd_args, _hub_args):
        add(parser)
    return config_parser, parser


def parse_args(argv: Optional[List[str]] = None, check: bool = True) -> Tuple[argparse.Namespace, str]:
    """Parse ``argv`` with YAML defaults from ``-c/--config``, as timm's train.py does, and check it.

    Args:
        argv: Arguments (default: sys.argv[1:]).
        check: Validate every value (``timm_r2kd.checks.check_args``), raising ``UsageError``.

    Returns:
        (args, args_text) where args_text is the YAML dump written to args.yaml (after the checks,
        so it records the data folder actually read).
    """
    config_parser, parser = create_parser()
    args_config, remaining = config_parser.parse_known_args(argv)
    if args_config.config:
        try:
            with open(args_config.config, 'r') as f:
                cfg = yaml.safe_load(f) or {}
        except OSError as e:
            parser.error(f"cannot read config file '{args_config.config}': {e.strerror}")
        except yaml.YAMLError as e:
            parser.error(f"config file '{args_config.config}' is not valid YAML: {e}")
        if not isinstance(cfg, dict):
            parser.error(f"config file '{args_config.config}' must hold a mapping of argument names to values")
        known = {a.dest for a in parser._actions}
        unknown = sorted(k for k in cfg if k not in known)
        if unknown:
            _logger.warning(f'Config keys not used by train_r2kd: {", ".join(unknown)}')
        parser.set_defaults(**cfg)
    args = parser.parse_args(remaining)
    args.config = args_config.config
    if check:
        from .checks import check_args  # checks import the data and hub modules; only the trainer needs them
        check_args(args, parser)
    args_text = yaml.safe_dump(args.__dict__, default_flow_style=False)
    return args, args_text
