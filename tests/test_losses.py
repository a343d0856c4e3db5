import math

import pytest
import torch
import torch.nn.functional as F
from timm.task import DistillationTeacher, LogitDistillationTask

from timm_r2kd import DISTLoss, KLDistillLoss, R2KDLoss, create_distill_loss, rank_distance, value_distance
from timm_r2kd.losses import cosine_distance

from conftest import brute_cosine_distance, brute_pearson, brute_spearman


def test_value_distance_hand_worked():
    p_s = torch.tensor([[1., 0.], [0.5, 0.5]])
    p_t = torch.tensor([[0., 1.], [0.5, 0.5]])
    # rows: orthogonal -> 1, identical -> 0; columns: (1, .5).(0, .5) = .25 over sqrt(1.25)*sqrt(.25)
    col0 = 1 - 0.25 / (math.sqrt(1.25) * 0.5)
    col1 = 1 - 0.25 / (0.5 * math.sqrt(1.25))
    expected = (1 + 0) / 2 + (col0 + col1) / 2
    assert value_distance(p_s, p_t).item() == pytest.approx(expected, abs=1e-6)


def test_value_distance_matches_brute_force():
    p_s = torch.softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    p_t = torch.softmax(torch.randn(5, 7, dtype=torch.float64), -1)
    rows = sum(brute_cosine_distance(a, b) for a, b in zip(p_s.tolist(), p_t.tolist())) / 5
    cols = sum(brute_cosine_distance(a, b) for a, b in zip(p_s.T.tolist(), p_t.T.tolist())) / 7
    assert value_distance(p_s, p_t).item() == pytest.approx(rows + cols, abs=1e-9)


def test_cosine_distance_uses_absolute_value():
    u = torch.tensor([1., 2.])
    assert cosine_distance(u, -u).item() == pytest.approx(0.0, abs=1e-6)


def test_rank_distance_matches_brute_spearman():
    z_s, z_t = torch.randn(6, 11, dtype=torch.float64), torch.randn(6, 11, dtype=torch.float64)
    p_s, p_t = torch.softmax(z_s, -1), torch.softmax(z_t, -1)
    expected = 1 - sum(brute_spearman(a, b) for a, b in zip(p_s.tolist(), p_t.tolist())) / 6
    assert rank_distance(p_s, p_t, mode='hard').item() == pytest.approx(expected, abs=1e-7)
    assert rank_distance(p_s, p_t, mode='ordinal').item() == pytest.approx(expected, abs=1e-7)  # no ties
    assert rank_distance(p_s, p_t, mode='soft').item() == pytest.approx(expected, abs=0.05)
    log_input = rank_distance(p_s.log(), p_t.log(), mode='hard', log_input=True)
    assert log_input.item() == pytest.approx(expected, abs=1e-7)


def _r2kd_by_formula(z_s, z_t, T=4.0, alpha=2.0, beta=2.0):
    p_s = torch.softmax(z_s.double() / T, -1).tolist()
    p_t = torch.softmax(z_t.double() / T, -1).tolist()
    b, c = len(p_s), len(p_s[0])
    rows = sum(brute_cosine_distance(a, v) for a, v in zip(p_s, p_t)) / b
    cols_s = [[p_s[i][k] for i in range(b)] for k in range(c)]
    cols_t = [[p_t[i][k] for i in range(b)] for k in range(c)]
    cols = sum(brute_cosine_distance(a, v) for a, v in zip(cols_s, cols_t)) / c
    rank = 1 - sum(brute_spearman(a, v) for a, v in zip(p_s, p_t)) / b
    return alpha * T * T * (rows + cols) + beta * rank


def test_r2kd_loss_matches_independent_formula():
    z_s, z_t = torch.randn(8, 10), torch.randn(8, 10) * 2
    expected = _r2kd_by_formula(z_s, z_t)
    assert R2KDLoss(rank_mode='hard')(z_s, z_t).item() == pytest.approx(expected, rel=1e-5)
    parts = R2KDLoss(rank_mode='hard').parts(z_s, z_t)
    assert set(parts) == {'value', 'rank'}
    custom = R2KDLoss(temperature=2.0, value_weight=0.5, rank_weight=3.0, rank_mode='hard')(z_s, z_t)
    assert custom.item() == pytest.approx(_r2kd_by_formula(z_s, z_t, 2.0, 0.5, 3.0), rel=1e-5)


def test_r2kd_loss_invariant_to_logit_shift():
    z_s, z_t = torch.randn(8, 10), torch.randn(8, 10)
    loss = R2KDLoss()
    shifted = loss(z_s + 5.0, z_t - torch.randn(8, 1) * 3)
    assert shifted.item() == pytest.approx(loss(z_s, z_t).item(), rel=1e-5)


def test_soft_rank_term_trains_hard_does_not():
    z_s = torch.randn(8, 10, requires_grad=True)
    z_t = torch.randn(8, 10)
    R2KDLoss(value_weight=0., rank_mode='soft')(z_s, z_t).backward()
    assert z_s.grad.abs().sum() > 0
    for mode in ('hard', 'ordinal'):
        assert not rank_distance(torch.softmax(z_s, -1), torch.softmax(z_t, -1), mode=mode).requires_grad


def test_kl_equals_timm_logit_distillation_task():
    z_s, z_t = torch.randn(8, 10), torch.randn(8, 10)
    student = torch.nn.Linear(4, 10)
    student.pretrained_cfg = dict(mean=(0.5,), std=(0.5,))
    teacher = torch.nn.Linear(4, 10)
    teacher.pretrained_cfg = student.pretrained_cfg
    task = LogitDistillationTask(student, DistillationTeacher(teacher), criterion=torch.nn.CrossEntropyLoss(),
                                 temperature=4.0, verbose=False)
    x, y = torch.randn(8, 4), torch.randint(0, 10, (8,))
    out = task(x, y)
    with torch.no_grad():
        s, t = task.trainable_module(x), task.teacher(x)
    assert KLDistillLoss(temperature=4.0)(s, t).item() == pytest.approx(out['kd_loss'].item(), rel=1e-6)
    # and against the definition
    p_t = torch.softmax(z_t / 4, -1)
    kl = (p_t * (p_t.log() - torch.log_softmax(z_s / 4, -1))).sum(-1).mean() * 16
    assert KLDistillLoss(temperature=4.0)(z_s, z_t).item() == pytest.approx(kl.item(), rel=1e-5)


def test_dist_matches_brute_pearson():
    z_s, z_t = torch.randn(6, 9, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64)
    p_s, p_t = torch.softmax(z_s, -1).tolist(), torch.softmax(z_t, -1).tolist()
    inter = sum(1 - brute_pearson(a, b) for a, b in zip(p_s, p_t)) / 6
    cols_s, cols_t = list(zip(*p_s)), list(zip(*p_t))
    intra = sum(1 - brute_pearson(a, b) for a, b in zip(cols_s, cols_t)) / 9
    loss = DISTLoss(temperature=1.0, inter_weight=1.0, intra_weight=1.0)(z_s, z_t)
    assert loss.item() == pytest.approx(inter + intra, abs=1e-7)


def test_create_distill_loss():
    assert isinstance(create_distill_loss('r2kd'), R2KDLoss)
    assert isinstance(create_distill_loss('KL', temperature=2.0, weight=None), KLDistillLoss)
    assert create_distill_loss('kl', temperature=None).temperature == 4.0
    assert isinstance(create_distill_loss('dist'), DISTLoss)
    with pytest.raises(ValueError, match='Unknown distillation loss'):
        create_distill_loss('dkd')


@pytest.mark.parametrize('name', ['r2kd', 'kl', 'dist'])
@pytest.mark.parametrize('case', ['batch_of_one', 'constant', 'huge', 'two_classes', 'fp16', 'bf16'])
def test_awkward_inputs_stay_finite(name, case):
    z_s, z_t = torch.randn(6, 10), torch.randn(6, 10)
    if case == 'batch_of_one':
        z_s, z_t = z_s[:1], z_t[:1]
    elif case == 'constant':
        z_s, z_t = torch.zeros(6, 10), torch.full((6, 10), 3.0)
    elif case == 'huge':
        z_s, z_t = z_s.sign() * 1e4, torch.randn(6, 10) * 1e4
    elif case == 'two_classes':
        z_s, z_t = z_s[:, :2], z_t[:, :2]
    elif case == 'fp16':
        z_s, z_t = z_s.half(), z_t.half()
    elif case == 'bf16':
        z_s, z_t = z_s.bfloat16(), z_t.bfloat16()
    z_s.requires_grad_(True)
    loss = create_distill_loss(name)(z_s, z_t)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z_s.grad).all()


def test_batch_of_one_drops_the_per_class_term():
    z_s, z_t = torch.randn(1, 10), torch.randn(1, 10)
    p_s, p_t = torch.softmax(z_s / 4, -1), torch.softmax(z_t / 4, -1)
    row = brute_cosine_distance(p_s[0].tolist(), p_t[0].tolist())
    assert value_distance(p_s, p_t).item() == pytest.approx(row, abs=1e-6)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match='same num_classes'):
        R2KDLoss()(torch.randn(4, 10), torch.randn(4, 11))
    with pytest.raises(ValueError, match='at least 2 classes'):
        R2KDLoss()(torch.randn(4, 1), torch.randn(4, 1))
    with pytest.raises(ValueError, match='temperature'):
        R2KDLoss(temperature=0)


@pytest.mark.parametrize('loss, part', [
    (R2KDLoss(temperature=2.0), 'value'),
    (R2KDLoss(temperature=2.0), 'rank'),  # soft ranks of the student
    (R2KDLoss(temperature=4.0, rank_smoothing=1.0), None),
    (DISTLoss(), None),
])
def test_gradcheck_float64_through_the_losses(loss, part):
    from torch.autograd import gradcheck
    generator = torch.Generator().manual_seed(0)
    z_s = torch.randn(6, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    z_t = torch.randn(6, 7, dtype=torch.float64, generator=generator)

    def f(z):
        parts = loss.parts(z, z_t)
        return parts[part] if part else sum(parts.values())

    assert f(z_s).dtype == torch.float64
    assert gradcheck(f, (z_s,), eps=1e-6, atol=1e-5)
    f(z_s).backward()
    assert z_s.grad.abs().sum() > 0


def test_pearson_value_metric_matches_brute_force():
    p_s, p_t = torch.rand(5, 7).softmax(-1), torch.rand(5, 7).softmax(-1)
    rows = sum(1 - brute_pearson(a.tolist(), b.tolist()) for a, b in zip(p_s, p_t)) / 5
    cols = sum(1 - brute_pearson(a.tolist(), b.tolist()) for a, b in zip(p_s.T, p_t.T)) / 7
    assert value_distance(p_s, p_t, metric='pearson').item() == pytest.approx(rows + cols, rel=1e-5)
    z_s, z_t = torch.randn(5, 7), torch.randn(5, 7)
    loss = R2KDLoss(temperature=2.0, value_metric='pearson').parts(z_s, z_t)['value']
    expected = 2 * 4 * value_distance((z_s / 2).softmax(-1), (z_t / 2).softmax(-1), metric='pearson')
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match='value_metric'):
        R2KDLoss(value_metric='spearman')
