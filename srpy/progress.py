"""
The progress of long maps (C{box.map(..., progress=True)}): a U{tqdm<https://tqdm.github.io>} bar
where tqdm is installed (C{pip install srpy[notebook]}), through C{tqdm.auto}, so a Jupyter
notebook gets its widget (with ipywidgets) and a terminal its text bar; without tqdm, srpy's own
line on stderr (L{ProgressBar}: done/total, percent, rate and time left).

Either is a L{Progress}: the scheduler's dispatchers call L{advance<Progress.advance>} as the
results of chunks arrive (from several threads), and the map's consumer calls
L{close<Progress.close>} once, at the end (complete), or when the map fails, is cancelled or
is given up (as far as it got).

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
from typing import IO, Any, Optional, Protocol


class Progress(Protocol):
    """What a map's progress display does (L{ProgressBar}, L{TqdmBar})."""

    def advance(self, items: int) -> None:
        """Count C{items} more as done (called from the dispatchers' threads)."""

    def close(self, complete: bool = True) -> None:
        """End the display: everything done, or (C{complete=False}) as far as it got; once."""


def progress_bar(total: int, label: str = "srpy map", stream: Optional[IO[str]] = None) -> Progress:
    """
    The progress display of a map of C{total} items: a L{TqdmBar} if C{tqdm} imports, else a
    L{ProgressBar}. C{stream}: where it draws (default: C{sys.stderr} of the moment).
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional (the notebook extra): srpy's own line does
        return ProgressBar(total, stream=stream, label=label)
    return TqdmBar(tqdm, total, stream=stream, label=label)


class TqdmBar:
    """
    A tqdm bar counting a map's items. tqdm's C{update} is not meant for several threads at once:
    the dispatchers' calls go through one lock. Closed before C{total} (a failed or cancelled
    map), the bar stays where it got (a notebook widget turns red).
    """

    def __init__(self, tqdm: Any, total: int, stream: Optional[IO[str]] = None, label: str = "srpy map") -> None:
        self._bar = tqdm(total=total, desc=label, unit="item", file=stream, dynamic_ncols=True)
        self._lock = threading.Lock()
        self._closed = False

    @property
    def done(self) -> int:
        """How many items are done so far."""
        return int(self._bar.n)

    def advance(self, items: int) -> None:
        """Count C{items} more as done (tqdm redraws at most every 0.1 s, and at the end)."""
        with self._lock:
            if not self._closed:
                self._bar.update(items)

    def close(self, complete: bool = True) -> None:
        """End the bar: at its total, or (C{complete=False}) as far as it got."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if complete and self._bar.n < self._bar.total:
                self._bar.update(self._bar.total - self._bar.n)
            self._bar.close()


class ProgressBar:
    """srpy's own line: counts items done and redraws one stderr line at most every C{interval} seconds."""

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
