"""
How an EngBox spreads work: one dispatcher thread per engine pulls work from a shared queue.

Data flow::

    submit() --> Task ---------> +-------------+   _take   +------------+  run_batch  +--------+
                                 | the queue:  | --------> | dispatcher | ----------> | engine |
    map()/imap() --> MapJob ---> | tasks, maps |  (a batch |  (1 per    | <---------- |        |
         ^                       +-------------+  cut per  |   engine)  |  outcomes   +--------+
         |  imap: the consumer feeds items as it reads     +------------+
         |                                                       |
         +---- MapIterator <---- chunk futures <-----------------+---> Futures (submit)

 - B{The queue} holds submitted L{Task}s (first come, first served) and L{MapJob}s (cut into
   chunks only when an engine asks for work). Everything in it can still be cancelled.
 - B{A dispatcher} (one thread per engine) asks for work only once its engine has finished
   the last batch, so pulling is the load balancer: a slower or busier engine asks less often,
   and queued work never waits on a busy engine while another one is idle.
 - B{A batch} goes to the engine in one call (C{run_batch}); the futures of its tasks are
   I{running} from then on and can no longer be cancelled (L{EngBox.abort} still stops them).
   As C{concurrent.futures.process} keeps its call queue small for that reason, srpy hands an
   engine several submitted tasks at once I{only when they are known to be short}: their
   function has been measured at no more than L{SHORT_TASK} s a call. A function not measured
   yet, or a longer one, travels one task at a time, so every task that has not started stays
   in the queue, pending and cancellable, until an idle engine takes it.
 - B{Speed is learned per function} (seconds per item as the engine measured it, without the
   round trip; a moving average per function and engine, seeded box-wide): a map of a cheap
   function says nothing about a long one submitted next.
   A map's chunks aim at L{TARGET_SECONDS} of work and at the engine's fair share of what is
   pending, so small items travel by thousands per round trip and long ones one at a time;
   with an explicit C{chunksize}, several chunks of that size may share one round trip.
 - B{The results} of a map come back chunk by chunk to a L{MapIterator}; C{imap} reads its
   iterable only as far as L{IMAP_BUFFER} items ahead of what its consumer has taken (bounded
   memory over an endless iterable). A map whose consumer stops (break, C{close()}, a timeout,
   an exception, Ctrl-C) cuts nothing more, and its chunks still running are stopped on their
   engines (C{abort}, by the call's L{CALL_ID<srpy.wire.CALL_ID>}).

Faults: a batch whose engine stops answering goes back to the front of the queue for the other
engines (its results were never received, so nothing runs twice from the caller's point of view);
the engine leaves the box. A task that has lost L{MAX_ATTEMPTS} engines fails with
L{EngineDead} (it may be what kills them). When no engine is left, every pending future fails
with L{NoEnginesError}. A task with a timeout travels alone, and its future fails with
C{TimeoutError} when it overruns. Whatever a task raises (C{SystemExit}, C{KeyboardInterrupt},
any C{BaseException}) fails that task's own future. A dispatcher that must end for any other
reason says so in the log, its engine leaves the box and its work goes back to the queue.
A function whose definition fails on an engine fails the tasks that needed it; it is marked
broken for the box only when the engine says the failure is not transient (see
L{srpy.engine.Engine.define}).

Engines that come back: an engine that left is probed (with back-off, for up to L{REJOIN_WAIT} s).
If it answers again, as one restarted on the same URI by its launcher (C{srpyapp --restart}) does,
it rejoins the box as a fresh engine (a new slot: it knows no shipped function yet) and gets work
again; one that does not stays out.

Exit: as in C{concurrent.futures}, interpreter exit waits for the work every box has accepted,
whether or not it was shut down, and C{submit} then raises C{RuntimeError}; an exit caused by
Ctrl-C (an uncaught C{KeyboardInterrupt}) instead stops that work on the engines and returns.
srpy's threads block asynchronous signals, so that Ctrl-C always reaches the main thread.
"""

import collections
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout  # the builtin one from Python 3.11 on
from typing import Any, Callable, Deque, Dict, Generator, Iterator, List, Optional, cast

from . import codec
from .fanout import fan_out, start_thread
from .errors import (CallTimeout, CommunicationError, EngineDead, MessageTooLargeError, MissingPackagesError,
                     NoEnginesError, SerializationError, SRPyError, SRPyServerNotFound, TaskAborted, TaskTimeout, UnknownFunction)

log = logging.getLogger("srpy.scheduler")

#: seconds of work one batch aims at
TARGET_SECONDS = 0.05
#: seconds of work the smallest batch of a measured engine holds (no long tail of tiny chunks)
MIN_SECONDS = 0.005
#: seconds a submitted task's function may take for several such tasks to share one batch
SHORT_TASK = 0.01
#: most tasks in one batch
MAX_BATCH = 4096
#: engines a task may lose before it fails
MAX_ATTEMPTS = 3
#: items an imap reads ahead of its consumer (at least; more if its chunks are larger)
IMAP_BUFFER = 1024
#: seconds an engine that left the box is probed for, in case it comes back: a launcher restarts
#: a dead engine after a back-off of up to 30 s, and again if the new process dies while starting
REJOIN_WAIT = 120.0
#: longest pause between two probes of an engine that left
REJOIN_PROBE = 2.0
#: seconds a call may run before its engine is checked (pinged) for life, and between checks
HEARTBEAT = 1.0
#: seconds an engine with a call under way has to answer a ping (or an abort) before it counts as vanished
ANSWER_TIMEOUT = 5.0
#: seconds EngBox.abort waits for a running task's engine to stop it
ABORT_WAIT = 10.0
#: functions whose speed a box remembers (the oldest are forgotten past this)
_SPEED_MEMORY = 1024
_SMOOTHING = 0.5


def _settle(future: Future, result: Any = None, exception: Optional[BaseException] = None) -> None:
    """End C{future}, unless it has ended already (cancelled, or failed by a shutdown or an abort)."""
    try:
        if exception is None:
            future.set_result(result)
        else:
            future.set_exception(exception)
    except InvalidStateError:
        pass


# -- what the queue holds -----------------------------------------------------------------------------

class Task:
    """One unit the scheduler moves: a submitted call, or one chunk of a map."""

    __slots__ = ("bundle", "kind", "payload", "future", "timeout", "attempts", "size", "job", "started", "abort")

    def __init__(self, bundle: Dict[str, Any], kind: str, payload: Any, future: Future,
                 timeout: Optional[float] = None, job: Optional["MapJob"] = None) -> None:
        self.bundle = bundle
        self.kind = kind
        self.payload = payload
        self.future = future
        self.timeout = timeout
        self.attempts = 0
        self.size = len(payload) if kind != "call" else 1
        self.job = job
        self.started = job is not None  # a map's chunk is cut when an engine takes it: it runs from then on
        self.abort = False  # stopping it was asked for (EngBox.abort)

    def wire(self) -> list:
        return [self.bundle["hash"], self.kind, self.payload]

    @property
    def dropped(self) -> bool:
        """A chunk of a map that nobody reads any more."""
        return self.job is not None and self.job.cancelled


class MapJob:
    """
    One map, imap or imap_unordered: the items not yet cut into chunks, the chunks cut (futures
    of their outcomes, in order), and how it ends. Items, chunks and the end change only with
    C{changed} held (and the scheduler's lock, where the scheduler reads them).
    """

    def __init__(self, bundle: Dict[str, Any], kind: str, items: List[Any], chunksize: Optional[int],
                 timeout: Optional[float], progress: Any = None, source: Optional[Iterator[Any]] = None,
                 window: Optional[int] = None, ordered: bool = True) -> None:
        self.bundle = bundle
        self.kind = kind  # 'map': argument tuples; 'map1': single arguments, sent as they are
        self.chunksize = chunksize
        self.timeout = timeout
        self.progress = progress
        self.items = items
        self.next = 0  # items[next:] are not cut yet
        self.source = source  # imap: where more items come from, read by the consumer (None: all here)
        self.window = window
        self.read = len(items)
        self.consumed = 0
        self.ordered = ordered
        self.chunks: Deque[Future] = collections.deque()  # cut, not yet handed to the consumer, in order
        self.finished: Deque[Future] = collections.deque()  # imap_unordered: the chunks done, in that order
        self.outstanding = 0  # chunks cut and not yet handed to the consumer
        self.cancelled = False  # the consumer gave up: nothing more is cut, running chunks are stopped
        self.stopped: Optional[BaseException] = None  # why no more will be cut although items remain
        self.source_error: Optional[BaseException] = None  # what reading the source raised
        self.changed = threading.Condition(threading.Lock())
        self._scheduler: Optional["Scheduler"] = None
        self.current: Optional[List[Any]] = None  # the results the consumer is stepping through

    @property
    def scheduler(self) -> "Scheduler":
        """The scheduler running this map (set when it is handed to one, before anyone reads it)."""
        if self._scheduler is None:
            raise RuntimeError("this map was never handed to a scheduler")
        return self._scheduler

    @scheduler.setter
    def scheduler(self, scheduler: "Scheduler") -> None:
        self._scheduler = scheduler

    @property
    def remaining(self) -> int:
        return len(self.items) - self.next

    @property
    def exhausted(self) -> bool:
        return self.source is None

    def cut(self, size: int) -> Task:
        """The next chunk of C{size} items, as a task (called with the scheduler's lock held)."""
        future: Future = Future()
        future.set_running_or_notify_cancel()
        with self.changed:
            start = self.next
            self.next = min(len(self.items), start + max(1, size))
            task = Task(self.bundle, self.kind, self.items[start:self.next], future, self.timeout, self)
            if self.source is not None and self.next >= IMAP_BUFFER and 2 * self.next >= len(self.items):
                del self.items[:self.next]  # an imap keeps only what is not cut yet
                self.next = 0
            self.chunks.append(future)
            self.outstanding += 1
        future.add_done_callback(self._chunk_done)
        return task

    def _chunk_done(self, future: Future) -> None:
        with self.changed:
            if not self.ordered:
                self.finished.append(future)
            self.changed.notify_all()

    def stop(self, reason: BaseException) -> None:
        """Cut nothing more; the consumer gets C{reason} once the chunks already cut are read."""
        with self.changed:
            if self.stopped is None:
                self.stopped = reason
            self.changed.notify_all()

    def over(self) -> bool:
        """True when no chunk is left to hand to the consumer and none will come (C{changed} held)."""
        if self.outstanding:
            return False
        return self.cancelled or self.stopped is not None or (self.exhausted and self.remaining == 0)


class MapIterator(itertools.chain):
    """
    The results of a map, imap or imap_unordered, stepped through at C speed (it is a chain of
    the chunks' result lists). C{close()} (or breaking out of a loop over it and dropping it, or
    a timeout, or an exception) cancels the rest quietly and stops its chunks still running.
    """

    _job: MapJob
    _gen: Generator[List[Any], None, None]

    def close(self) -> None:
        """Stop the map: no more results; what has not run is cancelled, what runs is stopped."""
        self._gen.close()
        self._job.scheduler.abandon(self._job)
        if self._job.current is not None:
            self._job.current.clear()  # the results of the chunk being stepped through end too

    def __enter__(self) -> "MapIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def results(job: MapJob, deadline: Optional[float]) -> MapIterator:
    """The L{MapIterator} over C{job}'s results; C{deadline} (monotonic) bounds the waits."""
    gen = _chunk_results(job, deadline)
    iterator = cast(MapIterator, MapIterator.from_iterable(gen))  # from_iterable makes the subclass
    iterator._gen, iterator._job = gen, job
    # dropped before its first result, the generator never ran, so closing it stops nothing: an imap
    # left so would stay queued (and hold its iterable) for the box's life
    weakref.finalize(iterator, job.scheduler.abandon, job)
    return iterator


def _chunk_results(job: MapJob, deadline: Optional[float]) -> Generator[List[Any], None, None]:
    """Yield the lists of a map's results, chunk by chunk; give the map up when the caller stops early."""
    scheduler = job.scheduler
    try:
        while True:
            future = _next_chunk(job, deadline)
            if future is None:
                break
            exc = future.exception()
            if exc is not None:
                raise exc
            outcome = future.result()
            if outcome[0] in ("ok", "part"):
                job.current = outcome[1]  # what close() empties: the chain steps through it
                yield outcome[1]
            if outcome[0] != "ok":
                raise outcome[-1]
    except BaseException:  # GeneratorExit (close, dropped), a timeout, a failed item, Ctrl-C: stop the rest
        scheduler.abandon(job)
        if job.progress is not None:
            job.progress.close(complete=False)
        raise
    if job.progress is not None:
        job.progress.close()


def _next_chunk(job: MapJob, deadline: Optional[float]) -> Optional[Future]:
    """
    The next chunk to hand to the consumer (done), or None at the end; raises how the map ended.
    A result already there is handed over even past the deadline; C{TimeoutError} is only for one
    that is not.
    """
    while True:
        job.scheduler.feed(job)
        with job.changed:
            if job.ordered:
                ready = job.chunks[0] if job.chunks and job.chunks[0].done() else None
                if ready is not None:
                    job.chunks.popleft()
            else:
                ready = job.finished.popleft() if job.finished else None
                if ready is not None:
                    job.chunks.remove(ready)
            if ready is not None:
                job.outstanding -= 1
                job.consumed += _size_of(ready)
                return ready
            if job.over():
                if job.stopped is not None:
                    raise job.stopped
                if job.source_error is not None:
                    raise job.source_error
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise FutureTimeout("map results not ready within its timeout")
            job.changed.wait(left)


def _size_of(future: Future) -> int:
    if future.exception() is not None:
        return 0
    return len(future.result()[1])


# -- the sizing rules (pure functions of what the scheduler measured) ----------------------------------

def chunk_size(per_item: Optional[float], pending: int, share: float, idle: int, probe: int) -> int:
    """
    How many items an engine that takes C{per_item} seconds an item (None: not measured yet)
    takes of C{pending}, given C{share}, its fraction of the box's speed, and C{idle}, how many
    engines (itself included) have no batch under way. Its fair share, at most L{TARGET_SECONDS} x 5
    of its measured work, so that the chunks shrink as the work runs out and the engines
    finish together. When an equal part of C{pending} for each idle engine (the busy ones
    have theirs) is under L{MIN_SECONDS} of work, it takes that part in one chunk: a small job
    goes out as one chunk per idle engine, with no tail of tiny chunks (the speed measured on
    such small chunks is mostly round-trip time, so it does not split them). A small probe
    (at most C{probe} items) while it is not measured yet.
    """
    fair = max(1, math.ceil(pending * share))
    if per_item is None:
        return max(1, min(probe, math.ceil(fair / 8)))
    mine = math.ceil(pending / idle)
    if mine * per_item <= MIN_SECONDS:
        return mine
    return max(1, min(fair, int(TARGET_SECONDS * 5 / per_item)))


def batch_limit(per_item: float, queued: int, share: float) -> int:
    """
    How many of C{queued} submitted tasks of a short function (L{SHORT_TASK} at most: C{per_item}
    seconds a call) one engine takes in one batch: the sizing rule's part, as if it were the only
    idle engine (tasks keep arriving while the engines work), at most L{MAX_BATCH}.
    """
    return min(MAX_BATCH, chunk_size(per_item, queued, share, 1, 64))


def speed_share(index: int, per_item: List[Optional[float]], benchmarks: List[Optional[float]]) -> float:
    """
    The fraction of the box's speed that engine C{index} of the live engines has at one function:
    from the seconds an item took on each (C{per_item}) when every engine has run it, else from
    their benchmark speeds (C{benchmarks}) when every engine has one, else an equal share.
    """
    if all(per_item):
        speeds = [1.0 / t for t in per_item]  # type: ignore[operator]
    elif all(benchmarks):
        speeds = list(benchmarks)  # type: ignore[arg-type]
    else:
        return 1.0 / len(per_item)
    return speeds[index] / sum(speeds)


def remember_speed(table: Dict[str, float], fn_hash: str, sample: float) -> None:
    """
    Fold a new measure (C{sample} seconds an item) of function C{fn_hash} into C{table}: a moving
    average (weight L{_SMOOTHING} for the new one); a table full with L{_SPEED_MEMORY} functions
    forgets its oldest to take a new one.
    """
    old = table.get(fn_hash)
    if old is None and len(table) >= _SPEED_MEMORY:
        table.pop(next(iter(table)))
    table[fn_hash] = sample if old is None else (1 - _SMOOTHING) * old + _SMOOTHING * sample


# -- the engines ----------------------------------------------------------------------------------

class Slot:
    """The scheduler's view of one engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.known: set = set()
        self.per_item: Dict[str, float] = {}  # seconds an item of each function took here
        prior = getattr(engine, "measured_proc", None)
        self.prior_speed = 1.0 / prior if prior else None
        self.active = True
        self.paused = False
        self.vanished = False
        self.thread: Optional[threading.Thread] = None
        self.done = 0
        self.busy = False  # a batch of it is under way
        self.batch: List[Task] = []  # that batch
        self.call_id: Optional[bytes] = None  # and the CALL_ID of the call carrying it

    @property
    def uri(self) -> str:
        return getattr(self.engine, "uri", "?")


_schedulers: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()
_exiting = False


def exiting() -> bool:
    """True once the interpreter is exiting: no box schedules new work from then on."""
    return _exiting


class Scheduler:
    """The queue and the dispatchers of one EngBox."""

    def __init__(self, on_dead: Callable[[Any], None],
                 on_back: Optional[Callable[[Any, bool], bool]] = None) -> None:
        """
        @param on_dead: called with an engine that stopped answering, before its work is requeued.
        @param on_back: called with an engine that left and C{True} once it answers again (it
            rejoins only if this returns True), or C{False} when srpy stops waiting for it.
        """
        self._on_dead = on_dead
        self._on_back = on_back
        self._away: set = set()
        self._stopping = threading.Event()
        self._cond = threading.Condition()
        self._tasks: Deque[Task] = collections.deque()
        self._maps: Deque[MapJob] = collections.deque()
        self._slots: Dict[int, Slot] = {}
        self._gone: List[Slot] = []
        self._calls: Dict[int, tuple] = {}
        self._checking: set = set()
        self._watchdog: Optional[threading.Thread] = None
        self._broken: Dict[str, BaseException] = {}
        self._per_item: Dict[str, float] = {}  # box-wide seconds per item of each function
        self._inflight = 0
        self._closed = False
        self._aborts: List[threading.Thread] = []
        _schedulers.add(self)

    # -- engines ---------------------------------------------------------------------------------

    def add_engine(self, engine: Any) -> None:
        with self._cond:
            if id(engine) in self._slots or self._closed:
                return
            slot = Slot(engine)
            self._slots[id(engine)] = slot
            slot.thread = start_thread(self._dispatch, slot, name="srpy-dispatch-%s" % slot.uri)

    def remove_engine(self, engine: Any) -> None:
        with self._cond:
            slot = self._slots.pop(id(engine), None)
            if slot is not None:
                slot.active = False
                self._gone.append(slot)
            self._cond.notify_all()
            if not self._live_slots():
                self._fail_everything(NoEnginesError("no engine is left in the box"))

    def _live_slots(self) -> List[Slot]:
        return [s for s in self._slots.values() if s.active]

    def stats(self) -> Dict[str, int]:
        """
        How many tasks (or map items) each engine has completed: {uri: count}. Engines that died or
        were removed keep what they completed, so the counts add up to the work done.
        """
        counts: Dict[str, int] = {}
        with self._cond:
            for slot in self._gone + list(self._slots.values()):
                counts[slot.uri] = counts.get(slot.uri, 0) + slot.done
        return counts

    # -- work in ---------------------------------------------------------------------------------

    def put(self, task: Task) -> None:
        with self._cond:
            self._check_open()
            task.future._srpy_owner = self  # type: ignore[attr-defined]  # so that abort() knows its own
            self._tasks.append(task)
            self._cond.notify()

    def put_map(self, job: MapJob) -> None:
        job.scheduler = self
        with self._cond:
            self._check_open()
            self._maps.append(job)
            self._cond.notify_all()

    def _check_open(self) -> None:
        if _exiting:
            raise RuntimeError("cannot schedule new work after interpreter shutdown")
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        if not any(slot.active for slot in self._slots.values()):
            raise NoEnginesError("the box has no engine to run work on")

    def feed(self, job: MapJob) -> None:
        """
        An imap's consumer reads more of its iterable, in its own thread (never a dispatcher's),
        up to its window ahead of what it has taken. After shutdown it reads no more: the consumer
        gets C{RuntimeError} once the items already read have run.
        """
        if job.source is None or job.window is None or job.cancelled or job.stopped is not None:
            return
        want = job.window - (job.read - job.consumed)
        if want <= 0:
            return
        error: Optional[BaseException] = None
        fresh: List[Any] = []
        if self._closed or _exiting:
            error = RuntimeError("cannot schedule new work after shutdown: the imap's iterable was not read to its end")
        else:
            try:
                fresh.extend(itertools.islice(job.source, want))  # what came before a failure is kept
            except Exception as exc:  # the iterable itself failed: the consumer gets it after what came before
                error = exc
        with self._cond:
            with job.changed:
                job.items.extend(fresh)
                job.read += len(fresh)
                if error is not None or len(fresh) < want:
                    job.source = None
                    job.source_error = error
                job.changed.notify_all()
            if fresh and job not in self._maps:
                self._maps.append(job)
            self._cond.notify_all()

    # -- work out --------------------------------------------------------------------------------

    def _take(self, slot: Slot) -> List[Task]:
        """Block until there is work for C{slot} (or it must stop); cut its batch."""
        with self._cond:
            while True:
                if not slot.active:
                    return []
                if not slot.paused:
                    batch = self._cut(slot)
                    if batch:
                        self._inflight += 1
                        slot.busy = True
                        slot.batch, slot.call_id = batch, os.urandom(8)
                        return batch
                if self._closed and not self._has_queued_work():
                    return []
                self._cond.wait()

    def _has_queued_work(self) -> bool:
        return bool(self._tasks) or any(job.remaining and not job.cancelled and job.stopped is None
                                        for job in self._maps)

    def _cut(self, slot: Slot) -> List[Task]:
        while self._tasks:
            head = self._tasks[0]
            if head.dropped:
                self._tasks.popleft()
                continue
            if head.timeout:
                self._tasks.popleft()
                if self._start(head):
                    return [head]
                continue
            batch = self._cut_tasks(slot)
            if batch:
                return batch
        for job in list(self._maps):
            if job.cancelled or job.stopped is not None or (job.exhausted and not job.remaining):
                self._maps.remove(job)
                continue
            if job.remaining:
                return self._cut_map(slot, job)
        return []

    def _estimate(self, slot: Slot, fn_hash: str) -> Optional[float]:
        """Seconds an item of function C{fn_hash} takes on C{slot}'s engine; None if not measured yet."""
        own = slot.per_item.get(fn_hash)
        return own if own is not None else self._per_item.get(fn_hash)

    def _observe(self, slot: Slot, fn_hash: str, seconds: float, items: int) -> None:
        sample = seconds / max(1, items)
        for table in (slot.per_item, self._per_item):
            remember_speed(table, fn_hash, sample)

    def _share(self, slot: Slot, fn_hash: str) -> float:
        """
        C{slot}'s fraction of the box's speed at function C{fn_hash}: from the speeds measured for
        it when every engine has run it, else from the engines' benchmarks, else an equal share.
        """
        live = self._live_slots()
        if slot not in live:
            return 1.0 / max(1, len(live))
        return speed_share(live.index(slot), [s.per_item.get(fn_hash) for s in live], [s.prior_speed for s in live])

    def _cut_tasks(self, slot: Slot) -> List[Task]:
        """
        Submitted tasks for C{slot}: the next one alone, unless its function is known to be short
        (L{SHORT_TASK}); then it and the tasks of the same function right behind it, as many as the
        sizing rule gives (a short queue goes whole: tasks keep arriving while the engines work).
        """
        fn_hash = self._tasks[0].bundle["hash"]
        per_item = self._estimate(slot, fn_hash)
        limit = 1 if per_item is None or per_item > SHORT_TASK else \
            batch_limit(per_item, len(self._tasks), self._share(slot, fn_hash))
        batch: List[Task] = []
        while self._tasks and len(batch) < limit:
            task = self._tasks[0]
            if task.timeout or task.bundle["hash"] != fn_hash:
                break
            self._tasks.popleft()
            if not task.dropped and self._start(task):
                batch.append(task)
        return batch

    def _cut_map(self, slot: Slot, job: MapJob) -> List[Task]:
        """The next chunk of C{job} for C{slot}; with an explicit chunksize, as many chunks as the sizing rule gives."""
        fn_hash = job.bundle["hash"]
        per_item = self._estimate(slot, fn_hash)
        idle = sum(1 for s in self._live_slots() if s is slot or not s.busy)
        size = chunk_size(per_item, job.remaining, self._share(slot, fn_hash), idle, probe=32)
        if not job.chunksize:
            return [job.cut(size)]
        # a chunk with a time limit travels alone (the limit is the call's)
        count = max(1, size // job.chunksize) if per_item is not None and not job.timeout else 1
        chunks: List[Task] = []
        while job.remaining and len(chunks) < min(count, MAX_BATCH):
            chunks.append(job.cut(job.chunksize))
        return chunks

    def _start(self, task: Task) -> bool:
        """Mark a task running; False if it was cancelled or its function is known to be broken."""
        if not task.started:
            if not task.future.set_running_or_notify_cancel():
                return False
            task.started = True
        broken = self._broken.get(task.bundle["hash"])
        if broken is not None:
            _settle(task.future, exception=broken)
            return False
        return True

    # -- the dispatcher --------------------------------------------------------------------------

    def _dispatch(self, slot: Slot) -> None:
        batch: List[Task] = []
        try:
            while True:
                batch = self._take(slot)
                if not batch:
                    return
                try:
                    self._run(slot, batch)
                except Exception as exc:  # a bug here must fail the batch loudly, not kill the thread
                    log.exception("dispatcher for %s failed; its batch fails", slot.uri)
                    self._fail(batch, exc)
                finally:
                    with self._cond:
                        self._inflight -= 1
                        slot.busy = False
                        slot.batch, slot.call_id = [], None
                        self._cond.notify_all()
                batch = []
        except BaseException as exc:  # never end silently: the engine leaves, its work goes to the others
            log.error("the dispatcher of engine %s ended (%s: %s); the engine leaves the box and its work "
                      "goes back to the queue", slot.uri, type(exc).__name__, exc)
            self._dispatcher_lost(slot, batch)

    def _dispatcher_lost(self, slot: Slot, batch: List[Task]) -> None:
        with self._cond:
            slot.active = False
        self._on_dead(slot.engine)
        self._requeue([task for task in batch if not task.future.done()], count_attempt=False)
        self.remove_engine(slot.engine)
        if self._on_back is not None:
            self._on_back(slot.engine, False)

    def _run(self, slot: Slot, batch: List[Task]) -> None:
        fn_hash = batch[0].bundle["hash"]
        broken = self._broken.get(fn_hash)
        if broken is not None:
            self._fail(batch, broken)
            return
        timeout = batch[0].timeout if len(batch) == 1 else None
        call_id = slot.call_id
        try:
            failure = self._define(slot, batch, call_id)
            if failure is not None:
                self._definition_failed(batch, failure)
                return
            raw = self._watched_call(slot, "run_batch", [task.wire() for task in batch], timeout=timeout,
                                     call_id=call_id)
        except SerializationError:
            self._split_unsendable(batch)
            return
        except UnknownFunction:  # the engine restarted since: send the definitions again
            slot.known.clear()
            self._requeue(batch, count_attempt=False)
            return
        except TaskAborted as exc:
            self._aborted(batch, exc)
            return
        except TaskTimeout as exc:  # the engine stopped the task (interrupted it, or restarted)
            _settle(batch[0].future, exception=exc)
            slot.known.clear()  # after a restart it knows no function: send them again
            return
        except CallTimeout:
            self._timed_out(slot, batch[0])
            return
        except MessageTooLargeError as exc:  # the engine answered, and goes on: only this work fails
            self._fail(batch, exc)
            return
        except (CommunicationError, SRPyServerNotFound) as exc:
            self._engine_failed(slot, batch, exc)
            return
        except Exception as exc:  # the engine refused the call itself (its tasks' failures are outcomes)
            self._fail(batch, exc)
            return
        except BaseException as exc:
            if not hasattr(exc, "remote_traceback"):
                raise  # not the engine's: the dispatcher ends, loudly
            self._fail(batch, exc)
            return
        outcomes, seconds = raw
        self._observe(slot, fn_hash, seconds, sum(task.size for task in batch))
        self._deliver(slot, batch, outcomes)

    def _define(self, slot: Slot, batch: List[Task], call_id: Optional[bytes]) -> Optional[Dict[str, Any]]:
        """Send the functions C{slot}'s engine does not know yet; what failed, if anything (see L{Engine.define})."""
        for task in batch:
            bundle = task.bundle
            if bundle["hash"] in slot.known:
                continue
            try:
                failure = self._watched_call(slot, "define", bundle["hash"], bundle, call_id=call_id)
            except (CommunicationError, SRPyServerNotFound, SerializationError, TaskAborted, TaskTimeout):
                raise
            except Exception as exc:  # the engine refused the definition call itself: as broken as it gets
                return {"kind": "broken", "error": exc, "module": None}
            if failure:
                return failure
            slot.known.add(bundle["hash"])
        return None

    def _watched_call(self, slot: Slot, method: str, *args: Any, timeout: Optional[float] = None,
                      call_id: Optional[bytes] = None) -> Any:
        """
        Call C{method} on C{slot}'s engine over a connection of its own, which the watchdog cuts
        (L{ConnectionLost}) if the engine stops answering pings while the call is under way: an
        engine that vanishes (frozen, or its machine gone without closing the socket) does not
        hold its batch for ever. C{call_id} names the call, so that it can be aborted.
        """
        engine = slot.engine
        with engine.connection() as conn:
            entry = (slot, conn, time.monotonic())
            with self._cond:
                slot.vanished = False
                self._calls[id(slot)] = entry
                if self._watchdog is None:
                    self._watchdog = start_thread(self._watch, name="srpy-watchdog")
            try:
                view = engine.limited(timeout) if timeout else engine
                value, annotations = view.call_on(conn, method, args, call_id=call_id)
            finally:
                with self._cond:
                    if self._calls.get(id(slot)) is entry:
                        del self._calls[id(slot)]
        return value

    def _watch(self) -> None:
        """Every L{HEARTBEAT}, check the engines whose calls have run that long; end when none runs."""
        while True:
            time.sleep(HEARTBEAT)
            with self._cond:
                if not self._calls:
                    self._watchdog = None
                    return
                due = [entry for key, entry in self._calls.items()
                       if time.monotonic() - entry[2] >= HEARTBEAT and key not in self._checking]
                self._checking.update(id(entry[0]) for entry in due)
            for entry in due:
                start_thread(self._check, entry, name="srpy-check")

    def _check(self, entry: tuple) -> None:
        """Ping the engine of a call under way; if it does not answer, cut the call."""
        slot, conn, _ = entry
        try:
            alive = slot.engine.call("ping", timeout=ANSWER_TIMEOUT) == "pong"
        except SRPyError:
            alive = False
        if not alive:  # an engine that just ended (a runaway stopped, a kill) answers its call or closes it meanwhile
            time.sleep(HEARTBEAT)
        with self._cond:
            self._checking.discard(id(slot))
            if alive or self._calls.get(id(slot)) is not entry:
                return
            slot.vanished = True
            conn.close()  # under the lock: the call is still under way, the connection not back in the pool
        log.warning("engine %s stopped answering during a call; it counts as gone", slot.uri)

    def _deliver(self, slot: Slot, batch: List[Task], outcomes: List[tuple]) -> None:
        done = 0
        for task, outcome in zip(batch, outcomes):
            if task.kind != "call":
                _settle(task.future, outcome)
                if task.job is not None and task.job.progress is not None:
                    task.job.progress.advance(task.size)
            elif outcome[0] == "ok":
                _settle(task.future, outcome[1])
            else:
                _settle(task.future, exception=outcome[1])
            done += task.size
        with self._cond:
            slot.done += done

    # -- stopping work ---------------------------------------------------------------------------

    def abort(self, future: Future) -> bool:
        """
        Stop the task of C{future} (one of this box's): cancelled if it has not started, stopped
        on its engine (its future fails with L{TaskAborted}) if it runs; waits up to
        L{ABORT_WAIT} s for the engine to stop it. Other tasks that shared its batch go back to
        the queue. True if the task was cancelled or stopped; False if it had ended (or ended
        meanwhile with its result), or is not this box's.
        """
        if getattr(future, "_srpy_owner", None) is not self or future.done():
            return False
        calls = []
        with self._cond:
            for task in self._tasks:
                if task.future is not future:
                    continue
                self._tasks.remove(task)
                if not task.started and future.cancel():
                    future.set_running_or_notify_cancel()  # so that wait() and as_completed() see it end now
                else:  # running work back from an engine that died
                    _settle(future, exception=TaskAborted("the task was aborted before it ran again"))
                return True
            for slot in self._slots.values():
                if slot.call_id is not None and any(task.future is future for task in slot.batch):
                    for task in slot.batch:
                        if task.future is future:
                            task.abort = True
                    calls.append((slot, slot.call_id))
        if not calls:
            return False
        # the engine's answer alone cannot tell "ended already" from "not begun yet, so refused
        # when it begins" (between define and run_batch): what happens to the future does
        answers = self._send_aborts(calls)
        try:
            exc = future.exception(timeout=ABORT_WAIT)
        except FutureTimeout:  # the engine takes its time to end the code: it said whether it is on it
            return any(answers)
        except CancelledError:
            return True
        return isinstance(exc, TaskAborted)

    def abort_all(self, wait: Optional[float] = ANSWER_TIMEOUT) -> int:
        """
        Cancel every queued task and map of this box and stop every call it has running; return
        how many tasks and chunks that ended. Waits up to C{wait} s for the engines to take the
        aborts in (None: do not wait).
        """
        calls = []
        ended = 0
        with self._cond:
            while self._tasks:
                task = self._tasks.popleft()
                if task.dropped:
                    continue
                if not task.started and task.future.cancel():
                    task.future.set_running_or_notify_cancel()
                else:
                    _settle(task.future, exception=TaskAborted("the task was aborted (abort_all)"))
                ended += 1
            while self._maps:
                job = self._maps.popleft()
                job.stop(TaskAborted("the map was aborted (abort_all) before all its items ran"))
            for slot in self._slots.values():
                if slot.call_id is not None and slot.batch:
                    for task in slot.batch:
                        task.abort = True
                    ended += len(slot.batch)
                    calls.append((slot, slot.call_id))
            self._cond.notify_all()
        if wait is None:
            self._abort_later(calls)
        else:
            self._send_aborts(calls, wait)
        return ended

    def abandon(self, job: MapJob) -> None:
        """A map's consumer is gone: cut nothing more of it, stop its chunks still running (in the background)."""
        calls = []
        with self._cond:
            if job.cancelled:
                return
            with job.changed:
                job.cancelled = True
                job.changed.notify_all()
            if job in self._maps:
                self._maps.remove(job)
            for slot in self._slots.values():
                if slot.call_id is not None and any(task.job is job for task in slot.batch):
                    calls.append((slot, slot.call_id))
        self._abort_later(calls)

    def _abort_later(self, calls: List[tuple]) -> None:
        """Send aborts from a thread (the caller may be a finalizer); exit waits for them (L{_at_exit})."""
        if not calls:
            return
        with self._cond:
            self._aborts = [t for t in self._aborts if t.is_alive()]
            self._aborts.append(start_thread(self._send_aborts, calls, name="srpy-abort"))

    def _send_aborts(self, calls: List[tuple], wait: float = ANSWER_TIMEOUT) -> List[bool]:
        """Ask each engine to stop the call it runs under that CALL_ID, all at once; what each answered."""
        answers = [False] * len(calls)

        def send(index: int, slot: Slot, call_id: bytes) -> None:
            try:
                answers[index] = slot.engine.abort(call_id, timeout=ANSWER_TIMEOUT)
            except Exception as exc:  # an engine that cannot take it: the call runs on, its result is dropped
                log.info("could not abort a call on %s: %s", slot.uri, exc)

        if len(calls) == 1:
            send(0, *calls[0])
            return answers
        fan_out(lambda index: send(index, *calls[index]), range(len(calls)), timeout=wait, name="srpy-abort")
        return answers

    def _aborted(self, batch: List[Task], exc: BaseException) -> None:
        """A batch's call was stopped on its engine: the tasks it was stopped for fail, the others go back."""
        wanted = [task for task in batch if task.abort or task.dropped]
        if not wanted:  # stopped by someone else: it is the batch's outcome
            self._fail(batch, exc)
            return
        for task in wanted:
            _settle(task.future, exception=exc if task.abort else TaskAborted("the map was abandoned"))
        self._requeue([task for task in batch if not (task.abort or task.dropped)], count_attempt=False)

    # -- what goes wrong ---------------------------------------------------------------------------

    def _split_unsendable(self, batch: List[Task]) -> None:
        sendable = []
        for task in batch:
            try:
                codec.dumps(task.payload)
                sendable.append(task)
            except SerializationError as exc:
                _settle(task.future, exception=exc)
        self._requeue(sendable, count_attempt=False)

    def _timed_out(self, slot: Slot, task: Task) -> None:
        _settle(task.future, exception=FutureTimeout("the task ran longer than its timeout of %s s on %s"
                                                    % (task.timeout, slot.uri)))
        with self._cond:
            slot.paused = True
        start_thread(self._resume_when_idle, slot, name="srpy-resume")

    def _resume_when_idle(self, slot: Slot) -> None:
        """Give C{slot} work again once its engine is idle; an engine that stops answering is gone."""
        while slot.active:
            try:
                if slot.engine.call("wait", HEARTBEAT, timeout=HEARTBEAT + ANSWER_TIMEOUT):
                    break
            except SRPyError as exc:
                slot.vanished = isinstance(exc, (CallTimeout, SRPyServerNotFound))  # no answer at all
                self._engine_failed(slot, [], exc)
        if not slot.active:
            return
        with self._cond:
            slot.paused = False
            self._cond.notify_all()

    def _engine_failed(self, slot: Slot, batch: List[Task], exc: BaseException) -> None:
        if not slot.vanished and self._still_answers(slot.engine):
            log.warning("call to %s failed (%s); it still answers, so its work is retried", slot.uri, exc)
            self._requeue(batch)
            return
        log.warning("engine %s is gone (%s); %d task(s) go to the other engines", slot.uri, exc, len(batch))
        with self._cond:
            slot.active = False
        self._on_dead(slot.engine)  # out of the box before its work can complete elsewhere
        self._requeue(batch)
        self.remove_engine(slot.engine)
        self._await_return(slot.engine)

    def _await_return(self, engine: Any) -> None:
        """Probe an engine that left the box, in a thread of its own, so that it may rejoin."""
        with self._cond:
            if self._on_back is None or self._closed or id(engine) in self._away:
                return
            self._away.add(id(engine))
        start_thread(self._rejoin, engine, name="srpy-rejoin-%s" % getattr(engine, "uri", "?"))

    def _rejoin(self, engine: Any) -> None:
        """
        Ask C{engine} who it is, with back-off, for up to L{REJOIN_WAIT} s: once it answers (its
        description refreshed: a restarted engine has a new process), it rejoins as a fresh slot.
        """
        deadline, delay, back = time.monotonic() + REJOIN_WAIT, 0.1, False
        try:
            while not self._stopping.wait(delay) and time.monotonic() < deadline:
                try:
                    engine.info = engine.call("whoami", timeout=ANSWER_TIMEOUT)
                    back = True
                    break
                except (SRPyError, OSError):
                    delay = min(delay * 2, REJOIN_PROBE)
        finally:
            with self._cond:
                self._away.discard(id(engine))
        if self._stopping.is_set():
            return
        if back and self._on_back is not None and self._on_back(engine, True):
            log.info("engine %s answers again; it rejoins the box", engine.uri)
        elif not back and self._on_back is not None:
            log.warning("engine %s did not come back within %s s; srpy stops waiting for it", engine.uri, REJOIN_WAIT)
            self._on_back(engine, False)

    @staticmethod
    def _still_answers(engine: Any) -> bool:
        try:
            conn = engine.pool.connect()
        except SRPyError:
            return False
        try:
            return conn.call("ping", (), None, None, 5.0)[0] == "pong"
        except SRPyError:
            return False
        finally:
            conn.close()

    def _definition_failed(self, batch: List[Task], failure: Dict[str, Any]) -> None:
        """
        The engine could not build the batch's function, and said why (L{Engine.define}): a missing
        module (named) or a broken definition marks the function broken for this box; a transient
        failure (memory, the file system) fails only these tasks, and the next ones try again.
        """
        exc, bundle = failure["error"], batch[0].bundle
        if failure["kind"] == "transient":
            log.warning("defining %s on an engine failed for now (%s: %s); its next tasks try again",
                        bundle.get("name") or bundle.get("qualname") or bundle["hash"], type(exc).__name__, exc)
        else:
            if failure["kind"] == "missing":
                names = list(bundle.get("requires") or [])
                top = str(failure.get("module") or "").partition(".")[0]
                if top and top not in names:
                    names.append(top)
                try:
                    exc = missing_packages([s.engine for s in self._live_slots()], names) or exc
                except SRPyError as failed:  # the check itself failed: the engine's own error says enough
                    log.info("could not ask the engines which packages they lack: %s", failed)
            self._broken.setdefault(bundle["hash"], exc)
        self._fail(batch, exc)

    def _requeue(self, batch: List[Task], count_attempt: bool = True) -> None:
        with self._cond:
            for task in reversed(batch):
                if task.dropped:
                    continue
                if count_attempt:
                    task.attempts += 1
                if task.attempts >= MAX_ATTEMPTS:
                    _settle(task.future, exception=EngineDead(
                        "the task lost %d engines while running; it may be what kills them" % task.attempts))
                    continue
                self._tasks.appendleft(task)
            self._cond.notify_all()
            if not self._live_slots():
                self._fail_everything(NoEnginesError("no engine is left in the box"))

    def _fail(self, batch: List[Task], exc: BaseException) -> None:
        for task in batch:
            _settle(task.future, exception=exc)

    def _fail_everything(self, exc: BaseException) -> None:
        """Fail every queued task and map (called with the lock held)."""
        while self._tasks:
            task = self._tasks.popleft()
            if task.started or task.future.set_running_or_notify_cancel():
                _settle(task.future, exception=exc)
        while self._maps:
            self._maps.popleft().stop(exc)
        self._cond.notify_all()

    # -- the end ---------------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._stopping.set()
        with self._cond:
            self._closed = True
            if cancel_futures:
                kept: Deque[Task] = collections.deque()
                for task in self._tasks:
                    if task.started and not task.dropped:  # back from an engine that died: running work, it stays
                        kept.append(task)
                    elif task.future.cancel():
                        task.future.set_running_or_notify_cancel()  # so that wait() and as_completed() see it end
                self._tasks = kept
                while self._maps:
                    self._maps.popleft().stop(CancelledError("the map was cancelled (shutdown with "
                                                             "cancel_futures=True) before all its items ran"))
            self._cond.notify_all()
            if wait:
                # called from a done-callback, a dispatcher delivering results waits for the others,
                # not for its own batch, which ends only once this returns
                own = sum(1 for s in self._slots.values() if s.busy and s.thread is threading.current_thread())
                while self._has_queued_work() or self._inflight > own:
                    self._cond.wait()
            threads = [s.thread for s in self._slots.values()]
        if wait:
            for thread in threads:
                if thread is not None and thread is not threading.current_thread():
                    thread.join()

    def drain(self) -> None:
        """Wait until the work accepted so far has run (interpreter exit; the box stays open)."""
        with self._cond:
            while (self._has_queued_work() or self._inflight) and self._live_slots():
                self._cond.wait()

    def wait_aborts(self, timeout: float) -> None:
        """Wait up to C{timeout} s for the aborts sent in the background to reach their engines."""
        deadline = time.monotonic() + timeout
        with self._cond:
            threads = list(self._aborts)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _interrupted() -> bool:
    """True when the interpreter exits because of Ctrl-C: a KeyboardInterrupt no one caught."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt) and not hasattr(last, "remote_traceback")


def _at_exit() -> None:
    """
    At interpreter exit, before C{atexit} hooks run (as C{concurrent.futures} does): no box takes
    new work, and each waits for the work it has accepted; after Ctrl-C (or Ctrl-C during that
    wait), each stops its work on the engines instead.
    """
    global _exiting
    _exiting = True
    schedulers = list(_schedulers)
    interrupted = _interrupted()
    if not interrupted:
        try:
            for scheduler in schedulers:
                scheduler.drain()
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        for scheduler in schedulers:
            scheduler.abort_all(wait=max(0.1, deadline - time.monotonic()))
            scheduler.wait_aborts(max(0.1, deadline - time.monotonic()))


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
else:  # pragma: no cover - Python < 3.9
    import atexit
    atexit.register(_at_exit)


def missing_packages(engines: List[Any], names: List[str]) -> Optional[MissingPackagesError]:
    """A L{MissingPackagesError} naming which engines lack which of C{names}, or None."""
    if not names:
        return None
    missing: Dict[str, List[str]] = {}
    for engine in engines:
        lacks = engine.call("check_modules", names)
        if lacks:
            missing["%s (%s)" % (engine.uri, engine.info.get("Python Executable", "?"))] = lacks
    return MissingPackagesError(missing) if missing else None
