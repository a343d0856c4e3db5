"""Accuracy benchmark: students distilled from one cached teacher on Fashion-MNIST, under one budget.

    python bench/accuracy.py                      # full run (about an hour on 2 CPU cores)
    python bench/accuracy.py --seeds 0 --quick    # a smoke run of every configuration

Every student is trained by train_r2kd.py in its own process with the same model, data subset,
schedule and number of updates; only the distillation differs. Reported: top-1 on the first
5,000 images of the Fashion-MNIST test set after the last epoch (no best-epoch picking) and the mean top-1 over the
four corruptions of --eval-corruptions, as mean +- std over seeds. KL's temperature and weight
are tuned first (seed 0) and the best setting is the one reported. Results go to a JSON file and
a markdown table on stdout (copied into docs/benchmarks.md).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from timm_r2kd.hub import read_summary

REPO = Path(__file__).resolve().parents[1]
DATA = '/usr/share/datasets/fashion-mnist'
COMMON = [
    '--dataset', 'torch/fashion_mnist', '--data-dir', DATA, '--in-chans', '1', '--img-size', '28',
    '--num-classes', '10', '--val-num-samples', '5000', '--device', 'cpu', '--workers', '0',
    '--log-interval', '1000', '--no-progress',
    '--opt', 'sgd', '--momentum', '0.9', '--weight-decay', '5e-4', '--sched', 'cosine', '--warmup-epochs', '0',
    '--smoothing', '0', '--hflip', '0.5', '--scale', '0.8', '1.0', '--color-jitter', '0',
]
TEACHER = dict(model='resnet18', samples=60000, epochs=3, lr=0.1, batch=128)
BUDGET = dict(model='test_resnet', samples=4000, epochs=8, lr=0.05, batch=64)
QUICK = dict(model='test_resnet', samples=512, epochs=1, lr=0.05, batch=64)


def configurations(kl_args):
    """(name, train_r2kd arguments beyond the budget) for each compared student."""
    return [
        ('student alone', []),
        ('kl (tuned)', ['--kd-loss', 'kl'] + kl_args),
        ('dist', ['--kd-loss', 'dist']),
        ('r2kd', ['--r2kd']),
        ('r2kd, hard rank', ['--r2kd', '--r2kd-rank', 'hard']),
        ('r2kd, no pruned teacher', ['--r2kd', '--prune-weight', '1.0']),
        ('r2kd, no view', ['--r2kd', '--r2kd-view', 'none']),
        ('r2kd --reference-parity', ['--r2kd', '--reference-parity']),
        # R2KD at the temperature the KL tuning picked (R2KD itself is otherwise untuned)
        ('r2kd, T=2', ['--r2kd', '--r2kd-temperature', '2']),
    ]


KL_GRID = [
    ['--kd-temperature', '1'], ['--kd-temperature', '2'], ['--kd-temperature', '4'], ['--kd-temperature', '8'],
]
KL_WEIGHTS = [['--distill-loss-weight', '0.5'], ['--distill-loss-weight', '2']]


def run(output, experiment, budget, extra, seed, teacher=None, log=None):
    """One train_r2kd run in a fresh process; returns its final-epoch validation metrics.

    A run whose folder already holds its last epoch is read back, and an unfinished one resumes from
    its last.pth.tar: train_r2kd never writes a new run over an old one.
    """
    folder = Path(output) / experiment
    done_before = read_summary(folder)
    if done_before and int(done_before[-1]['epoch']) == budget['epochs'] - 1:
        last = done_before[-1]
        return dict(top1=last['eval_top1'], corrupt=last['eval_top1_corrupt_mean'], seconds=float('nan'))
    if (folder / 'last.pth.tar').is_file():
        extra = [*extra, '--resume', str(folder / 'last.pth.tar')]
    cmd = [sys.executable, str(REPO / 'train_r2kd.py'), *COMMON,
           '--model', budget['model'], '--train-num-samples', str(budget['samples']),
           '--epochs', str(budget['epochs']), '--lr', str(budget['lr']), '-b', str(budget['batch']),
           '--val-interval', str(budget['epochs']), '--seed', str(seed), '--eval-corruptions',
           '--output', str(output), '--experiment', experiment, *extra]
    if teacher is not None:
        cmd += ['--teacher', TEACHER['model'], '--teacher-checkpoint', teacher]
    start = time.time()
    with open(log, 'w') if log else open(os.devnull, 'w') as sink:
        done = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f'run {experiment} failed ({done.returncode}); see {log}')
    last = read_summary(Path(output) / experiment)[-1]
    return dict(top1=last['eval_top1'], corrupt=last['eval_top1_corrupt_mean'], seconds=time.time() - start)


def mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--output', default=str(REPO / 'output' / 'bench_accuracy'))
    parser.add_argument('--json', default=str(REPO / 'docs' / 'accuracy.json'))
    parser.add_argument('--quick', action='store_true', help='tiny budget, to check that everything runs')
    parser.add_argument('--only', nargs='+', default=None, help='run only these configuration names')
    args = parser.parse_args()
    out = Path(args.output)
    (out / 'logs').mkdir(parents=True, exist_ok=True)
    budget = QUICK if args.quick else BUDGET
    teacher_budget = dict(TEACHER, samples=2048, epochs=1) if args.quick else TEACHER

    teacher_dir = out / ('teacher_quick' if args.quick else 'teacher')
    teacher_ckpt = teacher_dir / 'last.pth.tar'
    if not teacher_ckpt.exists():
        print(f'training the teacher ({teacher_budget}) ...', flush=True)
        teacher = run(out, teacher_dir.name, teacher_budget, [], seed=0, log=out / 'logs' / 'teacher.log')
        print(f'teacher: {teacher}', flush=True)
    last = read_summary(teacher_dir)[-1]
    teacher_metrics = dict(top1=last['eval_top1'], corrupt=last['eval_top1_corrupt_mean'])

    results = {}
    kl_args = ['--kd-temperature', '4']
    if args.only is None or 'kl (tuned)' in args.only:
        tuning = {}
        grid = KL_GRID if not args.quick else KL_GRID[:1]
        for extra in grid:
            name = 'kl_tune_' + '_'.join(extra[1::2])
            tuning[' '.join(extra)] = run(out, name, budget, ['--kd-loss', 'kl'] + extra, seed=args.seeds[0],
                                          teacher=str(teacher_ckpt), log=out / 'logs' / f'{name}.log')
            print(f'kl tuning {extra}: {tuning[" ".join(extra)]}', flush=True)
        best_t = max(tuning, key=lambda k: tuning[k]['top1']).split()
        for extra in ([] if args.quick else KL_WEIGHTS):
            name = 'kl_tune_' + '_'.join(best_t[1::2] + extra[1::2])
            tuning[' '.join(best_t + extra)] = run(
                out, name, budget, ['--kd-loss', 'kl'] + best_t + extra, seed=args.seeds[0],
                teacher=str(teacher_ckpt), log=out / 'logs' / f'{name}.log')
            print(f'kl tuning {best_t + extra}: {tuning[" ".join(best_t + extra)]}', flush=True)
        kl_args = max(tuning, key=lambda k: tuning[k]['top1']).split()
        results['kl tuning (seed %d)' % args.seeds[0]] = tuning

    table = []
    for name, extra in configurations(kl_args):
        if args.only and name not in args.only:
            continue
        per_seed = []
        for seed in args.seeds:
            experiment = name.replace(' ', '_').replace(',', '').replace('(', '').replace(')', '') + f'_s{seed}'
            per_seed.append(run(out, experiment, budget, extra, seed,
                                teacher=None if name == 'student alone' else str(teacher_ckpt),
                                log=out / 'logs' / f'{experiment}.log'))
            print(f'{name} seed {seed}: {per_seed[-1]}', flush=True)
        top1, corrupt = mean_std([r['top1'] for r in per_seed]), mean_std([r['corrupt'] for r in per_seed])
        results[name] = dict(args=extra, runs=per_seed, top1_mean=top1[0], top1_std=top1[1],
                             corrupt_mean=corrupt[0], corrupt_std=corrupt[1])
        table.append(f'| {name} | {" ".join(extra) or "-"} | {top1[0]:.2f} ± {top1[1]:.2f} | '
                     f'{corrupt[0]:.2f} ± {corrupt[1]:.2f} | {statistics.mean(r["seconds"] for r in per_seed):.0f} |')

    report = dict(
        date=str(date.today()), machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores',
        torch=torch.__version__, budget=budget, teacher_budget=teacher_budget, teacher=teacher_metrics,
        seeds=args.seeds, kl_args=kl_args, results=results, command=' '.join(sys.argv))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f'\nteacher {TEACHER["model"]}: top-1 {teacher_metrics["top1"]:.2f}, corruptions {teacher_metrics["corrupt"]:.2f}')
    print('| student | arguments | top-1 | corruption top-1 | seconds/run |')
    print('| --- | --- | ---: | ---: | ---: |')
    print('\n'.join(table))


if __name__ == '__main__':
    main()
