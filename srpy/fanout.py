"""
Threads, bounded: the one way srpy runs work in threads beside the caller's.

 - L{fan_out}: run a function over items in a bounded number of threads and wait for them all (with
   an optional deadline): the results, or the exception each item raised, in the items' order.
   Used wherever srpy asks many engines at once (the box's connects, pings, benchmarks, uploads and
   introductions; C{mrp}; status; aborts; an engine connecting to its peers).
 - L{Workers}: a bounded pool for fire-and-forget jobs (an engine's hints to its peers, its steals,
   its waits on the tuple space): threads start when a job finds none idle, up to a maximum, and
   end after a while without work, so an idle engine holds none.
 - L{start_thread}: a daemon thread that leaves asynchronous signals (Ctrl-C) to the main thread;
   every thread started here is one.

>>> fan_out(lambda x: 10 // x, [1, 2, 0])
[10, 5, ZeroDivisionError('integer division or modulo by zero')]
"""

import collections
import logging
import signal
import threading
import time
from typing import Any, Callable, Deque, Iterable, List, Optional, Tuple

log = logging.getLogger("srpy.fanout")

#: the most threads one L{fan_out} runs at once (unless told otherwise)
FAN_OUT_MAX = 32
#: seconds an idle thread of a L{Workers} pool waits for a job before it ends
LINGER = 5.0

_ASYNC_SIGNALS = {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2",
                                                        "SIGALRM", "SIGCHLD") if hasattr(signal, name)}


def start_thread(target: Callable[..., Any], *args: Any, name: Optional[str] = None) -> threading.Thread:
    """
    Start a daemon thread that blocks asynchronous signals. A process-directed signal goes to any
    thread that does not block it; if that is not the main thread, a main thread blocked on a lock
    (C{future.result()}, a map's next result) never sees Ctrl-C. The mask is set before the thread
    starts (it inherits it), so no signal can slip in between.
    """
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        thread.start()
        return thread
    previous = mask(signal.SIG_BLOCK, _ASYNC_SIGNALS)
    try:
        thread.start()
    finally:
        mask(signal.SIG_SETMASK, previous)
    return thread


def fan_out(fn: Callable[[Any], Any], items: Iterable[Any], max_workers: int = FAN_OUT_MAX,
            timeout: Optional[float] = None, name: str = "srpy-fan-out") -> List[Any]:
    """
    C{fn(item)} for every item, in at most C{max_workers} threads at once; returns, in the items'
    order, each result or the C{Exception} its call raised. A C{BaseException} that is no
    C{Exception} (C{KeyboardInterrupt}, C{SystemExit}) is raised here once the threads end (no
    item starts after it). One item without a C{timeout} runs in the caller's thread.

    @param timeout: seconds to wait for them all; an item not done by then (not even begun, if
        the threads were busy) counts as a C{TimeoutError}, and its thread, if it runs, finishes
        in the background with its result dropped.
    """
    items = list(items)
    if not items:
        return []
    if len(items) == 1 and timeout is None:
        return [_attempt(fn, items[0])]
    results: List[Any] = [_PENDING] * len(items)
    lock = threading.Lock()
    taken = iter(range(len(items)))
    closed = False
    deadline = None if timeout is None else time.monotonic() + timeout

    raised: List[BaseException] = []

    def run() -> None:
        while True:
            with lock:
                index = next(taken, None)
                if index is None or closed or raised:
                    return
            try:
                value = _attempt(fn, items[index])
            except BaseException as exc:  # KeyboardInterrupt, SystemExit...: for the caller to raise
                with lock:
                    raised.append(exc)
                return
            with lock:
                if closed:  # the caller has given up on it: the list it returned stays as it was
                    return
                results[index] = value

    threads = [start_thread(run, name=name) for _ in range(min(max(1, max_workers), len(items)))]
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    with lock:
        closed = True
        if raised:
            raise raised[0]
        late = TimeoutError("no answer within %s s" % timeout)
        return [late if value is _PENDING else value for value in results]


_PENDING = object()


def _attempt(fn: Callable[[Any], Any], item: Any) -> Any:
    try:
        return fn(item)
    except Exception as exc:  # each item's failure is its own result
        return exc


class Workers:
    """
    A bounded pool of daemon threads for jobs nobody waits for: L{submit} queues a job; a thread
    starts for it if none is idle and fewer than C{max_workers} run; a thread idle for C{linger}
    seconds ends. Jobs queue (in order) while all threads are busy. A job's exception is logged.
    """

    def __init__(self, name: str, max_workers: int, linger: float = LINGER) -> None:
        self.name = name
        self.max_workers = max(1, max_workers)
        self.linger = linger
        self._jobs: Deque[Tuple[Callable[..., Any], Tuple[Any, ...]]] = collections.deque()
        self._cond = threading.Condition()
        self._threads = 0
        self._idle = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run C{fn(*args)} in one of the pool's threads, soon."""
        with self._cond:
            self._jobs.append((fn, args))
            if self._idle > len(self._jobs) - 1:
                self._cond.notify()
            elif self._threads < self.max_workers:
                self._threads += 1
                start_thread(self._run, name=self.name)

    @property
    def threads(self) -> int:
        """How many threads the pool has now."""
        with self._cond:
            return self._threads

    def _run(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                got = self._cond.wait_for(lambda: bool(self._jobs), self.linger)
                self._idle -= 1
                if not got:
                    self._threads -= 1
                    return
                fn, args = self._jobs.popleft()
            try:
                fn(*args)
            except Exception:  # a job's own failure: logged, the pool serves on
                log.warning("%s: a job failed", self.name, exc_info=True)
