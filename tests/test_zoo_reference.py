"""Our CIFAR architectures compute what the KD community's definitions compute.

``data/zoo_reference.json`` was produced by running the community's own model code (RepDistiller
``models/``, which mdistiller and the R2KD release share) on deterministic weights and inputs; the
rule that makes them from the state-dict key names is in ``_community_value`` below (and in the
README shipped with the data). Each community state dict goes through our checkpoint converter
into our model, which must then reproduce the community's logits.
"""
import json
import math
import pathlib
import zlib

import pytest
import timm
import torch

import timm_r2kd  # noqa: F401  registers the models
from timm_r2kd.models import convert_kd_checkpoint
from timm_r2kd.teacher import create_teacher_model

REFERENCE = json.loads((pathlib.Path(__file__).parent / 'data' / 'zoo_reference.json').read_text())['models']


def _our_name(arch: str) -> str:
    # timm owns the ImageNet vgg names, so ours carry a cifar_ prefix
    return f'cifar_{arch}' if arch.startswith('vgg') else arch


def _uniform(key: str, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    return torch.rand(shape, dtype=torch.float64, generator=generator)


def _community_value(key: str, shape) -> torch.Tensor:
    if key.endswith('num_batches_tracked'):
        return torch.zeros(shape, dtype=torch.long)
    u = _uniform(key, shape)
    if key.endswith('running_var'):
        return 0.5 + u
    if key.endswith('running_mean'):
        return 0.2 * (u - 0.5)
    if len(shape) >= 2:
        fan_in = math.prod(shape) / shape[0]
        return (2 * u - 1) * math.sqrt(6 / fan_in)
    if key.endswith('weight'):
        return 0.75 + 0.5 * u
    assert key.endswith('bias'), key
    return 0.2 * (u - 0.5)


def _community_checkpoint(arch: str) -> dict:
    """A checkpoint as RepDistiller saves it: 'model' key, DataParallel prefix, community key names."""
    state = {f'module.{k}': _community_value(k, shape) for k, shape in REFERENCE[arch]['keys']}
    return {'model': state, 'epoch': 240}


def _input(size: int) -> torch.Tensor:
    return (2 * _uniform(f'input{size}', (2, 3, size, size)) - 1) * 1.7


def _assert_logits(ours: torch.Tensor, reference) -> None:
    reference = torch.tensor(reference, dtype=torch.float64)
    scale = reference.abs().max()
    error = (ours - reference).abs().max() / scale
    assert error < 1e-6, f'max error {error:.3g} relative to the largest logit {scale:.3g}'


@pytest.mark.parametrize('arch', sorted(REFERENCE))
def test_architecture_matches_community(arch):
    ref = REFERENCE[arch]
    model = timm.create_model(_our_name(arch), num_classes=100).double().eval()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ref['params']
    model.load_state_dict(convert_kd_checkpoint(_community_checkpoint(arch), model), strict=True)
    with torch.no_grad():
        _assert_logits(model(_input(32)), ref['logits32'])
        if ref['logits64'] is not None:
            _assert_logits(model(_input(64)), ref['logits64'])


def test_community_shufflenet_v2_loads_as_teacher_checkpoint(tmp_path):
    # what --teacher-checkpoint does with a file saved by RepDistiller/mdistiller
    path = tmp_path / 'ShuffleV2_best.pth'
    torch.save(_community_checkpoint('shufflenet_v2'), path)
    model = create_teacher_model('shufflenet_v2', 100, 3, checkpoint_path=str(path)).double().eval()
    with torch.no_grad():
        _assert_logits(model(_input(32)), REFERENCE['shufflenet_v2']['logits32'])
