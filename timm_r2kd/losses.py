"""Logit distillation losses: R2KD, and the KL (Hinton) and DIST baselines.

Each loss module maps (student_logits, teacher_logits), both (B, C), to a scalar, always computed
in float32 or wider whatever the input dtype, and exposes ``parts()`` with its weighted components
for logging (their sum is the loss).

Batch-wise (per-class) terms compare columns, so they need B >= 2. With B == 1 a column holds one
number per model, its cosine is 1 and its Pearson correlation undefined: these terms are defined as
0 for a batch of one, so they neither add to the loss nor carry gradient.
"""
from typing import Dict

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .ranking import spearman

_COSINE_EPS = 1e-8  # the R2KD reference's epsilon on the product of norms


def _check_pair(p_s: torch.Tensor, p_t: torch.Tensor) -> None:
    if p_s.ndim != 2 or p_s.shape != p_t.shape:
        raise ValueError(
            f'Expected student and teacher outputs of the same (batch, classes) shape, '
            f'got {tuple(p_s.shape)} and {tuple(p_t.shape)}. Teacher and student must be created '
            f'with the same num_classes.')
    if p_s.shape[-1] < 2:
        raise ValueError(f'Distillation needs at least 2 classes, got {p_s.shape[-1]}.')


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def cosine_distance(u: torch.Tensor, v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """d(u, v) = 1 - |u . v| / (||u|| ||v|| + 1e-8) along ``dim`` (uncentred cosine, as in R2KD)."""
    dot = (u * v).sum(dim=dim).abs()
    norms = torch.linalg.vector_norm(u, dim=dim) * torch.linalg.vector_norm(v, dim=dim)
    return 1 - dot / (norms + _COSINE_EPS)


def pearson_distance(u: torch.Tensor, v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """1 - Pearson correlation along ``dim`` (centred cosine, as in DIST)."""
    u = u - u.mean(dim=dim, keepdim=True)
    v = v - v.mean(dim=dim, keepdim=True)
    dot = (u * v).sum(dim=dim)
    norms = torch.linalg.vector_norm(u, dim=dim) * torch.linalg.vector_norm(v, dim=dim)
    return 1 - dot / (norms + _COSINE_EPS)


class _GatherBatch(torch.autograd.Function):
    """Concatenate a tensor over all processes along dim 0 (equal sizes), with gradient.

    Every process computes the same loss from the gathered batch, so the gradient of its own
    slice is the sum over processes of their gradients for that slice (all-reduce, then slice);
    DDP's averaging of parameter gradients then yields the single-process gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        chunks = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def _gather_batch(x: torch.Tensor) -> torch.Tensor:
    return _GatherBatch.apply(x)


def _use_global_batch(scope: str) -> bool:
    if scope not in ('local', 'global'):
        raise ValueError(f"batch_scope must be 'local' or 'global', got '{scope}'")
    return scope == 'global' and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _column_term(distance_fn, p_s: torch.Tensor, p_t: torch.Tensor, batch_scope: str) -> torch.Tensor:
    if _use_global_batch(batch_scope):
        p_s, p_t = _gather_batch(p_s), _gather_batch(p_t)
    if p_s.shape[0] < 2:
        return p_s.sum() * 0  # see module docstring: a column of one sample carries no relation
    return distance_fn(p_s, p_t, dim=0).mean()


def value_distance(
        p_s: torch.Tensor,
        p_t: torch.Tensor,
        batch_scope: str = 'local',
        metric: str = 'cosine',
) -> torch.Tensor:
    """R2KD's value term: row-wise plus column-wise uncentred cosine distance.

    Args:
        p_s: Student probabilities, (B, C).
        p_t: Teacher probabilities, (B, C).
        batch_scope: 'local' uses this process's batch for the per-class term; 'global' gathers the
            batch of all processes first (identical to one process with the whole batch).
        metric: 'cosine' (R2KD's uncentred cosine) or 'pearson' (centred, as DIST), for ablations.

    Returns:
        mean_i d(p_s[i, :], p_t[i, :]) + mean_c d(p_s[:, c], p_t[:, c]); the second term is 0 when B == 1.
    """
    _check_pair(p_s, p_t)
    if metric not in ('cosine', 'pearson'):
        raise ValueError(f"value metric must be 'cosine' or 'pearson', got '{metric}'")
    distance = cosine_distance if metric == 'cosine' else pearson_distance
    p_s, p_t = _float(p_s), _float(p_t)
    rows = distance(p_s, p_t, dim=-1).mean()
    return rows + _column_term(distance, p_s, p_t, batch_scope)


def rank_distance(
        p_s: torch.Tensor,
        p_t: torch.Tensor,
        mode: str = 'soft',
        smoothing: float = 0.5,
        log_input: bool = False,
) -> torch.Tensor:
    """R2KD's rank term: 1 - mean over rows of Spearman(p_s[i, :], p_t[i, :]).

    Args:
        p_s: Student probabilities, (B, C) (log-probabilities with ``log_input=True``).
        p_t: Teacher probabilities, (B, C); the target, whose exact ranks carry no gradient.
        mode: 'soft' differentiable in p_s (see ``ranking.soft_rank``); 'hard' exact average ranks,
            no gradient; 'ordinal' exact ranks of the probabilities with ties broken by position,
            exactly as the R2KD reference computes them (no gradient).
        smoothing: Soft-rank kernel half-width in row standard deviations of the log-probabilities.
        log_input: Inputs are log-probabilities. Ranks are taken in log space either way, where
            probabilities that underflow to 0 stay distinct; with probabilities as input they are
            clamped to the smallest positive float before the log.
    """
    _check_pair(p_s, p_t)
    p_s, p_t = _float(p_s), _float(p_t)
    if mode == 'ordinal':
        # the reference ranks the probabilities themselves
        if log_input:
            p_s, p_t = p_s.exp(), p_t.exp()
        return 1 - spearman(p_s, p_t, mode='ordinal').mean()
    if not log_input:
        tiny = torch.finfo(p_s.dtype).tiny
        p_s, p_t = p_s.clamp_min(tiny).log(), p_t.clamp_min(tiny).log()
    return 1 - spearman(p_s, p_t, mode=mode, smoothing=smoothing).mean()


class DistillLoss(nn.Module):
    """Base for logit distillation losses: ``forward`` is the sum of ``parts``."""

    name = ''

    def parts(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return sum(self.parts(student_logits, teacher_logits).values())


class R2KDLoss(DistillLoss):
    """R2KD distillation loss (Kim et al., TKDE 2024).

    loss = value_weight * T^2 * value_distance(p_s, p_t) + rank_weight * rank_distance(p_s, p_t)
    with p = softmax(logits / T).

    Args:
        temperature: Softmax temperature T.
        value_weight: Weight of the value (cosine) term, alpha.
        rank_weight: Weight of the rank (Spearman) term, beta.
        rank_mode: 'soft' (differentiable, default), 'hard' (exact, no gradient) or 'ordinal'.
        rank_smoothing: Soft-rank kernel half-width in row standard deviations.
        batch_scope: 'global' (default) computes the per-class term over the batch of all DDP
            processes, so results do not depend on how many processes share the batch; 'local'
            uses each process's own batch.
        reference_parity: Reproduce the released code: ordinal ranks of the probabilities with no
            gradient, per-process batch. Overrides rank_mode and batch_scope.
        value_metric: 'cosine' (R2KD) or 'pearson' (the centred correlation, an ablation).
    """

    name = 'r2kd'

    def __init__(
            self,
            temperature: float = 4.0,
            value_weight: float = 2.0,
            rank_weight: float = 2.0,
            rank_mode: str = 'soft',
            rank_smoothing: float = 0.5,
            batch_scope: str = 'global',
            reference_parity: bool = False,
            value_metric: str = 'cosine',
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        if value_metric not in ('cosine', 'pearson'):
            raise ValueError(f"value_metric must be 'cosine' or 'pearson', got '{value_metric}'")
        if rank_mode not in ('soft', 'hard', 'ordinal'):
            raise ValueError(f"rank_mode must be 'soft', 'hard' or 'ordinal', got '{rank_mode}'")
        self.temperature = temperature
        self.value_weight = value_weight
        self.rank_weight = rank_weight
        self.rank_mode = 'ordinal' if reference_parity else rank_mode
        self.rank_smoothing = rank_smoothing
        self.batch_scope = 'local' if reference_parity else batch_scope
        self.reference_parity = reference_parity
        self.value_metric = 'cosine' if reference_parity else value_metric
        _use_global_batch(self.batch_scope)  # validates the name

    def parts(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        _check_pair(student_logits, teacher_logits)
        t = self.temperature
        log_s = F.log_softmax(_float(student_logits) / t, dim=-1)
        log_t = F.log_softmax(_float(teacher_logits) / t, dim=-1)
        value = value_distance(log_s.exp(), log_t.exp(), batch_scope=self.batch_scope, metric=self.value_metric)
        rank = rank_distance(log_s, log_t, mode=self.rank_mode, smoothing=self.rank_smoothing, log_input=True)
        return {
            'value': self.value_weight * t * t * value,
            'rank': self.rank_weight * rank,
        }

    def extra_repr(self) -> str:
        return (
            f'temperature={self.temperature}, value_weight={self.value_weight}, rank_weight={self.rank_weight}, '
            f'rank_mode={self.rank_mode}, rank_smoothing={self.rank_smoothing}, batch_scope={self.batch_scope}'
        )


class KLDistillLoss(DistillLoss):
    """Hinton et al. KD: T^2 * KL(softmax(t / T) || softmax(s / T)), batch mean.

    Equal to the KD term of timm's ``LogitDistillationTask`` at the same temperature.

    Args:
        temperature: Softmax temperature T.
        weight: Multiplier on the loss.
    """

    name = 'kl'

    def __init__(self, temperature: float = 4.0, weight: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self.weight = weight

    def parts(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        _check_pair(student_logits, teacher_logits)
        t = self.temperature
        log_s = F.log_softmax(_float(student_logits) / t, dim=-1)
        log_t = F.log_softmax(_float(teacher_logits) / t, dim=-1)
        kl = F.kl_div(log_s, log_t, reduction='batchmean', log_target=True)
        return {'kl': self.weight * t * t * kl}


class DISTLoss(DistillLoss):
    """DIST (Huang et al., NeurIPS 2022): 1 - Pearson between probabilities, per sample and per class.

    loss = T^2 * (inter_weight * mean_i (1 - pearson(p_s[i], p_t[i]))
                  + intra_weight * mean_c (1 - pearson(p_s[:, c], p_t[:, c])))

    Args:
        temperature: Softmax temperature T (the DIST paper uses 1 on ImageNet, 4 on CIFAR).
        inter_weight: Weight of the per-sample (inter-class) term, beta.
        intra_weight: Weight of the per-class (intra-class) term, gamma.
        batch_scope: 'global' or 'local' batch for the per-class term, as in ``R2KDLoss``.
    """

    name = 'dist'

    def __init__(
            self,
            temperature: float = 4.0,
            inter_weight: float = 2.0,
            intra_weight: float = 2.0,
            batch_scope: str = 'global',
    ):
        super().__init__()
        self.temperature = temperature
        self.inter_weight = inter_weight
        self.intra_weight = intra_weight
        self.batch_scope = batch_scope
        _use_global_batch(batch_scope)

    def parts(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> Dict[str, torch.Tensor]:
        _check_pair(student_logits, teacher_logits)
        t = self.temperature
        p_s = F.softmax(_float(student_logits) / t, dim=-1)
        p_t = F.softmax(_float(teacher_logits) / t, dim=-1)
        inter = pearson_distance(p_s, p_t, dim=-1).mean()
        intra = _column_term(pearson_distance, p_s, p_t, self.batch_scope)
        return {
            'inter': self.inter_weight * t * t * inter,
            'intra': self.intra_weight * t * t * intra,
        }


_DISTILL_LOSSES = {
    'r2kd': R2KDLoss,
    'kl': KLDistillLoss,
    'dist': DISTLoss,
}


def create_distill_loss(name: str, **kwargs) -> DistillLoss:
    """Create a logit distillation loss by name.

    Args:
        name: 'r2kd', 'kl' or 'dist'.
        **kwargs: Passed to the loss class (e.g. ``temperature``); ``None`` values are dropped so
            unset command-line options fall back to each loss's own defaults.
    """
    key = name.lower()
    if key not in _DISTILL_LOSSES:
        raise ValueError(f"Unknown distillation loss '{name}'. Choose one of {sorted(_DISTILL_LOSSES)}.")
    return _DISTILL_LOSSES[key](**{k: v for k, v in kwargs.items() if v is not None})


def list_distill_losses() -> list:
    """Names accepted by ``create_distill_loss``."""
    return sorted(_DISTILL_LOSSES)
