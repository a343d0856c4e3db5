"""A dependency-free progress bar for terminals (log lines carry the same numbers elsewhere)."""
import sys
import time


class ProgressBar:
    """Single-line progress on stderr: bar, count, rate, ETA and a status string.

    Args:
        total: Number of steps.
        desc: Label in front of the bar.
        enabled: Draw anything at all (only on a terminal, only on the primary process).
        width: Bar width in characters.
    """

    def __init__(self, total: int, desc: str = '', enabled: bool = True, width: int = 24):
        self.total = max(total, 1)
        self.desc = desc
        self.enabled = enabled
        self.width = width
        self.start = time.time()
        self._drawn = False

    def update(self, done: int, status: str = '') -> None:
        if not self.enabled:
            return
        elapsed = time.time() - self.start
        rate = done / elapsed if elapsed > 0 else 0.
        eta = (self.total - done) / rate if rate > 0 else 0.
        filled = int(self.width * done / self.total)
        bar = '#' * filled + '.' * (self.width - filled)
        sys.stderr.write(f'\r{self.desc} [{bar}] {done}/{self.total} {rate:.2f} it/s ETA {eta:.0f}s {status}\x1b[K')
        sys.stderr.flush()
        self._drawn = True

    def clear(self) -> None:
        """Erase the bar so a log line can be printed cleanly."""
        if self.enabled and self._drawn:
            sys.stderr.write('\r\x1b[K')
            sys.stderr.flush()
            self._drawn = False

    def close(self) -> None:
        self.clear()
