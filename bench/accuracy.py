"""Accuracy benchmark: R2KD against KL and DIST, tuned alike on a validation split, compared paired by seed.

    python bench/accuracy.py             # the full protocol, hours (docs/benchmarks.md, Cost); resumable
    python bench/accuracy.py --quick     # every step of it at toy size, a few minutes

    # two processes, one core each, sharing the work and the record file (then --report)
    OMP_NUM_THREADS=1 python bench/accuracy.py --shard 1/2 & OMP_NUM_THREADS=1 python bench/accuracy.py --shard 2/2

Protocol (docs/benchmarks.md has the results):

* Fashion-MNIST. The teacher (resnet18, 3 epochs) trains on the first 50,000 training images. The
  students train on the first 4,000. Every choice is made on a validation split of the *last* 10,000
  training images, disjoint from both; the test set (all 10,000 images) is touched once per final run.
* The same tuning budget for KL, DIST and R2KD, one tuning seed (100): T in {1, 2, 4, 8} at
  distillation weight 1; then the weight in {0.5, 1, 2} at the best T; for R2KD also the soft-rank
  width in {0.25, 0.5, 1} at the best T and weight. Best = top-1 on the validation split.
* Final runs on seeds 0-4 (never used for tuning), on the test set: the student alone, each method
  tuned, R2KD at the paper's defaults, R2KD's ablations at its tuned setting (hard rank, no pruned
  teacher, no view, reference parity), and KL and DIST with R2KD's cutmix view. Per row: top-1 mean
  +- std, the paired difference to tuned KL with a 95 % t-interval over seeds, and top-1 under each
  corruption at severities 1-3.
* A second pair across architectures (``--pair vit``): the same teacher into a small ViT (timm's
  vit_tiny at 28 px, patch 7, 6 blocks of width 96, AdamW, 12 epochs), tuning T only, 3 final seeds,
  with KL and DIST given the view too. If tuned R2KD trails tuned KL or DIST there (top-1, or top-1
  under corruption), diagnostic rows follow (no rank term, no pruned teacher, Pearson instead of the
  uncentred cosine, no view) to find the part responsible.

Each run is train_r2kd.py in its own process; each finished run is appended to the JSON record
file at once (row, configuration, seed, split, top-1, corruption results, seconds, and a digest of the
pair's budget), and runs found there are not repeated, so an interrupted benchmark resumes where it
stopped; a run recorded under another budget (the pair's model, schedule or data changed) is an error.
"""
import argparse
import fcntl
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from timm_r2kd.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD  # noqa: E402
from timm_r2kd.hub import read_summary  # noqa: E402
from timm_r2kd.robustness import CORRUPTIONS, SEVERITIES  # noqa: E402
from timm_r2kd.teacher import check_teacher_accuracy  # noqa: E402

TEACHER_SPLIT, STUDENT_SPLIT, VAL_SPLIT, TEST_SPLIT = 'train[:50000]', 'train[:4000]', 'train[50000:]', 'test'
TUNE_SEED, FINAL_SEEDS = 100, (0, 1, 2, 3, 4)
TEMPERATURES, WEIGHTS, WIDTHS = (1, 2, 4, 8), (0.5, 1, 2), (0.25, 0.5, 1)
PAPER = dict(T=4.0, w=1.0, width=0.5)  # R2KD's defaults (alpha = beta = 2 inside the loss)
T_FLAG = {'kl': '--kd-temperature', 'dist': '--kd-temperature', 'r2kd': '--r2kd-temperature'}
METHOD_FLAGS = {'kl': ['--kd-loss', 'kl'], 'dist': ['--kd-loss', 'dist'], 'r2kd': ['--r2kd']}

COMMON = [
    '--dataset', 'torch/fashion_mnist', '--in-chans', '1', '--img-size', '28', '--num-classes', '10',
    '--mean', *map(str, FASHION_MNIST_MEAN), '--std', *map(str, FASHION_MNIST_STD),
    '--device', 'cpu', '--workers', '0', '--log-interval', '1000', '--no-progress', '--warmup-epochs', '0',
    '--sched', 'cosine', '--smoothing', '0', '--hflip', '0.5', '--scale', '0.8', '1.0', '--color-jitter', '0',
]
PAIRS = {
    'cnn': dict(model='test_resnet', samples=4000, epochs=8, batch=64,
                opt=['--opt', 'sgd', '--momentum', '0.9', '--weight-decay', '5e-4', '--lr', '0.05']),
    # timm's ViT-Tiny at 28 px, patch 7 (16 tokens), 6 blocks of width 96: the smaller-scale pair. Alone on
    # the validation split it reaches 72.6 % in 12 epochs; at patch 4 and 8 epochs on 2,000 images only 52.6 %,
    # and ViT-Tiny's own width costs 3.4x as much a step (419 vs 123 ms on 2 cores).
    'vit': dict(model='vit_tiny_patch16_224', samples=4000, epochs=12, batch=64,
                opt=['--opt', 'adamw', '--weight-decay', '0.05', '--lr', '2e-3', '--warmup-epochs', '1',
                     '--model-kwargs', 'img_size=28', 'patch_size=7', 'depth=6', 'embed_dim=96', 'num_heads=3']),
}
TEACHER = dict(model='resnet18', epochs=3, batch=128,
               opt=['--opt', 'sgd', '--momentum', '0.9', '--weight-decay', '5e-4', '--lr', '0.1'])
QUICK = dict(samples=256, epochs=1, val_samples=512, final_seeds=(0, 1), temperatures=(2, 4), weights=(1,),
             widths=(0.5,))


class Records:
    """The JSON record file: one entry per finished run, rewritten atomically after each."""

    def __init__(self, path: Path):
        self.path = path
        self.runs: List[Dict] = []
        self.reload()

    def reload(self) -> None:
        """Take in what other processes recorded meanwhile (every record is on disk once added)."""
        self.runs = json.loads(self.path.read_text())['runs'] if self.path.is_file() else []

    def recorded(self, keys: List[str]) -> bool:
        """Whether all of ``keys`` are on disk now (other processes may have added them)."""
        self.reload()
        return all(self.find(k) is not None for k in keys)

    def find(self, key: str) -> Optional[Dict]:
        return next((r for r in self.runs if r['key'] == key), None)

    def find_run(self, pair: str, phase: str, config: List[str], seed: int) -> Optional[Dict]:
        return next((r for r in self.runs if (r['pair'], r['phase'], r['config'], r['seed']) ==
                     (pair, phase, config, seed)), None)

    def add(self, record: Dict, meta: Dict) -> None:
        # Re-read under a lock: the pairs may run as two processes (one core each) sharing this file.
        with open(self.path.with_suffix('.lock'), 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.reload()
            if self.find(record['key']) is None:
                self.runs.append(record)
            tmp = self.path.with_suffix(f'.tmp{os.getpid()}')
            tmp.write_text(json.dumps(dict(meta, runs=self.runs), indent=1))
            os.replace(tmp, self.path)


def newest_checkpoint(folder: Path) -> Optional[Path]:
    """The checkpoint an interrupted run resumes from: the newest of last.pth.tar and the recovery files.

    With evaluation only after the last epoch, timm writes no last.pth.tar before the end, so an
    interrupted run has recovery checkpoints only; once it exists, a later recovery file is newer.
    """
    saved = [*folder.glob('recovery-*.pth.tar'), *folder.glob('last.pth.tar')]
    return max(saved, key=lambda f: f.stat().st_mtime) if saved else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.out = Path(args.output)
        self.records = Records(Path(args.json))
        self.meta = dict(machine=f'CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores',
                         torch=torch.__version__, command=' '.join(sys.argv), quick=args.quick)
        self.teacher = None
        self.shard, self.shards = args.shard

    def _wait(self, what: str, ready) -> None:
        """Wait for other shards: for the teacher (shard 1 trains it) and for their share of each stage's runs."""
        if not ready():
            print(f'shard {self.shard}/{self.shards}: waiting for {what}', flush=True)
        while not ready():
            time.sleep(15)

    def _train(self, experiment: str, argv: List[str]) -> Path:
        """Run train_r2kd.py (resuming an unfinished run of the same name); returns the run folder."""
        folder = self.out / experiment
        resume = newest_checkpoint(folder)
        if resume is not None:
            argv = argv + ['--resume', str(resume)]
        log = self.out / 'logs' / f'{experiment}.log'
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(REPO / 'train_r2kd.py'), *COMMON, '--data-dir', self.args.data_dir,
               '--output', str(self.out), '--experiment', experiment, *argv]
        with open(log, 'w') as sink:
            done = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f'{experiment} failed (exit {done.returncode}); see {log}')
        return folder

    def train_teacher(self) -> str:
        epochs = 1 if self.quick else TEACHER['epochs']
        samples = ['--train-num-samples', '2048'] if self.quick else []
        folder = self.out / 'teacher'

        def done():
            return bool(read_summary(folder)) and int(read_summary(folder)[-1]['epoch']) == epochs - 1

        if self.shard > 1:
            self._wait('shard 1 to train the teacher', done)
        if not done():
            print(f'teacher: {TEACHER["model"]} on {TEACHER_SPLIT}, {epochs} epochs', flush=True)
            self._train('teacher', ['--model', TEACHER['model'], '--train-split', TEACHER_SPLIT, '--val-split',
                                    VAL_SPLIT, '--epochs', str(epochs), '-b', str(TEACHER['batch']), '--seed', '0',
                                    *samples, *TEACHER['opt']])
        # checked here once, on the validation split: the student runs skip the check (--no-teacher-eval)
        check_teacher_accuracy(float(read_summary(folder)[-1]['eval_top1']), 10, allow_weak=self.quick)
        self.teacher = str(folder / 'last.pth.tar')
        return self.teacher

    def _current(self, record: Optional[Dict], pair: str) -> Optional[Dict]:
        """``record``, unless it was made under another budget than the pair's now (an error: never mixed in)."""
        if record is not None and record.get('budget') != budget_id(pair, self.quick):
            raise RuntimeError(
                f"{record['key']} is recorded in {self.records.path} under another budget: the pair's model, "
                f"schedule or data, the teacher or the common flags have changed since. Move the {pair} pair's "
                f"records out of that file (or pass --json a new file) to run them again.")
        return record

    def run(self, pair: str, phase: str, row: str, config: List[str], seed: int) -> Dict:
        """One student run (or its record, if it ran before)."""
        key = _key(pair, phase, row, config, seed)
        self.records.reload()
        found = self._current(self.records.find(key), pair)
        if found is not None:
            return found
        same = self._current(self.records.find_run(pair, phase, config, seed), pair)
        if same is not None:  # another row with the same configuration (e.g. tuned = paper defaults)
            record = dict(same, key=key, row=row)
            self.records.add(record, self.meta)
            return record
        budget = PAIRS[pair]
        split = VAL_SPLIT if phase == 'tune' else TEST_SPLIT
        samples, epochs = (QUICK['samples'], QUICK['epochs']) if self.quick else (budget['samples'], budget['epochs'])
        argv = ['--model', budget['model'], '--train-split', STUDENT_SPLIT, '--train-num-samples', str(samples),
                '--val-split', split, '--epochs', str(epochs), '--val-interval', str(epochs), '-b', str(budget['batch']),
                '--seed', str(seed), *budget['opt'], *config]
        if self.quick:
            argv += ['--val-num-samples', str(QUICK['val_samples'])]
        if phase == 'final':
            argv += ['--eval-corruptions', '--corruption-severities', *map(str, SEVERITIES)]
        if config and config[0] in ('--kd-loss', '--r2kd'):
            # checked once after its training (train_teacher), not again before each run
            argv += ['--teacher', TEACHER['model'], '--teacher-checkpoint', self.teacher, '--no-teacher-eval']
        name = f'{pair}_{phase}_{hashlib.sha1(key.encode()).hexdigest()[:12]}'  # stable across processes
        start = time.time()
        last = read_summary(self._train(name, argv))[-1]
        record = dict(key=key, pair=pair, phase=phase, row=row, config=config, seed=seed, split=split,
                      budget=budget_id(pair, self.quick), top1=last['eval_top1'],
                      seconds=round(time.time() - start, 1), run=name,
                      corruption={f'{c}_s{s}': last[f'eval_top1_{c}_s{s}'] for c in CORRUPTIONS for s in SEVERITIES
                                  if f'eval_top1_{c}_s{s}' in last})
        self.records.add(record, self.meta)
        print(f'  {phase:<5} {pair} {row:<34} seed {seed}: top-1 {record["top1"]:.2f} ({record["seconds"]:.0f} s)',
              flush=True)
        return record

    def share(self, pair: str, phase: str, todo: List[tuple]) -> List[Dict]:
        """This shard's share of the runs ``todo`` ((row, config, seed) each); then, once every shard's are
        in, the records of all of them, in order. Every shard must be given the same list."""
        for row, config, seed in todo[self.shard - 1::self.shards]:
            self.run(pair, phase, row, config, seed)
        keys = [_key(pair, phase, *run) for run in todo]
        self._wait(f"the other shards' {pair} {phase} runs", lambda: self.records.recorded(keys))
        return [self.records.find(k) for k in keys]

    def finals(self, pair: str, rows: Dict[str, List[str]], seeds) -> Dict[str, List[Dict]]:
        """The final runs of ``rows`` on ``seeds``, shared among the shards: their records by row."""
        records = iter(self.share(pair, 'final', [(name, config, seed) for name, config in rows.items()
                                                  for seed in seeds]))
        return {name: [next(records) for _ in seeds] for name in rows}

    def tune(self, pair: str, full: bool = True) -> Dict[str, List[str]]:
        """Each method's configuration picked on the validation split under the shared budget.

        The methods are tuned side by side, one stage at a time (T, then the weight at the best T, then
        R2KD's soft-rank width), so that the shards share each stage's runs.
        """
        temperatures = QUICK['temperatures'] if self.quick else TEMPERATURES
        weights = QUICK['weights'] if self.quick else WEIGHTS
        widths = QUICK['widths'] if self.quick else WIDTHS
        best = {m: dict(t=None, w=1, width=0.5) for m in METHOD_FLAGS}
        stages = [('t', temperatures, list(METHOD_FLAGS))]
        if full:
            stages += [('w', weights, list(METHOD_FLAGS)), ('width', widths, ['r2kd'])]
        done = set()
        for name, values, methods in stages:
            runs = {(m, v): (f'{m} tuning', _config(m, **dict(best[m], **{name: v})), TUNE_SEED)
                    for m in methods for v in values}
            keys = {mv: _key(pair, 'tune', *run) for mv, run in runs.items()}
            # runs of an earlier stage (weight 1 at the best T) are not shared out again: every shard has them
            self.share(pair, 'tune', [run for mv, run in runs.items() if keys[mv] not in done])
            done.update(keys.values())
            for m in methods:  # the first of equals, in grid order
                best[m][name] = max(values, key=lambda v: self.records.find(keys[m, v])['top1'])
        return {m: _config(m, **best[m]) for m in METHOD_FLAGS}


def budget_id(pair: str, quick: bool = False) -> str:
    """A digest of what a pair's runs depend on besides their row's flags and seed (the record key's parts)."""
    spec = dict(student=PAIRS[pair], teacher=TEACHER, common=COMMON, quick=QUICK if quick else None,
                splits=[TEACHER_SPLIT, STUDENT_SPLIT, VAL_SPLIT, TEST_SPLIT], severities=SEVERITIES)
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _key(pair: str, phase: str, row: str, config: List[str], seed: int) -> str:
    return f'{pair}|{phase}|{row}|{" ".join(config)}|{seed}'


def _config(method: str, t: float, w: float, width: float) -> List[str]:
    config = METHOD_FLAGS[method] + [T_FLAG[method], str(t), '--distill-loss-weight', str(w)]
    return config + (['--r2kd-rank-smoothing', str(width)] if method == 'r2kd' else [])


def final_rows(pair: str, tuned: Dict[str, List[str]]) -> Dict[str, List[str]]:
    rows = {'student alone': [], 'kl (tuned)': tuned['kl'], 'dist (tuned)': tuned['dist'], 'r2kd (tuned)': tuned['r2kd'],
            'r2kd (paper defaults)': _config('r2kd', PAPER['T'], PAPER['w'], PAPER['width'])}
    if pair == 'cnn':
        rows.update({
            'r2kd tuned, hard rank': tuned['r2kd'] + ['--r2kd-rank', 'hard'],
            'r2kd tuned, no pruned teacher': tuned['r2kd'] + ['--prune-weight', '1.0'],
            'r2kd tuned, no view': tuned['r2kd'] + ['--r2kd-view', 'none'],
            'r2kd tuned, reference parity': tuned['r2kd'] + ['--reference-parity'],
        })
    # both pairs: the paper's central claim, that this view hurts KL-based distillation and helps R2KD
    rows.update({
        'kl (tuned) + cutmix view': tuned['kl'] + ['--r2kd-view', 'cutmix'],
        'dist (tuned) + cutmix view': tuned['dist'] + ['--r2kd-view', 'cutmix'],
    })
    return rows


def diagnostic_rows(tuned: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """Which part of R2KD is responsible when it trails across architectures: each row takes one away
    (the view too, which DIST and KL do not have)."""
    return {
        'r2kd tuned, no rank term': tuned['r2kd'] + ['--r2kd-rank-weight', '0'],
        'r2kd tuned, no pruned teacher': tuned['r2kd'] + ['--prune-weight', '1.0'],
        'r2kd tuned, pearson value term': tuned['r2kd'] + ['--r2kd-value-metric', 'pearson'],
        'r2kd tuned, no view': tuned['r2kd'] + ['--r2kd-view', 'none'],
    }


def _robust(run: Dict) -> float:
    """Top-1 under corruption, mean over the corruptions and severities."""
    return statistics.mean(run['corruption'].values())


def trails(rows: Dict[str, List[Dict]]) -> bool:
    """Whether tuned R2KD's mean test top-1, or its mean top-1 under corruption (its claim), is below
    tuned KL's or tuned DIST's."""
    def mean(name, metric):
        return statistics.mean(metric(r) for r in rows[name])

    def top1(run):
        return run['top1']
    return any(mean('r2kd (tuned)', m) < max(mean('kl (tuned)', m), mean('dist (tuned)', m)) for m in (top1, _robust))


# two-sided 95 % t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def paired(a: List[float], b: List[float]):
    """Mean of the per-seed differences a - b and the half-width of its 95 % t-interval."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return statistics.mean(d), float('nan')
    return statistics.mean(d), _T95.get(len(d) - 1, 1.96) * statistics.stdev(d) / len(d) ** 0.5


def _mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.)


def reference_rows(name: str) -> List[str]:
    """The rows a row is also compared with: an ablation with tuned R2KD, a method plus the view without it,
    and tuned R2KD with tuned KL and DIST given the same view (the losses alone differ) and with tuned DIST."""
    if name == 'r2kd (tuned)':
        return ['kl (tuned) + cutmix view', 'dist (tuned) + cutmix view', 'dist (tuned)']
    if name.startswith('r2kd tuned,') or name == 'r2kd (paper defaults)':
        return ['r2kd (tuned)']
    if name.endswith(' + cutmix view'):
        return [name[:-len(' + cutmix view')]]
    return []


def report(pair: str, rows: Dict[str, List[Dict]]) -> str:
    """Markdown tables: top-1 with paired differences to tuned KL, and top-1 per corruption and severity."""
    base = {r['seed']: r for r in rows.get('kl (tuned)', [])}  # absent while a benchmark is under way
    cells = len(CORRUPTIONS) * len(SEVERITIES)
    lines = [f'| {pair}: row | top-1 | vs tuned KL (paired, 95 % CI) | robust top-1 (mean of {cells}) '
             '| robust vs tuned KL (paired) |', '| --- | ---: | ---: | ---: | ---: |']
    for name, runs in rows.items():
        m, s = _mean_std([r['top1'] for r in runs])
        rm, rs = _mean_std([_robust(r) for r in runs])
        common = [r for r in runs if r['seed'] in base]
        diff = robust_diff = '—'
        if name != 'kl (tuned)' and common:
            diff = '{:+.2f} ± {:.2f} (n = {})'.format(
                *paired([r['top1'] for r in common], [base[r['seed']]['top1'] for r in common]), len(common))
            robust_diff = '{:+.2f} ± {:.2f}'.format(
                *paired([_robust(r) for r in common], [_robust(base[r['seed']]) for r in common]))
        lines.append(f'| {name} | {m:.2f} ± {s:.2f} | {diff} | {rm:.2f} ± {rs:.2f} | {robust_diff} |')
    compared = []
    for name, runs in rows.items():
        for other in reference_rows(name):
            ref = {r['seed']: r for r in rows.get(other, [])}
            common = [r for r in runs if r['seed'] in ref]
            if len(common) > 1:
                top1 = paired([r['top1'] for r in common], [ref[r['seed']]['top1'] for r in common])
                rob = paired([_robust(r) for r in common], [_robust(ref[r['seed']]) for r in common])
                compared.append(f'| {name} | {other} (n = {len(common)}) | {top1[0]:+.2f} ± {top1[1]:.2f} '
                                f'| {rob[0]:+.2f} ± {rob[1]:.2f} |')
    if compared:
        lines += ['', f'| {pair}: row | compared with (paired, 95 % CI) | top-1 | robust top-1 |',
                  '| --- | --- | ---: | ---: |', *compared]
    lines += ['', f'| {pair}: row | ' + ' | '.join(f'{c} s{s}' for c in CORRUPTIONS for s in SEVERITIES) + ' |',
              '| --- |' + ' ---: |' * (len(CORRUPTIONS) * len(SEVERITIES))]
    for name, runs in rows.items():
        cells = [statistics.mean(r['corruption'][f'{c}_s{s}'] for r in runs) for c in CORRUPTIONS for s in SEVERITIES]
        lines.append(f'| {name} | ' + ' | '.join(f'{v:.1f}' for v in cells) + ' |')
    return '\n'.join(lines)


def _panels(rows_by_pair: Dict[str, Dict[str, List[Dict]]]):
    """(title, rows) per panel: a pair's methods and its R2KD ablations apart, so eleven lines stay legible."""
    for pair, rows in rows_by_pair.items():
        ablations = [n for n in rows if n.startswith('r2kd tuned,')]
        if ablations:
            yield f'{pair} student: methods', {n: r for n, r in rows.items() if n not in ablations}
            yield f'{pair} student: R2KD ablations', {n: rows[n] for n in ['kl (tuned)', 'r2kd (tuned)', *ablations]
                                                         if n in rows}
        else:
            yield f'{pair} student', rows


def figure(rows_by_pair: Dict[str, Dict[str, List[Dict]]], path: Path) -> None:
    """Top-1 against corruption severity (mean over the corruptions), one line per row, std band."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed (pip install -e .[bench]): no figure', flush=True)
        return
    panels = list(_panels(rows_by_pair))
    names = list(dict.fromkeys(n for _, rows in panels for n in rows))
    # a row keeps its colour across panels: ten of tab10, then Dark2's eight dashed (then again)
    colours = [*plt.get_cmap('tab10').colors, *plt.get_cmap('Dark2').colors]
    styles = {n: (colours[i % len(colours)], '-' if i % len(colours) < 10 else '--') for i, n in enumerate(names)}
    columns = min(2, len(panels))
    grid = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(grid, columns, figsize=(6.5 * columns, 5 * grid), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, rows) in zip(axes.flat, panels):
        for name, runs in rows.items():
            per_seed = [[r['top1']] + [statistics.mean(r['corruption'][f'{c}_s{s}'] for c in CORRUPTIONS)
                                       for s in SEVERITIES] for r in runs]
            mean = [statistics.mean(v) for v in zip(*per_seed)]
            std = [statistics.stdev(v) if len(v) > 1 else 0. for v in zip(*per_seed)]
            x = [0, *SEVERITIES]
            color, line = styles[name]
            ax.plot(x, mean, line, marker='o', color=color, label=f'{name} (n = {len(runs)})')
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.12)
        ax.set_xticks([0, *SEVERITIES], ['clean', *map(str, SEVERITIES)])
        ax.set_xlabel('corruption severity (mean over noise, blur, contrast, JPEG)')
        ax.set_ylabel('test top-1 (%)')
        ax.set_title(f'Fashion-MNIST, {title}')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f'figure: {path}', flush=True)


def print_records(records: Records, figure_path: Path) -> None:
    """The tuning runs and the final tables of whatever the record file holds (an unfinished run too)."""
    rows_by_pair: Dict[str, Dict[str, List[Dict]]] = {}
    for r in records.runs:
        if r['phase'] == 'tune':
            print(f"tune  {r['pair']} {' '.join(r['config']):<80} val top-1 {r['top1']:.2f}")
        else:
            rows_by_pair.setdefault(r['pair'], {}).setdefault(r['row'], []).append(r)
    for pair, rows in rows_by_pair.items():
        seeds = {name: len(runs) for name, runs in rows.items()}
        print(f'\n{pair}: final runs per row: {seeds}')
        print(report(pair, rows))
    if rows_by_pair:
        figure(rows_by_pair, figure_path)


def _shard(text: str):
    k, _, n = text.partition('/')
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f'expected K/N with 1 <= K <= N, e.g. 1/2; got {text!r}')
    return int(k), int(n)


def main(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', default=os.environ.get('FMNIST_DIR', '/usr/share/datasets/fashion-mnist'))
    parser.add_argument('--output', default=str(REPO / 'output' / 'bench_accuracy'))
    parser.add_argument('--json', default=str(REPO / 'docs' / 'accuracy.json'))
    parser.add_argument('--figure', default=str(REPO / 'docs' / 'accuracy_severity.png'))
    parser.add_argument('--pair', nargs='+', default=['cnn', 'vit'], choices=sorted(PAIRS))
    parser.add_argument('--quick', action='store_true', help='every step at toy size (minutes)')
    parser.add_argument('--shard', type=_shard, default=(1, 1), metavar='K/N',
                        help='run every N-th run of each stage (tuning by T, by weight, by width; the final runs) '
                             'starting at the K-th, so N processes (one core each) share the work; shard 1 trains '
                             'the teacher, the others wait for it')
    parser.add_argument('--report', action='store_true',
                        help='print the tables (and draw the figure) from the records so far; run nothing')
    args = parser.parse_args(argv)
    if args.report:
        return print_records(Records(Path(args.json)), Path(args.figure))
    if args.quick and args.json == parser.get_default('json'):
        args.json = str(Path(args.output) / 'accuracy_quick.json')
        args.figure = str(Path(args.output) / 'accuracy_quick.png')
    bench = Bench(args)
    bench.train_teacher()
    seeds = QUICK['final_seeds'] if args.quick else FINAL_SEEDS
    rows_by_pair = {}
    for pair in args.pair:
        full = pair == 'cnn'  # the cross-architecture pair tunes T only, at a smaller scale
        tuned = bench.tune(pair, full=full)
        pair_seeds = seeds if full else seeds[:3]
        rows = bench.finals(pair, final_rows(pair, tuned), pair_seeds)
        if not full and trails(rows):
            print(f'{pair}: R2KD trails a baseline; running the diagnostic rows', flush=True)
            rows.update(bench.finals(pair, diagnostic_rows(tuned), pair_seeds))
        rows_by_pair[pair] = rows
        print('\n' + '\n'.join(f'{m} tuned: {" ".join(c)}' for m, c in tuned.items()))
        print(report(pair, rows) + '\n', flush=True)
    if args.shard[0] == 1:  # one writer for the figure
        figure(rows_by_pair, Path(args.figure))
    print(f'records: {args.json}; {date.today()}')


if __name__ == '__main__':
    main()
