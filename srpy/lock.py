"""
The engine's execution lock: one call that runs user code at a time.

L{srpy.engine.Engine.is_busy} is true exactly while it is held. A task that waits for work it
spawned on peers (L{srpy.stealing}) or for a message or an entry (L{srpy.peers}) lets go of it
meanwhile (L{EngineLock.released_if_mine}), so that the engine runs other queued work, the way an
C{await} lets an event loop run other tasks.
"""

import contextlib
import threading
from typing import Any, Iterator, Optional


class EngineLock:
    """
    The engine's lock: a plain lock that knows which thread holds it, so that a task waiting for
    spawned work (L{srpy.stealing}) can let the engine run other work meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: the thread that holds the lock (None: free). Read without a lock on purpose: only the
        #: holder sets it to its own id, so a thread comparing it with its own id is never wrong
        self.owner: Optional[int] = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking, timeout):
            self.owner = threading.get_ident()
            return True
        return False

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> "EngineLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @contextlib.contextmanager
    def released_if_mine(self) -> Iterator[None]:
        """Release the lock for the block's duration if this thread holds it, then take it back."""
        if self.owner != threading.get_ident():
            yield
            return
        self.release()
        try:
            yield
        finally:
            self.acquire()
