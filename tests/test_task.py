import copy

import pytest
import timm
import torch
import torch.nn as nn
from torch.nn.utils import prune
from timm.task import DistillationTeacher, LogitDistillationTask

from timm_r2kd import KLDistillLoss, PrunedTeacher, R2KDLoss, R2KDTask

from conftest import brute_cosine_distance


def _models(num_classes=10, teacher_classes=None):
    student = timm.create_model('test_resnet', num_classes=num_classes)
    teacher = timm.create_model('test_resnet', num_classes=teacher_classes or num_classes)
    return student, teacher


def _batch(n=8):
    return torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))


def _bn_stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if 'running' in k}


def test_task_api_and_teacher_wrapping():
    student, teacher = _models()
    task = R2KDTask(student, teacher)
    assert isinstance(task, LogitDistillationTask)
    assert isinstance(task.teacher, PrunedTeacher)
    assert isinstance(task.distill_loss, R2KDLoss)
    kl = R2KDTask(*_models(), distill_loss='kl')
    assert type(kl.teacher) is DistillationTeacher and isinstance(kl.distill_loss, KLDistillLoss)
    given = PrunedTeacher(teacher, prune_rate=0.3)
    assert R2KDTask(student, given).teacher is given
    by_name = R2KDTask(student, 'test_resnet', teacher_pretrained=False)
    assert isinstance(by_name.teacher, PrunedTeacher) and by_name.teacher.num_classes == 10


def test_step_outputs_no_teacher_grads_and_frozen_bn_stats():
    student, teacher = _models()
    task = R2KDTask(student, teacher, view_transform=lambda x, y: x.flip(-1))
    task.train()
    dense_stats, pruned_stats = _bn_stats(task.teacher.model), _bn_stats(task.teacher.pruned_model)
    student_stats = _bn_stats(student)
    x, y = _batch()
    out = task(x, y)
    assert {'loss', 'output', 'task_loss', 'kd_loss', 'kd_value', 'kd_rank'} <= set(out)
    assert out['output'].shape == (8, 10)
    torch.testing.assert_close(out['loss'], out['task_loss'] + out['kd_loss'])
    torch.testing.assert_close(out['kd_loss'].detach(), out['kd_value'] + out['kd_rank'])
    out['loss'].backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    for before, module in ((dense_stats, task.teacher.model), (pruned_stats, task.teacher.pruned_model)):
        for k, v in _bn_stats(module).items():
            torch.testing.assert_close(v, before[k])
    assert any(not torch.equal(v, student_stats[k]) for k, v in _bn_stats(student).items())


def test_rank_term_gradient_reaches_student():
    student, teacher = _models()
    loss = R2KDLoss(value_weight=0.)
    task = R2KDTask(student, teacher, distill_loss=loss, task_loss_weight=0.)
    x, y = _batch()
    task(x, y)['loss'].backward()
    assert sum(p.grad.abs().sum() for p in student.parameters()) > 0


def test_training_lowers_loss_on_fixed_batch():
    student, teacher = _models()
    task = R2KDTask(student, teacher, view_transform=lambda x, y: x.flip(-1))
    task.train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    x, y = _batch(16)
    losses = []
    for _ in range(15):
        out = task(x, y)
        opt.zero_grad()
        out['loss'].backward()
        opt.step()
        losses.append(out['loss'].item())
    assert losses[-1] < 0.7 * losses[0]


def test_views_from_splits_equal_views_from_transform():
    student, teacher = _models()
    x, y = _batch()
    view = x.flip(-1)
    a = R2KDTask(student, teacher, view_transform=lambda i, t: (view, t)).eval()
    b = R2KDTask(student, teacher, num_aug_splits=2).eval()
    out_a = a(x, y)
    out_b = b(torch.cat([x, view]), torch.cat([y, y]))
    for k in ('loss', 'task_loss', 'kd_loss', 'kd_value', 'kd_rank'):
        torch.testing.assert_close(out_a[k], out_b[k])
    with pytest.raises(ValueError, match='num_aug_splits'):
        b(x[:7], y[:7])


def test_batched_and_per_view_teacher_calls_agree():
    student, teacher = _models()
    x, y = _batch()
    outs = [
        R2KDTask(student, teacher, view_transform=lambda i, t: i.flip(-1), batch_views=bv).eval()(x, y)
        for bv in (True, False)
    ]
    torch.testing.assert_close(outs[0]['loss'], outs[1]['loss'])


def test_reference_parity_is_the_same_batched_or_per_view():
    # the pruned copy's BatchNorm uses batch statistics under parity: each view must get its own
    student, teacher = _models()
    x, y = _batch()
    results = []
    for bv in (True, False):
        s, t = copy.deepcopy(student), copy.deepcopy(teacher)
        task = R2KDTask(s, t, reference_parity=True, batch_views=bv, view_transform=lambda i, _: i.flip(-1))
        task.train()
        out = task(x, y)
        out['loss'].backward()
        results.append((out['loss'].detach(), [p.grad.clone() for p in s.parameters()],
                        _bn_stats(task.teacher.pruned_model)))
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = results
    assert loss_a.item() == loss_b.item()
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    for k in stats_a:
        torch.testing.assert_close(stats_a[k], stats_b[k], rtol=0, atol=0)


def test_teacher_input_renormalised_for_its_own_mean_std():
    student, teacher = _models()
    student.pretrained_cfg = dict(student.pretrained_cfg, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    task = R2KDTask(student, teacher)
    x, _ = _batch(2)
    raw = x * 0.25 + 0.5
    t_mean = torch.tensor(teacher.pretrained_cfg['mean']).view(1, 3, 1, 1)
    t_std = torch.tensor(teacher.pretrained_cfg['std']).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = task.teacher((raw - t_mean) / t_std)
    torch.testing.assert_close(task.teacher_logits([x])[0], expected, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_loss_is_float32():
    student, teacher = _models()
    task = R2KDTask(student, teacher, view_transform=lambda x, y: x.flip(-1))
    x, y = _batch()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = task(x, y)
    assert out['output'].dtype == torch.bfloat16
    assert out['kd_loss'].dtype == torch.float32 and torch.isfinite(out['loss'])
    out['loss'].backward()


def test_checkpoint_state_holds_only_the_student():
    student, teacher = _models()
    task = R2KDTask(student, teacher)
    state = task.get_checkpoint_state()
    assert set(state) == {'state_dict'}
    assert set(state['state_dict']) == set(student.state_dict())
    fresh = timm.create_model('test_resnet', num_classes=10)
    R2KDTask(fresh, teacher).load_checkpoint_state(state['state_dict'])
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, student.state_dict()[k])


def test_class_count_mismatch_fails_at_construction():
    student, teacher = _models(10, teacher_classes=7)
    with pytest.raises(ValueError, match='Teacher has 7 classes but the student has 10'):
        R2KDTask(student, teacher)


def test_student_without_normalisation_config():
    student = nn.Linear(4, 10)
    with pytest.raises(ValueError, match='pretrained_cfg'):
        R2KDTask(student, nn.Linear(4, 10))


def _reference_ranks(row):
    """argsort(argsort(row)) + 1, with ties in index order."""
    order = sorted(range(len(row)), key=lambda i: (row[i], i))
    ranks = [0] * len(row)
    for r, i in enumerate(order):
        ranks[i] = r + 1
    return ranks


def _reference_loss(z_s, z_t, T=4.0, alpha=2.0, beta=2.0):
    """The released code's R2KD loss, recomputed from its description."""
    p_s = torch.softmax(z_s.double() / T, -1).tolist()
    p_t = torch.softmax(z_t.double() / T, -1).tolist()
    b, c = len(p_s), len(p_s[0])
    rows = sum(brute_cosine_distance(a, v) for a, v in zip(p_s, p_t)) / b
    cols = sum(brute_cosine_distance(a, v) for a, v in zip(zip(*p_s), zip(*p_t))) / c
    spearman = 0.
    for a, v in zip(p_s, p_t):
        ra = [r / c for r in _reference_ranks(a)]
        rv = [r / c for r in _reference_ranks(v)]
        ma, mv = sum(ra) / c, sum(rv) / c
        ra, rv = [r - ma for r in ra], [r - mv for r in rv]
        num = sum(x * y for x, y in zip(ra, rv))
        spearman += num / (sum(x * x for x in ra) ** .5 * sum(y * y for y in rv) ** .5 + 1e-8)
    return alpha * T * T * (rows + cols) + beta * (1 - spearman / b)


def test_reference_parity_matches_released_behaviour():
    student, teacher = _models()
    ref_pruned = copy.deepcopy(teacher)
    for m in ref_pruned.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(m, 'weight', amount=0.1)
            prune.remove(m, 'weight')
    ref_pruned.train()  # the released code never puts the copy in eval mode
    teacher.eval()
    task = R2KDTask(student, teacher, reference_parity=True, view_transform=lambda x, y: x.flip(-1))
    task.train()
    assert task.distill_loss.rank_mode == 'ordinal' and task.distill_loss.batch_scope == 'local'
    x, y = _batch()
    stats_before = _bn_stats(task.teacher.pruned_model)
    out = task(x, y)
    student.train()
    with torch.no_grad():
        expected_kd = 0.
        for v in (x, x.flip(-1)):
            target = 0.7 * teacher(v) + 0.3 * ref_pruned(v)
            expected_kd += _reference_loss(student(v), target)
    assert out['kd_loss'].item() == pytest.approx(expected_kd, rel=1e-4)
    # the defect reproduced: batch statistics drift the pruned copy's running stats
    assert any(not torch.equal(v, stats_before[k]) for k, v in _bn_stats(task.teacher.pruned_model).items())
    # and its rank term has no gradient
    z = torch.randn(4, 10, requires_grad=True)
    assert not R2KDLoss(reference_parity=True).parts(z, torch.randn(4, 10))['rank'].requires_grad


def test_one_channel_timm_models_through_the_python_api():
    # timm keeps 3-channel ImageNet mean/std in a 1-channel model's pretrained_cfg
    student = timm.create_model('test_resnet', num_classes=10, in_chans=1)
    teacher = timm.create_model('test_resnet', num_classes=10, in_chans=1).eval()
    teacher.pretrained_cfg = dict(teacher.pretrained_cfg, mean=(0.2, 0.4, 0.6), std=(0.1, 0.2, 0.3))
    task = R2KDTask(student, teacher, distill_loss='kl', view_transform=lambda i, _: i.flip(-1))
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    out = task(x, y)
    assert torch.isfinite(out['loss'])
    s_mean, s_std = [sum(student.pretrained_cfg[k]) / 3 for k in ('mean', 'std')]
    with torch.no_grad():
        expected = teacher((x * s_std + s_mean - 0.4) / 0.2)
        torch.testing.assert_close(task.teacher_logits([x])[0], expected)
