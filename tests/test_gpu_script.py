"""bench/gpu.sh, the CUDA acceptance run for a lent GPU, works end to end in its CPU smoke mode."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FMNIST_DIR, needs_data

REPO = Path(__file__).resolve().parents[1]


@needs_data
@pytest.mark.slow
def test_gpu_script_cpu_smoke(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, FMNIST_DIR=FMNIST_DIR, OMP_NUM_THREADS='1')
    done = subprocess.run(['bash', str(REPO / 'bench' / 'gpu.sh'), '--cpu-smoke', str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = dict(line.split('\t')[:2] for line in (tmp_path / 'steps.tsv').read_text().splitlines())
    assert steps == {name: 'ok' for name in ('env', 'cuda_tests', 'train_teacher', 'train_student', 'resume_student',
                                             'export_loads', 'throughput_eager')}
    assert 'export reproduces the student' in (tmp_path / 'export_loads.log').read_text()
    assert (tmp_path / 'throughput_eager.json').is_file() and (tmp_path / 'export' / 'model.safetensors').is_file()
