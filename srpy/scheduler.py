"""
How an EngBox spreads work: one dispatcher thread per engine pulls work from a shared queue.

Pulling is the load balancer: an engine asks for work only when it has finished its last batch,
so a slower or busier engine simply asks less often. On top of that, each engine's batch size is
cut from what the scheduler has measured of it (seconds per item, a moving average seeded by its
benchmark): a batch aims at L{TARGET_SECONDS} of work and at the engine's fair share of what is
pending, so small tasks travel by thousands per round trip and long tasks one at a time.

Faults: a batch whose engine stops answering goes back to the front of the queue for the other
engines (its results were never received, so nothing runs twice from the caller's point of view);
the engine leaves the box. A task that has lost L{MAX_ATTEMPTS} engines fails with
L{EngineDead} (it may be what kills them). When no engine is left, every pending future fails
with L{NoEnginesError}. A task with a timeout travels alone, and its future fails with
C{TimeoutError} when it overruns; that engine gets no more work until it is idle again.

Engines that come back: an engine that left is probed (with back-off, for up to L{REJOIN_WAIT} s).
If it answers again, as one restarted on the same URI by its launcher (C{srpyapp --restart}) does,
it rejoins the box as a fresh engine (a new slot: it knows no shipped function yet) and gets work
again; one that does not stays out.
"""

import collections
import logging
import math
import re
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, List, Optional

from . import codec, lite
from .errors import (CallTimeout, CommunicationError, EngineDead, MissingPackagesError, NoEnginesError,
                     SerializationError, SRPyError, SRPyServerNotFound, TaskTimeout, UnknownFunction)

log = logging.getLogger("srpy.scheduler")

#: seconds of work one batch aims at
TARGET_SECONDS = 0.05
#: seconds of work the smallest batch of a measured engine holds (no long tail of tiny chunks)
MIN_SECONDS = 0.005
#: most tasks in one batch
MAX_BATCH = 4096
#: engines a task may lose before it fails
MAX_ATTEMPTS = 3
#: seconds an engine that left the box is probed for, in case it comes back: a launcher restarts
#: a dead engine after a back-off of up to 30 s, and again if the new process dies while starting
REJOIN_WAIT = 120.0
#: longest pause between two probes of an engine that left
REJOIN_PROBE = 2.0
#: seconds a call may run before its engine is checked (pinged) for life, and between checks
HEARTBEAT = 1.0
#: seconds an engine with a call under way has to answer a ping before it counts as vanished
ANSWER_TIMEOUT = 5.0
_SMOOTHING = 0.5


class Task:
    """One unit the scheduler moves: a submitted call, or one chunk of a map."""

    __slots__ = ("bundle", "kind", "payload", "future", "timeout", "attempts", "size", "job", "started")

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
        self.started = False

    def wire(self) -> list:
        return [self.bundle["hash"], self.kind, self.payload]


class MapJob:
    """One map(): its argument tuples, the futures of the chunks cut so far (in order), progress."""

    def __init__(self, bundle: Dict[str, Any], items: List[Any], chunksize: Optional[int],
                 timeout: Optional[float], progress: Any = None, kind: str = "map") -> None:
        self.bundle = bundle
        self.items = items
        self.kind = kind  # 'map': argument tuples; 'map1': single arguments, sent as they are
        self.chunksize = chunksize
        self.timeout = timeout
        self.progress = progress
        self.next = 0
        self.chunks: List[Future] = []
        self.cancelled = False
        self.changed = threading.Condition()

    @property
    def remaining(self) -> int:
        return len(self.items) - self.next

    def cut(self, size: int) -> Task:
        """The next chunk of C{size} items, as a task."""
        start, self.next = self.next, min(len(self.items), self.next + max(1, size))
        future: Future = Future()
        task = Task(self.bundle, self.kind, self.items[start:self.next], future, self.timeout, self)
        with self.changed:
            self.chunks.append(future)
            self.changed.notify_all()
        return task

    def cancel(self) -> None:
        with self.changed:
            self.cancelled = True
            for future in self.chunks:
                future.cancel()
            self.changed.notify_all()


class Slot:
    """The scheduler's view of one engine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.known: set = set()
        self.per_item: Optional[float] = None
        prior = getattr(engine, "measured_proc", None)
        self.prior_speed = 1.0 / prior if prior else None
        self.active = True
        self.paused = False
        self.vanished = False
        self.thread: Optional[threading.Thread] = None
        self.done = 0
        self.busy = False  # a batch of it is under way

    def speed(self, default: float) -> float:
        if self.per_item:
            return 1.0 / self.per_item
        return self.prior_speed or default

    def observe(self, seconds: float, items: int) -> None:
        sample = seconds / max(1, items)
        self.per_item = sample if self.per_item is None else (1 - _SMOOTHING) * self.per_item + _SMOOTHING * sample


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
        self._inflight = 0
        self._closed = False

    # -- engines ---------------------------------------------------------------------------------

    def add_engine(self, engine: Any) -> None:
        with self._cond:
            if id(engine) in self._slots or self._closed:
                return
            slot = Slot(engine)
            self._slots[id(engine)] = slot
            slot.thread = threading.Thread(target=self._dispatch, args=(slot,), daemon=True,
                                           name="srpy-dispatch-%s" % getattr(engine, "uri", "?"))
            slot.thread.start()

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
                uri = getattr(slot.engine, "uri", "?")
                counts[uri] = counts.get(uri, 0) + slot.done
        return counts

    # -- work in ---------------------------------------------------------------------------------

    def put(self, task: Task) -> None:
        with self._cond:
            self._check_open()
            self._tasks.append(task)
            self._cond.notify()

    def put_map(self, job: MapJob) -> None:
        with self._cond:
            self._check_open()
            if job.items:
                self._maps.append(job)
                self._cond.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new work after shutdown")
        if not any(slot.active for slot in self._slots.values()):
            raise NoEnginesError("the box has no engine to run work on")

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
                        return batch
                if self._closed and not self._tasks and not self._maps:
                    return []
                self._cond.wait()

    def _cut(self, slot: Slot) -> List[Task]:
        share = self._share(slot)
        while self._tasks:
            if self._tasks[0].timeout:
                task = self._tasks.popleft()
                return [task] if self._start(task) else []
            return self._cut_tasks(slot, share)
        while self._maps:
            job = self._maps[0]
            if job.cancelled or not job.remaining:
                self._maps.popleft()
                continue
            idle = sum(1 for s in self._live_slots() if s is slot or not s.busy)
            size = job.chunksize or self._size(slot, job.remaining, (share, idle), probe=32)
            task = job.cut(size)
            if not job.remaining:
                self._maps.popleft()
            return [task]
        return []

    def _share(self, slot: Slot) -> float:
        """C{slot}'s fraction of the box's speed (engines not yet measured count as average)."""
        live = self._live_slots()
        known = [s.speed(0.0) for s in live if s.speed(0.0) > 0]
        mean = sum(known) / len(known) if known else 1.0
        return slot.speed(mean) / sum(s.speed(mean) for s in live)

    @staticmethod
    def _size(slot: Slot, pending: int, shares: tuple, probe: int) -> int:
        """
        How many items C{slot} takes of C{pending}, given C{shares}: its fraction of the box's
        speed and how many engines (itself included) have no batch under way. Its fair share, at
        most L{TARGET_SECONDS} x 5 of its measured work, so that the chunks shrink as the work runs
        out and the engines finish together. When an equal part of C{pending} for each idle engine
        (the busy ones have theirs) is under L{MIN_SECONDS} of work, it takes that part in one
        chunk: a small job goes out as one chunk per idle engine, with no tail of tiny chunks (the
        speed measured on such small chunks is mostly round-trip time, so it does not split them).
        A small probe while it is not measured yet.
        """
        share, idle = shares
        fair = max(1, math.ceil(pending * share))
        if slot.per_item is None:
            return max(1, min(probe, math.ceil(fair / 8)))
        mine = math.ceil(pending / idle)
        if mine * slot.per_item <= MIN_SECONDS:
            return mine
        return max(1, min(fair, int(TARGET_SECONDS * 5 / slot.per_item)))

    def _cut_tasks(self, slot: Slot, share: float) -> List[Task]:
        # submitted tasks keep arriving while the dispatchers work: a short queue goes whole, in one batch
        limit = min(MAX_BATCH, self._size(slot, len(self._tasks), (share, 1), probe=64))
        batch: List[Task] = []
        while self._tasks and len(batch) < limit and not self._tasks[0].timeout:
            task = self._tasks.popleft()
            if self._start(task):
                batch.append(task)
        return batch

    def _start(self, task: Task) -> bool:
        """Mark a task running; False if it was cancelled or its function is known to be broken."""
        broken = self._broken.get(task.bundle["hash"])
        if not task.started:
            if not task.future.set_running_or_notify_cancel():
                return False
            task.started = True
        if broken is not None:
            task.future.set_exception(broken)
            return False
        return True

    # -- the dispatcher --------------------------------------------------------------------------

    def _dispatch(self, slot: Slot) -> None:
        while True:
            batch = self._take(slot)
            if not batch:
                return
            try:
                self._run(slot, batch)
            except Exception as exc:  # a bug here must fail the batch loudly, not kill the thread
                log.exception("dispatcher for %s failed", slot.engine)
                self._fail(batch, exc)
            finally:
                with self._cond:
                    self._inflight -= 1
                    slot.busy = False
                    self._cond.notify_all()

    def _run(self, slot: Slot, batch: List[Task]) -> None:
        timeout = batch[0].timeout if len(batch) == 1 else None
        try:
            self._define(slot, batch)
            start = time.perf_counter()
            raw = self._watched_call(slot, "run_batch", [task.wire() for task in batch], timeout=timeout)
            elapsed = time.perf_counter() - start
        except SerializationError:
            self._split_unsendable(batch)
            return
        except UnknownFunction:
            slot.known.clear()
            self._requeue(batch)
            return
        except TaskTimeout as exc:  # the engine stopped the task by restarting: a fresh engine, same URI
            batch[0].future.set_exception(exc)
            slot.known.clear()  # while it restarts, calls fail and it leaves the box; it rejoins when back
            return
        except CallTimeout:
            self._timed_out(slot, batch[0])
            return
        except (CommunicationError, SRPyServerNotFound) as exc:
            self._engine_failed(slot, batch, exc)
            return
        except Exception as exc:  # the function's definition failed on the engine
            self._definition_failed(slot, batch, exc)
            return
        slot.observe(elapsed, sum(task.size for task in batch))
        self._deliver(slot, batch, codec.loads(raw))

    def _define(self, slot: Slot, batch: List[Task]) -> None:
        for task in batch:
            bundle = task.bundle
            if bundle["hash"] not in slot.known:
                self._watched_call(slot, "define", bundle["hash"], bundle)
                slot.known.add(bundle["hash"])

    def _watched_call(self, slot: Slot, method: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """
        Call C{method} on C{slot}'s engine over a connection of its own, which the watchdog cuts
        (L{ConnectionLost}) if the engine stops answering pings while the call is under way: an
        engine that vanishes (frozen, or its machine gone without closing the socket) does not
        hold its batch for ever.
        """
        engine = slot.engine
        conn = engine._acquire()
        entry = (slot, conn, time.monotonic())
        with self._cond:
            slot.vanished = False
            self._calls[id(slot)] = entry
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, daemon=True, name="srpy-watchdog")
                self._watchdog.start()
        try:
            limits, limit_wait = engine.limited(timeout)._limits(None) if timeout else (None, None)
            value, annotations = conn.call(method, args, None, limits,
                                           engine.timeout if timeout is None else limit_wait)
        finally:
            with self._cond:
                if self._calls.get(id(slot)) is entry:
                    del self._calls[id(slot)]
            engine._release(conn)
        if annotations and lite.RESULT_BLOB in annotations:
            return annotations[lite.RESULT_BLOB]
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
                threading.Thread(target=self._check, args=(entry,), daemon=True).start()

    def _check(self, entry: tuple) -> None:
        """Ping the engine of a call under way; if it does not answer, cut the call."""
        slot, conn, _ = entry
        try:
            alive = slot.engine._call("ping", timeout=ANSWER_TIMEOUT) == "pong"
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
        log.warning("engine %s stopped answering during a call; it counts as gone", slot.engine.uri)

    def _deliver(self, slot: Slot, batch: List[Task], outcomes: List[tuple]) -> None:
        done = 0
        for task, outcome in zip(batch, outcomes):
            if task.kind != "call":
                task.future.set_result(outcome)
                if task.job is not None and task.job.progress is not None:
                    task.job.progress.advance(task.size)
            elif outcome[0] == "ok":
                task.future.set_result(outcome[1])
            else:
                task.future.set_exception(outcome[1])
            done += task.size
        with self._cond:
            slot.done += done

    # -- what goes wrong ---------------------------------------------------------------------------

    def _split_unsendable(self, batch: List[Task]) -> None:
        sendable = []
        for task in batch:
            try:
                codec.dumps(task.payload)
                sendable.append(task)
            except SerializationError as exc:
                task.future.set_exception(exc)
        self._requeue(sendable, count_attempt=False)

    def _timed_out(self, slot: Slot, task: Task) -> None:
        task.future.set_exception(TimeoutError("the task ran longer than its timeout of %s s on %s"
                                               % (task.timeout, slot.engine.uri)))
        with self._cond:
            slot.paused = True
        threading.Thread(target=self._resume_when_idle, args=(slot,), daemon=True).start()

    def _resume_when_idle(self, slot: Slot) -> None:
        """Give C{slot} work again once its engine is idle; an engine that stops answering is gone."""
        while slot.active:
            try:
                if slot.engine._call("wait", HEARTBEAT, timeout=HEARTBEAT + ANSWER_TIMEOUT):
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
            log.warning("call to %s failed (%s); it still answers, so its work is retried", slot.engine.uri, exc)
            self._requeue(batch)
            return
        log.warning("engine %s is gone (%s); %d task(s) go to the other engines", slot.engine.uri, exc, len(batch))
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
        threading.Thread(target=self._rejoin, args=(engine,), daemon=True,
                         name="srpy-rejoin-%s" % getattr(engine, "uri", "?")).start()

    def _rejoin(self, engine: Any) -> None:
        """
        Ask C{engine} who it is, with back-off, for up to L{REJOIN_WAIT} s: once it answers (its
        description refreshed: a restarted engine has a new process), it rejoins as a fresh slot.
        """
        deadline, delay, back = time.monotonic() + REJOIN_WAIT, 0.1, False
        try:
            while not self._stopping.wait(delay) and time.monotonic() < deadline:
                try:
                    engine.info = engine._call("whoami", timeout=ANSWER_TIMEOUT)
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
            conn = engine._connect()
        except SRPyError:
            return False
        try:
            return conn.call("ping", (), None, None, 5.0)[0] == "pong"
        except SRPyError:
            return False
        finally:
            conn.close()

    def _definition_failed(self, slot: Slot, batch: List[Task], exc: BaseException) -> None:
        if isinstance(exc, ImportError):
            exc = self._missing_packages(batch[0].bundle, exc)
        for task in batch:
            self._broken.setdefault(task.bundle["hash"], exc)
        self._fail(batch, exc)

    def _missing_packages(self, bundle: Dict[str, Any], exc: ImportError) -> BaseException:
        names = list(bundle.get("requires") or [])
        found = re.search(r"No module named '([^']+)'", str(exc))
        if found and found.group(1).partition(".")[0] not in names:
            names.append(found.group(1).partition(".")[0])
        return missing_packages([s.engine for s in self._live_slots()], names) or exc

    def _requeue(self, batch: List[Task], count_attempt: bool = True) -> None:
        with self._cond:
            for task in reversed(batch):
                if count_attempt:
                    task.attempts += 1
                if task.attempts >= MAX_ATTEMPTS:
                    task.future.set_exception(EngineDead(
                        "the task lost %d engines while running; it may be what kills them" % task.attempts))
                    continue
                self._tasks.appendleft(task)
            self._cond.notify_all()
            if not self._live_slots():
                self._fail_everything(NoEnginesError("no engine is left in the box"))

    def _fail(self, batch: List[Task], exc: BaseException) -> None:
        for task in batch:
            if not task.future.done():
                task.future.set_exception(exc)

    def _fail_everything(self, exc: BaseException) -> None:
        """Fail every queued task and map (called with the lock held)."""
        while self._tasks:
            task = self._tasks.popleft()
            if task.started or task.future.set_running_or_notify_cancel():
                if not task.future.done():
                    task.future.set_exception(exc)
        while self._maps:
            job = self._maps.popleft()
            while job.remaining:
                task = job.cut(job.remaining)
                task.future.set_exception(exc)
        self._cond.notify_all()

    # -- the end ---------------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._stopping.set()
        with self._cond:
            self._closed = True
            if cancel_futures:
                kept: Deque[Task] = collections.deque()
                for task in self._tasks:
                    if task.started:  # back from an engine that died: running work to its caller, it stays
                        kept.append(task)
                    elif task.future.cancel():
                        task.future.set_running_or_notify_cancel()  # so that wait() and as_completed() see it end
                self._tasks = kept
                while self._maps:
                    self._maps.popleft().cancel()
            self._cond.notify_all()
            if wait:
                while self._tasks or self._maps or self._inflight:
                    self._cond.wait()
            threads = [s.thread for s in self._slots.values()]
        if wait:
            for thread in threads:
                if thread is not None and thread is not threading.current_thread():
                    thread.join()


def missing_packages(engines: List[Any], names: List[str]) -> Optional[MissingPackagesError]:
    """A L{MissingPackagesError} naming which engines lack which of C{names}, or None."""
    if not names:
        return None
    missing: Dict[str, List[str]] = {}
    for engine in engines:
        lacks = engine._call("check_modules", names)
        if lacks:
            missing["%s (%s)" % (engine.uri, engine.info.get("Python Executable", "?"))] = lacks
    return MissingPackagesError(missing) if missing else None
