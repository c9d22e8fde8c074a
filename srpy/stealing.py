"""
Work sharing between the engines of a group: spawned calls, work stealing, and hints.

C{spawn} queues a call on this engine (L{WorkSharing.spawn}) and hints the peers that work is
queued (at most L{HINT_FANOUT} of them a round, at random, so a spawn costs a bounded number of
calls in a group of any size); an idle peer takes (steals) the oldest queued calls, runs them, and sends the outcome back
(C{peer_complete}). While a task waits for a spawned result it releases its engine's lock, so the
engine meanwhile runs other queued work (a task blocked in C{result()} is like an C{await}); if the
call is still queued here, the waiting task runs it itself (L{SpawnFuture}). The engine that
spawned a call watches the peer running it: if that peer dies, the call is queued again and runs
elsewhere.

Threads: the spawned calls run in a pool of workers that each take the engine's lock first (at
most L{MAX_WORKERS}: a call that waits for calls it spawned needs another worker to run them);
hints go out from one hinter thread through a bounded pool (L{HINT_SENDERS}, at most one hint under
way per peer); hints received, and steals, are handled by one thief thread, one steal at a time;
one watcher checks the peers holding this engine's calls. Every one of them ends when idle.
"""

import collections
import concurrent.futures
import itertools
import logging
import random
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from . import functions
from .errors import PeerUnavailable, SRPyError
from .fanout import Workers, start_thread
from . import tracebacks

log = logging.getLogger("srpy.peers")

#: seconds between checks that peers running our spawned calls are alive
WATCH_INTERVAL = 0.5
#: most calls one steal takes (a steal takes at most half of the victim's queue)
STEAL_BATCH = 64
#: seconds between reminders to the peers while calls stay queued here (doubling up to L{REHINT_MAX})
REHINT_MIN = 0.005
REHINT_MAX = 0.2
#: seconds the hinter thread waits for work before it ends
HINTER_LINGER = 5.0
#: hints under way at once (one per peer at most)
HINT_SENDERS = 8
#: peers one round of hints reaches at most (chosen at random among those not known busy): the
#: peers that take work hint as many more in turn, so work reaches every engine in a few rounds,
#: and a spawn costs a bounded number of calls however many peers there are (all of them, before:
#: at 64 engines every idle peer raced to steal the same two calls)
HINT_FANOUT = 8
#: peers an engine out of work asks for work at most, in random order, before it waits for a hint
STEAL_TRIES = 8
#: threads that run spawned calls, at most (each waits for the engine's lock before it takes a call)
MAX_WORKERS = 512
#: seconds an idle spawn worker waits for a call before it ends
WORKER_LINGER = 5.0


class SpawnFuture(concurrent.futures.Future):
    """
    A Future of a spawned call. Waited on by a task that holds its engine's lock, it first runs the
    call right there if it is still queued on this engine (no thread hand-off, as in fork-join
    pools); otherwise it releases the lock while it waits, so the engine runs other work meanwhile.
    """

    def __init__(self, work: "WorkSharing", call: "_Spawned") -> None:
        super().__init__()
        self._work = work
        self._call = call

    def result(self, timeout: Optional[float] = None) -> Any:
        self._work.help(self)
        with self._work.engine.lock.released_if_mine():
            return super().result(timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._work.help(self)
        with self._work.engine.lock.released_if_mine():
            return super().exception(timeout)


class _Spawned:
    """A spawned call: where it came from, and what to run."""

    __slots__ = ("id", "origin", "bundle", "args", "kwargs", "via")

    def __init__(self, call_id: str, origin: str, bundle: Dict[str, Any], args: Any, kwargs: Any,
                 via: Optional[str] = None) -> None:
        self.id = call_id
        self.origin = origin
        self.bundle = bundle
        self.args = args
        self.kwargs = kwargs
        self.via = via  # the peer it was taken from, when that is not its origin (it watches us for it)

    def wire(self) -> list:
        return [self.id, self.origin, self.bundle, list(self.args), dict(self.kwargs)]


class WorkSharing:
    """
    One engine's spawned work: its queue, the calls it handed to peers, and the hints and steals
    that move work between idle and busy engines. All its state is read and changed under one
    condition, C{_cond}.

    @param engine: this engine (its C{uri}, C{lock} and C{function}).
    @param group: its peers (L{srpy.group.PeerGroup}).
    """

    def __init__(self, engine: Any, group: Any) -> None:
        self.engine = engine
        self.group = group
        self._executed = 0
        self._queue: Deque[_Spawned] = collections.deque()
        self._futures: Dict[str, SpawnFuture] = {}
        self._away: Dict[str, Tuple[str, _Spawned]] = {}  # our calls running at a peer: id -> (peer, call)
        self._cond = threading.Condition()
        self._idle_workers = 0
        self._workers = 0
        self._ids = itertools.count()
        self._hint_wanted = threading.Event()
        self._hinter: Optional[threading.Thread] = None
        self._hinting: Set[str] = set()  # peers with a hint under way
        self._hint_senders = Workers("srpy-hint", HINT_SENDERS)
        self._busy_peers: Dict[str, float] = {}  # peers known busy (they need no hint), since when
        self._rehint = REHINT_MIN
        self.hint_rounds = 0  # rounds of hints sent, and the most peers one round reached (peer_stats)
        self.widest_round = 0
        self._watcher: Optional[threading.Thread] = None
        self._thief = Workers("srpy-steal", 1)
        self._to_rob: "collections.OrderedDict[Optional[str], None]" = collections.OrderedDict()  # None: any peer
        group.on_leave(self._requeue_from)

    @property
    def executed(self) -> int:
        """How many spawned calls this engine has run."""
        with self._cond:
            return self._executed

    def queued(self) -> int:
        """How many spawned calls wait here."""
        with self._cond:
            return len(self._queue)

    # -- spawned work ------------------------------------------------------------------------------

    def spawn(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> SpawnFuture:
        bundle = functions.pack(fn)
        call = _Spawned("%s#%d" % (self.engine.uri, next(self._ids)), self.engine.uri, bundle, args, kwargs)
        future = SpawnFuture(self, call)
        future.set_running_or_notify_cancel()
        with self._cond:
            fresh = not self._queue
            self._futures[call.id] = future
            self._queue.append(call)
            if not self._held_here():  # a task holding the lock runs its calls itself (see help)
                self._ensure_worker()
                self._cond.notify()
        self._hint_peers(fresh)
        return future

    def _held_here(self) -> bool:
        return self.engine.lock.owner == threading.get_ident()

    def help(self, future: SpawnFuture) -> None:
        """Before a lock-holding task waits for C{future}: run its call inline if still queued here."""
        if future.done() or not self._held_here():
            return
        with self._cond:
            try:
                self._queue.remove(future._call)
            except ValueError:  # taken by a worker or a peer: wait for it, and let workers run the rest
                if self._queue:
                    self._ensure_worker()
                    self._cond.notify_all()
                else:  # nothing queued here while this task waits: take work from a busy peer
                    self._rob(None)
                return
        self.complete(future._call.id, self._execute(future._call))

    def _ensure_worker(self) -> None:
        """Start a worker when queued work has none free (called with the condition held)."""
        if self._idle_workers == 0 and self._workers < MAX_WORKERS:
            self._workers += 1
            start_thread(self._work, name="srpy-spawn-worker")

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle_workers += 1
                got = self._cond.wait_for(lambda: bool(self._queue), WORKER_LINGER)
                self._idle_workers -= 1
                if not got:
                    self._workers -= 1
                    return
            # the engine's lock first, then a call: a call stays queued (where idle peers can take
            # it) until this engine is free to run it, instead of waiting in a worker's hands
            with self.engine.lock:
                with self._cond:
                    call = self._queue.pop() if self._queue else None  # newest first; thieves take the oldest
                outcome = self._execute(call) if call is not None else None
            if call is None:
                continue  # a peer or a waiting task took it meanwhile
            self._deliver(call, outcome)
            if not self.queued():
                self._steal_any()

    def _deliver(self, call: _Spawned, outcome: Optional[tuple]) -> None:
        """Hand the outcome of C{call} to the engine that spawned it (this one, or a peer)."""
        if call.via is not None:  # the engine we took it from watches us for it: it may stop
            try:
                self.group.call_peer(call.via, "peer_complete", call.id, ("ok", None))
            except PeerUnavailable:
                pass  # its origin watches it, and redoes the call if needed
        if call.origin == self.engine.uri:
            self.complete(call.id, outcome)
            return
        try:
            self.group.call_peer(call.origin, "peer_complete", call.id, outcome)
        except PeerUnavailable as exc:
            log.warning("the engine that spawned %s is gone; its result is dropped (%s)", call.id, exc)

    def _execute(self, call: _Spawned) -> tuple:
        try:
            fn = self.engine.function(call.bundle)
            if self._held_here():  # run inline by the task that waits for it
                self._count_run()
                return ("ok", fn(*call.args, **call.kwargs))
            with self.engine.lock:
                self._count_run()
                return ("ok", fn(*call.args, **call.kwargs))
        except Exception as exc:  # the call's failure is its outcome
            tracebacks.attach(exc)
            return ("err", exc)

    def _count_run(self) -> None:
        with self._cond:
            self._executed += 1

    def complete(self, call_id: str, outcome: Any) -> None:
        """The outcome of one of our calls arrived (from here or from a peer)."""
        with self._cond:
            self._away.pop(call_id, None)
            future = self._futures.pop(call_id, None)
        if future is None or future.done():
            return  # a late duplicate of a call that was redone
        if outcome[0] == "ok":
            future.set_result(outcome[1])
        else:
            future.set_exception(outcome[1])

    # -- stealing ----------------------------------------------------------------------------------

    def steal(self, thief: str, count: int) -> List[list]:
        """Hand up to C{count} of the oldest queued calls to the peer C{thief}."""
        if not self.group.is_peer(thief):
            raise PermissionError("only peers of this engine's group may take its work")
        taken: List[list] = []
        with self._cond:
            if self._queue:  # the thief will be busy; one that asks in vain is idle: hint it next time
                self._busy_peers[thief] = time.monotonic()
            else:
                self._busy_peers.pop(thief, None)
            count = min(count, max(1, (len(self._queue) + 1) // 2))  # half the queue: both sides keep work
            while self._queue and len(taken) < count:
                call = self._queue.popleft()
                # every call handed on is watched here, also one that came from a third engine: its
                # origin believes we hold it, so if the thief dies, only we can queue it again
                self._away[call.id] = (thief, call)
                taken.append(call.wire())
        if taken:
            self._start_watcher()
        return taken

    def hint(self, sender: str) -> bool:
        """A peer has queued work: if idle, go and take some. True if busy (or now taking work)."""
        if not self.group.is_peer(sender):
            return False
        if self.queued() or self.engine.lock.locked():
            return True
        self._rob(sender)
        return True

    def _rob(self, victim: Optional[str]) -> None:
        """Have the thief take work from C{victim} (None: from any peer), unless it is about to already."""
        with self._cond:
            if victim in self._to_rob:
                return
            self._to_rob[victim] = None
        self._thief.submit(self._rob_next)

    def _rob_next(self) -> None:
        with self._cond:
            if not self._to_rob:
                return
            victim, _ = self._to_rob.popitem(last=False)
            busy = bool(self._queue)
        if busy:  # work came meanwhile: this engine is not idle any more
            return
        if victim is None:
            self._steal_any()
        else:
            self._steal_from(victim)

    def _steal_from(self, victim: str) -> bool:
        try:
            calls = self.group.call_peer(victim, "peer_steal", self.engine.uri, STEAL_BATCH)
        except (SRPyError, PermissionError) as exc:  # gone, or no longer counts us as a peer
            log.debug("could not take work from %s: %s", victim, exc)
            return False
        log.debug("took %d call(s) from %s", len(calls), victim)
        if not calls:
            return False
        with self._cond:
            for call_id, origin, bundle, args, kwargs in calls:
                via = victim if victim != origin else None
                self._queue.appendleft(_Spawned(call_id, origin, bundle, args, kwargs, via))
            self._ensure_worker()
            self._cond.notify_all()
        self._hint_peers()
        return True

    def _steal_any(self) -> None:
        """Out of queued work: take some from the first of L{STEAL_TRIES} peers (at random) that has any."""
        candidates = self.group.peers()
        random.shuffle(candidates)
        for peer in candidates[:STEAL_TRIES]:
            if self.queued():
                return
            if self._steal_from(peer.uri):
                return

    # -- hints -------------------------------------------------------------------------------------

    def _hint_peers(self, fresh: bool = True) -> None:
        """
        Tell the peers that calls are queued here. One hinter thread sends the hints: a burst of
        spawns makes one round, and none is lost. While calls stay queued, it reminds the peers
        again (after L{REHINT_MIN} s, doubling up to L{REHINT_MAX}): a peer busy at one hint
        ignores it, and may be idle at the next. Only C{fresh} work (a queue that was empty)
        starts the reminders over at L{REHINT_MIN}. A peer known to be busy (it said so, or took
        work here) is reminded at most every L{REHINT_MAX} s: an engine that runs out of work asks
        its peers for more by itself, and one that asks here in vain counts as idle again. A round
        reaches at most L{HINT_FANOUT} of the others, at random (every engine, over the rounds).
        """
        if not self.group.has_peers():
            return
        with self._cond:
            if fresh:
                self._rehint = REHINT_MIN
            self._hint_wanted.set()
            if self._hinter is None:
                self._hinter = start_thread(self._hint_loop, name="srpy-hinter")

    def _hint_loop(self) -> None:
        while True:
            if not self._hint_wanted.wait(HINTER_LINGER):
                with self._cond:  # ends under the lock _hint_peers starts it under: no hint goes unsent
                    if not self._hint_wanted.is_set():
                        self._hinter = None
                        return
                continue
            self._hint_wanted.clear()
            now = time.monotonic()
            with self._cond:
                busy = dict(self._busy_peers)
            due = [peer.uri for peer in self.group.peers() if now - busy.get(peer.uri, -REHINT_MAX) >= REHINT_MAX]
            if len(due) > HINT_FANOUT:
                due = random.sample(due, HINT_FANOUT)
            for uri in due:
                self._hint(uri)
            with self._cond:
                self.hint_rounds += 1
                self.widest_round = max(self.widest_round, len(due))
            with self._cond:
                delay = self._rehint
                self._rehint = min(REHINT_MAX, delay * 2)
            time.sleep(delay)
            if self.queued():
                self._hint_wanted.set()

    def _hint(self, uri: str) -> None:
        """Send one hint to C{uri} (through the bounded senders), unless one is still under way (a slow peer)."""
        with self._cond:
            if uri in self._hinting:
                return
            self._hinting.add(uri)
        self._hint_senders.submit(self._send_hint, uri)

    def _send_hint(self, uri: str) -> None:
        busy = False
        try:
            busy = bool(self.group.call_peer(uri, "peer_hint", self.engine.uri))
        except (SRPyError, PermissionError) as exc:
            log.debug("hint to %s failed: %s", uri, exc)
        finally:
            with self._cond:
                self._hinting.discard(uri)
                if busy:
                    self._busy_peers[uri] = time.monotonic()

    # -- peers that hold our calls -------------------------------------------------------------------

    def _start_watcher(self) -> None:
        with self._cond:  # the watcher decides to end under this same lock: no call goes unwatched
            if self._watcher is None:
                self._watcher = start_thread(self._watch, name="srpy-peer-watch")

    def _watch(self) -> None:
        """While peers run our calls, check they live; a dead one's calls are queued again."""
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._cond:
                holders = {peer for peer, _ in self._away.values()}
                if not holders:
                    self._watcher = None
                    return
            for uri in holders:
                try:
                    self.group.call_peer(uri, "ping")
                except PeerUnavailable:
                    pass  # the group dropped it, and _requeue_from has queued its calls again

    def _requeue_from(self, uri: str) -> None:
        """Peer C{uri} left the group: the calls it held are queued here again."""
        with self._cond:
            lost = [call for peer, call in self._away.values() if peer == uri]
            for call in lost:
                del self._away[call.id]
                self._queue.appendleft(call)
            self._busy_peers.pop(uri, None)
            if lost:
                log.warning("%d spawned call(s) held by %s are queued again", len(lost), uri)
                self._ensure_worker()
                self._cond.notify_all()
        if lost:
            self._hint_peers()
