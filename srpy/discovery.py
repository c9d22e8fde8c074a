"""
Finding engines through a Pyro5 name server.

An engine started with C{srpyapp --ns} registers as C{srpy.engine.<group>.<name>} with metadata
strings that Pyro5's C{yplookup} can filter on: C{srpy}, C{srpy:group=...}, C{srpy:name=...},
C{srpy:host=...}, C{srpy:cores=...}, C{srpy:python=...}, C{srpy:version=...}. So Pyro5's own
tools show them (C{python -m Pyro5.nsc list}, C{python -m Pyro5.nsc yplookup_all srpy}).
The name server itself is found the Pyro5 way: at a given host and port, else on this machine,
else by UDP broadcast on the local network.

Busy is not dead: an entry is removed as stale only when nothing accepts connections at its
address any more (an engine inside a long C call accepts, even if it cannot answer yet); and a
registered engine puts its entry back whenever it finds it gone (L{REREGISTER_EVERY}).

With TLS: L{start_name_server} serves TLS when given the engines' certificate; a process that
serves TLS itself (an engine started with C{--tls-cert}) reaches the name server over TLS with
the trust its engine uses for its peers; any other caller passes C{ssl_context} (the one it
gives L{srpy.EngBox}).
"""

import contextlib
import logging
import socket
import ssl
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from Pyro5 import config as pyro_config
from Pyro5 import core as pyro_core
from Pyro5 import errors as pyro_errors
from Pyro5.api import Proxy, locate_ns
from Pyro5.nameserver import start_ns

from . import listener, security, wire
from .errors import SRPyError

log = logging.getLogger("srpy.discovery")

PREFIX = "srpy.engine."
TAG = "srpy"
#: seconds between a registered engine's checks that its entry is still there
REREGISTER_EVERY = 5.0
#: seconds a stale entry's address gets to accept a connection before the entry is removed
PROBE_TIMEOUT = 2.0


class NameServerNotFound(SRPyError):
    """No Pyro5 name server could be found."""


def entry_name(group: str, name: str) -> str:
    """
    The name server name of an engine.

    >>> entry_name("", "engine-1@host")
    'srpy.engine.default.engine-1@host'
    """
    return PREFIX + (group or "default") + "." + name


def metadata(info: Dict[str, Any]) -> Set[str]:
    """The metadata strings registered for an engine, from its whoami() description."""
    return {TAG, "srpy:group=%s" % info.get("Group", ""), "srpy:name=%s" % info.get("Name", ""),
            "srpy:host=%s" % info.get("Hostname", ""), "srpy:cores=%s" % info.get("Cores", ""),
            "srpy:python=%s" % info.get("Python Version", ""), "srpy:version=%s" % info.get("srpy Version", "")}


@contextlib.contextmanager
def name_server(host: Optional[str] = None, port: Optional[int] = None,
                ssl_context: Optional[ssl.SSLContext] = None) -> Iterator[Proxy]:
    """
    A proxy for the name server (given address, this machine, or broadcast), over TLS with
    C{ssl_context}, or with this process's own TLS settings when it serves TLS (see the module
    text); closed when the block ends.

    @raise NameServerNotFound: none answers.
    """
    context = ssl_context if ssl_context is not None else _own_tls()
    try:
        if context is None:
            proxy = locate_ns(host or "", port)
            proxy._pyroBind()
            conn = None
        else:
            # Pyro5's proxies take their TLS from process-wide settings: the handshake is done here,
            # with this context, and the proxy is given the connection that passed it
            uri = "PYRO:%s@%s:%d" % (pyro_core.NAMESERVER_NAME, host or "127.0.0.1", port or pyro_config.NS_PORT)
            conn = wire.Connection(uri, ssl_context=context, connect_timeout=10.0)
            proxy = Proxy(pyro_core.NAMESERVER_NAME, connected_socket=conn.transport.sock)
    except (pyro_errors.PyroError, SRPyError, OSError) as exc:  # OSError: a broadcast with no route for it
        where = "%s:%s" % (host, port) if host else "on this machine or by broadcast"
        reason = _refusal(host, port) if host and context is None else None
        raise NameServerNotFound("no Pyro5 name server found %s: %s" % (where, reason or exc)) from None
    try:
        yield proxy
    finally:
        proxy._pyroRelease()
        if conn is not None:
            conn.close()


def register(uri: str, info: Dict[str, Any], host: Optional[str] = None, port: Optional[int] = None) -> str:
    """
    Register an engine, and keep it registered: it puts its entry back whenever the entry is
    gone (removed as stale while the engine was busy, say), until L{unregister}. Returns its
    entry name.
    """
    name = entry_name(info.get("Group", ""), info.get("Name", ""))
    tags = metadata(info)
    with name_server(host, port) as ns:
        ns.register(name, uri, metadata=tags)
    log.info("registered %s in the name server as %s", uri, name)
    _Keeper.keep(name, uri, tags, host, port)
    return name


def unregister(name: str, host: Optional[str] = None, port: Optional[int] = None) -> None:
    """Remove an engine's entry (quietly, if the name server is gone), and stop keeping it."""
    _Keeper.release(name)
    try:
        with name_server(host, port) as ns:
            ns.remove(name)
    except (SRPyError, pyro_errors.PyroError, OSError) as exc:
        log.debug("could not unregister %s: %s", name, exc)


def find(group: Optional[str] = None, host: Optional[str] = None, port: Optional[int] = None,
         ssl_context: Optional[ssl.SSLContext] = None) -> List[Tuple[str, str, Set[str]]]:
    """Every registered engine (of C{group}, if given): C{[(name, uri, metadata)]}."""
    wanted = {TAG} if group is None else {TAG, "srpy:group=%s" % group}
    with name_server(host, port, ssl_context) as ns:
        found = ns.yplookup(meta_all=wanted, return_metadata=True)
    return [(name, str(uri), set(meta)) for name, (uri, meta) in sorted(found.items())]


def remove_entries(names: List[str], host: Optional[str] = None, port: Optional[int] = None,
                   ssl_context: Optional[ssl.SSLContext] = None) -> List[str]:
    """
    Remove the entries of engines that did not answer, except where something still accepts
    connections at the entry's address: an engine busy in a long C call cannot answer, but it
    is not gone. Returns the names removed.
    """
    if not names:
        return []
    removed = []
    with name_server(host, port, ssl_context) as ns:
        for name in names:
            try:
                uri = str(ns.lookup(name))
            except pyro_errors.NamingError:
                continue
            if _accepts_connections(uri):
                log.info("kept %s: its engine at %s accepts connections, but did not answer in time (busy?)",
                         name, uri)
                continue
            ns.remove(name)
            removed.append(name)
    return removed


def _refusal(host: str, port: Optional[int]) -> Optional[str]:
    """Why a name server at host:port refused a plain client, if it said (one that serves TLS does)."""
    try:
        wire.Connection("PYRO:%s@%s:%d" % (pyro_core.NAMESERVER_NAME, host, port or pyro_config.NS_PORT),
                        connect_timeout=PROBE_TIMEOUT).close()
    except SRPyError as exc:
        return str(exc) if "TLS" in str(exc) else None
    return None


def _accepts_connections(uri: str) -> bool:
    try:
        _, host, port = wire.parse_uri(uri)
        with socket.create_connection((host, port), PROBE_TIMEOUT):
            return True
    except (OSError, ValueError):
        return False


def start_name_server(host: str = "127.0.0.1", port: int = 9090,
                      tls: Optional[Dict[str, Any]] = None) -> Tuple[str, Callable[[], None]]:
    """
    Serve a Pyro5 name server from a thread of this process; returns (uri, stop). It accepts
    clients as engines do (L{srpy.listener}: no handshake can hold it). With C{tls} (the
    launcher's TLS options: C{cert}, C{key}, C{ca}, C{require_client_cert}) it serves TLS, with
    the engines' certificate.
    """
    context = _server_tls(**tls) if tls else None
    try:
        with listener.serving_daemons(tls=context):
            uri, daemon, broadcast = start_ns(host=host, port=port)
    except OSError as exc:
        raise SRPyError("cannot start a name server on %s:%s: %s" % (host, port, exc.strerror or exc)) from None
    if broadcast is not None:  # its own thread: it does not share the listener's loop
        broadcast.runInThread()
    stopping = threading.Event()
    thread = threading.Thread(target=daemon.requestLoop, args=(lambda: not stopping.is_set(),),
                              name="srpy-nameserver", daemon=True)
    thread.start()
    log.info("name server running at %s%s", uri, " (TLS)" if context else "")

    def stop() -> None:
        stopping.set()
        daemon.shutdown()
        thread.join(5)
        if broadcast is not None:
            broadcast.close()
        daemon.close()

    return str(uri), stop


def _server_tls(cert: str, key: str, ca: Optional[str] = None, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca:
        context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return context


def _own_tls() -> Optional[ssl.SSLContext]:
    """
    In a process that serves TLS through Pyro5's settings (an engine given C{--tls-cert}): the
    client context its engine uses for its peers (trusting the CA given, else the engine's own
    certificate; presenting that certificate when clients must have one). None otherwise.
    """
    if not (pyro_config.SSL and pyro_config.SSL_SERVERCERT):
        return None
    cert, key = pyro_config.SSL_SERVERCERT, pyro_config.SSL_SERVERKEY or None
    mutual = bool(pyro_config.SSL_REQUIRECLIENTCERT)
    return security.client_tls(ca=pyro_config.SSL_CACERTS or cert, cert=cert if mutual else None,
                               key=key if mutual else None)


class _Keeper(threading.Thread):
    """Puts one engine's entry back whenever it is gone, every L{REREGISTER_EVERY} seconds."""

    _running: Dict[str, "_Keeper"] = {}
    _lock = threading.Lock()

    def __init__(self, name: str, uri: str, tags: Set[str], host: Optional[str], port: Optional[int]) -> None:
        super().__init__(name="srpy-ns-keeper", daemon=True)
        self.entry, self.uri, self.tags, self.host, self.port = name, uri, tags, host, port
        self.stopping = threading.Event()

    @classmethod
    def keep(cls, name: str, uri: str, tags: Set[str], host: Optional[str], port: Optional[int]) -> None:
        with cls._lock:
            old = cls._running.pop(name, None)
            if old is not None:
                old.stopping.set()
            keeper = cls._running[name] = cls(name, uri, tags, host, port)
        keeper.start()

    @classmethod
    def release(cls, name: str) -> None:
        with cls._lock:
            keeper = cls._running.pop(name, None)
        if keeper is not None:
            keeper.stopping.set()

    def run(self) -> None:
        while not self.stopping.wait(REREGISTER_EVERY):
            try:
                with name_server(self.host, self.port) as ns:
                    try:
                        ns.lookup(self.entry)
                        continue
                    except pyro_errors.NamingError:
                        pass
                    if self.stopping.is_set():
                        return
                    ns.register(self.entry, self.uri, metadata=self.tags)
                log.info("registered %s again as %s (its entry was gone)", self.uri, self.entry)
            except (SRPyError, pyro_errors.PyroError, OSError) as exc:  # no name server now: try again later
                log.debug("could not check the entry %s: %s", self.entry, exc)
