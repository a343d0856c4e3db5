"""Throughput benchmark: R2KD training steps against timm's tasks and the passes they cannot avoid.

    python bench/throughput.py                                 # CPU: resnet50 -> resnet18, b32, 112 px, 100 classes
    python bench/throughput.py --device cuda --img-size 224 --batch-size 128 --amp bf16 --channels-last

All step rows are timed in one process over the same batches, interleaved round-robin so that
drift hits every row alike; the median per row is reported with its ratio to the full R2KD step.
Peak memory is measured per row in a fresh process (CPU: peak RSS growth; CUDA: peak allocated).
Rows:

* student: timm ClassificationTask; kd: timm LogitDistillationTask (KL);
* r2kd-plain: R2KDTask without view and without the pruned teacher;
* r2kd-pruned: with the pruned teacher, no view;
* full: pruned teacher + cutmix view, default options; full+batched / +split: views through each
  teacher in one call / one call per view; +channels_last, +fused_bn, +bf16, +compile;
* reference: the released code's pattern in fp32 (hard ranks, pruned BatchNorm in train mode, both
  student calls first, then two teacher calls per view);
* bare passes: student forward+backward+SGD step on both views, and each teacher's forward on both
  views, with the same modules; their sum is what no implementation can avoid.

The loss alone (forward+backward) is timed at C = 100, 1,000 and 21,843 against the KL loss.
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

import timm
import torch
from timm.task import ClassificationTask, LogitDistillationTask

from timm_r2kd import KLDistillLoss, PrunedTeacher, R2KDLoss, R2KDTask
from timm_r2kd.views import create_batch_view

REPO = Path(__file__).resolve().parents[1]
STEP_ROWS = ['student', 'kd', 'r2kd-plain', 'r2kd-pruned', 'full', 'full+batched', 'full+split',
             'full+channels_last', 'full+fused_bn', 'full+bf16', 'full+compile', 'reference', 'bare']


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


class Row:
    """A benchmark row: a task (or the bare passes), its optimizer and how to run one step."""

    def __init__(self, name, args, device):
        self.name = name
        self.device = device
        torch.manual_seed(0)
        c = args.num_classes
        student = timm.create_model(args.student, num_classes=c).to(device)
        teacher = timm.create_model(args.teacher, num_classes=c).to(device).eval()
        # the reference pattern runs as released: fp32, default memory format
        channels_last = (args.channels_last or name == 'full+channels_last') and name != 'reference'
        self.channels_last = channels_last
        self.autocast = (args.amp == 'bf16' or name == 'full+bf16') and name != 'reference'
        view = create_batch_view('cutmix', c)
        full = dict(view_transform=view, distill_loss=R2KDLoss(), verbose=False)
        if name == 'student':
            task = ClassificationTask(student, verbose=False)
        elif name == 'kd':
            task = LogitDistillationTask(student, teacher, temperature=4.0, verbose=False)
        elif name == 'r2kd-plain':
            task = R2KDTask(student, PrunedTeacher(teacher, teacher_weight=1.0), verbose=False)
        elif name == 'r2kd-pruned':
            task = R2KDTask(student, PrunedTeacher(teacher), verbose=False)
        elif name == 'reference':
            task = R2KDTask(student, teacher, reference_parity=True, batch_views=False, verbose=False,
                            view_transform=create_batch_view('cutmix', c, per_sample=False))
        elif name in ('full', 'full+channels_last', 'full+bf16', 'full+compile', 'full+fused_bn', 'bare'):
            task = R2KDTask(student, PrunedTeacher(teacher), **full)
        elif name == 'full+batched':
            task = R2KDTask(student, PrunedTeacher(teacher), batch_views=True, **full)
        elif name == 'full+split':
            task = R2KDTask(student, PrunedTeacher(teacher), batch_views=False, **full)
        else:
            raise ValueError(name)
        task.to(device)
        if name == 'full+fused_bn':
            from torch.fx.experimental.optimization import fuse
            task.teacher.model = fuse(task.teacher.model)
            task.teacher.pruned_model = fuse(task.teacher.pruned_model)
        if channels_last:
            task.to(memory_format=torch.channels_last)
        if name == 'full+compile':
            task.compile()
        self.task = task.train()
        self.optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=1e-3, momentum=0.9)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    def step(self, x, y):
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.name == 'bare':
            self.bare_parts(x, y)
            return
        if self.name == 'reference':
            self.reference_step(x, y)
            return
        with self._autocast():
            loss = self.task(x, y)['loss']
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def reference_step(self, x, y):
        """The released code's order: both student passes first, then dense and pruned teacher per view."""
        task = self.task
        view = task.view_transform(x, y)
        student = task.get_trainable_module()
        s_clean, s_view = student(x), student(view)
        with torch.no_grad():
            targets = [task.teacher(v) for v in (x, view)]
        loss = task.criterion(s_clean, y) + sum(task.distill_loss(s, t) for s, t in zip((s_clean, s_view), targets))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def bare_parts(self, x, y):
        """Time the unavoidable passes separately: (student both views, dense teacher, pruned teacher)."""
        view = self.task.view_transform(x, y)
        student = self.task.get_trainable_module()
        times = []
        _sync(self.device)
        t0 = time.perf_counter()
        with self._autocast():
            out = student(x).float().sum() + student(view).float().sum()
        self.optimizer.zero_grad(set_to_none=True)
        out.backward()
        self.optimizer.step()
        _sync(self.device)
        times.append(time.perf_counter() - t0)
        for model in (self.task.teacher.model, self.task.teacher.pruned_model):
            t0 = time.perf_counter()
            with torch.no_grad(), self._autocast():
                model(x)
                model(view)
            _sync(self.device)
            times.append(time.perf_counter() - t0)
        return times



def time_steps(args, device, rows):
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=gen).to(device),
                torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device))
               for _ in range(args.rounds)]
    built = {}
    for name in rows:
        t0 = time.time()
        built[name] = Row(name, args, device)
        for x, y in batches[:args.warmup]:  # warm-up (and compilation) outside the timed rounds
            built[name].step(x, y)
        print(f'built {name} in {time.time() - t0:.1f}s', flush=True)
    if 'bare' in built and 'full' in built:  # the bare passes use the very modules of the full step
        built['bare'].task, built['bare'].optimizer = built['full'].task, built['full'].optimizer
    times = {name: [] for name in rows}
    bare = {'student': [], 'teacher': [], 'pruned': []}
    for x, y in batches:
        for name, row in built.items():
            if name == 'bare':
                for key, t in zip(bare, row.bare_parts(x, y)):
                    bare[key].append(t)
                continue
            _sync(device)
            t0 = time.perf_counter()
            row.step(x, y)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(ts) for name, ts in times.items() if ts}
    if 'bare' in rows:
        for key, ts in bare.items():
            medians[f'bare:{key}'] = statistics.median(ts)
        medians['bare'] = sum(medians[f'bare:{k}'] for k in bare)
    return medians


def time_losses(device, batch_size, repeats=15):
    results = {}
    for c in (100, 1000, 21843):
        gen = torch.Generator().manual_seed(0)
        z_s = torch.randn(batch_size, c, generator=gen).to(device).requires_grad_()
        z_t = torch.randn(batch_size, c, generator=gen).to(device)
        for name, loss in (('r2kd', R2KDLoss()), ('r2kd-hard', R2KDLoss(rank_mode='hard')), ('kl', KLDistillLoss())):
            ts = []
            for i in range(repeats + 3):
                _sync(device)
                t0 = time.perf_counter()
                loss(z_s, z_t).backward()
                _sync(device)
                if i >= 3:
                    ts.append(time.perf_counter() - t0)
                z_s.grad = None
            results[f'{name}@{c}'] = statistics.median(ts)
    return results


def peak_memory(args, row):
    """Peak memory of a few steps of one row, in a fresh process (MiB)."""
    cmd = [sys.executable, __file__, '--memory-row', row, '--device', args.device, '--img-size', str(args.img_size),
           '--batch-size', str(args.batch_size), '--num-classes', str(args.num_classes), '--amp', args.amp,
           '--teacher', args.teacher, '--student', args.student] + (['--channels-last'] if args.channels_last else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return None
    return float(out.stdout.strip().splitlines()[-1])


def _rss_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def measure_row_memory(args, device):
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    base = _rss_mib()
    row = Row(args.memory_row, args, device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    for _ in range(3):
        row.step(x, y)
    if device.type == 'cuda':
        print((torch.cuda.max_memory_allocated() - base_cuda) / 2 ** 20)
    else:
        print(_rss_mib() - base)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--teacher', default='resnet50')
    parser.add_argument('--student', default='resnet18')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--img-size', type=int, default=112)
    parser.add_argument('--num-classes', type=int, default=100)
    parser.add_argument('--amp', default='none', choices=['none', 'bf16'], help='bf16 autocast for every row')
    parser.add_argument('--channels-last', action='store_true', help='channels_last for every row')
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--rows', nargs='+', default=STEP_ROWS, choices=STEP_ROWS)
    parser.add_argument('--no-memory', action='store_true')
    parser.add_argument('--json', default=str(REPO / 'docs' / 'throughput.json'))
    parser.add_argument('--memory-row', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.memory_row:
        return measure_row_memory(args, device)

    medians = time_steps(args, device, args.rows)
    losses = time_losses(device, args.batch_size)
    memory = {} if args.no_memory else {row: peak_memory(args, row) for row in args.rows}
    full = medians.get('full')
    report = dict(
        date=str(date.today()), device=torch.cuda.get_device_name() if device.type == 'cuda' else
        f'CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads',
        torch=torch.__version__, timm=timm.__version__, config=vars(args), step_seconds=medians,
        loss_seconds=losses, peak_memory_mib=memory, command=' '.join(sys.argv))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))

    print(f'\n{report["device"]}; {args.teacher} -> {args.student}, batch {args.batch_size}, {args.img_size} px, '
          f'{args.num_classes} classes, amp {args.amp}, channels_last {args.channels_last}')
    print('| row | median step (ms) | images/s | vs full | peak memory (MiB) |')
    print('| --- | ---: | ---: | ---: | ---: |')
    for name, t in medians.items():
        mem = memory.get(name)
        print(f'| {name} | {1e3 * t:.1f} | {args.batch_size / t:.1f} | '
              f'{t / full:.2f} | {"-" if mem is None else f"{mem:.0f}"} |' if full else f'| {name} | {1e3 * t:.1f} |')
    ratios = {}
    if full and 'bare' in medians:
        ratios['full / bare passes'] = full / medians['bare']
    if full and 'reference' in medians:
        ratios['full / reference'] = full / medians['reference']
    if 'r2kd-plain' in medians and 'kd' in medians:
        ratios['r2kd-plain / timm kd'] = medians['r2kd-plain'] / medians['kd']
    fastest = min((n for n in medians if n.startswith('full')), key=medians.get, default=None)
    if fastest and 'bare' in medians:
        ratios[f'fastest full ({fastest}) / bare passes'] = medians[fastest] / medians['bare']
    for k, v in ratios.items():
        print(f'{k}: {v:.3f}')
    print('\n| loss (fwd+bwd, batch %d) | C=100 (ms) | C=1000 (ms) | C=21843 (ms) |' % args.batch_size)
    print('| --- | ---: | ---: | ---: |')
    for name in ('r2kd', 'r2kd-hard', 'kl'):
        print(f'| {name} | ' + ' | '.join(f'{1e3 * losses[f"{name}@{c}"]:.2f}' for c in (100, 1000, 21843)) + ' |')
    report['ratios'] = ratios
    Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == '__main__':
    main()
