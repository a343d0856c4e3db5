"""timm-r2kd: R2KD knowledge distillation for timm models."""
from . import models  # registers the CIFAR architectures with timm
from .losses import (
    DISTLoss, DistillLoss, KLDistillLoss, R2KDLoss, create_distill_loss, list_distill_losses, rank_distance,
    value_distance,
)
from .ranking import hard_rank, soft_rank, spearman
from .task import R2KDTask
from .pruning import l1_prune
from .teacher import PrunedTeacher
from .version import __version__
