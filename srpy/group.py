"""
An engine's peers: who they are, and how this engine calls them.

The client introduces engines to each other (C{box.connectPeers()}, the engine's C{set_peers});
L{PeerGroup} keeps those of this engine's group that pass its secret handshake, each as a L{Peer}
with a client of its peer object (C{PYRO:srpy.peer@host:port}, see L{srpy.peerservice}). A peer
whose call fails for want of a connection leaves the group at once, and whoever listens
(L{PeerGroup.on_leave}: the work sharing, which queues again what that peer held) hears of it.
"""

import logging
import threading
from typing import Any, Callable, Dict, List, Optional

from . import wire
from .errors import CommunicationError, PeerUnavailable, RecordModuleNotImported, SRPyError, SRPyServerNotFound
from .fanout import fan_out

log = logging.getLogger("srpy.peers")

#: the Pyro5 object id of an engine's peer object, beside the engine's own (C{srpy.engine})
PEER_OBJECT_ID = "srpy.peer"
#: seconds to connect to a peer (and pass its handshake) when it is introduced
CONNECT_TIMEOUT = 5.0
#: peers connected to at once when many are introduced
CONNECT_AT_ONCE = 16
#: idle connections a link keeps to one peer (more are opened while calls overlap, and closed after)
PEER_IDLE_CONNECTIONS = 2


def peer_uri(engine_uri: str) -> str:
    """
    The URI of the peer object served beside the engine at C{engine_uri}.

    >>> peer_uri("PYRO:srpy.engine@127.0.0.1:4000")
    'PYRO:srpy.peer@127.0.0.1:4000'
    """
    wire.parse_uri(engine_uri)  # ValueError if it is no direct URI
    return "PYRO:%s@%s" % (PEER_OBJECT_ID, str(engine_uri).strip().partition("@")[2])


class PeerLink:
    """
    This engine's connections to one peer object: srpy's serializer over a L{wire.Pool}, as the
    client's, without the client (an engine calls its peers' peer objects, never their engines).
    Records' classes travel with the calls and replies (L{srpy.peerrecords}).

    @ivar info: the peer engine's description (its C{whoami}).
    """

    def __init__(self, uri: str, secret: Optional[str], ssl_context: Any, sender: str = "",
                 install: Optional[Callable[[Dict[str, str]], Any]] = None) -> None:
        from .peerrecords import RecordTraffic

        self.uri = uri
        self.records = RecordTraffic(self, sender, install)
        self.pool = wire.Pool(uri, secret, self.records.format, ssl_context, CONNECT_TIMEOUT, owner="peer link")
        # an engine has a link to every peer: a client's idle pool (8) per link would let a burst of
        # concurrent calls leave 8 sockets per peer behind, 8,000 at 1,000 engines (past a 1,024 ulimit)
        self.pool.size = PEER_IDLE_CONNECTIONS
        try:
            self.info: Dict[str, Any] = self.call("whoami")
        except BaseException:
            self.pool.close()
            raise

    def call(self, method: str, *args: Any) -> Any:
        """C{method(*args)} on the peer object (large buffers travel raw beside the messages, both ways)."""
        with self.pool.connection() as conn:
            try:
                return conn.call(method, args)[0]
            except RecordModuleNotImported as exc:
                # the peer refused the call unread for want of a class this link had given it
                # (it restarted since): give the classes again, and make the call once more
                if not getattr(exc, "refused_call", False) or not self.records.forget():
                    raise
                return conn.call(method, args)[0]

    def close(self) -> None:
        self.pool.close()


class Peer:
    """
    Another engine of the group, as seen from this one.

    @ivar uri: its engine's URI (what the client and the other engines know it by).
    @ivar info: its engine's description (as C{PythonEngine.info}: name, group, host, cores...).
    """

    def __init__(self, uri: str, client: Any) -> None:
        self.uri = uri
        self.client = client
        self.info = client.info
        self.name = self.info.get("Name", "")
        self.group = self.info.get("Group", "")
        self.hostname = self.info.get("Hostname", "")

    def __repr__(self) -> str:
        return "<Peer %s at %s>" % (self.name, self.uri)


class PeerGroup:
    """One engine's peers (all reads and changes under one lock), and the calls to them."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._peers: Dict[str, Peer] = {}
        self._lock = threading.Lock()
        self._leave_listeners: List[Callable[[str], None]] = []

    def on_leave(self, listener: Callable[[str], None]) -> None:
        """Call C{listener(uri)} whenever a peer leaves because it stopped answering."""
        self._leave_listeners.append(listener)

    def set_peers(self, uris: List[str]) -> List[str]:
        """
        Make the engines at C{uris} the peers (replacing the previous ones): those of this engine's
        group that pass the secret handshake are kept; returns their URIs.
        """
        with self._lock:
            leaving = [self._peers.pop(uri) for uri in list(self._peers) if uri not in uris]
        for peer in leaving:
            peer.client.close()
        candidates = list(dict.fromkeys(uri for uri in uris if uri != self.engine.uri))
        accepted = []
        for uri, client in zip(candidates, fan_out(self._connect, candidates, CONNECT_AT_ONCE, name="srpy-peer-connect")):
            if isinstance(client, Exception):
                log.warning("not a peer: %s (%s)", uri, client)
                continue
            with self._lock:
                old = self._peers.get(uri)
                self._peers[uri] = Peer(uri, client)
            if old is not None:
                old.client.close()
            accepted.append(uri)
        return accepted

    def _connect(self, uri: str) -> Any:
        """A link to the peer object beside C{uri}, if that engine is of this group (else an error)."""
        try:
            client = PeerLink(peer_uri(uri), self.engine.secret, self.engine.peer_ssl_context, self.engine.uri,
                              self.engine._write_files)
        except ValueError as exc:  # not a URI at all
            raise SRPyServerNotFound(uri, str(exc)) from None
        if client.info.get("Group", "") != self.engine.group:
            client.close()
            raise SRPyError("%s is in group %r, this engine in %r" % (uri, client.info.get("Group"), self.engine.group))
        return client

    def peers(self) -> List[Peer]:
        """The peers now."""
        with self._lock:
            return list(self._peers.values())

    def has_peers(self) -> bool:
        with self._lock:
            return bool(self._peers)

    def peer(self, target: Any) -> Peer:
        """The peer C{target} (a L{Peer} or its URI); L{PeerUnavailable} if it is none (any more)."""
        uri = target.uri if isinstance(target, Peer) else str(target)
        with self._lock:
            found = self._peers.get(uri)
        if found is None:
            raise PeerUnavailable("%s is not a peer of this engine (any more)" % uri)
        return found

    def is_peer(self, uri: str) -> bool:
        with self._lock:
            return uri in self._peers

    def members(self) -> List[str]:
        """The URIs of this engine and its peers, sorted: every member sees the same list."""
        with self._lock:
            return sorted([self.engine.uri] + list(self._peers))

    def drop(self, uri: str, reason: Any) -> None:
        """C{uri} stopped answering: it leaves the group, and the listeners hear of it."""
        with self._lock:
            gone = self._peers.pop(uri, None)
        if gone is not None:
            log.warning("peer %s left: %s", uri, reason)
            gone.client.close()
            for listener in self._leave_listeners:
                listener(uri)

    def call_peer(self, target: Any, method: str, *args: Any) -> Any:
        """
        Call C{method(*args)} on the peer object of C{target}. A peer that cannot be reached
        leaves the group, and the call raises L{PeerUnavailable}.
        """
        peer = self.peer(target)
        try:
            return peer.client.call(method, *args)
        except (CommunicationError, SRPyServerNotFound) as exc:
            self.drop(peer.uri, exc)
            raise PeerUnavailable("peer %s did not answer %s(): %s" % (peer.uri, method, exc)) from None
