"""The CIFAR architectures of the KD literature, registered with timm."""
import os

import pytest
import timm
import torch

import timm_r2kd  # noqa: F401  registers the models
from timm_r2kd.models import convert_kd_checkpoint
from timm_r2kd.teacher import TeacherError, load_weights

from conftest import FMNIST_DIR, needs_data

# exact parameter counts and outputs against the community's definitions: test_zoo_reference.py
NAMES = ['resnet8', 'resnet14', 'resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110', 'resnet8x4', 'resnet32x4',
         'wrn_16_1', 'wrn_16_2', 'wrn_40_1', 'wrn_40_2', 'cifar_vgg8', 'cifar_vgg11', 'cifar_vgg13', 'cifar_vgg16',
         'cifar_vgg19', 'mobilenetv2', 'shufflenet_v1', 'shufflenet_v2']


@pytest.mark.parametrize('name', NAMES)
def test_model_interface(name, tmp_path):
    model = timm.create_model(name)
    assert model.num_classes == 100 and model.pretrained_cfg['input_size'] == (3, 32, 32)
    assert model.pretrained_cfg['mean'] == (0.5071, 0.4865, 0.4409)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 100)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    feats = model.forward_features(x)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(10)
    assert model(x).shape == (2, 10) and model.get_classifier().out_features == 10
    path = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    reloaded = timm.create_model(name, num_classes=10, checkpoint_path=str(path)).eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))


@pytest.mark.parametrize('name', ['resnet8x4', 'wrn_16_2', 'cifar_vgg8'])
def test_features_only(name):
    model = timm.create_model(name, features_only=True)
    feats = model(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [32 // f.shape[-1] for f in feats] == model.feature_info.reduction()


def _reference_layout(name, model):
    """A state dict laid out as RepDistiller/mdistiller save them: DataParallel prefix, 'model' key."""
    state = {}
    for key, value in model.state_dict().items():
        if name == 'mobilenetv2' and key.startswith('classifier.'):
            key = key.replace('classifier.', 'classifier.0.')
        if not key.endswith('num_batches_tracked'):  # older checkpoints have no counters
            state['module.' + key] = value.clone()
    return {'model': state, 'epoch': 240, 'best_acc': 75.5}


def test_converter_names_what_does_not_fit():
    checkpoint = _reference_layout('resnet8x4', timm.create_model('resnet8x4'))
    with pytest.raises(ValueError, match=r'unexpected: layer1\.0\.downsample.*shape mismatch'):
        convert_kd_checkpoint(checkpoint, timm.create_model('resnet8'))
    del checkpoint['model']['module.fc.bias']
    with pytest.raises(ValueError, match=r'missing: fc\.bias'):
        convert_kd_checkpoint(checkpoint, timm.create_model('resnet8x4'))


def test_teacher_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / 'teacher.pth'
    torch.save(_reference_layout('resnet32x4', timm.create_model('resnet32x4')), path)
    with pytest.raises(TeacherError, match='does not fit WideResNet'):
        load_weights(timm.create_model('wrn_40_2'), str(path))


def test_names_do_not_shadow_timm():
    # timm's ImageNet VGGs stay what they were
    assert type(timm.create_model('vgg11', pretrained=False)).__module__ == 'timm.models.vgg'


RECIPES = sorted(str(p.relative_to(p.parents[2])) for p in
                 __import__('pathlib').Path(__file__).resolve().parents[1].glob('configs/*/*.yaml'))


def test_every_pair_has_a_baseline_twin():
    assert len(RECIPES) == 28
    for recipe in RECIPES:
        if not recipe.endswith('_kl.yaml'):
            assert recipe.replace('.yaml', '_kl.yaml') in RECIPES


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('recipe', RECIPES)
def test_recipe_runs_one_tiny_step(recipe, tmp_path):
    import yaml

    from timm_r2kd.train import main
    root = __import__('pathlib').Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load(open(root / recipe))
    assert cfg['kd_loss'] in ('r2kd', 'kl') and timm.is_model(cfg['model'])
    # CIFAR/ImageNet are not on this machine: the same recipe on a few Fashion-MNIST images
    summary = main(['-c', str(root / recipe), '--dataset', 'torch/fashion_mnist', '--data-dir', FMNIST_DIR,
                    '--num-classes', '10', '--img-size', '32', '--train-split', 'train', '--val-split', 'validation',
                    '--train-num-samples', '8', '--val-num-samples', '8', '-b', '4', '--epochs', '1', '--device', 'cpu',
                    '--workers', '0', '--no-teacher-pretrained', '--allow-weak-teacher', '--output', str(tmp_path),
                    '--experiment', 'recipe'])
    assert summary['args']['model'] == cfg['model'] and summary['args']['lr'] == cfg['lr']
    assert summary['results'][0]['train']['loss'] > 0
    # the optimizer that ran is the recipe's: SGD with its momentum and weight decay (timm exempts
    # biases and norm weights from decay, so one parameter group carries it)
    state = torch.load(os.path.join(summary['output_dir'], 'last.pth.tar'), map_location='cpu', weights_only=False)
    groups = state['optimizer']['param_groups']
    assert cfg['opt'] == 'sgd' and all('dampening' in g and g['momentum'] == cfg['momentum'] for g in groups)
    assert sorted({g['weight_decay'] for g in groups}) == [0.0, cfg['weight_decay']]
