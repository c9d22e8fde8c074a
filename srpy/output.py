"""
What engine code prints: every line goes to the engine's log (logger C{srpy.engine.output});
while a call whose caller asked for it runs (the call annotation C{SOUT}, see L{srpy.wire}), its
lines also go to that caller as they happen (L{forward_to}); while a script runs
(L{srpy.asmain}), all it prints is also kept for its result (L{capture}). C{input()} finds an
empty stdin instead of blocking the engine.

How lines reach the caller: on the call's own connection, as SOUT messages ahead of the reply
(the way a large bytes result travels, SBLB), so nothing polls and nothing else connects. The
first line in L{FLUSH_DELAY} s is sent at once; the lines that follow it closely are gathered for
up to L{FLUSH_DELAY} s (or L{FLUSH_SIZE} bytes) and sent by one flusher thread, so that a loop of
prints costs the call a list append per line, not a system call; the rest is sent as the call
ends, before its reply (L{end_forward}). The caller reads them while it waits for the
reply (L{srpy.forwarding}).

Which call a line belongs to: the call that runs (the engine runs one at a time, under its lock),
whichever thread prints it; lines printed between calls go to the log only.

L{capture_output} is called once in the engine process (by the launcher's child); the engine's
call wrapper (L{srpy.calls}) calls L{flush_output} as each call ends, so that a call's output
ends with the call even without a final newline.
"""

import contextlib
import io
import os
import logging
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import wire

output_log = logging.getLogger("srpy.engine.output")

#: seconds the lines of a running call are gathered before they are sent to its caller
FLUSH_DELAY = 0.02
#: bytes of gathered lines that are sent at once, by the printing thread itself (so that a flood
#: of prints waits for the caller to read, as a program printing to a terminal does)
FLUSH_SIZE = 256 * 1024
#: the most of each stream a script's result keeps (L{capture}); what comes past it is cut
CAPTURE_MAX = 16 * 1024 * 1024


#: the environment variable that, set to "0", logs a line that was forwarded to its caller at
#: DEBUG rather than at its level: an engine whose log is its caller's own terminal
#: (C{newSubEngine}) would show each line twice
LOG_FORWARDED = "SRPY_LOG_FORWARDED"
_QUIET_WHEN_FORWARDED = os.environ.get(LOG_FORWARDED) == "0"


class _OutputToLog:
    """A stand-in for sys.stdout/sys.stderr that sends whole lines to the engine's log (and to the sinks)."""

    def __init__(self, level: int, fd: int = 1) -> None:
        self.level = level
        self.fd = fd  # 1 stdout, 2 stderr: what the caller's side prints them on
        self._partial = threading.local()  # each thread's unfinished line: calls in threads do not mix

    def write(self, text: str) -> int:
        text = str(text)
        captured = _capturing
        if captured is not None:
            captured.add(self.fd, text)
        buffered = getattr(self._partial, "text", "") + text
        *lines, rest = buffered.split("\n")
        if lines:
            sink = _forwarding
            level = logging.DEBUG if sink is not None and _QUIET_WHEN_FORWARDED else self.level
            for line in lines:
                output_log.log(level, "%s", line)
            if sink is not None:
                sink.add(self.fd, lines)
        self._partial.text = rest
        return len(text)

    def flush(self) -> None:
        rest = getattr(self._partial, "text", "")
        if rest:
            self._partial.text = ""
            sink = _forwarding
            output_log.log(logging.DEBUG if sink is not None and _QUIET_WHEN_FORWARDED else self.level, "%s", rest)
            if sink is not None:
                sink.add(self.fd, [rest])

    def isatty(self) -> bool:
        return False


def flush_output() -> None:
    """Log what this thread printed without a final newline: a call's output ends with the call."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _OutputToLog):
            stream.flush()  # writes only a line begun and not ended


def capture_output() -> None:
    """
    Send everything user code prints to the engine's log (call once, in the engine process), and
    give user code an empty stdin: C{input()} raises EOFError instead of blocking the engine on
    the launcher's pipe or console (the launcher itself reads C{sys.__stdin__}).
    """
    if not isinstance(sys.stdout, _OutputToLog):
        sys.stdout = _OutputToLog(logging.INFO, 1)  # type: ignore[assignment]
        sys.stderr = _OutputToLog(logging.WARNING, 2)  # type: ignore[assignment]
        sys.stdin = io.StringIO()


# -- to the caller, as it happens -------------------------------------------------------------------

class _CallSink:
    """The lines of one running call, on their way to its caller over the call's connection."""

    def __init__(self, conn: Any, seq: int, serializer_id: int) -> None:
        self.conn, self.seq, self.serializer_id = conn, seq, serializer_id
        self._lock = threading.Lock()
        self._lines: List[Tuple[int, str]] = []
        self._size = 0
        self._scheduled = False
        self._sent = 0.0  # when lines were last sent (time.monotonic)
        self.closed = False

    def add(self, fd: int, lines: List[str]) -> None:
        with self._lock:
            if self.closed:
                return
            self._lines.extend((fd, line) for line in lines)
            self._size += sum(len(line) for line in lines) + len(lines)
            if self._scheduled:
                if self._size >= FLUSH_SIZE:
                    self._send()
                return
            if self._size >= FLUSH_SIZE or time.monotonic() - self._sent >= FLUSH_DELAY:
                # the first line in a while goes at once: it arrives even if the code then holds the
                # interpreter until its process is ended (the flusher could not run)
                self._send()
                return
            self._scheduled = True
        try:
            _flusher.schedule(self)
        except RuntimeError:  # no thread can start (the process is at its limit): the call's end sends them
            pass

    def flush(self) -> None:
        """Send what is gathered (the flusher's call)."""
        with self._lock:
            self._scheduled = False
            if not self.closed:
                self._send()

    def close(self, timeout: float = -1) -> None:
        """Send the rest, and no more: the call's reply comes next on this connection."""
        if not self._lock.acquire(timeout=timeout):  # a send stuck on a caller that stopped reading
            self.closed = True
            return
        try:
            if not self.closed:
                self._send()
            self.closed = True
        finally:
            self._lock.release()

    def _send(self) -> None:
        lines, self._lines, self._size = self._lines, [], 0
        if not lines:
            return
        self._sent = time.monotonic()
        try:
            self.conn.send(wire.output_ahead(self.serializer_id, self.seq, lines))
        except Exception as exc:  # the caller is gone: its call's reply fails too; the lines stay in the log
            self.closed = True
            output_log.debug("cannot send output to the caller: %s", exc)


class _Flusher:
    """One thread that sends the gathered lines of running calls, L{FLUSH_DELAY} s after the first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: List[_CallSink] = []
        self._thread: Optional[threading.Thread] = None

    def schedule(self, sink: _CallSink) -> None:
        with self._cond:
            self._due.append(sink)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="srpy-output", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
            # gather: lines printed meanwhile go in the same message
            time.sleep(FLUSH_DELAY)
            with self._cond:
                due, self._due = self._due, []
            for sink in due:
                sink.flush()


_flusher = _Flusher()
_forwarding: Optional[_CallSink] = None
_capturing: Optional["Captured"] = None


def forward_to(conn: Any, seq: int, serializer_id: int) -> Tuple[Optional[_CallSink], _CallSink]:
    """
    From now on (until L{end_forward}), send the lines printed on this engine to the caller of
    call C{seq} on C{conn}. Called by the call wrapper under the engine's lock; returns what
    L{end_forward} takes.
    """
    global _forwarding
    previous, sink = _forwarding, _CallSink(conn, seq, serializer_id)
    _forwarding = sink
    return previous, sink


def end_forward(token: Tuple[Optional[_CallSink], _CallSink]) -> None:
    """The call ends: send its last lines before its reply; the call it interrupted (if any) takes them again."""
    global _forwarding
    previous, sink = token
    _forwarding = previous
    sink.close()


def stop_forwarding() -> None:
    """
    The engine ends its process (a runaway call): its watchdog sends the reply itself, from its
    own thread, so no more lines may be sent on that connection.
    """
    sink = _forwarding
    if sink is not None:
        sink.close(timeout=1.0)


# -- kept for a script's result ---------------------------------------------------------------------

class Captured:
    """What was printed while L{capture} ran: C{text(1)} (stdout) and C{text(2)} (stderr)."""

    def __init__(self) -> None:
        self._parts: Dict[int, List[str]] = {1: [], 2: []}
        self._sizes = {1: 0, 2: 0}
        self._cut = {1: False, 2: False}
        self._lock = threading.Lock()

    def add(self, fd: int, text: str) -> None:
        with self._lock:
            room = CAPTURE_MAX - self._sizes[fd]
            if room <= 0:
                self._cut[fd] = True
                return
            if len(text) > room:
                text, self._cut[fd] = text[:room], True
            self._parts[fd].append(text)
            self._sizes[fd] += len(text)

    def text(self, fd: int) -> str:
        with self._lock:
            text = "".join(self._parts[fd])
            if self._cut[fd]:
                text += "\n[srpy: output cut after %d characters]\n" % CAPTURE_MAX
            return text


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    """Keep what is printed on this engine during the block (and still log and forward it)."""
    global _capturing
    previous, captured = _capturing, Captured()
    _capturing = captured
    try:
        yield captured
    finally:
        _capturing = previous
