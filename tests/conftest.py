import os

import pytest
import torch

from timm_r2kd.data import DEBIAN_FASHION_MNIST

# Fashion-MNIST's idx files: $FMNIST_DIR (the Makefile passes its own) or Debian's package folder
FMNIST_DIR = os.environ.get('FMNIST_DIR') or DEBIAN_FASHION_MNIST
HAS_DATA = os.path.isfile(os.path.join(FMNIST_DIR, 'train-images-idx3-ubyte.gz'))
_MISSING = (f'Fashion-MNIST missing in {FMNIST_DIR} (set FMNIST_DIR, or as root: apt-get install '
            f'dataset-fashion-mnist; make test does this)')
# end-to-end tests need the data; outside CI they are skipped with this reason (pytest -rs shows it)
needs_data = pytest.mark.skipif(not HAS_DATA, reason=_MISSING)


def pytest_sessionstart(session):
    # CI (which sets $CI) must never pass with the end-to-end tests quietly skipped
    if os.environ.get('CI') and not HAS_DATA:
        pytest.exit(f'CI: {_MISSING}.', returncode=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def brute_average_ranks(row):
    """1-based ranks of a list of numbers, ties get their mean rank (pure Python)."""
    return [
        sum(1 for b in row if b < a) + (sum(1 for b in row if b == a) + 1) / 2
        for a in row
    ]


def brute_pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a) ** 0.5
    vb = sum((y - mb) ** 2 for y in b) ** 0.5
    return cov / (va * vb + 1e-8)


def brute_spearman(a, b):
    return brute_pearson(brute_average_ranks(a), brute_average_ranks(b))


def brute_cosine_distance(u, v):
    dot = sum(x * y for x, y in zip(u, v))
    nu = sum(x * x for x in u) ** 0.5
    nv = sum(y * y for y in v) ** 0.5
    return 1 - abs(dot) / (nu * nv + 1e-8)
