"""Data order and random draws as functions of (seed, epoch, step), for exact resumption.

A run resumed from ``last.pth.tar`` or from a mid-epoch recovery checkpoint must end with the same
weights as the run that was never stopped (MosaicML Composer's deterministic mid-epoch resumption
is the model). So nothing random may depend on how the process got where it is:

* the sample order of an epoch is a permutation seeded by (seed, epoch), split across processes
  like ``DistributedSampler``, and can start after the batches already trained (``ResumableSampler``);
* each sample's augmentation draws come from RNGs seeded by (seed, epoch, index), whichever loader
  worker runs it (``SeededDataset``);
* each training step reseeds the process's RNGs from (seed, rank, epoch, step) before its own draws
  (mixup, cutmix, cutout, random erasing, dropout): ``seed_step``.
"""
import random
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, RandomSampler, Sampler

from .data import DatasetWrapper


def mix_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: nearby inputs give unrelated seeds)."""
    state = np.random.SeedSequence([int(p) % (1 << 63) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (CUDA's too once CUDA is in use).

    ``torch.manual_seed`` is not used: before CUDA is initialised it queues a CUDA seeding call each
    time (a list that grows per sample) and costs ~0.2 ms, a large part of a 28 px image's loading.
    """
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def seed_step(seed: int, rank: int, epoch: int, batch_idx: int) -> None:
    """Reseed before a training step's own random draws."""
    seed_all(mix_seed(seed, rank, epoch, batch_idx, 1))


class SeededDataset(DatasetWrapper):
    """Wraps a map-style dataset so that each sample's transforms draw from RNGs seeded by (seed, epoch, index).

    It takes the ``(epoch, index)`` keys ``ResumableSampler`` yields (plain indices pass through
    unseeded).

    Args:
        dataset: The dataset.
        seed: Run seed.
    """

    def __init__(self, dataset: Dataset, seed: int):
        super().__init__(dataset)
        self.seed = seed

    def __getitem__(self, key):
        if isinstance(key, tuple):
            epoch, index = key
            seed_all(mix_seed(self.seed, epoch, index, 0))
            key = index
        return self.dataset[key]


class ResumableSampler(Sampler):
    """Shuffled sample order seeded by (seed, epoch), per process, startable after a number of batches.

    Yields ``(epoch, index)`` for ``SeededDataset``. Like ``DistributedSampler`` it pads the
    permutation to a multiple of the process count and gives process r every N-th index from r.

    Args:
        num_samples: Dataset length.
        seed: Run seed.
        batch_size: Per-process batch size (to convert a batch offset into samples).
        num_replicas: Number of processes.
        rank: This process.
    """

    def __init__(self, num_samples: int, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._start_batch = 0
        self.per_replica = -(-num_samples // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, batches: int) -> None:
        """Skip this many batches at the start of the next pass only (a mid-epoch resume)."""
        self._start_batch = batches

    def __len__(self) -> int:
        return self.per_replica

    def __iter__(self):
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 2))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        total = self.per_replica * self.num_replicas
        order += order[:total - len(order)]
        order = order[self.rank:total:self.num_replicas]
        start, self._start_batch = self._start_batch * self.batch_size, 0
        for index in order[start:]:
            yield self.epoch, index


def install_resumable_sampler(loader, seed: int, num_replicas: int = 1, rank: int = 0) -> Optional[ResumableSampler]:
    """Replace the shuffling sampler of a timm training loader by a ``ResumableSampler``.

    The loader's dataset must be a ``SeededDataset``. Returns None (the order then stays timm's, and
    a resume is not exact) for loaders this cannot apply to: iterable datasets, repeated-augment or
    scheduled-size samplers, timm's multi-epoch loader.

    Args:
        loader: A loader from ``timm.data.create_loader`` (a PrefetchLoader or a DataLoader).
        seed: Run seed.
        num_replicas: Number of processes.
        rank: This process.
    """
    data_loader = getattr(loader, 'loader', loader)
    batch_sampler = getattr(data_loader, 'batch_sampler', None)
    if not isinstance(data_loader.dataset, SeededDataset) or type(batch_sampler) is not BatchSampler:
        return None
    if type(batch_sampler.sampler) not in (RandomSampler, DistributedSampler):
        return None
    sampler = ResumableSampler(len(data_loader.dataset), seed, batch_sampler.batch_size, num_replicas, rank)
    # the DataLoader forbids reassigning its sampler, but its BatchSampler reads this attribute each pass
    batch_sampler.sampler = sampler
    return sampler


def next_position(epoch: int, batches_done: int, batches_per_epoch: int) -> Tuple[int, int]:
    """(epoch, batch) where training continues after ``batches_done`` batches of ``epoch``."""
    return (epoch + 1, 0) if batches_done >= batches_per_epoch else (epoch, batches_done)
