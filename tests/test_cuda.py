"""The CUDA-only paths (run by bench/gpu.sh on a lent GPU; skipped without CUDA)."""
import copy

import pytest
import timm
import torch

from timm_r2kd import PrunedTeacher, R2KDLoss, R2KDTask
from timm_r2kd.views import create_batch_view

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')]
DEVICE = torch.device('cuda')


def _pair(num_classes=10):
    torch.manual_seed(0)
    student = timm.create_model('resnet18', num_classes=num_classes).to(DEVICE)
    teacher = timm.create_model('resnet34', num_classes=num_classes).to(DEVICE).eval()
    return student, teacher


def _batch(n=16, size=64):
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(n, 3, size, size, device=DEVICE, generator=generator)
    return x, torch.randint(0, 10, (n,), device=DEVICE, generator=generator)


def _task(student, teacher, **kwargs):
    view = create_batch_view('cutout', 10)
    return R2KDTask(student, teacher, view_transform=view, verbose=False, device=DEVICE, **kwargs)


def test_cuda_default_batches_views_and_matches_per_view_calls():
    student, teacher = _pair()
    x, y = _batch()
    views = [x, x.flip(-1)]
    batched = _task(student, teacher, batch_views=None).eval()  # the CUDA default
    split = _task(student, teacher, batch_views=False).eval()
    for a, b in zip(batched.teacher_logits(views), split.teacher_logits(views)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_reference_parity_calls_teachers_per_view_even_when_batched():
    student, teacher = _pair()
    x, y = _batch()
    results = []
    for batch_views in (True, False):
        task = _task(copy.deepcopy(student), copy.deepcopy(teacher), batch_views=batch_views,
                     reference_parity=True).train()
        torch.manual_seed(1)
        results.append(task(x, y)['loss'].item())
    assert results[0] == pytest.approx(results[1], rel=1e-5)


def test_loss_stays_float32_under_bf16_autocast():
    student, teacher = _pair()
    x, y = _batch()
    task = _task(student, teacher).train()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = task(x, y)
    assert out['output'].dtype == torch.bfloat16  # the student ran in bf16
    assert out['kd_loss'].dtype == torch.float32 and out['loss'].dtype == torch.float32
    out['loss'].backward()
    z = torch.randn(8, 1000, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = R2KDLoss()(z, torch.randn(8, 1000, device=DEVICE, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_channels_last_pruned_teacher_equals_contiguous():
    _, teacher = _pair()
    x, _ = _batch()
    contiguous = PrunedTeacher(copy.deepcopy(teacher))
    channels_last = PrunedTeacher(copy.deepcopy(teacher).to(memory_format=torch.channels_last))
    for a, b in zip(contiguous.pruned_model.parameters(), channels_last.pruned_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(channels_last(x.contiguous(memory_format=torch.channels_last)), contiguous(x),
                                   rtol=1e-3, atol=1e-3)


def test_compiled_student_and_teachers_match_eager():
    student, teacher = _pair()
    x, y = _batch()
    eager = _task(copy.deepcopy(student), copy.deepcopy(teacher), batch_views=True).eval()
    compiled = _task(copy.deepcopy(student), copy.deepcopy(teacher), batch_views=True).eval()
    compiled.compile()
    with torch.no_grad():
        torch.manual_seed(2)
        expected = eager(x, y)
        torch.manual_seed(2)
        got = compiled(x, y)
    for key in ('loss', 'kd_value', 'kd_rank', 'task_loss'):
        torch.testing.assert_close(got[key], expected[key], rtol=2e-3, atol=2e-3)
