"""The embedded default: R2KD end to end on Fashion-MNIST, on a CPU, in a few minutes.

    python -m timm_r2kd.demo [--output DIR] [--data-dir DIR]

1. trains a resnet18 teacher on all 60,000 images for 2 epochs with train_r2kd.py (timm's training);
2. distils a small student (timm's test_resnet, 0.37 M parameters; 4,000 images, 8 epochs) with --r2kd;
3. trains the same student alone under the same budget;
then prints top-1 and robustness top-1 (mean over noise, blur, contrast and JPEG) of all three, with
the paths of their outputs. Each stage runs train_r2kd.py in its own process and logs to a file in the
demo folder; the console gets one line per stage and the final table (also written as results.json).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional

from .data import DEBIAN_FASHION_MNIST, FASHION_MNIST_MEAN, FASHION_MNIST_STD, find_idx_files
from .hub import read_summary

TEACHER = dict(model='resnet18', samples=60000, epochs=2, batch=128, lr=0.1)
STUDENT = dict(model='test_resnet', samples=4000, epochs=8, batch=64, lr=0.05)
VAL_SAMPLES = 2000
# Tuned on a validation split (bench/accuracy.py, docs/benchmarks.md), R2KD into this student picks T=2 among
# {1, 2, 4, 8}; the paper's T=4 scored 0.97 +- 0.84 points lower on the test set (5 seeds, paired)
R2KD_TEMPERATURE = 2.0
COMMON = ['--dataset', 'torch/fashion_mnist', '--in-chans', '1', '--img-size', '28', '--num-classes', '10',
          '--val-num-samples', str(VAL_SAMPLES), '--device', 'cpu', '--workers', '0', '--opt', 'sgd',
          '--momentum', '0.9', '--weight-decay', '5e-4', '--sched', 'cosine', '--warmup-epochs', '0',
          '--smoothing', '0', '--scale', '0.8', '1.0', '--color-jitter', '0', '--log-interval', '25',
          '--eval-corruptions', '--seed', '0',
          # Fashion-MNIST's own statistics, not timm's ImageNet defaults
          '--mean', *map(str, FASHION_MNIST_MEAN), '--std', *map(str, FASHION_MNIST_STD)]


def find_data(data_dir: Optional[str]) -> str:
    """A folder with the Fashion-MNIST idx files: given, Debian's, or downloaded by torchvision."""
    for candidate in (data_dir, DEBIAN_FASHION_MNIST):
        if candidate and find_idx_files(candidate, 'train'):
            return candidate
    target = data_dir or os.path.join('data', 'fashion-mnist')
    print(f'Fashion-MNIST not found; trying to download it with torchvision into {target} ...', flush=True)
    try:
        from torchvision.datasets import FashionMNIST
        for train in (True, False):
            FashionMNIST(target, train=train, download=True)
    except Exception as e:  # offline, proxy, ...
        raise SystemExit(
            f'Could not get Fashion-MNIST ({type(e).__name__}: {e}).\n'
            f'Install it (Debian/Ubuntu, as root): apt-get install dataset-fashion-mnist\n'
            f'or download the four *-ubyte.gz files into a folder and pass --data-dir FOLDER.')
    return target


def _stage(step: str, title: str, argv: List[str], log: Path) -> None:
    print(f'{step} {title} (log: {log}) ...', end=' ', flush=True)
    start = time.time()
    with open(log, 'w') as sink:
        sink.write(f'$ python train_r2kd.py {" ".join(argv)}\n')
        sink.flush()
        done = subprocess.run([sys.executable, '-m', 'timm_r2kd.train', *argv], stdout=sink, stderr=subprocess.STDOUT)
    if done.returncode:
        print('failed', flush=True)
        raise SystemExit(f'{title} failed (exit {done.returncode}); see {log}.')
    print(f'done in {time.time() - start:.0f} s', flush=True)


def _budget(cfg: Dict) -> List[str]:
    # validation (with the corruptions) only after the last epoch, to spend the time on training
    return ['--model', cfg['model'], '--train-num-samples', str(cfg['samples']), '--epochs', str(cfg['epochs']),
            '-b', str(cfg['batch']), '--lr', str(cfg['lr']), '--val-interval', str(cfg['epochs'])]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--output', default=None,
                        help='folder for the three runs (default: a new output/demo/<date-time>)')
    parser.add_argument('--data-dir', default=None, help='folder with the Fashion-MNIST idx files')
    args = parser.parse_args(argv)
    data = find_data(args.data_dir)
    # a new folder per demo: train_r2kd refuses to write over an earlier run's folder
    out = Path(args.output or os.path.join('output', 'demo', datetime.now().strftime('%Y%m%d-%H%M%S'))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = COMMON + ['--data-dir', data, '--output', str(out)]
    start = time.time()
    _stage('[1/3]', f'teacher: {TEACHER["model"]} on {TEACHER["samples"]} images, {TEACHER["epochs"]} epochs',
           common + _budget(TEACHER) + ['--experiment', 'teacher'], out / 'teacher.log')
    _stage('[2/3]', f'student with R2KD: {STUDENT["model"]} on {STUDENT["samples"]} images, {STUDENT["epochs"]} epochs',
           common + _budget(STUDENT) + ['--teacher', TEACHER['model'], '--teacher-checkpoint',
                                        str(out / 'teacher' / 'last.pth.tar'), '--r2kd', '--r2kd-temperature',
                                        str(R2KD_TEMPERATURE), '--experiment', 'student_r2kd'],
           out / 'student_r2kd.log')
    _stage('[3/3]', 'the same student alone, same budget', common + _budget(STUDENT) + ['--experiment', 'student_alone'],
           out / 'student_alone.log')

    rows = []
    for label, model, folder in (('teacher', TEACHER['model'], 'teacher'),
                                 ('student alone', STUDENT['model'], 'student_alone'),
                                 ('student with R2KD', STUDENT['model'], 'student_r2kd')):
        last = read_summary(out / folder)[-1]
        rows.append(dict(run=label, model=model, top1=last['eval_top1'], robust_top1=last['eval_top1_corrupt_mean'],
                         output=str(out / folder)))
    (out / 'results.json').write_text(json.dumps(rows, indent=2))
    print(f'\nFashion-MNIST, {VAL_SAMPLES} test images; robust = mean top-1 under Gaussian noise, blur, contrast '
          f'and JPEG. {time.time() - start:.0f} s in all.\n')
    print(f'| {"run":<18} | {"model":<11} | {"top-1":>6} | {"robust":>6} |')
    print(f'|{"-" * 20}|{"-" * 13}|{"-" * 8}|{"-" * 8}|')
    for row in rows:
        print(f'| {row["run"]:<18} | {row["model"]:<11} | {row["top1"]:6.2f} | {row["robust_top1"]:6.2f} |')
    print(f'\nRuns, logs and results.json: {out}')
    print('Checkpoints load with timm.create_model(name, num_classes=10, in_chans=1, checkpoint_path=...).')

if __name__ == '__main__':
    main()
