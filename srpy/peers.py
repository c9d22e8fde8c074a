"""
Engines talking to engines: peers, messages, a shared tuple space, and work sharing.

Code running inside an engine gets a handle on its engine with L{this_engine}::

    me = srpy.this_engine()
    me.peers()                       # live peers of the same group: [Peer(uri, name, group, ...)]
    me.send(peer, "tag", value)      # or me.broadcast("tag", value)
    sender, value = me.receive("tag", timeout=10)
    me.put("key", value); me.read("key", timeout=5); me.take("key", timeout=5)
    me.take_match("job-*", timeout=5)          # glob pattern over str keys
    future = srpy.spawn(fn, *args)             # a Future; runs here or on an idle peer

Peers are introduced by the client (C{box.connectPeers()}) or found in the Pyro5 name server
(engines started with C{--ns}). A peer must be of the same group and, when engines have a secret,
pass the same secret handshake as a client; anything else is never a peer, and its messages are
refused. None of this goes through the client: engines call each other over Pyro5 directly.

B{Messages}: per tag, in order from one sender to one receiver (each send is a synchronous call);
a receiver's mailbox holds at most L{MAILBOX_CAPACITY} messages, and a sender to a full mailbox
waits (back-pressure) up to L{SEND_TIMEOUT} seconds, then fails loudly. A send to a dead peer fails
loudly (L{PeerUnavailable}) and the peer leaves the list.

B{Tuple space}: each key lives on one engine, chosen by rendezvous hashing over the group's
members, so a member that dies takes only its own entries with it: I{entries held by an engine that
dies are lost} (put them again, or keep a copy elsewhere, if they matter).

B{Work sharing}: C{spawn} queues the call on this engine and tells the peers; an idle peer takes
(steals) the oldest queued calls, runs them, and sends the outcome back. While a task waits for a
spawned result it releases its engine's lock, so the engine meanwhile runs other queued work (a
task blocked in C{result()} is like an C{await}). The engine that spawned a call watches the peer
running it: if that peer dies, the call is queued again and runs elsewhere.
"""

import collections
import concurrent.futures
import fnmatch
import hashlib
import itertools
import logging
import random
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import codec, functions
from .errors import CommunicationError, NotInEngine, PeerUnavailable, SRPyError, SRPyServerNotFound
from .tracebacks import user_traceback

log = logging.getLogger("srpy.peers")

#: messages one engine's mailbox holds before senders wait
MAILBOX_CAPACITY = 10_000
#: seconds a sender waits for room in a full mailbox
SEND_TIMEOUT = 30.0
#: seconds between checks that peers running our spawned calls are alive
WATCH_INTERVAL = 0.5
#: most calls one steal takes (a steal takes at most half of the victim's queue)
STEAL_BATCH = 64
#: seconds between reminders to the peers while calls stay queued here (doubling up to L{REHINT_MAX})
REHINT_MIN = 0.005
REHINT_MAX = 0.2
#: seconds the hinter thread waits for work before it ends
HINTER_LINGER = 5.0

_engine: Optional[Any] = None  # the Engine of this process, when this process is an engine


def attach(engine: Any) -> None:
    """Make C{engine} the one L{this_engine} returns (the engine does this when it starts)."""
    global _engine
    _engine = engine


def this_engine() -> "EngineHandle":
    """The handle of the engine this code runs in."""
    if _engine is None:
        raise NotInEngine("this_engine() works only in code running on an srpy engine")
    return _engine.social.handle


def spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
    """Run C{fn(*args, **kwargs)} on this engine or an idle peer; returns a Future."""
    return this_engine().spawn(fn, *args, **kwargs)


class Peer:
    """Another engine of the group, as seen from this one."""

    def __init__(self, uri: str, client: Any) -> None:
        self.uri = uri
        self.client = client
        self.info = client.info
        self.name = self.info.get("Name", "")
        self.group = self.info.get("Group", "")
        self.hostname = self.info.get("Hostname", "")

    def __repr__(self) -> str:
        return "<Peer %s at %s>" % (self.name, self.uri)


# -- messages --------------------------------------------------------------------------------------

class Mailbox:
    """Messages by tag, bounded: C{put} waits while it is full."""

    def __init__(self, capacity: int = MAILBOX_CAPACITY) -> None:
        self.capacity = capacity
        self._queues: Dict[Any, Deque[Tuple[str, Any]]] = collections.defaultdict(collections.deque)
        self._count = 0
        self._cond = threading.Condition()

    def put(self, sender: str, tag: Any, value: Any, timeout: float = SEND_TIMEOUT) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._count < self.capacity, timeout):
                raise TimeoutError("the mailbox stayed full (%d messages) for %s s" % (self.capacity, timeout))
            self._queues[tag].append((sender, value))
            self._count += 1
            self._cond.notify_all()

    def get(self, tag: Any, timeout: Optional[float]) -> Tuple[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._queues.get(tag)), timeout):
                raise TimeoutError("no message tagged %r within %s s" % (tag, timeout))
            message = self._queues[tag].popleft()
            self._count -= 1
            self._cond.notify_all()
            return message

    def __len__(self) -> int:
        return self._count


# -- this engine's share of the tuple space -----------------------------------------------------

class Space:
    """The entries of the tuple space that this engine holds, with blocking read and take."""

    def __init__(self) -> None:
        self._entries: Dict[Any, Any] = {}
        self._cond = threading.Condition()

    def put(self, key: Any, value: Any) -> None:
        with self._cond:
            self._entries[key] = value
            self._cond.notify_all()

    def read(self, key: Any, timeout: Optional[float], remove: bool) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._entries, timeout):
                raise TimeoutError("no entry %r within %s s" % (key, timeout))
            return self._entries.pop(key) if remove else self._entries[key]

    def match(self, pattern: str, timeout: Optional[float]) -> Optional[str]:
        """A str key matching the glob C{pattern} (waiting up to C{timeout}); None if none came."""
        def found() -> Optional[str]:
            return next((k for k in self._entries if isinstance(k, str) and fnmatch.fnmatchcase(k, pattern)), None)
        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            return found()

    def fetch(self, key: Any, remove: bool) -> Tuple[bool, Any]:
        """(True, value) if C{key} is held (removed if C{remove}), else (False, None); no waiting."""
        with self._cond:
            if key not in self._entries:
                return False, None
            return True, (self._entries.pop(key) if remove else self._entries[key])

    def keys(self) -> List[Any]:
        with self._cond:
            return list(self._entries)


def _weight(member: str, key: Any) -> bytes:
    return hashlib.sha1(member.encode("utf-8") + b"\0" + codec.dumps(key)).digest()


def owner_of(key: Any, members: List[str]) -> str:
    """
    The member that holds C{key}: rendezvous hashing, so removing a member moves only its keys.

    >>> owner_of("k", ["a", "b", "c"]) == owner_of("k", ["c", "b", "a"])
    True
    """
    return max(members, key=lambda member: _weight(member, key))


# -- work sharing ----------------------------------------------------------------------------------

class SpawnFuture(concurrent.futures.Future):
    """
    A Future of a spawned call. Waited on by a task that holds its engine's lock, it first runs the
    call right there if it is still queued on this engine (no thread hand-off, as in fork-join
    pools); otherwise it releases the lock while it waits, so the engine runs other work meanwhile.
    """

    def __init__(self, social: "Social", call: "_Call") -> None:
        super().__init__()
        self._social = social
        self._call = call

    def result(self, timeout: Optional[float] = None) -> Any:
        self._social.help(self)
        with self._social.engine.lock.released_if_mine():
            return super().result(timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._social.help(self)
        with self._social.engine.lock.released_if_mine():
            return super().exception(timeout)


class _Call:
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


class Social:
    """One engine's side of the group: peers, mailbox, tuple space share, and spawned work."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.mailbox = Mailbox()
        self.space = Space()
        self.handle = EngineHandle(self)
        self.executed = 0
        self._peers: Dict[str, Peer] = {}
        self._peers_lock = threading.Lock()
        self._queue: Deque[_Call] = collections.deque()
        self._futures: Dict[str, SpawnFuture] = {}
        self._away: Dict[str, Tuple[str, _Call]] = {}  # our calls running at a peer: id -> (peer, call)
        self._cond = threading.Condition()
        self._idle_workers = 0
        self._workers = 0
        self._ids = itertools.count()
        self._hint_wanted = threading.Event()
        self._hinter: Optional[threading.Thread] = None
        self._hinting: set = set()  # peers with a hint under way
        self._busy_peers: Dict[str, float] = {}  # peers known busy (they need no hint), since when
        self._rehint = REHINT_MIN
        self._watcher: Optional[threading.Thread] = None

    # -- peers -------------------------------------------------------------------------------------

    def set_peers(self, uris: List[str]) -> List[str]:
        """
        Make the engines at C{uris} the peers (replacing the previous ones): those of this engine's
        group that pass the secret handshake are kept; returns their URIs.
        """
        from .client import PythonEngine  # only an engine with peers needs the client
        with self._peers_lock:
            leaving = [self._peers.pop(uri) for uri in list(self._peers) if uri not in uris]
        for peer in leaving:
            peer.client.close()
        accepted = []
        for uri in uris:
            if uri == self.engine.uri:
                continue
            try:
                client = PythonEngine(uri, secret=self.engine.secret, connect_timeout=5.0,
                                      ssl_context=getattr(self.engine, "peer_ssl_context", None))
            except SRPyError as exc:
                log.warning("not a peer: %s (%s)", uri, exc)
                continue
            if client.info.get("Group", "") != self.engine.group:
                log.warning("not a peer: %s is in group %r, this engine in %r", uri, client.info.get("Group"),
                            self.engine.group)
                client.close()
                continue
            with self._peers_lock:
                old = self._peers.get(uri)
                self._peers[uri] = Peer(uri, client)
            if old is not None:
                old.client.close()
            accepted.append(uri)
        return accepted

    def peers(self) -> List[Peer]:
        with self._peers_lock:
            return list(self._peers.values())

    def peer(self, target: Any) -> Peer:
        uri = target.uri if isinstance(target, Peer) else str(target)
        with self._peers_lock:
            found = self._peers.get(uri)
        if found is None:
            raise PeerUnavailable("%s is not a peer of this engine (any more)" % uri)
        return found

    def drop(self, uri: str, reason: Any) -> None:
        with self._peers_lock:
            gone = self._peers.pop(uri, None)
        if gone is not None:
            log.warning("peer %s left: %s", uri, reason)
            gone.client.close()
            self._requeue_from(uri)

    def is_peer(self, uri: str) -> bool:
        with self._peers_lock:
            return uri in self._peers

    def call_peer(self, target: Any, method: str, *args: Any) -> Any:
        peer = self.peer(target)
        try:
            return peer.client.call(method, *args)
        except (CommunicationError, SRPyServerNotFound) as exc:
            self.drop(peer.uri, exc)
            raise PeerUnavailable("peer %s did not answer %s(): %s" % (peer.uri, method, exc)) from None

    def stats(self) -> Dict[str, Any]:
        """Spawned calls run here and queued here, messages waiting, entries held, peers."""
        with self._cond:
            queued = len(self._queue)
        return {"executed": self.executed, "queued": queued, "mailbox": len(self.mailbox),
                "entries": len(self.space.keys()), "peers": [p.uri for p in self.peers()]}

    def members(self) -> List[str]:
        return sorted([self.engine.uri] + [p.uri for p in self.peers()])

    # -- spawned work ------------------------------------------------------------------------------

    def spawn(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> SpawnFuture:
        bundle = functions.pack(fn)
        call = _Call("%s#%d" % (self.engine.uri, next(self._ids)), self.engine.uri, bundle, args, kwargs)
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
                    threading.Thread(target=self._steal_any, name="srpy-steal", daemon=True).start()
                return
        self.complete(future._call.id, self._execute(future._call))

    def _ensure_worker(self) -> None:
        """Start a worker when queued work has none free (called with the condition held)."""
        if self._idle_workers == 0 and self._workers < 512:
            self._workers += 1
            threading.Thread(target=self._work, name="srpy-spawn-worker", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle_workers += 1
                got = self._cond.wait_for(lambda: bool(self._queue), 5.0)
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
            if not self._queue:
                self._steal_any()

    def _deliver(self, call: _Call, outcome: tuple) -> None:
        """Hand the outcome of C{call} to the engine that spawned it (this one, or a peer)."""
        if call.via is not None:  # the engine we took it from watches us for it: it may stop
            try:
                self.call_peer(call.via, "peer_complete", call.id, ("ok", None))
            except PeerUnavailable:
                pass  # its origin watches it, and redoes the call if needed
        if call.origin == self.engine.uri:
            self.complete(call.id, outcome)
            return
        try:
            self.call_peer(call.origin, "peer_complete", call.id, outcome)
        except PeerUnavailable as exc:
            log.warning("the engine that spawned %s is gone; its result is dropped (%s)", call.id, exc)

    def _execute(self, call: _Call) -> tuple:
        try:
            fn = self.engine.function(call.bundle)
            if self._held_here():  # run inline by the task that waits for it
                self.executed += 1
                return ("ok", fn(*call.args, **call.kwargs))
            with self.engine.lock:
                self.executed += 1
                return ("ok", fn(*call.args, **call.kwargs))
        except Exception as exc:  # the call's failure is its outcome
            exc.srpy_traceback = user_traceback(exc)
            return ("err", exc)

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

    def steal(self, thief: str, count: int) -> List[list]:
        """Hand up to C{count} of the oldest queued calls to the peer C{thief}."""
        if not self.is_peer(thief):
            raise PermissionError("only peers of this engine's group may take its work")
        taken = []
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
        if not self.is_peer(sender):
            return False
        if self._queue or self.engine.lock.locked():
            return True
        threading.Thread(target=self._steal_from, args=(sender,), daemon=True).start()
        return True

    def _steal_from(self, victim: str) -> bool:
        try:
            calls = self.call_peer(victim, "peer_steal", self.engine.uri, STEAL_BATCH)
        except (SRPyError, PermissionError) as exc:  # gone, or no longer counts us as a peer
            log.debug("could not take work from %s: %s", victim, exc)
            return False
        log.debug("took %d call(s) from %s", len(calls), victim)
        if not calls:
            return False
        with self._cond:
            for call_id, origin, bundle, args, kwargs in calls:
                via = victim if victim != origin else None
                self._queue.appendleft(_Call(call_id, origin, bundle, args, kwargs, via))
            self._ensure_worker()
            self._cond.notify_all()
        self._hint_peers()
        return True

    def _steal_any(self) -> None:
        """Out of queued work: take some from the first peer (in random order) that has any."""
        candidates = self.peers()
        random.shuffle(candidates)
        for peer in candidates:
            if self._queue:
                return
            if self._steal_from(peer.uri):
                return

    def _hint_peers(self, fresh: bool = True) -> None:
        """
        Tell the peers that calls are queued here. One hinter thread sends the hints: a burst of
        spawns makes one round, and none is lost. While calls stay queued, it reminds the peers
        again (after L{REHINT_MIN} s, doubling up to L{REHINT_MAX}): a peer busy at one hint
        ignores it, and may be idle at the next. Only C{fresh} work (a queue that was empty)
        starts the reminders over at L{REHINT_MIN}. A peer known to be busy (it said so, or took
        work here) is reminded at most every L{REHINT_MAX} s: an engine that runs out of work asks
        its peers for more by itself, and one that asks here in vain counts as idle again.
        """
        if not self._peers:
            return
        with self._cond:
            if fresh:
                self._rehint = REHINT_MIN
            self._hint_wanted.set()
            if self._hinter is None:
                self._hinter = threading.Thread(target=self._hint_loop, name="srpy-hinter", daemon=True)
                self._hinter.start()

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
            for peer in self.peers():
                if now - self._busy_peers.get(peer.uri, -REHINT_MAX) >= REHINT_MAX:
                    self._hint(peer.uri)
            with self._cond:
                delay = self._rehint
                self._rehint = min(REHINT_MAX, delay * 2)
            time.sleep(delay)
            if self._queue:
                self._hint_wanted.set()

    def _hint(self, uri: str) -> None:
        """Send one hint to C{uri} in a thread of its own, unless one is still under way (a slow peer)."""
        with self._cond:
            if uri in self._hinting:
                return
            self._hinting.add(uri)
        threading.Thread(target=self._send_hint, args=(uri,), name="srpy-hint", daemon=True).start()

    def _send_hint(self, uri: str) -> None:
        busy = False
        try:
            busy = bool(self.call_peer(uri, "peer_hint", self.engine.uri))
        except (SRPyError, PermissionError) as exc:
            log.debug("hint to %s failed: %s", uri, exc)
        finally:
            with self._cond:
                self._hinting.discard(uri)
                if busy:
                    self._busy_peers[uri] = time.monotonic()

    def _start_watcher(self) -> None:
        with self._cond:  # the watcher decides to end under this same lock: no call goes unwatched
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="srpy-peer-watch", daemon=True)
                self._watcher.start()

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
                    self.call_peer(uri, "ping")
                except PeerUnavailable:
                    pass  # drop() has requeued its calls

    def _requeue_from(self, uri: str) -> None:
        with self._cond:
            lost = [call for peer, call in self._away.values() if peer == uri]
            for call in lost:
                del self._away[call.id]
                self._queue.appendleft(call)
            if lost:
                log.warning("%d spawned call(s) held by %s are queued again", len(lost), uri)
                self._ensure_worker()
                self._cond.notify_all()
        if lost:
            self._hint_peers()


class EngineHandle:
    """What code running on an engine uses to reach its engine and its peers (see the module text)."""

    def __init__(self, social: Social) -> None:
        self._social = social

    @property
    def uri(self) -> str:
        """This engine's URI."""
        return self._social.engine.uri

    @property
    def name(self) -> str:
        """This engine's name."""
        return self._social.engine.name

    @property
    def executed(self) -> int:
        """How many spawned calls this engine has run."""
        return self._social.executed

    def peers(self, alive: bool = False) -> List[Peer]:
        """The peers; with C{alive=True}, only those that answer a ping now (the others leave)."""
        if alive:
            for peer in self._social.peers():
                try:
                    self._social.call_peer(peer, "ping")
                except PeerUnavailable:
                    pass
        return self._social.peers()

    def send(self, peer: Any, tag: Any, value: Any) -> None:
        """Send C{value} tagged C{tag} to one peer (a L{Peer} or its URI); waits while its mailbox is full."""
        self._social.call_peer(peer, "peer_deliver", self.uri, tag, value)

    def broadcast(self, tag: Any, value: Any) -> List[str]:
        """Send to every peer; returns the URIs it reached (the others have left the list)."""
        reached = []
        for peer in self._social.peers():
            try:
                self.send(peer, tag, value)
                reached.append(peer.uri)
            except PeerUnavailable as exc:
                log.warning("broadcast: %s", exc)
        return reached

    def receive(self, tag: Any, timeout: Optional[float] = None) -> Tuple[str, Any]:
        """The oldest message tagged C{tag}: (sender URI, value). Blocks up to C{timeout} (TimeoutError)."""
        with self._social.engine.lock.released_if_mine():
            return self._social.mailbox.get(tag, timeout)

    def put(self, key: Any, value: Any) -> None:
        """Publish C{value} under C{key} in the group's tuple space."""
        self._on_owner(key, "peer_space_put", key, value)

    def read(self, key: Any, timeout: Optional[float] = None) -> Any:
        """The value under C{key}, waiting up to C{timeout} for it to appear (TimeoutError)."""
        return self._on_owner(key, "peer_space_read", key, timeout, False)

    def take(self, key: Any, timeout: Optional[float] = None) -> Any:
        """Remove and return the value under C{key}, waiting up to C{timeout} for it."""
        return self._on_owner(key, "peer_space_read", key, timeout, True)

    def read_match(self, pattern: str, timeout: Optional[float] = None) -> Tuple[str, Any]:
        """(key, value) of an entry whose str key matches the glob C{pattern}."""
        return self._match(pattern, timeout, remove=False)

    def take_match(self, pattern: str, timeout: Optional[float] = None) -> Tuple[str, Any]:
        """Remove and return (key, value) of an entry whose key matches C{pattern} (each is taken once)."""
        return self._match(pattern, timeout, remove=True)

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Run C{fn(*args, **kwargs)} here or on an idle peer; returns a Future (see the module text)."""
        return self._social.spawn(fn, args, kwargs)

    # -- the tuple space across members --------------------------------------------------------

    def _on_owner(self, key: Any, method: str, *args: Any) -> Any:
        owner = owner_of(key, self._social.members())
        with self._social.engine.lock.released_if_mine():
            if owner == self.uri:
                return getattr(self._social.engine, method).__wrapped__(self._social.engine, *args)
            return self._social.call_peer(owner, method, *args)

    def _match(self, pattern: str, timeout: Optional[float], remove: bool) -> Tuple[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._social.engine.lock.released_if_mine():
            while True:
                members = self._social.members()
                random.shuffle(members)
                for member in members:
                    key = self._member_call(member, "peer_space_match", pattern, 0)
                    if key is None:
                        continue
                    found, value = self._member_call(member, "peer_space_fetch", key, remove)
                    if found:
                        return key, value
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no entry matching %r within %s s" % (pattern, timeout))
                self._wait_any(pattern, members, left)

    def _member_call(self, member: str, method: str, *args: Any) -> Any:
        if member == self.uri:
            return getattr(self._social.engine, method).__wrapped__(self._social.engine, *args)
        try:
            return self._social.call_peer(member, method, *args)
        except PeerUnavailable:
            return None if method == "peer_space_match" else (False, None)

    def _wait_any(self, pattern: str, members: List[str], left: Optional[float]) -> None:
        """Block until some member has a matching entry (or C{left} seconds pass), without polling."""
        arrived = threading.Event()
        wait = min(left, 30.0) if left is not None else 30.0

        def watch(member: str) -> None:
            if self._member_call(member, "peer_space_match", pattern, wait) is not None:
                arrived.set()

        for member in members:
            threading.Thread(target=watch, args=(member,), daemon=True).start()
        arrived.wait(wait)
