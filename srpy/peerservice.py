"""
The peer object: what an engine serves to the other engines of its group.

An engine process serves two Pyro objects in one daemon: the engine (L{srpy.engine.Engine}, object
id C{srpy.engine}), which clients call, and beside it the L{PeerService} (object id C{srpy.peer},
URI L{srpy.group.peer_uri}), which only other engines call: messages, tuple-space entries, and
spawned work. None of its methods takes the engine's lock, so they reach a busy engine.

Its wire names keep the C{peer_} prefix they had on the engine object (C{peer_deliver},
C{peer_space_read}, ...), beside C{whoami} and C{ping}: a client tells from the name alone that
no time limit of the engine applies to the call. L{register} puts both objects in the daemon, and
builds the engine's side of the group (peers, mailbox, tuple space, work sharing), whose
handle is what L{srpy.this_engine} returns.
"""

import logging
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from . import peers
from .calls import engine_call
from .engine import OBJECT_ID
from .group import PEER_OBJECT_ID, PeerGroup

if TYPE_CHECKING:  # built on the peer side's first use (PeerParts): an engine starts serving without them
    from .mailbox import Mailbox
    from .stealing import WorkSharing
    from .tuplespace import Space

log = logging.getLogger("srpy.peers")

__all__ = ["PeerService", "register", "PEER_OBJECT_ID"]


class PeerParts:
    """
    The engine's side of its group beyond the peer list: its mailbox, its share of the tuple
    space, its work sharing and the handle L{srpy.this_engine} returns. Built (and their modules
    loaded: concurrent.futures, the stealing machinery) on the first use, from any thread: a
    message, an entry, spawned work or C{this_engine()}. Until then an engine has no queued work,
    no messages and no entries to account for.
    """

    def __init__(self, engine: Any, group: PeerGroup) -> None:
        self._engine = engine
        self._group = group
        self._lock = threading.Lock()
        self._built: Optional[Tuple["Mailbox", "Space", "WorkSharing", peers.EngineHandle]] = None

    def _parts(self) -> Tuple["Mailbox", "Space", "WorkSharing", peers.EngineHandle]:
        built = self._built
        if built is None:
            with self._lock:
                if self._built is None:
                    from .mailbox import Mailbox
                    from .stealing import WorkSharing
                    from .tuplespace import Space, TupleSpace

                    mailbox, share = Mailbox(), Space()
                    work = WorkSharing(self._engine, self._group)
                    handle = peers.EngineHandle(self._engine, self._group, mailbox,
                                                TupleSpace(self._engine, self._group, share), work)
                    self._built = (mailbox, share, work, handle)
                built = self._built
        return built

    @property
    def mailbox(self) -> "Mailbox":
        return self._parts()[0]

    @property
    def share(self) -> "Space":
        return self._parts()[1]

    @property
    def work(self) -> "WorkSharing":
        return self._parts()[2]

    def handle(self) -> peers.EngineHandle:
        return self._parts()[3]


class PeerService:
    """
    The object an engine serves to its peers (object id L{PEER_OBJECT_ID}). Messages and work
    requests are taken from peers only (C{PermissionError} for anything else).
    """

    def __init__(self, engine: Any, group: PeerGroup, parts: PeerParts) -> None:
        self._engine = engine
        self._group = group
        self._parts = parts

    @property
    def debug(self) -> bool:
        return bool(self._engine.debug)

    @property
    def timing(self) -> bool:
        return bool(self._engine.timing)

    @engine_call(locked=False)
    def whoami(self) -> Dict[str, Any]:
        """The engine's description (as its own C{whoami}): what a peer knows this engine by."""
        return self._engine.describe()

    @engine_call(locked=False)
    def ping(self) -> str:
        """'pong'."""
        return "pong"

    @engine_call(locked=False)
    def peer_list(self) -> List[str]:
        """The URIs of this engine's peers."""
        return [peer.uri for peer in self._group.peers()]

    @engine_call(locked=False)
    def peer_deliver(self, sender: str, tag: Any, value: Any) -> None:
        """A message from peer C{sender}; waits while the mailbox is full (back-pressure)."""
        if not self._group.is_peer(sender):
            raise PermissionError("%s is not a peer of this engine: message refused" % sender)
        self._parts.mailbox.put(sender, tag, value)

    @engine_call(locked=False)
    def peer_hint(self, sender: str) -> bool:
        """Peer C{sender} has queued work to take; True if this engine is busy (or now taking some)."""
        return self._parts.work.hint(sender)

    @engine_call(locked=False)
    def peer_steal(self, thief: str, count: int) -> List[Any]:
        """Hand up to C{count} queued spawned calls to peer C{thief}."""
        return self._parts.work.steal(thief, int(count))

    @engine_call(locked=False)
    def peer_complete(self, call_id: str, outcome: Any) -> None:
        """The outcome of a call this engine spawned and a peer ran."""
        self._parts.work.complete(call_id, outcome)

    @engine_call(locked=False)
    def peer_space_put(self, key: Any, value: Any) -> None:
        """Hold C{value} under C{key} (this engine's share of the tuple space)."""
        self._parts.share.put(key, value)

    @engine_call(locked=False)
    def peer_space_read(self, key: Any, timeout: Optional[float], remove: bool) -> Any:
        """The value under C{key}, waiting up to C{timeout}; removed if C{remove}."""
        return self._parts.share.read(key, timeout, bool(remove))

    @engine_call(locked=False)
    def peer_space_match(self, pattern: str, timeout: Optional[float]) -> Optional[str]:
        """A key of this share matching the glob C{pattern}, waiting up to C{timeout}; None if none."""
        return self._parts.share.match(str(pattern), timeout)

    @engine_call(locked=False)
    def peer_space_fetch(self, key: Any, remove: bool) -> Tuple[bool, Any]:
        """(True, value) for C{key} if held here (removed if C{remove}), else (False, None); no waiting."""
        return self._parts.share.fetch(key, bool(remove))

    @engine_call(locked=False)
    def peer_define(self, sender: str, bundle: Any) -> Optional[str]:
        """
        Build the bundle of a record class's module (or of a client's C{__main__} class) that peer
        C{sender} gives with a value (L{srpy.peerrecords}); None once built, else what failed.
        """
        if not self._group.is_peer(sender):
            raise PermissionError("%s is not a peer of this engine: bundle refused" % sender)
        from . import peerrecords

        return peerrecords.build(bundle, self._engine._write_files)

    @engine_call(locked=False)
    def peer_record_bundle(self, asker: str, reference: str) -> Dict[str, Any]:
        """The bundle of the record class C{reference} (C{'module:qualname'}) that peer C{asker} received from here."""
        if not self._group.is_peer(asker):
            raise PermissionError("%s is not a peer of this engine: request refused" % asker)
        if type(reference) is not str or reference.count(":") != 1:
            raise ValueError("a record class is named as 'module:qualname', not %r" % (reference,))
        from . import peerrecords

        return peerrecords.bundle_for(reference)

    @engine_call(locked=False)
    def peer_stats(self) -> Dict[str, Any]:
        """
        Spawned calls run here and queued here, messages waiting, entries held, peers, rounds of
        hints sent and the most peers one of them reached.
        """
        parts = self._parts
        return {"executed": parts.work.executed, "queued": parts.work.queued(), "mailbox": len(parts.mailbox),
                "entries": len(parts.share), "peers": [p.uri for p in self._group.peers()],
                "hint_rounds": parts.work.hint_rounds, "widest_hint_round": parts.work.widest_round}


def register(daemon: Any, engine: Any) -> str:
    """
    Serve C{engine} (an L{srpy.engine.Engine}) and its peer object in C{daemon}, and make its
    handle the one L{srpy.this_engine} returns in this process; returns the engine's URI.
    """
    group = PeerGroup(engine)
    parts = PeerParts(engine, group)
    peers.attach(parts.handle)
    engine.serve_peers(group.set_peers)
    daemon.register(PeerService(engine, group, parts), PEER_OBJECT_ID)
    return str(daemon.register(engine, OBJECT_ID))
