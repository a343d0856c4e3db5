"""The accuracy benchmark's bookkeeping: paired intervals, the shared record file, resuming a run."""
import importlib.util
import math
import os
import statistics
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location('bench_accuracy', Path(__file__).parents[1] / 'bench' / 'accuracy.py')
accuracy = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(accuracy)


def test_paired_interval_matches_the_t_formula():
    a, b = [86.1, 86.9, 85.7, 86.4, 86.0], [85.0, 85.5, 85.9, 85.1, 84.8]
    d = [x - y for x, y in zip(a, b)]
    # 2.776 = t(0.975, 4 df), from a printed table
    want = 2.776 * statistics.stdev(d) / math.sqrt(5)
    mean, half = accuracy.paired(a, b)
    assert mean == pytest.approx(sum(d) / 5)
    assert half == pytest.approx(want)
    # pairing matters: the same numbers in another seed order give another interval
    assert accuracy.paired(a, b[::-1])[1] != pytest.approx(half)


def _record(key):
    return dict(key=key, pair='cnn', phase='final', row='r', config=[], seed=0, split='test', top1=1.0)


def test_two_processes_share_the_record_file(tmp_path):
    path = tmp_path / 'accuracy.json'
    first, second = accuracy.Records(path), accuracy.Records(path)  # both opened before either writes
    first.add(_record('a'), {})
    second.add(_record('b'), {})
    first.add(_record('c'), {})
    assert [r['key'] for r in accuracy.Records(path).runs] == ['a', 'b', 'c']
    second.add(_record('a'), {})  # a run already recorded by the other process is not recorded twice
    assert [r['key'] for r in accuracy.Records(path).runs] == ['a', 'b', 'c']


def test_resume_from_the_newest_checkpoint(tmp_path):
    assert accuracy.newest_checkpoint(tmp_path) is None
    names = ['last.pth.tar', 'recovery-3-10.pth.tar', 'recovery-7-16.pth.tar']
    for age, name in zip((30, 20, 10), names):
        (tmp_path / name).write_bytes(b'')
        os.utime(tmp_path / name, (1e9 - age, 1e9 - age))
    assert accuracy.newest_checkpoint(tmp_path).name == 'recovery-7-16.pth.tar'
    os.utime(tmp_path / 'last.pth.tar', (1e9, 1e9))
    assert accuracy.newest_checkpoint(tmp_path).name == 'last.pth.tar'
    (tmp_path / 'last.pth.tar').unlink()
    (tmp_path / 'recovery-7-16.pth.tar').unlink()
    assert accuracy.newest_checkpoint(tmp_path).name == 'recovery-3-10.pth.tar'
