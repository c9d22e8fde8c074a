"""
A live progress line on stderr for long maps: done/total, percent, rate and time left.

>>> import io
>>> out = io.StringIO()
>>> bar = ProgressBar(200, stream=out, interval=0)
>>> bar.advance(50); bar.close()
>>> "200/200" in out.getvalue() and "100%" in out.getvalue()
True
"""

import sys
import threading
import time
from typing import IO, Optional


class ProgressBar:
    """Counts items done and redraws one stderr line at most every C{interval} seconds."""

    def __init__(self, total: int, stream: Optional[IO[str]] = None, interval: float = 0.2,
                 label: str = "srpy map") -> None:
        self.total = total
        self.done = 0
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.started = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()
        self._closed = False

    def advance(self, items: int) -> None:
        """Count C{items} more as done; redraw if it is time."""
        with self._lock:
            self.done += items
            now = time.monotonic()
            if now - self._drawn >= self.interval or self.done >= self.total:
                self._drawn = now
                self._draw(now)

    def close(self, complete: bool = True) -> None:
        """Draw the final line and end it: everything done, or (C{complete=False}) as far as it got."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if complete:
                self.done = max(self.done, self.total)
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "%.0fs" % left if left != float("inf") else "?"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        width = 24
        filled = int(width * percent / 100)
        self.stream.write("\r%s [%s%s] %d/%d %3.0f%% %s/s ETA %s " % (
            self.label, "#" * filled, "." * (width - filled), self.done, self.total, percent, _si(rate), eta))
        self.stream.flush()


def _si(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return "%.1f%s" % (value / scale, unit)
    return "%.1f" % value
