"""How a training run stops and where it resumes: stop signals, non-finite losses, resume positions."""
import logging
import signal
import threading
from typing import Optional

import torch
from timm import utils

_logger = logging.getLogger('train_r2kd')


class NonFiniteLossError(RuntimeError):
    """The training loss stopped being finite."""


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped training at a safe point, after saving ``resume_path``."""

    def __init__(self, signum: int, resume_path: Optional[str]):
        super().__init__(signum, resume_path)
        self.signum = signum
        self.resume_path = resume_path


class StopSignal:
    """Context that turns SIGINT/SIGTERM into a request to stop after the current update.

    A second signal stops at once (KeyboardInterrupt). Under DDP every process stops at the same
    update: the request is all-reduced when it is checked.

    Args:
        distributed: Whether the run has several processes.
    """

    def __init__(self, distributed: bool = False):
        self.distributed = distributed
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> 'StopSignal':
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        _logger.warning(f'{signal.Signals(signum).name}: stopping after the current update, saving a checkpoint '
                        f'(send it again to stop at once, without saving).')

    def requested(self, device: torch.device) -> bool:
        """Whether any process was asked to stop (a collective call under DDP)."""
        if not self.distributed:
            return self.signum is not None
        flag = torch.tensor([0 if self.signum is None else self.signum], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return bool(flag.item())


class RunSaver(utils.CheckpointSaver):
    """timm's checkpoint saver that also records where training continues from each checkpoint.

    ``next_position`` (epoch, batch) goes into the checkpoint's 'saver' entry, so a resume from a
    mid-epoch recovery checkpoint continues at the next batch, not the next epoch.
    """
    next_position = (0, 0)

    def state_dict(self, epoch=None, metric=None):
        return dict(super().state_dict(epoch, metric), next_position=tuple(self.next_position))
