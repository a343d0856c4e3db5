"""Hub export and upload, offline: local round trips and a local stand-in for the Hub API."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_data_config

from timm_r2kd.hub import HubPushError, build_student, push_folder, save_hf
from timm_r2kd.train import main

from conftest import FMNIST_DIR, needs_data
from fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]
TOKEN = 'hf_FakeTokenForTests0123456789'
pytestmark = needs_data


@pytest.fixture(autouse=True)
def _lfs_not_xet(monkeypatch):
    # the stand-in speaks the Hub's LFS protocol, not Xet (which huggingface_hub prefers with hf_xet)
    monkeypatch.setattr('huggingface_hub.constants.HF_HUB_DISABLE_XET', True)
    monkeypatch.setenv('HF_HUB_DISABLE_XET', '1')


def _argv(out, experiment, *extra, samples=1024):
    return ['--dataset', 'torch/fashion_mnist', '--data-dir', FMNIST_DIR, '--in-chans', '1',
            '--img-size', '28', '--num-classes', '10', '--train-num-samples', str(samples), '--val-num-samples', '256',
            '-b', '64', '--epochs', '1', '--device', 'cpu', '--workers', '0', '--lr', '0.1', '--warmup-epochs', '0',
            '--output', str(out), '--experiment', experiment, '--seed', '0', *extra]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A short distillation run: teacher, then an R2KD student with EMA, corruptions and --save-hf."""
    out = tmp_path_factory.mktemp('hub')
    teacher = main(_argv(out, 'teacher', '--model', 'test_resnet', samples=2048))
    student = main(_argv(out, 'student', '--model', 'test_resnet', '--teacher', 'test_resnet', '--teacher-checkpoint',
                         os.path.join(teacher['output_dir'], 'last.pth.tar'), '--r2kd', '--model-ema',
                         '--model-ema-decay', '0.5', '--eval-corruptions', '--save-hf', str(out / 'export')))
    return student


def test_round_trip_through_timm_local_dir(run):
    export = Path(run['export_dir'])
    assert {'model.safetensors', 'config.json', 'README.md', 'args.yaml'} <= {p.name for p in export.iterdir()}
    loaded = timm.create_model(f'local-dir:{export}', pretrained=True).eval()
    original, info, use_ema = build_student(os.path.join(run['output_dir'], 'model_best.pth.tar'))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x))
    config = resolve_data_config({}, model=loaded)
    trained = run['data_config']
    assert config['input_size'] == tuple(trained['input_size'])
    assert tuple(config['mean']) == tuple(trained['mean']) and tuple(config['std']) == tuple(trained['std'])
    assert config['interpolation'] == trained['interpolation'] and config['crop_pct'] == trained['crop_pct']


def test_loads_with_plain_timm_in_a_new_process(run):
    code = ('import timm, torch; m = timm.create_model("local-dir:%s", pretrained=True).eval(); '
            'print(m(torch.zeros(1, 1, 28, 28)).shape[-1], m.pretrained_cfg["label_names"][0])' % run['export_dir'])
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd='/')
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['10', 'T-shirt/top']


def test_config_and_card_contents(run):
    export = Path(run['export_dir'])
    config = json.loads((export / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['num_classes'] == 10
    assert config['label_names'][9] == 'Ankle boot'
    for stale in ('tag', 'license', 'paper_ids', 'paper_name', 'origin_url', 'hf_hub_id', 'notes'):
        assert stale not in config['pretrained_cfg'], stale
    card = (export / 'README.md').read_text()
    teacher_top1 = run['teacher']['teacher']['top1']
    for needle in ('test_resnet', 'Teacher:** `test_resnet`', f'{teacher_top1:.2f}%', 'rate 0.1', 'dense weight 0.7',
                   'R2KD, temperature 4.0, value weight 2.0, rank weight 2.0', 'Augmented view:** cutmix',
                   'fashion_mnist', 'first 1024 samples', 'top-1', 'gaussian_noise', 'python train_r2kd.py',
                   'timm-r2kd', 'torch', 'kim2024r2kd', 'rw2019timm', 'Epochs:** 1 scheduled'):
        assert needle in card, needle


def test_card_says_what_was_not_measured(tmp_path):
    summary = main(_argv(tmp_path, 'plain', '--model', 'test_resnet', samples=256))
    folder = save_hf(os.path.join(summary['output_dir'], 'last.pth.tar'), str(tmp_path / 'plain_export'))
    card = (folder / 'README.md').read_text()
    assert 'Robustness: not measured' in card and 'without a teacher' in card


def _files(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


def test_push_uploads_the_folder_without_leaking_the_token(run, caplog, tmp_path):
    export = run['export_dir']
    before = _files(export)
    with FakeHub() as hub:
        url = push_folder(export, 'me/student', token=TOKEN, private=True, endpoint=hub.endpoint, timeout=60)
    assert 'me/student' in url
    assert hub.repos['me/student']['private'] is True
    assert hub.files('me/student') == before  # exactly the exported files
    assert any(h.get('authorization') == f'Bearer {TOKEN}' or h.get('Authorization') == f'Bearer {TOKEN}'
               for _, _, h in hub.requests)
    assert _files(export) == before
    # the token is nowhere on disk or in the logs
    for path in list(Path(run['output_dir']).rglob('*')) + list(Path(export).rglob('*')):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text


@pytest.mark.parametrize('mode, message', [
    ('401', 'not authenticated (401)'),
    ('403', 'forbidden (403)'),
    ('409', 'conflict (409)'),
    ('wrong-type', 'not found as a model repository'),
    ('hang', 'no answer within 2 s'),
])
def test_failed_push_keeps_the_export(run, mode, message):
    export = run['export_dir']
    before = _files(export)
    with FakeHub(mode) as hub:
        with pytest.raises(HubPushError) as exc:
            push_folder(export, 'me/student', token=TOKEN, endpoint=hub.endpoint, timeout=2)
    text = str(exc.value)
    assert message in text and export in text and 'python -m timm_r2kd.hub push' in text
    assert TOKEN not in text
    assert _files(export) == before


def test_push_without_network(run):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    with pytest.raises(HubPushError, match='no connection to the Hub'):
        push_folder(run['export_dir'], 'me/student', token=TOKEN, endpoint=f'http://127.0.0.1:{port}', timeout=30)


def test_trainer_push_and_failed_push_exit_code(tmp_path, run):
    teacher_ckpt = Path(run['output_dir']).parent / 'teacher' / 'last.pth.tar'
    def cmd(experiment):
        return [sys.executable, str(REPO / 'train_r2kd.py')] + _argv(
            tmp_path, experiment, '--model', 'test_resnet', '--teacher', 'test_resnet', '--teacher-checkpoint',
            str(teacher_ckpt), '--r2kd', '--push-to-hub', 'me/pushed', '--hub-token-env', 'MY_HUB_TOKEN',
            samples=256)
    with FakeHub() as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, MY_HUB_TOKEN=TOKEN)
        done = subprocess.run(cmd('pushed'), capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert {'model.safetensors', 'config.json', 'README.md'} <= set(hub.files('me/pushed'))
    assert TOKEN not in done.stdout + done.stderr
    with FakeHub('403') as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, MY_HUB_TOKEN=TOKEN)
        failed = subprocess.run(cmd('refused'), capture_output=True, text=True, env=env, timeout=300)
    assert failed.returncode == 4
    assert 'forbidden (403)' in failed.stderr and str(tmp_path / 'refused' / 'hf_export') in failed.stderr
    assert (tmp_path / 'refused' / 'hf_export' / 'model.safetensors').is_file()
    assert TOKEN not in failed.stdout + failed.stderr


def test_push_goes_through_lfs_and_hf_hub_loading_reproduces_the_student(run, tmp_path):
    export = run['export_dir']
    student, _, _ = build_student(os.path.join(run['output_dir'], 'model_best.pth.tar'))
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = student(x)
    torch.save(x, tmp_path / 'x.pt')
    with FakeHub() as hub:
        push_folder(export, 'me/student', token=TOKEN, endpoint=hub.endpoint, timeout=60)
        # the weights took the LFS route: batch API, PUT of the content, pointer in the commit
        assert hub.lfs_uploads == [('me/student', 'model.safetensors')]
        assert any('.git/info/lfs/objects/batch' in p for _, p, _ in hub.requests)
        assert hub.files('me/student')['model.safetensors'] == (Path(export) / 'model.safetensors').read_bytes()
        code = ('import sys, timm, torch; m = timm.create_model("hf-hub:me/student", pretrained=True).eval(); '
                'x = torch.load(sys.argv[1]); torch.save(m(x).detach(), sys.argv[2]); '
                'print(m.pretrained_cfg["label_names"][9])')
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / 'hf_home'), HF_HUB_OFFLINE='0')
        done = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'x.pt'), str(tmp_path / 'y.pt')],
                              capture_output=True, text=True, env=env, cwd='/', timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split('\n')[0] == 'Ankle boot'
    assert any(m == 'GET' and '/me/student/resolve/main/model.safetensors' in p for m, p, _ in hub.requests)
    torch.testing.assert_close(torch.load(tmp_path / 'y.pt'), expected)


def test_hub_command_pushes_a_checkpoint_to_a_branch(run, tmp_path):
    checkpoint = os.path.join(run['output_dir'], 'model_best.pth.tar')
    with FakeHub() as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, MY_HUB_TOKEN=TOKEN, HF_HUB_DISABLE_XET='1')
        done = subprocess.run(
            [sys.executable, '-m', 'timm_r2kd.hub', 'push', checkpoint, 'me/cli', '--revision', 'dev', '--token-env',
             'MY_HUB_TOKEN', '--save-dir', str(tmp_path / 'cli_export')],
            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert hub.files('me/cli', 'main') == {}  # everything landed on the branch
        dev = hub.files('me/cli', 'dev')
        assert dev == _files(tmp_path / 'cli_export')
        assert {'model.safetensors', 'config.json', 'README.md', 'args.yaml'} <= set(dev)
    assert TOKEN not in done.stdout + done.stderr


def test_trainer_hub_revision_lands_on_the_branch(tmp_path, run):
    teacher_ckpt = Path(run['output_dir']).parent / 'teacher' / 'last.pth.tar'
    with FakeHub() as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint, MY_HUB_TOKEN=TOKEN, HF_HUB_DISABLE_XET='1')
        done = subprocess.run([sys.executable, str(REPO / 'train_r2kd.py')] + _argv(
            tmp_path, 'branch', '--model', 'test_resnet', '--teacher', 'test_resnet', '--teacher-checkpoint',
            str(teacher_ckpt), '--r2kd', '--push-to-hub', 'me/branched', '--hub-token-env', 'MY_HUB_TOKEN',
            '--hub-revision', 'experiment-1', samples=256), capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert hub.files('me/branched', 'main') == {}
        assert 'model.safetensors' in hub.files('me/branched', 'experiment-1')


def test_card_metadata_parses_with_huggingface_hub(run):
    from huggingface_hub import ModelCard
    card = ModelCard.load(Path(run['export_dir']) / 'README.md')
    assert card.data.library_name == 'timm' and card.data.pipeline_tag == 'image-classification'
    assert {'timm', 'knowledge-distillation', 'r2kd'} <= set(card.data.tags)
    assert card.data.datasets == ['fashion_mnist']
    assert card.text.lstrip().startswith('# ')
