"""Augmented views: which policy each view runs."""
import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import AutoAugment, AutoAugmentPolicy

from timm_r2kd.train import _autoaug_policy
from timm_r2kd.views import create_image_view


@pytest.mark.parametrize('dataset, policy', [('torch/cifar100', 'cifar10'), ('torch/CIFAR10', 'cifar10'),
                                             ('', 'imagenet'), ('torch/fashion_mnist', 'imagenet')])
def test_autoaug_policy_follows_the_reference_per_dataset(dataset, policy):
    args = argparse.Namespace(dataset=dataset, r2kd_autoaug_policy='auto')
    assert _autoaug_policy(args) == policy
    args.r2kd_autoaug_policy = 'imagenet'
    assert _autoaug_policy(args) == 'imagenet'


def test_cifar10_autoaug_view_is_torchvisions_cifar10_policy():
    view = create_image_view('autoaug', 32, (0.5, 0.5, 0.5), autoaug_policy='cifar10')
    assert isinstance(view, AutoAugment) and view.policy == AutoAugmentPolicy.CIFAR10
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    torch.manual_seed(0)
    changed = sum(not np.array_equal(np.asarray(view(img)), np.asarray(img)) for _ in range(20))
    assert changed >= 10  # each sub-policy applies its ops with probability; most draws change the image
    gray = create_image_view('autoaug', 28, (0.29,), in_chans=1, autoaug_policy='cifar10')
    assert np.asarray(gray(img.convert('L'))).shape == (32, 32)
    with pytest.raises(ValueError, match='AutoAugment policy'):
        create_image_view('autoaug', 32, (0.5,) * 3, autoaug_policy='svhn')
