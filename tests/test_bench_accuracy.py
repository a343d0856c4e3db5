"""The accuracy benchmark's bookkeeping: paired intervals, the shared record file, resuming a run."""
import argparse
import importlib.util
import json
import math
import os
import statistics
import threading
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


def test_shard_flag():
    assert accuracy._shard('2/3') == (2, 3)
    for bad in ('0/2', '3/2', '2', 'a/b'):
        with pytest.raises(Exception, match='K/N'):
            accuracy._shard(bad)


def _run_shards(shard, order=(1, 2)):
    """Run ``shard(k)`` for each k in threads started in that order; fail on an error or a shard still waiting."""
    errors = []

    def target(k):
        try:
            shard(k)
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=target, args=(k,), daemon=True) for k in order]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert not any(t.is_alive() for t in threads), 'a shard waits for runs no shard does'
    assert not errors


@pytest.mark.parametrize('r2kd_bonus', [0., 10.])
def test_shards_share_the_runs(tmp_path, monkeypatch, r2kd_bonus):
    """Two shards in threads, with training faked: every run happens once, the teacher in shard 1, each
    stage's runs in both, and the vit pair's diagnostic rows exactly when R2KD trails there."""
    trained = []

    def fake_train(self, experiment, argv):
        folder = self.out / experiment
        folder.mkdir(parents=True, exist_ok=True)
        trained.append((self.shard, experiment))
        if '_tune_' in experiment:  # slow enough that shard 2 reaches the tuning while shard 1 is at it
            threading.Event().wait(0.05)
        seed = int(argv[argv.index('--seed') + 1])
        t = float(argv[argv.index('--kd-temperature') + 1]) if '--kd-temperature' in argv else 0.
        fields = {'epoch': 0, 'eval_top1': 50 + seed + t + (r2kd_bonus if '--r2kd' in argv else 0.)}
        fields.update({f'eval_top1_{c}_s{s}': 40. for c in accuracy.CORRUPTIONS for s in accuracy.SEVERITIES})
        (folder / 'summary.csv').write_text(','.join(fields) + '\n' + ','.join(map(str, fields.values())) + '\n')
        return folder

    monkeypatch.setattr(accuracy.Bench, '_train', fake_train)
    monkeypatch.setattr(accuracy.time, 'sleep', lambda s: threading.Event().wait(0.01))

    def shard(k):
        accuracy.main(['--quick', '--pair', 'cnn', 'vit', '--shard', f'{k}/2', '--output', str(tmp_path),
                       '--json', str(tmp_path / 'a.json'), '--figure', str(tmp_path / 'a.png')])

    _run_shards(shard, order=(2, 1))  # shard 2 starts first and must wait
    names = [name for _, name in trained]
    assert len(names) == len(set(names))  # nothing trained twice
    assert [k for k, name in trained if name == 'teacher'] == [1]
    for pair in ('cnn', 'vit'):
        for phase in ('tune', 'final'):
            assert {k for k, name in trained if name.startswith(f'{pair}_{phase}')} == {1, 2}
    runs = accuracy.Records(tmp_path / 'a.json').runs
    tuned = {'kl': [], 'dist': [], 'r2kd': []}
    want = {'cnn': (accuracy.final_rows('cnn', tuned), 2), 'vit': (accuracy.final_rows('vit', tuned), 2)}
    if not r2kd_bonus:  # R2KD trails KL on the vit pair: the diagnostics run too
        want['vit'][0].update(accuracy.diagnostic_rows(tuned))
    for pair, (rows, seeds) in want.items():
        finals = [r for r in runs if r['phase'] == 'final' and r['pair'] == pair]
        assert sorted(r['row'] for r in finals) == sorted(n for n in rows for _ in range(seeds))


def test_records_removed_from_the_file_stay_removed(tmp_path):
    path = tmp_path / 'accuracy.json'
    records = accuracy.Records(path)
    records.add(_record('stale'), {})
    path.write_text(json.dumps({'runs': []}))  # e.g. a pair's records dropped after its budget changed
    records.add(_record('new'), {})
    assert [r['key'] for r in accuracy.Records(path).runs] == ['new']


def test_reference_rows():
    assert accuracy.reference_rows('kl (tuned) + cutmix view') == ['kl (tuned)']
    assert accuracy.reference_rows('dist (tuned) + cutmix view') == ['dist (tuned)']
    assert accuracy.reference_rows('r2kd tuned, hard rank') == ['r2kd (tuned)']
    assert accuracy.reference_rows('r2kd (tuned)') == ['kl (tuned) + cutmix view', 'dist (tuned) + cutmix view',
                                                       'dist (tuned)']
    assert accuracy.reference_rows('student alone') == []


def test_trails_by_top1_or_by_robust_top1():
    def runs(top1, robust):
        return [dict(top1=top1, corruption={'blur_s1': robust - 1, 'blur_s2': robust + 1})]
    rows = {'kl (tuned)': runs(74., 62.), 'dist (tuned)': runs(76., 64.), 'r2kd (tuned)': runs(76.5, 64.5)}
    assert not accuracy.trails(rows)
    rows['r2kd (tuned)'] = runs(76.5, 63.5)  # ahead on top-1, behind DIST under corruption
    assert accuracy.trails(rows)
    rows['r2kd (tuned)'] = runs(75., 65.)  # behind DIST on top-1
    assert accuracy.trails(rows)


def test_records_of_another_budget_are_refused(tmp_path, monkeypatch):
    """A record made before the pair's budget changed is an error naming the fix, never reused."""
    def no_training(self, experiment, argv):
        raise AssertionError('recorded runs are not trained again')

    monkeypatch.setattr(accuracy.Bench, '_train', no_training)
    config = accuracy._config('kl', 2, 1, 0.5)
    key = accuracy._key('cnn', 'tune', 'kl tuning', config, 100)
    path = tmp_path / 'a.json'
    record = dict(_record(key), phase='tune', config=config, seed=100, budget=accuracy.budget_id('cnn'))
    accuracy.Records(path).add(record, {})
    bench = accuracy.Bench(argparse.Namespace(quick=False, output=str(tmp_path), json=str(path), shard=(1, 1)))
    assert bench.run('cnn', 'tune', 'kl tuning', config, 100)['top1'] == 1.0
    # the same configuration under another row name is reused too (e.g. tuned R2KD = the paper's defaults)
    assert bench.run('cnn', 'tune', 'other row', config, 100)['top1'] == 1.0
    monkeypatch.setitem(accuracy.PAIRS, 'cnn', dict(accuracy.PAIRS['cnn'], epochs=9))
    for row in ('kl tuning', 'another row'):
        with pytest.raises(RuntimeError, match='under another budget.*Move the cnn pair'):
            bench.run('cnn', 'tune', row, config, 100)


def test_shards_tune_stage_by_stage(tmp_path, monkeypatch):
    """The full tuning grid shared by two shards: each run once, the weight tried at the best T, the width at
    the best T and weight, and the picks those of a known validation score (ties: the first in grid order)."""
    best_t = {'--kd-loss kl': 1., '--kd-loss dist': 4., '--r2kd': 2.}
    trained = []

    def flag(argv, name, default):
        return float(argv[argv.index(name) + 1]) if name in argv else default

    def fake_train(self, experiment, argv):
        folder = self.out / experiment
        folder.mkdir(parents=True, exist_ok=True)
        trained.append((self.shard, experiment, tuple(argv)))
        threading.Event().wait(0.02)
        method = next(m for m in best_t if m.split()[-1] in argv)
        t = flag(argv, '--kd-temperature', flag(argv, '--r2kd-temperature', 0.))
        # the weight scores 0.5 and 2 alike: the first, 0.5, is picked
        top1 = 80 - abs(t - best_t[method]) - abs(abs(flag(argv, '--distill-loss-weight', 1) - 1.25) - 0.75) \
            - abs(flag(argv, '--r2kd-rank-smoothing', 0.5) - 0.25)
        (folder / 'summary.csv').write_text(f'epoch,eval_top1\n0,{top1}\n')
        return folder

    monkeypatch.setattr(accuracy.Bench, '_train', fake_train)
    monkeypatch.setattr(accuracy.time, 'sleep', lambda s: threading.Event().wait(0.01))
    picks = {}

    def shard(k):
        args = argparse.Namespace(quick=False, output=str(tmp_path), json=str(tmp_path / 'a.json'), shard=(k, 2),
                                  data_dir=str(tmp_path))
        picks[k] = accuracy.Bench(args).tune('cnn', full=True)

    _run_shards(shard)
    assert picks[1] == picks[2]
    assert picks[1] == {'kl': accuracy._config('kl', 1, 0.5, 0.5), 'dist': accuracy._config('dist', 4, 0.5, 0.5),
                        'r2kd': accuracy._config('r2kd', 2, 0.5, 0.25)}
    names = [name for _, name, _ in trained]
    assert len(names) == len(set(names)) == 4 * 3 + 2 * 3 + 2  # T grid, then two new weights, two new widths
    assert {k for k, _, _ in trained} == {1, 2}
    r2kd = [argv for _, _, argv in trained if '--r2kd' in argv]
    # weights tried at R2KD's best T (2), widths at its best T and weight (0.5)
    assert sorted(flag(a, '--distill-loss-weight', 1) for a in r2kd if flag(a, '--r2kd-temperature', 0) == 2) == \
        [0.5, 0.5, 0.5, 1, 2]
    assert all(flag(a, '--r2kd-temperature', 0) == 2 for a in r2kd if flag(a, '--distill-loss-weight', 1) != 1)
