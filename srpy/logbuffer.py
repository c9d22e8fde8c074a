"""
Logging that never blocks an engine: a bounded buffer between the process's log records and its
log stream, drained by one writer thread.

An engine's log is often a pipe (the launcher's, a terminal, a service manager's). When nobody
reads that pipe it fills, and a thread that writes to it waits until someone does: a worker
refusing a client, or a call whose code prints (its output goes to the log) while it holds the
engine lock. With L{install}, every record goes into the buffer at once, and only the writer
thread ever waits for the stream. When the buffer is full (L{CAPACITY} records), further records
are dropped and counted, and the writer says how many once the stream takes records again::

    serving thread --record--> [buffer, CAPACITY records] --writer thread--> original handlers --> stream
                     (never waits; drops and counts when full)             (the only one that may wait)
"""

import collections
import logging
import threading
from typing import Deque, List, Optional

#: records held while the log stream does not take them; beyond this, records are dropped and counted
CAPACITY = 2000
#: seconds the process waits at exit for the writer to pass on what is buffered (the stream may never drain)
EXIT_FLUSH = 2.0


class LogBuffer(logging.Handler):
    """
    A handler that only queues (L{emit} never waits for I/O); its writer thread hands each record
    to the handlers it replaced.
    """

    def __init__(self, targets: List[logging.Handler], capacity: int = CAPACITY) -> None:
        super().__init__()
        self.targets = targets
        self.capacity = capacity
        self.dropped = 0
        self._records: Deque[logging.LogRecord] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._idle = threading.Event()
        self._idle.set()
        self._writer = threading.Thread(target=self._write, name="srpy-log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue C{record} (formatted now: its arguments may change later), or count it as dropped."""
        try:
            record.msg = record.getMessage()
            record.args = None
            if record.exc_info:  # the traceback's text now, not its frames later
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
        except Exception:  # a record whose message cannot be formatted is logging's to report
            self.handleError(record)
            return
        with self._ready:
            if len(self._records) >= self.capacity:
                self.dropped += 1
                return
            self._records.append(record)
            self._idle.clear()
            self._ready.notify()

    def flush_within(self, seconds: float) -> bool:
        """Wait up to C{seconds} for the writer to pass on every queued record; True if it did."""
        return self._idle.wait(seconds)

    def flush(self) -> None:
        """
        Let the writer pass on what is queued, for at most L{EXIT_FLUSH} seconds: C{logging.shutdown()}
        calls this at exit (also before an engine ends itself with C{os._exit}), and the stream
        may never drain.
        """
        self.flush_within(EXIT_FLUSH)

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._records:
                    self._idle.set()
                    self._ready.wait()
                record = self._records.popleft()
                dropped, self.dropped = self.dropped, 0
            if dropped:
                self._pass_on(self._dropped_note(dropped))
            self._pass_on(record)

    def _pass_on(self, record: logging.LogRecord) -> None:
        for handler in self.targets:
            if record.levelno >= handler.level:
                handler.handle(record)  # may wait for the stream: only this thread does

    @staticmethod
    def _dropped_note(count: int) -> logging.LogRecord:
        return logging.LogRecord("srpy.log", logging.WARNING, __file__, 0,
                                 "%d log records were dropped: the log stream was not being read" % count,
                                 None, None)


_installed: Optional[LogBuffer] = None
_lock = threading.Lock()


def install() -> LogBuffer:
    """
    Put a L{LogBuffer} in front of the root logger's handlers (once per process; later calls
    return the same one). Call it after logging is configured, before serving.
    """
    global _installed
    with _lock:
        if _installed is None:
            root = logging.getLogger()
            buffer = LogBuffer(list(root.handlers))
            for handler in list(root.handlers):
                root.removeHandler(handler)
            root.addHandler(buffer)
            _installed = buffer
        return _installed
