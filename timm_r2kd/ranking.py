"""Exact and differentiable ranks, and the row-wise Spearman correlation built on them.

Ranks are 1-based and run along the last dimension. Exact ranks give tied values their average
rank (the convention of scipy.stats.spearmanr). The soft rank replaces the step function of the
exact rank with the CDF of a uniform kernel of half-width ``tau``:

    r_i = 1/2 + sum_j F((x_i - x_j) / tau),   F(d) = clamp((1 + d) / 2, 0, 1)

Pairs further apart than ``tau`` contribute exactly 0 or 1, so on sorted values the sum is a
count plus a window term that prefix sums give in O(C log C) time and O(C) memory per row,
whatever the number of classes. As ``tau -> 0`` it is the exact average rank, and its gradient
is piecewise constant (it moves each value against its neighbours within ``tau``).

``tau`` is scale-aware: values are first measured in units of their row's standard deviation, so
the soft rank of ``z / T`` does not depend on T (exactly like the hard rank) and a fixed
``smoothing`` means the same thing for any logit scale.
"""
import torch


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # Prefix sums over 20k+ classes lose rank-sized precision in float32; float64 costs little
    # at B x C. MPS has no float64.
    return torch.float32 if x.device.type == 'mps' else torch.float64


def hard_rank(x: torch.Tensor, ties: str = 'average') -> torch.Tensor:
    """Exact 1-based ranks along the last dimension (no gradient).

    Args:
        x: Values, shape (..., C).
        ties: 'average' gives tied values their mean rank; 'ordinal' breaks ties by position
            (stable argsort of argsort, as the R2KD reference computes them).

    Returns:
        Ranks as a floating tensor of the same shape as ``x``.
    """
    x = x.detach()
    out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    if ties == 'ordinal':
        order = torch.argsort(x, dim=-1, stable=True)
        return (torch.argsort(order, dim=-1, stable=True) + 1).to(out_dtype)
    if ties != 'average':
        raise ValueError(f"ties must be 'average' or 'ordinal', got '{ties}'")
    xs, order = x.sort(dim=-1)
    # In sorted order a tie group spans [first, last]; its members share rank (first + last) / 2 + 1.
    # Cumulative max/min over group boundaries finds both ends in O(C) without a search.
    pos = torch.arange(xs.shape[-1], device=x.device).expand_as(xs)
    new_value = xs[..., 1:] != xs[..., :-1]
    edge = torch.ones_like(new_value[..., :1])
    starts = torch.cat([edge, new_value], dim=-1)
    ends = torch.cat([new_value, edge], dim=-1)
    first = torch.where(starts, pos, 0).cummax(dim=-1).values
    last = torch.where(ends, pos, xs.shape[-1]).flip(-1).cummin(dim=-1).values.flip(-1)
    ranks_sorted = (first + last + 2).to(torch.float64) / 2
    return torch.empty_like(ranks_sorted).scatter_(-1, order, ranks_sorted).to(out_dtype)


def soft_rank(x: torch.Tensor, smoothing: float = 0.5, min_scale: float = 1e-4) -> torch.Tensor:
    """Differentiable 1-based ranks along the last dimension.

    Args:
        x: Values, shape (..., C). Only their order and relative spacing matter: the result is
            invariant to adding a constant to a row and to scaling a row by a positive factor.
        smoothing: Kernel half-width in units of the row's standard deviation. 0 gives the exact
            average ranks (with no gradient).
        min_scale: Floor on the standard deviation. A nearly constant row (e.g. from a classifier
            head initialised to zero) is smoothed in these absolute units instead, which keeps its
            gradient bounded; a constant row gets exactly tied ranks and zero gradient.

    Returns:
        Soft ranks with the dtype of ``x``. Each row sums to C (C + 1) / 2, like exact ranks.
    """
    if smoothing < 0:
        raise ValueError(f'smoothing must be >= 0, got {smoothing}')
    if smoothing == 0:
        return hard_rank(x)
    dtype = x.dtype
    u = x.to(_work_dtype(x))
    # Subtracting an element (not the mean) maps a constant row to exact zeros, so constant
    # rows stay exactly tied instead of turning rounding noise into rank differences.
    u = u - u[..., :1]
    # clamp the variance, not the std: sqrt's gradient at 0 would turn a constant row into NaN
    var = u.var(dim=-1, keepdim=True, correction=0)
    u = u / var.clamp_min(min_scale * min_scale).sqrt()
    half_width = 2 * smoothing

    # Work in sorted order: the window queries are then sorted too, which makes the searches
    # cache-friendly (about twice as fast on CPU), and one scatter puts the ranks back.
    us, order = u.sort(dim=-1)
    prefix = torch.nn.functional.pad(us.cumsum(dim=-1), (1, 0))
    keys = us.detach().contiguous()
    lo = torch.searchsorted(keys, keys - smoothing, side='left')
    hi = torch.searchsorted(keys, keys + smoothing, side='right')
    count = (hi - lo).to(u.dtype)
    window_sum = prefix.gather(-1, hi) - prefix.gather(-1, lo)
    # sum over the window of (1/2 + (u_i - u_j) / (2 smoothing)); everything below it counts 1
    ranks = lo.to(u.dtype) + 0.5 + 0.5 * count + (count * us - window_sum) / half_width
    ranks = torch.zeros_like(ranks).scatter(-1, order, ranks)
    return ranks.to(dtype)


def _centred_cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    denom = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    # Rows with no rank variation correlate 0. Their gradient is set to 0 too: through the
    # plain formula it would be b / eps, which a tie (e.g. constant logits) should not produce.
    varies = denom > eps
    return torch.where(varies, (a * b).sum(dim=-1) / torch.where(varies, denom + eps, 1.), 0.)


def spearman(
        x: torch.Tensor,
        y: torch.Tensor,
        mode: str = 'hard',
        smoothing: float = 0.5,
        eps: float = 1e-8,
) -> torch.Tensor:
    """Row-wise Spearman correlation of ``x`` and ``y`` (shape B x C), returned per row.

    ``y`` is the target: its ranks are exact and carry no gradient. With ``mode='soft'`` the ranks
    of ``x`` are soft ranks, so the result is differentiable in ``x``. A row with no rank variation
    (all values tied) has correlation 0.

    Args:
        x: Values whose ranks are compared, shape (B, C).
        y: Target values, shape (B, C).
        mode: 'hard' (exact average ranks), 'soft' (soft ranks of x) or 'ordinal' (exact ranks with
            ties broken by position, as the R2KD reference does).
        smoothing: Soft-rank kernel half-width in row standard deviations (``mode='soft'``).
        eps: Added to the product of norms, as in the reference's cosine.
    """
    if mode == 'soft':
        rx = soft_rank(x, smoothing)
        ry = hard_rank(y).to(rx.dtype)
    elif mode in ('hard', 'ordinal'):
        ties = 'average' if mode == 'hard' else 'ordinal'
        rx = hard_rank(x, ties)
        ry = hard_rank(y, ties).to(rx.dtype)
    else:
        raise ValueError(f"mode must be 'soft', 'hard' or 'ordinal', got '{mode}'")
    work = _work_dtype(rx)
    # Ranks are divided by C (the reference normalises them); the correlation is unchanged.
    num_classes = x.shape[-1]
    rho = _centred_cosine(rx.to(work) / num_classes, ry.to(work) / num_classes, eps=eps)
    return rho.to(torch.promote_types(x.dtype, torch.float32))

