import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.task import DistillationTeacher

from timm_r2kd import PrunedTeacher, l1_prune
from timm_r2kd.pruning import prunable_weights


def _teacher_model():
    return timm.create_model('test_resnet', num_classes=10)


def test_layer_pruning_exact_sparsity_and_l1_criterion():
    model = _teacher_model()
    original = copy.deepcopy(model)
    l1_prune(model, 0.1, 'layer')
    layers = prunable_weights(model)
    assert layers
    originals = dict(original.named_modules())
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        w, w0 = module.weight, originals[name].weight
        pruned = w == 0
        assert int(pruned.sum()) == round(0.1 * w.numel())
        # every zeroed weight was no larger in magnitude than every kept one
        assert w0[pruned].abs().max() <= w0[~pruned].abs().min()
        torch.testing.assert_close(w[~pruned], w0[~pruned])
        assert not hasattr(module, 'weight_orig')  # pruning made permanent


def test_global_pruning_uses_one_threshold():
    model = _teacher_model()
    original = copy.deepcopy(model)
    l1_prune(model, 0.3, 'global')
    pruned = torch.cat([m.weight.flatten() == 0 for m, _ in prunable_weights(model)])
    w0 = torch.cat([m.weight.flatten() for m, _ in prunable_weights(original)])
    assert int(pruned.sum()) == round(0.3 * w0.numel())
    assert w0[pruned].abs().max() <= w0[~pruned].abs().min()
    per_layer = [float((m.weight == 0).float().mean()) for m, _ in prunable_weights(model)]
    assert max(per_layer) - min(per_layer) > 0.05  # layers differ, unlike layer scope


def test_pruned_teacher_blend_and_dense_untouched():
    model = _teacher_model()
    dense_state = copy.deepcopy(model.state_dict())
    teacher = PrunedTeacher(model, prune_rate=0.2, teacher_weight=0.7)
    for k, v in teacher.model.state_dict().items():
        torch.testing.assert_close(v, dense_state[k])
    assert isinstance(teacher, DistillationTeacher)
    assert teacher.sparsity() == pytest.approx(0.2, abs=1e-3)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = 0.7 * teacher.model(x) + 0.3 * teacher.pruned_model(x)
        torch.testing.assert_close(teacher(x), expected)
        assert not torch.allclose(teacher.model(x), teacher.pruned_model(x))
    assert all(not p.requires_grad for p in teacher.parameters())


def test_teacher_stays_in_eval_mode():
    teacher = PrunedTeacher(_teacher_model())
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    parity = PrunedTeacher(_teacher_model(), reference_parity=True)
    parity.train()
    assert not any(m.training for m in parity.model.modules())
    assert all(m.training for m in parity.pruned_model.modules())
    parity.eval()
    assert not any(m.training for m in parity.modules())


def test_teacher_weight_one_disables_pruned_copy():
    teacher = PrunedTeacher(_teacher_model(), teacher_weight=1.0)
    assert teacher.pruned_model is None and teacher.sparsity() == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), teacher.model(x))


def test_teacher_by_name_without_pretrained_weights():
    teacher = PrunedTeacher('test_resnet', num_classes=7, in_chans=1, pretrained=False)
    assert teacher.num_classes == 7
    with torch.no_grad():
        assert teacher(torch.randn(2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize('kwargs, match', [
    (dict(prune_rate=1.0), 'prune rate'),
    (dict(prune_rate=-0.1), 'prune rate'),
    (dict(teacher_weight=1.5), 'teacher_weight'),
    (dict(prune_scope='channel'), 'prune scope'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrunedTeacher(_teacher_model(), **kwargs)


def test_model_without_prunable_layers():
    with pytest.raises(ValueError, match='no Conv or Linear'):
        PrunedTeacher(nn.Sequential(nn.Flatten(), nn.Identity()))


def test_pruning_channels_last_weights():
    model = _teacher_model().to(memory_format=torch.channels_last)
    reference = l1_prune(copy.deepcopy(model).to(memory_format=torch.contiguous_format), 0.1)
    l1_prune(model, 0.1)
    conv = model.conv1[0] if isinstance(model.conv1, nn.Sequential) else model.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for (m, _), (r, _) in zip(prunable_weights(model), prunable_weights(reference)):
        torch.testing.assert_close(m.weight, r.weight)
