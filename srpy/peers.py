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
a receiver's mailbox holds at most L{MAILBOX_CAPACITY<srpy.mailbox.MAILBOX_CAPACITY>} messages,
and a sender to a full mailbox waits (back-pressure) up to
L{SEND_TIMEOUT<srpy.mailbox.SEND_TIMEOUT>} seconds, then fails loudly. A send to a dead peer
fails loudly (L{PeerUnavailable}) and the peer leaves the list.

B{Tuple space}: each key lives on one engine, chosen by rendezvous hashing over the group's
members, so a member that dies takes only its own entries with it: I{entries held by an engine that
dies are lost} (put them again, or keep a copy elsewhere, if they matter).

B{Work sharing}: C{spawn} queues the call on this engine and tells the peers; an idle peer takes
(steals) the oldest queued calls, runs them, and sends the outcome back. While a task waits for a
spawned result it releases its engine's lock, so the engine meanwhile runs other queued work (a
task blocked in C{result()} is like an C{await}). The engine that spawned a call watches the peer
running it: if that peer dies, the call is queued again and runs elsewhere.

Where each part lives: this module is what code on an engine uses (L{this_engine}, L{spawn},
L{EngineHandle}, L{Peer}); the peers themselves in L{srpy.group}, messages in L{srpy.mailbox}, the
tuple space in L{srpy.tuplespace}, spawned work, stealing and hints in L{srpy.stealing}, and the
Pyro object that other engines call in L{srpy.peerservice}.
"""

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from .errors import NotInEngine, PeerUnavailable
from .group import Peer, PeerGroup

if TYPE_CHECKING:  # the parts of a handle are built with it (srpy.peerservice), on the first use of the peer side
    import concurrent.futures

    from .mailbox import Mailbox
    from .stealing import WorkSharing
    from .tuplespace import TupleSpace

log = logging.getLogger("srpy.peers")

__all__ = ["this_engine", "spawn", "EngineHandle", "Peer"]

_handle: Optional["EngineHandle"] = None  # the handle of this process's engine, when this process is one
_make_handle: Optional[Callable[[], "EngineHandle"]] = None  # builds it on first use (see attach)
_making = threading.Lock()


def attach(make_handle: Callable[[], "EngineHandle"]) -> None:
    """
    Make the handle C{make_handle()} returns the one L{this_engine} returns
    (L{srpy.peerservice.register} does this). It is called once, on the first L{this_engine}:
    an engine whose code never reaches its peers never builds its mailbox, tuple space or work
    sharing, and starts serving without loading them.
    """
    global _handle, _make_handle
    with _making:
        _handle, _make_handle = None, make_handle


def this_engine() -> "EngineHandle":
    """The handle of the engine this code runs in."""
    global _handle
    handle = _handle
    if handle is None:
        with _making:
            if _handle is None and _make_handle is not None:
                _handle = _make_handle()
            handle = _handle
    if handle is None:
        raise NotInEngine("this_engine() works only in code running on an srpy engine")
    return handle


def spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "concurrent.futures.Future":
    """Run C{fn(*args, **kwargs)} on this engine or an idle peer; returns a Future."""
    return this_engine().spawn(fn, *args, **kwargs)


class EngineHandle:
    """What code running on an engine uses to reach its engine and its peers (see the module text)."""

    def __init__(self, engine: Any, group: PeerGroup, mailbox: "Mailbox", space: "TupleSpace",
                 work: "WorkSharing") -> None:
        self._engine = engine
        self._group = group
        self._mailbox = mailbox
        self._space = space
        self._work = work

    @property
    def uri(self) -> str:
        """This engine's URI."""
        return self._engine.uri

    @property
    def name(self) -> str:
        """This engine's name."""
        return self._engine.name

    @property
    def executed(self) -> int:
        """How many spawned calls this engine has run."""
        return self._work.executed

    def peers(self, alive: bool = False) -> List[Peer]:
        """The peers; with C{alive=True}, only those that answer a ping now (the others leave)."""
        if alive:
            for peer in self._group.peers():
                try:
                    self._group.call_peer(peer, "ping")
                except PeerUnavailable:
                    pass
        return self._group.peers()

    def send(self, peer: Any, tag: Any, value: Any) -> None:
        """Send C{value} tagged C{tag} to one peer (a L{Peer} or its URI); waits while its mailbox is full."""
        self._group.call_peer(peer, "peer_deliver", self.uri, tag, value)

    def broadcast(self, tag: Any, value: Any) -> List[str]:
        """Send to every peer; returns the URIs it reached (the others have left the list)."""
        reached = []
        for peer in self._group.peers():
            try:
                self.send(peer, tag, value)
                reached.append(peer.uri)
            except PeerUnavailable as exc:
                log.warning("broadcast: %s", exc)
        return reached

    def receive(self, tag: Any, timeout: Optional[float] = None) -> Tuple[str, Any]:
        """The oldest message tagged C{tag}: (sender URI, value). Blocks up to C{timeout} (TimeoutError)."""
        with self._engine.lock.released_if_mine():
            return self._mailbox.get(tag, timeout)

    def put(self, key: Any, value: Any) -> None:
        """Publish C{value} under C{key} in the group's tuple space."""
        self._space.put(key, value)

    def read(self, key: Any, timeout: Optional[float] = None) -> Any:
        """The value under C{key}, waiting up to C{timeout} for it to appear (TimeoutError)."""
        return self._space.read(key, timeout, remove=False)

    def take(self, key: Any, timeout: Optional[float] = None) -> Any:
        """Remove and return the value under C{key}, waiting up to C{timeout} for it."""
        return self._space.read(key, timeout, remove=True)

    def read_match(self, pattern: str, timeout: Optional[float] = None) -> Tuple[str, Any]:
        """(key, value) of an entry whose str key matches the glob C{pattern}."""
        return self._space.match(pattern, timeout, remove=False)

    def take_match(self, pattern: str, timeout: Optional[float] = None) -> Tuple[str, Any]:
        """Remove and return (key, value) of an entry whose key matches C{pattern} (each is taken once)."""
        return self._space.match(pattern, timeout, remove=True)

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "concurrent.futures.Future":
        """Run C{fn(*args, **kwargs)} here or on an idle peer; returns a Future (see the module text)."""
        return self._work.spawn(fn, args, kwargs)
