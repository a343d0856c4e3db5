"""End-to-end runs of train_r2kd on Fashion-MNIST with tiny timm models."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml

from timm_r2kd.args import create_parser
from timm_r2kd.train import main

from conftest import FMNIST_DIR, HAS_DATA, needs_data

REPO = Path(__file__).resolve().parents[1]


def _base(tmp_path, experiment, *extra, samples=512, epochs=1):
    return [
        '--dataset', 'torch/fashion_mnist', '--data-dir', FMNIST_DIR,
        '--in-chans', '1', '--img-size', '28', '--num-classes', '10',
        '--train-num-samples', str(samples), '--val-num-samples', '256',
        '-b', '64', '--epochs', str(epochs), '--device', 'cpu', '--workers', '0',
        '--lr', '0.1', '--warmup-epochs', '0', '--sched', 'cosine', '--log-interval', '4',
        '--output', str(tmp_path), '--experiment', experiment, '--seed', '0', *extra,
    ]


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    """A resnet10t teacher trained by train_r2kd itself (no --teacher: plain timm training)."""
    if not HAS_DATA:
        pytest.skip(f'Fashion-MNIST missing in {FMNIST_DIR}')
    out = tmp_path_factory.mktemp('teacher')
    summary = main(_base(out, 'teacher', '--model', 'resnet10t', samples=2048, epochs=2))
    assert summary['best_metric'] > 50
    return os.path.join(summary['output_dir'], 'model_best.pth.tar')


def test_flag_parity_with_timm_train():
    _, parser = create_parser()
    options = {o for action in parser._actions for o in action.option_strings}
    flags = [line.strip() for line in open(REPO / 'tests' / 'data' / 'timm_train_flags.txt') if line.startswith('--')]
    assert len(flags) > 150
    assert [f for f in flags if f not in options] == []
    distill = ['--teacher', '--teacher-checkpoint', '--teacher-pretrained', '--no-teacher-pretrained', '--r2kd',
               '--kd-loss', '--r2kd-temperature', '--r2kd-value-weight', '--r2kd-rank-weight', '--r2kd-rank',
               '--prune-rate', '--prune-weight', '--prune-scope', '--kd-task-weight', '--r2kd-view',
               '--reference-parity', '--kd-model-name', '--kd-loss-type', '--allow-weak-teacher',
               '--eval-corruptions']
    assert [f for f in distill if f not in options] == []
    # timm's defaults are kept
    args = parser.parse_args([])
    assert (args.batch_size, args.opt, args.sched, args.epochs, args.smoothing, args.lr_base) == \
        (128, 'sgd', 'cosine', 300, 0.1, 0.1)


def test_help_lists_flags():
    out = subprocess.run([sys.executable, str(REPO / 'train_r2kd.py'), '--help'], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ('--r2kd-view', '--prune-weight', '--teacher-checkpoint', '--mixup-mode', '--kd-model-name'):
        assert flag in out.stdout


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('kd_loss', ['kl', 'dist', 'r2kd'])
def test_distil_with_each_loss(tmp_path, teacher_ckpt, kd_loss):
    summary = main(_base(tmp_path, kd_loss, '--model', 'test_resnet', '--teacher', 'resnet10t',
                         '--teacher-checkpoint', teacher_ckpt, '--kd-loss', kd_loss))
    out = Path(summary['output_dir'])
    assert {'args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar', 'run.json'} <= \
        {p.name for p in out.iterdir()}
    train = summary['results'][0]['train']
    assert train['kd_loss'] > 0 and train['task_loss'] > 0
    if kd_loss == 'r2kd':
        assert {'kd_value', 'kd_rank'} <= set(train)
        assert set(summary['teacher']) == {'teacher', 'pruned_teacher', 'teacher_blend'}
    # 4x chance: evaluated through the student's eval transform (another center crop than its own)
    assert summary['teacher']['teacher']['top1'] > 40
    # the student checkpoint is timm's format, with no teacher weights in it
    ckpt = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert not any(k.startswith(('teacher', 'pruned')) for k in ckpt['state_dict'])
    model = timm.create_model('test_resnet', num_classes=10, in_chans=1, checkpoint_path=str(out / 'last.pth.tar'))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@needs_data
def test_skipping_the_teacher_evaluation_changes_nothing_else(tmp_path, teacher_ckpt):
    """--no-teacher-eval saves the teacher's validation passes and trains the same student, weight for weight
    (training draws its randomness from (seed, epoch, step) alone: sampling.py)."""
    argv = ['--model', 'test_resnet', '--teacher', 'resnet10t', '--teacher-checkpoint', teacher_ckpt, '--r2kd']
    checked = main(_base(tmp_path, 'checked', *argv, samples=256))
    skipped = main(_base(tmp_path, 'skipped', *argv, '--no-teacher-eval', samples=256))
    assert set(checked['teacher']) == {'teacher', 'pruned_teacher', 'teacher_blend'} and skipped['teacher'] == {}
    weights = [torch.load(Path(s['output_dir']) / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
               for s in (checked, skipped)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert checked['results'][0]['validation']['top1'] == skipped['results'][0]['validation']['top1']


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('view', ['cutout', 'randaug'])
def test_r2kd_views_ema_and_corruptions(tmp_path, teacher_ckpt, view):
    summary = main(_base(tmp_path, view, '--model', 'test_resnet', '--teacher', 'resnet10t',
                         '--teacher-checkpoint', teacher_ckpt, '--r2kd', '--r2kd-view', view,
                         '--model-ema', '--model-ema-decay', '0.9', '--eval-corruptions'))
    val = summary['results'][0]['validation']
    keys = [f'top1_{c}_s{s}' for c in ('gaussian_noise', 'blur', 'contrast', 'jpeg') for s in (1, 2, 3)]
    for key in keys + ['top1_corrupt_mean', 'ema_top1']:
        assert 0 <= val[key] <= 100
    ckpt = torch.load(Path(summary['output_dir']) / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert 'state_dict_ema' in ckpt
    # the view reaches teacher and student: its KD term adds to the clean batch's (same seed, same batches)
    clean_only = main(_base(tmp_path, f'{view}_none', '--model', 'test_resnet', '--teacher', 'resnet10t',
                            '--teacher-checkpoint', teacher_ckpt, '--r2kd', '--r2kd-view', 'none'))
    with_view, without = summary['results'][0]['train'], clean_only['results'][0]['train']
    assert with_view['kd_loss'] > 1.4 * without['kd_loss']
    assert with_view['kd_value'] > 1.4 * without['kd_value'] and with_view['kd_rank'] > 1.4 * without['kd_rank']


@needs_data
@pytest.mark.slow
def test_corruptions_lower_a_trained_models_top1(tmp_path, teacher_ckpt):
    # the trained teacher, evaluated by the trainer (a learning rate too small to change it)
    summary = main(_base(tmp_path, 'robust', '--model', 'resnet10t', '--initial-checkpoint', teacher_ckpt,
                         '--lr', '1e-9', '--eval-corruptions'))
    val = summary['results'][0]['validation']
    assert val['top1'] > 40
    names = ('gaussian_noise', 'blur', 'contrast', 'jpeg')
    each = [val[f'top1_{name}_s{s}'] for name in names for s in (1, 2, 3)]
    assert val['top1_corrupt_mean'] == pytest.approx(sum(each) / 12)
    assert val['top1_corrupt_mean'] < val['top1'] - 2 and min(each) < val['top1'] - 10
    assert max(each) <= val['top1'] + 2
    # the strongest severity costs more than the mildest, summed over the corruptions
    assert sum(val[f'top1_{n}_s3'] for n in names) < sum(val[f'top1_{n}_s1'] for n in names)


@needs_data
def test_yaml_recipe(tmp_path):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'model': 'test_resnet', 'opt': 'adamw', 'weight_decay': 0.05,
                                      'smoothing': 0.0, 'epochs': 1}))
    summary = main(['-c', str(recipe)] + _base(tmp_path, 'yaml', samples=128))
    saved = yaml.safe_load(open(Path(summary['output_dir']) / 'args.yaml'))
    assert (saved['model'], saved['opt'], saved['weight_decay'], saved['smoothing']) == \
        ('test_resnet', 'adamw', 0.05, 0.0)


def _fails(argv, code=2):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code


@needs_data
@pytest.mark.parametrize('extra, message', [
    (['--model', 'no_such_model'], "Unknown model 'no_such_model'"),
    (['--model', 'test_resnet', '--teacher', 'no_such_teacher', '--no-teacher-pretrained'],
     "Unknown teacher model 'no_such_teacher'"),
    (['--model', 'test_resnet', '--r2kd'], 'Distillation needs a teacher'),
    (['--model', 'test_resnet', '--teacher', 'resnet10t', '--r2kd', '--batch-size', '1'],
     'needs at least 2 samples'),
    (['--model', 'test_resnet', '--teacher', 'resnet10t', '--teacher-checkpoint', '/nonexistent.pth'],
     'does not exist'),
    (['--model', 'test_resnet', '--teacher', 'resnet10t'],
     'Without network access'),
])
def test_bad_input_is_a_clear_error(tmp_path, caplog, extra, message):
    argv = _base(tmp_path, 'bad', *extra, samples=128)
    if '--batch-size' in extra:
        argv[argv.index('-b') + 1] = '1'
    _fails(argv)
    assert message in caplog.text


@needs_data
def test_random_teacher_stops_unless_allowed(tmp_path, caplog):
    argv = _base(tmp_path, 'weak', '--model', 'test_resnet', '--teacher', 'test_resnet', '--no-teacher-pretrained',
                 '--r2kd', samples=128)
    _fails(argv)
    assert 'no better than chance' in caplog.text
    summary = main(argv + ['--allow-weak-teacher'])
    assert summary['results']


@needs_data
def test_teacher_checkpoint_faults(tmp_path, caplog, teacher_ckpt):
    state = torch.load(teacher_ckpt, map_location='cpu', weights_only=False)['state_dict']
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(open(teacher_ckpt, 'rb').read()[:5000])
    other_classes = tmp_path / 'other.pth'
    torch.save({k: (v[:5] if k.startswith('fc.') else v) for k, v in state.items()}, other_classes)
    pickled = tmp_path / 'pickled.pth'
    torch.save({'state_dict': state, 'payload': subprocess.Popen}, pickled)
    cases = [
        (truncated, 'truncated or not a checkpoint', 'resnet10t'),
        (teacher_ckpt, 'does not fit', 'resnet18'),
        (other_classes, 'shape mismatch', 'resnet10t'),
        (pickled, 'truncated or not a checkpoint', 'resnet10t'),  # refused: never unpickled
    ]
    for path, message, arch in cases:
        caplog.clear()
        _fails(_base(tmp_path, 'fault', '--model', 'test_resnet', '--teacher', arch, '--teacher-checkpoint',
                     str(path), '--r2kd', samples=128))
        assert message in caplog.text, path


def test_empty_dataset_folder(tmp_path, caplog):
    empty = tmp_path / 'empty'
    empty.mkdir()
    _fails(['--model', 'test_resnet', '--data-dir', str(empty), '--device', 'cpu', '--output', str(tmp_path)])
    assert 'is empty' in caplog.text


@needs_data
@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, caplog, teacher_ckpt):
    good = main(_base(tmp_path, 'nan', '--model', 'test_resnet', '--teacher', 'resnet10t',
                      '--teacher-checkpoint', teacher_ckpt, '--kd-loss', 'kl', samples=256, epochs=2))
    last = Path(good['output_dir']) / 'last.pth.tar'
    state = torch.load(teacher_ckpt, map_location='cpu', weights_only=False)['state_dict']
    poisoned = tmp_path / 'nan_teacher.pth'
    torch.save({k: v.float() * float('nan') if v.is_floating_point() else v for k, v in state.items()}, poisoned)
    before = last.read_bytes()
    _fails(_base(tmp_path, 'nan', '--model', 'test_resnet', '--teacher', 'resnet10t', '--teacher-checkpoint',
                 str(poisoned), '--kd-loss', 'kl', '--allow-weak-teacher', '--resume', str(last), samples=256,
                 epochs=3), code=3)
    assert 'Loss is nan at epoch 2, step 0' in caplog.text
    assert last.read_bytes() == before  # nothing written over the last good checkpoint
    ckpt = torch.load(last, map_location='cpu', weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt['state_dict'].values() if v.is_floating_point())


@needs_data
@pytest.mark.slow
def test_kill_mid_epoch_then_resume(tmp_path, teacher_ckpt):
    argv = [sys.executable, str(REPO / 'train_r2kd.py')] + _base(
        tmp_path, 'killed', '--model', 'test_resnet', '--teacher', 'resnet10t', '--teacher-checkpoint', teacher_ckpt,
        '--r2kd', '--recovery-interval', '5', samples=4096, epochs=3)
    out = tmp_path / 'killed'
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        # generous: a loaded CI machine (or a benchmark beside the suite) can take minutes for the first epoch
        deadline = time.time() + 900
        while not (out / 'last.pth.tar').exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (out / 'last.pth.tar').exists(), 'first epoch never finished'
        time.sleep(1.5)  # well into the second epoch
        assert proc.poll() is None, 'run finished before it could be killed; make it longer'
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=False)
    assert ckpt['epoch'] == 0
    summary = main(_base(tmp_path, 'killed', '--model', 'test_resnet', '--teacher', 'resnet10t',
                         '--teacher-checkpoint', teacher_ckpt, '--r2kd', '--resume', str(out / 'last.pth.tar'),
                         samples=4096, epochs=3))
    assert [r['epoch'] for r in summary['results']] == [1, 2]
    lines = (out / 'summary.csv').read_text().strip().splitlines()
    assert [line.split(',')[0] for line in lines[1:]] == ['0', '1', '2']


@needs_data
@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path, teacher_ckpt):
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={port}',
           '--master_addr=127.0.0.1',
           str(REPO / 'train_r2kd.py')] + _base(
        tmp_path, 'ddp', '--model', 'test_resnet', '--teacher', 'resnet10t', '--teacher-checkpoint', teacher_ckpt,
        '--r2kd', samples=512)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'process 0 of 2' in done.stderr or 'process 0 of 2' in done.stdout
    assert (tmp_path / 'ddp' / 'last.pth.tar').exists()
    sync_bn = subprocess.run(cmd + ['--sync-bn', '--experiment', 'ddp_sync'], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=300)
    assert sync_bn.returncode != 0 and 'SyncBatchNorm does not run on CPU' in sync_bn.stderr


def test_teacher_bn_folding_keeps_logits():
    from timm_r2kd.teacher import PrunedTeacher
    from timm_r2kd.teacher import fuse_batchnorm
    model = timm.create_model('resnet10t', num_classes=10)
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():  # trained-looking statistics: a fold that ignores any of them changes the logits
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
            m.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=generator) * 0.3)
    teacher = PrunedTeacher(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = teacher(x)
        fuse_batchnorm(teacher)
        after = teacher(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
