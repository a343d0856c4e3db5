"""Bad or awkward input to train_r2kd and the hub command: one clear sentence, early, nothing lost."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from timm_r2kd.hub import main as hub_main
from timm_r2kd.train import main

from conftest import needs_data
from test_train import REPO, _base

TOKEN = 'hf_' + 'AbCdEfGhIjKlMnOpQrStUvWx12'


def _refused(argv, caplog, message, code=2):
    caplog.clear()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    assert message in caplog.text, caplog.text[-2000:]


def _run(tmp_path, experiment='bad', *extra):
    return _base(tmp_path, experiment, '--model', 'test_resnet', *extra, samples=128)


@needs_data
@pytest.mark.parametrize('extra, message', [
    (['--eval-corruptions', 'fog'], "Unexpected argument 'fog'"),
    (['--lr', '0'], '--lr must be above 0'),
    (['--lr', 'nan'], "--lr nan is not a finite number"),
    (['--r2kd-temperature', '0'], '--r2kd-temperature must be above 0'),
    (['--r2kd-temperature', 'nan'], 'is not a finite number'),
    (['--prune-weight', 'nan'], '--prune-weight nan is not a finite number'),
    (['--batch-size', '0'], '--batch-size must be at least 1'),
    (['--train-num-samples', '-5'], '--train-num-samples must be at least 1'),
    (['--push-to-hub', 'bad repo id!!'], "--push-to-hub 'bad repo id!!' is not a Hub repository id"),
    (['--push-to-hub', 'me/student', '--hub-token-env', 'R2KD_UNSET_VARIABLE'], 'that environment variable is empty'),
    (['--dataset', 'torch/fashon_mnist'], "unknown torchvision dataset 'fashon_mnist'"),
    (['--dataset', 'fashion_mnist'], "has no type prefix: use e.g. 'torch/fashion_mnist'"),
    (['--num-classes', '5'], '--num-classes 5 is below the 10 classes'),
])
def test_bad_flag_is_one_sentence_and_no_run_folder(tmp_path, caplog, extra, message):
    argv = _run(tmp_path)
    for flag in ('--batch-size', '--train-num-samples', '--num-classes'):
        if flag in extra:  # replace the base value instead of adding a second one
            short = {'--batch-size': '-b'}.get(flag, flag)
            argv[argv.index(short) + 1] = extra[extra.index(flag) + 1]
            extra = [e for i, e in enumerate(extra) if e != flag and (i == 0 or extra[i - 1] != flag)]
    _refused(argv + extra, caplog, message)
    if '--num-classes' not in message:  # that one is known only once the dataset is read
        assert not (tmp_path / 'bad').exists()


@needs_data
def test_token_pasted_as_variable_name_is_refused_and_never_recorded(tmp_path, caplog):
    _refused(_run(tmp_path, 'tok', '--push-to-hub', 'me/student', '--hub-token-env', TOKEN), caplog,
             'not the token itself')
    assert TOKEN not in caplog.text
    assert not (tmp_path / 'tok').exists()


def test_yaml_values_are_checked_like_flags(tmp_path, caplog):
    recipe = tmp_path / 'recipe.yaml'
    recipe.write_text(yaml.safe_dump({'r2kd_view': 'bogus'}))
    _refused(['-c', str(recipe), '--model', 'test_resnet', '--output', str(tmp_path)], caplog,
             "--r2kd-view 'bogus' is not one of")
    recipe.write_text('lr: 5e-4\nepochs: "3"\n')  # PyYAML reads 5e-4 as text; argparse would convert it
    from timm_r2kd.args import parse_args
    args, _ = parse_args(['-c', str(recipe), '--dataset', 'torch/cifar10', '--dataset-download', '--data-dir',
                          str(tmp_path), '--output', str(tmp_path)])
    assert args.lr == 5e-4 and args.epochs == 3


def test_data_folder_errors(tmp_path, caplog):
    _refused(['--model', 'test_resnet', '--data-dir', str(tmp_path / 'missing'), '--output', str(tmp_path)], caplog,
             "--data-dir '" + str(tmp_path / 'missing') + "' does not exist")
    empty = tmp_path / 'empty'
    empty.mkdir()
    _refused(['--dataset', 'torch/fashion_mnist', '--data-dir', str(empty), '--output', str(tmp_path)], caplog,
             f"--data-dir '{empty}' holds no torch/fashion_mnist idx files for split 'train'")


def test_output_under_a_file_is_refused(tmp_path, caplog):
    blocker = tmp_path / 'file.txt'
    blocker.write_text('mine')
    _refused(['--dataset', 'torch/cifar10', '--dataset-download', '--data-dir', str(tmp_path),
              '--output', str(blocker / 'runs'), '--experiment', 'x'], caplog, 'is a file, not a folder')
    assert blocker.read_text() == 'mine'


@needs_data
def test_corrupt_resume_file(tmp_path, caplog):
    bad = tmp_path / 'last.pth.tar'
    bad.write_bytes(b'not a checkpoint')
    _refused(_run(tmp_path, 'resume', '--resume', str(bad)), caplog, 'cannot be read')


@needs_data
def test_second_run_on_the_same_experiment_is_refused(tmp_path, caplog):
    first = main(_run(tmp_path, 'same'))
    out = Path(first['output_dir'])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _refused(_run(tmp_path, 'same'), caplog, 'already holds a run')
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # resuming from that folder is what it allows
    resumed = main(_run(tmp_path, 'same', '--resume', str(out / 'last.pth.tar'), '--epochs', '2'))
    assert [r['epoch'] for r in resumed['results']] == [1]


@needs_data
def test_export_never_replaces_other_files(tmp_path, caplog):
    busy = tmp_path / 'busy'
    busy.mkdir()
    (busy / 'notes.txt').write_text('keep me')
    _refused(_run(tmp_path, 'x1', '--save-hf', str(busy)), caplog, 'holding other files')
    assert (busy / 'notes.txt').read_text() == 'keep me'
    summary = main(_run(tmp_path, 'x2', '--save-hf', str(tmp_path / 'export')))
    run_dir = Path(summary['output_dir'])
    # into the run folder: refused, the run's files stay
    _refused(_run(tmp_path, 'x3', '--save-hf', str(run_dir)), caplog, 'holding other files')
    assert (run_dir / 'last.pth.tar').is_file() and (run_dir / 'summary.csv').is_file()
    # an earlier export: only with --overwrite-export
    _refused(_run(tmp_path, 'x4', '--save-hf', str(tmp_path / 'export')), caplog, 'holds an earlier export')
    stamp = (tmp_path / 'export' / 'model.safetensors').stat().st_mtime_ns
    main(_run(tmp_path, 'x5', '--save-hf', str(tmp_path / 'export'), '--overwrite-export'))
    assert (tmp_path / 'export' / 'model.safetensors').stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.')) == []  # no stray staging folders
    # the hub command follows the same rules
    ckpt = str(run_dir / 'last.pth.tar')
    assert hub_main(['save', ckpt, str(busy)]) == 2 and (busy / 'notes.txt').read_text() == 'keep me'
    assert hub_main(['save', ckpt, str(tmp_path / 'export')]) == 2
    assert hub_main(['save', ckpt, str(tmp_path / 'export'), '--overwrite']) == 0
    blocker = tmp_path / 'a_file'
    blocker.write_text('mine')
    assert hub_main(['save', ckpt, str(blocker)]) == 2 and blocker.read_text() == 'mine'


def test_hub_command_errors(tmp_path, caplog):
    assert hub_main(['save', str(tmp_path / 'missing.pth.tar'), str(tmp_path / 'out')]) == 2
    assert 'does not exist' in caplog.text
    assert hub_main(['push', str(tmp_path), 'bad repo id!!']) == 2
    assert 'is not a Hub repository id' in caplog.text
    (tmp_path / 'junk.pth.tar').write_bytes(b'junk')
    assert hub_main(['save', str(tmp_path / 'junk.pth.tar'), str(tmp_path / 'out')]) == 2
    assert 'Could not read the checkpoint' in caplog.text
    assert not (tmp_path / 'out').exists()


@needs_data
@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_says_where_and_does_not_export(tmp_path, signum):
    argv = [sys.executable, str(REPO / 'train_r2kd.py')] + _base(
        tmp_path, 'stopped', '--model', 'test_resnet', '--save-hf', str(tmp_path / 'export'), '--push-to-hub',
        'me/student', '--log-interval', '1', samples=4096, epochs=3)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=dict(os.environ, HF_ENDPOINT='http://127.0.0.1:9'))
    try:
        deadline = time.time() + 600
        while not (tmp_path / 'stopped' / 'args.yaml').exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)  # into the first epoch
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err[-2000:]
    line = next(line for line in err.splitlines() if 'resume with --resume' in line)
    resume = re.search(r'--resume (\S+\.pth\.tar)', line).group(1)
    assert Path(resume).is_file() and 'recovery' in resume
    assert 'Nothing was exported or pushed' in line
    assert not (tmp_path / 'export').exists()
    ckpt = torch.load(resume, map_location='cpu', weights_only=False)
    assert ckpt['epoch'] == 0 and 'optimizer' in ckpt
