import pytest
import torch
from torch.autograd import gradcheck

from timm_r2kd.ranking import hard_rank, soft_rank, spearman

from conftest import brute_average_ranks, brute_spearman


def test_hard_rank_matches_brute_force_with_ties():
    x = torch.tensor([[3., 1., 2., 1., 5., 3., 3.], [0., 0., 0., 0., 0., 0., 0.]])
    expected = torch.tensor([brute_average_ranks(r) for r in x.tolist()])
    torch.testing.assert_close(hard_rank(x), expected)
    assert expected[0].tolist() == [5., 1.5, 3., 1.5, 7., 5., 5.]


def test_ordinal_ranks_break_ties_by_position():
    x = torch.tensor([[2., 1., 2., 0.]])
    assert hard_rank(x, ties='ordinal').tolist() == [[3., 2., 4., 1.]]


@pytest.mark.parametrize('num_classes', [2, 7, 50])
def test_hard_spearman_matches_brute_force(num_classes):
    x = torch.randn(6, num_classes, dtype=torch.float64)
    y = torch.randn(6, num_classes, dtype=torch.float64)
    y[0] = x[0]  # perfect agreement
    y[1] = -x[1]  # perfect disagreement
    expected = torch.tensor([brute_spearman(a, b) for a, b in zip(x.tolist(), y.tolist())], dtype=torch.float64)
    torch.testing.assert_close(spearman(x, y, mode='hard'), expected)
    assert spearman(x, y)[0].item() == pytest.approx(1.0, abs=1e-6)
    assert spearman(x, y)[1].item() == pytest.approx(-1.0, abs=1e-6)


def test_soft_rank_tends_to_average_rank():
    x = torch.tensor([[0.3, -1.2, 0.3, 2.0, 0.31]], dtype=torch.float64)
    torch.testing.assert_close(soft_rank(x, smoothing=1e-9), hard_rank(x))
    # a point alone in its window keeps its exact rank even at moderate smoothing
    assert soft_rank(x, smoothing=0.1)[0, 3].item() == pytest.approx(5.0)


def test_soft_rank_window_by_hand():
    # values 0, 1 (std 0.5 -> units of 2 std apart) at smoothing 1.5 std: each sees the other
    # at distance 2/1.5 of the half-width, F = (1 + 2/1.5)/2 clipped to 1 -> exact ranks.
    x = torch.tensor([[0., 1.]], dtype=torch.float64)
    torch.testing.assert_close(soft_rank(x, smoothing=1.5), torch.tensor([[1., 2.]], dtype=torch.float64))
    # at smoothing 4 std, F(d) = (1 + d / 4) / 2 with d = +-2: ranks 1/2 + 1/2 + 1/4 and 1/2 + 1/2 + 3/4
    torch.testing.assert_close(soft_rank(x, smoothing=4.0), torch.tensor([[1.25, 1.75]], dtype=torch.float64))


def test_soft_rank_sums_like_exact_ranks_and_is_shift_and_scale_invariant():
    x = torch.randn(4, 100, dtype=torch.float64)
    r = soft_rank(x)
    torch.testing.assert_close(r.sum(-1), torch.full((4,), 100 * 101 / 2, dtype=torch.float64))
    torch.testing.assert_close(soft_rank(x + 123.0), r)
    torch.testing.assert_close(soft_rank(x * 7.5), r)


@pytest.mark.parametrize('num_classes', [5, 10, 100, 1000])
def test_soft_spearman_close_to_hard_at_default(num_classes):
    z_s = torch.randn(32, num_classes) * 3
    z_t = z_s + torch.randn(32, num_classes) * 2
    hard = spearman(z_s, z_t, mode='hard').mean()
    soft = spearman(z_s, z_t, mode='soft').mean()
    assert abs(hard - soft).item() < 0.05


def test_soft_rank_gradcheck_float64():
    x = torch.randn(3, 9, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda v: soft_rank(v, smoothing=0.5), (x,), eps=1e-6, atol=1e-5)
    y = torch.randn(3, 9, dtype=torch.float64)
    assert gradcheck(lambda v: spearman(v, y, mode='soft', smoothing=0.5), (x,), eps=1e-6, atol=1e-5)


def test_constant_rows_are_tied_and_finite():
    x = torch.full((2, 10), 3.7, requires_grad=True)
    r = soft_rank(x)
    torch.testing.assert_close(r.detach(), torch.full((2, 10), 5.5))
    rho = spearman(x, torch.randn(2, 10), mode='soft')
    rho.sum().backward()
    assert torch.isfinite(rho).all() and torch.isfinite(x.grad).all()
    assert rho.abs().max().item() == 0.0


def test_many_classes_linear_memory():
    # B=16, C=21,843 (ImageNet-21k) must work without a C x C intermediate
    x = torch.randn(16, 21843, requires_grad=True)
    rho = spearman(x, x.detach() + 0.1 * torch.randn(16, 21843), mode='soft')
    rho.mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert rho.min().item() > 0.9
