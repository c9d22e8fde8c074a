"""
What engine code prints: every line goes to the engine's log (logger C{srpy.engine.output}), never
to a client, and C{input()} finds an empty stdin instead of blocking the engine.

L{capture_output} is called once in the engine process (by the launcher's child); the engine's
call wrapper (L{srpy.calls}) calls L{flush_output} as each call ends, so that a call's output
ends with the call even without a final newline.
"""

import io
import logging
import sys
import threading

output_log = logging.getLogger("srpy.engine.output")


class _OutputToLog:
    """A stand-in for sys.stdout/sys.stderr that sends whole lines to the engine's log."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._partial = threading.local()  # each thread's unfinished line: calls in threads do not mix

    def write(self, text: str) -> int:
        buffered = getattr(self._partial, "text", "") + str(text)
        *lines, rest = buffered.split("\n")
        for line in lines:
            output_log.log(self.level, "%s", line)
        self._partial.text = rest
        return len(text)

    def flush(self) -> None:
        rest = getattr(self._partial, "text", "")
        if rest:
            self._partial.text = ""
            output_log.log(self.level, "%s", rest)

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
        sys.stdout = _OutputToLog(logging.INFO)  # type: ignore[assignment]
        sys.stderr = _OutputToLog(logging.WARNING)  # type: ignore[assignment]
        sys.stdin = io.StringIO()
