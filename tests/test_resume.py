"""Exact resume on CPU: a run killed (SIGKILL) and resumed ends with the uninterrupted run's weights, bit for bit."""
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from timm_r2kd.sampling import ResumableSampler, SeededDataset, mix_seed
from timm_r2kd.train import main

from conftest import needs_data
from test_train import REPO, _base, teacher_ckpt  # noqa: F401  (teacher_ckpt is a fixture)


def _argv(tmp_path, experiment, teacher, *extra):
    # every source of randomness on: random-resized crop and flip, random erasing (in the step, as the
    # prefetcher is on), a cutmix view, dropout, EMA, two loader workers
    return _base(tmp_path, experiment, '--model', 'test_resnet', '--teacher', 'resnet10t', '--teacher-checkpoint',
                 teacher, '--r2kd', '--reprob', '0.25', '--drop', '0.1', '--model-ema', '--model-ema-decay', '0.9',
                 '--recovery-interval', '3', '--workers', '2', '-b', '32', *extra, samples=1536, epochs=2)


def _kill_when(argv, cwd, ready, timeout=900):  # generous: CI machines can be loaded
    proc = subprocess.Popen([sys.executable, str(REPO / 'train_r2kd.py')] + argv, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, 'the run ended before it could be killed'
        assert ready(), 'the kill point was never reached'
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def _recoveries(folder: Path):
    found = []
    for path in folder.glob('recovery-*.pth.tar'):
        epoch, update = map(int, re.match(r'recovery-(\d+)-(\d+)\.pth\.tar', path.name).groups())
        found.append(((epoch, update), path))
    return sorted(found)


def _weights(folder: Path):
    ckpt = torch.load(folder / 'last.pth.tar', map_location='cpu', weights_only=False)
    return ckpt['epoch'], ckpt['state_dict'], ckpt['state_dict_ema']


def _assert_identical(a, b):
    assert a[0] == b[0]
    for reference, other in zip(a[1:], b[1:]):
        assert reference.keys() == other.keys()
        different = [k for k in reference if not torch.equal(reference[k], other[k])]
        assert different == [], f'{len(different)} tensors differ, e.g. {different[:3]}'


@needs_data
@pytest.mark.slow
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, teacher_ckpt):
    main(_argv(tmp_path, 'whole', teacher_ckpt))
    whole = _weights(tmp_path / 'whole')

    # killed mid-epoch, resumed from the newest recovery checkpoint: continues at the next update
    mid = tmp_path / 'mid'
    _kill_when(_argv(tmp_path, 'mid', teacher_ckpt), tmp_path,
               lambda: any(pos >= (0, 5) for pos, _ in _recoveries(mid)))
    (epoch, update), newest = _recoveries(mid)[-1]
    assert not (mid / 'last.pth.tar').exists() and epoch == 0 and update >= 5
    summary = main(_argv(tmp_path, 'mid', teacher_ckpt, '--resume', str(newest)))
    assert [r['epoch'] for r in summary['results']] == [0, 1]
    _assert_identical(whole, _weights(mid))

    # killed in the second epoch, resumed from last.pth.tar (end of the first)
    late = tmp_path / 'late'
    _kill_when(_argv(tmp_path, 'late', teacher_ckpt), tmp_path, lambda: (late / 'last.pth.tar').exists())
    assert torch.load(late / 'last.pth.tar', map_location='cpu', weights_only=False)['epoch'] == 0
    main(_argv(tmp_path, 'late', teacher_ckpt, '--resume', str(late / 'last.pth.tar')))
    _assert_identical(whole, _weights(late))


def test_sampler_order_is_a_function_of_seed_epoch_and_start():
    sampler = ResumableSampler(50, seed=3, batch_size=4)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(i for _, i in full) == list(range(50)) and {e for e, _ in full} == {2}
    sampler.set_start(5)
    assert list(sampler) == full[20:]
    assert list(sampler) == full  # the start applies to one pass only
    sampler.set_epoch(3)
    assert [i for _, i in sampler] != [i for _, i in full]
    # two processes split the padded order like DistributedSampler
    parts = [list(ResumableSampler(50, seed=3, batch_size=4, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 25
    assert sorted(i for part in parts for _, i in part) == list(range(50))


def test_seeded_dataset_draws_depend_only_on_seed_epoch_index():
    class Draw(torch.utils.data.Dataset):
        transform = None

        def __len__(self):
            return 10

        def __getitem__(self, index):
            return torch.rand(1).item()

    dataset = SeededDataset(Draw(), seed=7)
    first = dataset[(1, 4)]
    torch.rand(100)  # whatever ran before
    assert dataset[(1, 4)] == first
    assert dataset[(2, 4)] != first and dataset[(1, 5)] != first
    assert mix_seed(7, 1, 4) != mix_seed(7, 4, 1)
