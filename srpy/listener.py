"""
The engine's front door: one thread accepts connections and runs every connect handshake at
once, without blocking (TLS included); a pool of workers serves the clients that passed. It is a
Pyro5 transport server (the interface of Pyro5's C{SocketServer_Threadpool}), so any Pyro5
daemon can use it (L{serving_daemons}); the engine's daemon and srpy's name server do.

::

    listening socket --accept (never waits)--> pending handshakes: non-blocking, each with one
        deadline (L{srpy.security.HANDSHAKE_TIMEOUT}) for all of it, TLS included; at most
        L{MAX_PENDING} in all and L{MAX_PENDING_PER_PEER} per peer address (a new one pushes
        out that address's oldest, or the busiest address's oldest)
          --passed--> worker pool (Pyro5's THREADPOOL_SIZE setting: that many threads at most):
              blocking reads, srpy's short path; after L{IDLE_RELEASE} seconds without a
              message the worker hands the connection back
          <--> parked connections: idle, watched by the listener thread, holding no worker

Why this shape: before, each connection held a worker from the moment it was accepted, and a
TLS handshake ran inside C{accept()} on the listening thread. One silent TCP connection stopped
a TLS engine from accepting anyone, and some 80 silent or trickling ones (the pool's size) locked
every client out before any had shown a secret. Now connections that have not passed the
handshake hold no thread at all, cost at most a few kilobytes each and live at most
L{srpy.security.HANDSHAKE_TIMEOUT} seconds; and idle clients that did pass hold no thread either,
so the workers are there for the calls.
"""

import collections
import contextlib
import errno
import logging
import select
import selectors
import socket
import ssl
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Set

from Pyro5 import config as pyro_config
from Pyro5 import errors as pyro_errors
from Pyro5 import socketutil

from . import _pyro5, security, wire
from .security import Handshake, note_bad_input, refusal

log = logging.getLogger("srpy.listener")

#: connections that have not (yet) passed the handshake, in all
MAX_PENDING = 256
#: ... and from any one peer address
MAX_PENDING_PER_PEER = 32
#: seconds a served connection may sit without a message before its worker hands it back (a call
#: after that wait costs about 0.2 ms more: the listener hands the connection to a worker again)
IDLE_RELEASE = 1.0
#: the listening socket's backlog (the system may cap it: net.core.somaxconn)
LISTEN_BACKLOG = 1024
#: connections accepted per turn of the listener's loop, so that handshakes under way keep moving
ACCEPT_BATCH = 64
#: seconds a refused client gets to read its refusal (its unread bytes are drained meanwhile)
LINGER = 2.0
#: what a plain-text Pyro5 client hears from an engine that serves TLS
TLS_ONLY = ("this server serves TLS: connect with TLS (srpy clients: "
            "ssl_context=srpy.security.client_tls(ca=...))")
_ACCEPT, _WAKE = object(), object()
_GONE = (OSError, pyro_errors.ConnectionClosedError, pyro_errors.SecurityError)


class _Pending:
    """A connection that has not passed the handshake yet (or was refused, and lingers)."""

    __slots__ = ("conn", "peer", "started", "deadline", "handshake", "buffer", "out", "stage", "events", "shut")

    def __init__(self, conn: Any, peer: str, tls: bool) -> None:
        self.conn = conn
        self.peer = peer
        self.started = time.monotonic()
        self.deadline = self.started + security.HANDSHAKE_TIMEOUT  # read now: a setting may change it
        self.handshake: Optional[Handshake] = None
        self.buffer = bytearray()
        self.out = b""
        self.stage = "peek" if tls else "pyro"  # peek -> tls -> pyro -> (served | linger)
        self.events = 0
        self.shut = False  # lingering: our side is shut for writing (the refusal is out)


class GuardedServer:
    """
    A Pyro5 transport server: the listener thread is the daemon's C{requestLoop}; see the module
    text. Safe to shut down from any thread.
    """

    #: a daemon served here runs srpy's handshake (L{srpy.security.Handshake}), not Pyro5's
    runs_srpy_handshake = True

    def __init__(self) -> None:
        self.daemon: Any = None
        self.sock: Optional[socket.socket] = None
        self.locationStr = ""
        self.shutting_down = False
        self._tls: Optional[ssl.SSLContext] = None
        self._selector = selectors.DefaultSelector()
        self._lock = threading.RLock()  # the loop's work on its state, against close() from elsewhere
        self._pending: Dict[int, _Pending] = {}
        self._by_peer: Dict[str, Deque[_Pending]] = collections.defaultdict(collections.deque)
        self._parked: Dict[int, Any] = {}
        self._returned: Deque[Any] = collections.deque()  # connections workers hand back, to park
        self._waker, self._wake_end = socket.socketpair()
        self._workers: Optional[_Workers] = None
        self._next_sweep = 0.0
        # TLS-port clients that sent part of "PYRO": looked at again by the sweep
        self._peek_later: Set[_Pending] = set()
        self._next_housekeeping = 0.0
        self._accept_paused_until = 0.0
        self._closed = False
        self._loop_thread: Optional[int] = None  # the thread in loop(), which then closes everything itself

    # -- Pyro5's transport server interface ---------------------------------------------------------

    def init(self, daemon: Any, host: Any, port: int, unixsocket: Optional[str] = None) -> None:
        """Bind and listen (plain TCP: a TLS handshake is each connection's own, off this thread)."""
        self.daemon = daemon
        if _tls_override is not None:
            self._tls = _tls_override
        elif pyro_config.SSL:
            self._tls = socketutil.get_ssl_context(servercert=pyro_config.SSL_SERVERCERT,
                                                   serverkey=pyro_config.SSL_SERVERKEY,
                                                   keypassword=pyro_config.SSL_SERVERKEYPASSWD,
                                                   cacerts=pyro_config.SSL_CACERTS)
        bind = unixsocket if unixsocket else (host, port)
        self.sock = socketutil.create_socket(bind=bind, reuseaddr=pyro_config.SOCK_REUSE, timeout=0,
                                             noinherit=True, nodelay=pyro_config.SOCK_NODELAY)
        with contextlib.suppress(OSError):
            self.sock.listen(LISTEN_BACKLOG)
        self.sock.setblocking(False)
        address = self.sock.getsockname()
        if unixsocket:
            self.locationStr = "./u:" + unixsocket
        else:
            host = host or address[0]
            port = port or address[1]
            self.locationStr = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        self._waker.setblocking(False)
        self._wake_end.setblocking(False)
        self._selector.register(self.sock, selectors.EVENT_READ, _ACCEPT)
        self._selector.register(self._waker, selectors.EVENT_READ, _WAKE)
        self._workers = _Workers(self._serve)
        log.debug("listening on %s%s", self.locationStr, " (TLS)" if self._tls else "")

    def loop(self, loopCondition: Callable[[], bool] = lambda: True) -> None:
        """Serve until L{shutdown} (or until C{loopCondition} turns false)."""
        self._loop_thread = threading.get_ident()
        try:
            while not self.shutting_down and loopCondition():
                if not self._turn(self._timeout()):
                    break
        finally:
            self._loop_thread = None
            if self.shutting_down:
                self.close()

    def events(self, eventsockets: Any) -> None:
        """One turn of the loop, for Pyro5's external event loops."""
        self._turn(0)

    def combine_loop(self, server: Any) -> None:
        raise TypeError("srpy's listener cannot combine loops with another server")

    @property
    def sockets(self) -> List[Any]:
        return [self.sock]

    @property
    def selector(self) -> Any:
        raise TypeError("srpy's listener has no multiplexing selector to share")

    def wakeup(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_end.send(b"!")

    def shutdown(self) -> None:
        """Stop the loop and close everything (from any thread, also before the loop started)."""
        self.shutting_down = True
        self.wakeup()
        self.close()

    def close(self) -> None:
        """
        Close the listening socket and every connection (idempotent). Called from another thread
        while L{loop} runs, it only wakes the loop, which closes everything as it ends: closing
        the selector under a thread that waits in it would not wake that thread (Linux's epoll),
        and it would sleep out its poll timeout (2 s) before returning.
        """
        self.shutting_down = True
        self.wakeup()
        looping = self._loop_thread
        if looping is not None and looping != threading.get_ident():
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for pending in list(self._pending.values()):
                self._forget(pending)
            for conn in list(self._parked.values()):
                self._disconnect(conn)
            self._parked.clear()
            while self._returned:
                self._disconnect(self._returned.popleft())
            with contextlib.suppress(Exception):
                self._selector.close()
            if self.sock is not None:
                address = None
                with contextlib.suppress(OSError):
                    address = self.sock.getsockname()
                self.sock.close()
                if isinstance(address, str):  # a Unix domain socket: remove it from the file system
                    with contextlib.suppress(OSError):
                        import os
                        os.remove(address)
            self._waker.close()
            self._wake_end.close()
        if self._workers is not None:
            self._workers.close()

    def __repr__(self) -> str:
        return "<%s on %s; %d pending, %d parked, %s>" % (type(self).__name__, self.locationStr,
                                                          len(self._pending), len(self._parked), self._workers)

    # -- the loop ------------------------------------------------------------------------------------

    def _timeout(self) -> float:
        timeout = pyro_config.POLLTIMEOUT or 2.0
        if self._pending or self._accept_paused_until:
            timeout = min(timeout, 0.25)  # deadlines and lingering refusals are checked at least this often
        return timeout

    def _turn(self, timeout: float) -> bool:
        """Wait for events up to C{timeout} seconds and handle them; False once closed."""
        try:
            events = self._selector.select(timeout)
        except (OSError, ValueError):  # closed from another thread
            return False
        with self._lock:
            if self._closed:
                return False
            for key, mask in events:
                what = key.data
                if what is _ACCEPT:
                    self._accept()
                elif what is _WAKE:
                    self._woken()
                elif isinstance(what, _Pending):
                    if self._pending.get(key.fd) is what:  # not one that ended earlier in this turn
                        self._advance(what)
                else:
                    self._unpark(key.fd, what)
            now = time.monotonic()
            if now >= self._next_sweep:
                self._sweep(now)
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + 5.0
                try:
                    _pyro5.housekeeping(self.daemon)
                except Exception as exc:  # a daemon's own housekeeping hook: logged, serving goes on
                    log.warning("housekeeping failed: %s", exc)
        return True

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                csock, caddr = self.sock.accept()  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors: free the oldest handshake, and pause accepting a moment
                    log.warning("cannot accept connections for now: %s", exc)
                    oldest = min(self._pending.values(), key=lambda p: p.started, default=None)
                    if oldest is not None:
                        self._forget(oldest)
                    self._pause_accepting()
                return  # ECONNABORTED and the like: that client is gone already
            self._admit(csock, caddr)

    def _pause_accepting(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            if self.sock is not None:
                self._selector.unregister(self.sock)
        self._accept_paused_until = time.monotonic() + 0.1

    def _admit(self, csock: socket.socket, caddr: Any) -> None:
        peer = caddr[0] if isinstance(caddr, tuple) else "local"
        queue = self._by_peer[peer]
        if len(queue) >= MAX_PENDING_PER_PEER:
            self._forget(queue[0])  # this address's oldest handshake makes room
        elif len(self._pending) >= MAX_PENDING:
            busiest = max(self._by_peer.values(), key=len)
            self._forget(busiest[0])
        csock.setblocking(False)
        if csock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                csock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if pyro_config.SOCK_NODELAY else 0)
        conn = _pyro5.connection(csock)
        pending = _Pending(conn, peer, self._tls is not None)
        if self._tls is None:
            pending.handshake = Handshake(self.daemon, conn, "%s" % peer)
        self._pending[csock.fileno()] = pending
        self._by_peer[peer].append(pending)
        self._watch(pending, selectors.EVENT_READ)
        self._advance(pending)  # its first bytes may be here already

    def _woken(self) -> None:
        with contextlib.suppress(OSError):
            while self._waker.recv(4096):
                pass
        while self._returned:
            conn = self._returned.popleft()
            try:
                fd = conn.sock.fileno()
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (OSError, ValueError, KeyError):
                self._disconnect(conn)
                continue
            self._parked[fd] = conn

    def _unpark(self, fd: int, conn: Any) -> None:
        self._parked.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        self._workers.submit(conn)  # type: ignore[union-attr]

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 0.25
        later, self._peek_later = self._peek_later, set()
        for pending in later:
            if self._pending.get(_fileno(pending.conn.sock)) is pending:
                self._advance(pending)
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            if pending.stage != "linger":
                note_bad_input(pending.conn, pyro_errors.TimeoutError(
                    "no complete handshake within %s s" % security.HANDSHAKE_TIMEOUT), "handshake")
            self._forget(pending)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            with contextlib.suppress(KeyError, ValueError, OSError):
                if self.sock is not None:
                    self._selector.register(self.sock, selectors.EVENT_READ, _ACCEPT)

    # -- one pending handshake --------------------------------------------------------------------------

    def _advance(self, pending: _Pending) -> None:
        """Move a pending handshake as far as its socket allows now, without waiting."""
        try:
            while True:
                if pending.stage == "peek":
                    if not self._peek(pending):
                        return
                    continue
                sock = pending.conn.sock
                if pending.stage == "tls":
                    sock.do_handshake()
                    pending.stage = "pyro"
                    pending.handshake = Handshake(self.daemon, pending.conn, pending.peer)
                    continue
                if pending.out:
                    sent = sock.send(pending.out)
                    pending.out = pending.out[sent:]
                    if pending.out:
                        self._watch(pending, selectors.EVENT_WRITE)
                        return
                if pending.stage == "linger":
                    if not pending.shut:  # the refusal is out: say no more, so the client reads it and closes
                        pending.shut = True
                        sock.shutdown(socket.SHUT_WR)
                    if not sock.recv(65536):
                        self._forget(pending)
                        return
                    continue
                handshake = pending.handshake
                assert handshake is not None
                if not handshake.needed:
                    self._finish(pending)
                    return
                data = sock.recv(handshake.needed - len(pending.buffer))
                if not data:
                    self._forget(pending)  # the client went away (or half-closed) mid-handshake
                    return
                pending.buffer += data
                if len(pending.buffer) == handshake.needed:
                    part, pending.buffer = bytes(pending.buffer), bytearray()
                    handshake.feed(part)
                    pending.out += handshake.take_output()
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            self._watch(pending, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._watch(pending, selectors.EVENT_WRITE)
        except OSError as exc:  # a reset, a failed TLS handshake (ssl.SSLError is an OSError)
            if pending.stage != "linger":
                note_bad_input(pending.conn, exc, "handshake")
            self._forget(pending)

    def _peek(self, pending: _Pending) -> bool:
        """
        On a TLS port, what does the client speak? Plain Pyro5 gets a plain refusal that says so;
        anything else goes on to the TLS handshake. False: nothing to see yet.
        """
        raw = pending.conn.sock
        first = raw.recv(8, socket.MSG_PEEK)
        if not first:
            self._forget(pending)
            return False
        verdict, serializer_id = wire.sniff(first)
        if verdict == "maybe":
            # maybe plain Pyro5: wait for its first 8 bytes. Not by watching the socket: the bytes
            # peeked at keep it readable, and the loop would spin; the sweep looks again
            self._unwatch(pending)
            self._peek_later.add(pending)
            return False
        if verdict == "pyro":
            pending.out = refusal(TLS_ONLY, serializer_id)
            self._linger(pending)
            return True
        assert self._tls is not None
        pending.conn.sock = self._tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        pending.stage = "tls"
        return True

    def _finish(self, pending: _Pending) -> None:
        """The handshake ended: serve the client, or let it read its refusal."""
        assert pending.handshake is not None
        if not pending.handshake.accepted:
            self._linger(pending)
            self._advance(pending)
            return
        self._release(pending)
        conn = pending.conn
        try:
            conn.sock.setblocking(True)
            if pyro_config.COMMTIMEOUT:
                conn.sock.settimeout(pyro_config.COMMTIMEOUT)
        except OSError:
            conn.close()
            return
        self._workers.submit(conn)  # type: ignore[union-attr]

    def _linger(self, pending: _Pending) -> None:
        """
        After a refusal: send it, then drain what the client still sends until it closes, for at
        most L{LINGER} seconds (closing with its bytes unread would reset the connection, and the
        client could lose the refusal).
        """
        pending.stage = "linger"
        pending.deadline = min(pending.deadline, time.monotonic() + LINGER)

    def _watch(self, pending: _Pending, events: int) -> None:
        if pending.events == events:
            return
        sock = pending.conn.sock
        try:
            if pending.events:
                self._selector.modify(sock, events, pending)
            else:
                self._selector.register(sock, events, pending)
            pending.events = events
        except (OSError, ValueError, KeyError):
            self._forget(pending)

    def _unwatch(self, pending: _Pending) -> None:
        if pending.events:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(pending.conn.sock)
            pending.events = 0

    def _release(self, pending: _Pending) -> None:
        """Take C{pending} out of the listener's books (its socket stays open)."""
        sock = pending.conn.sock
        with contextlib.suppress(OSError, ValueError):
            self._pending.pop(sock.fileno(), None)
        self._unwatch(pending)
        self._peek_later.discard(pending)
        queue = self._by_peer.get(pending.peer)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(pending)
            if not queue:
                del self._by_peer[pending.peer]

    def _forget(self, pending: _Pending) -> None:
        self._release(pending)
        pending.conn.close()

    # -- served connections (worker threads) ----------------------------------------------------------

    def _serve(self, conn: Any) -> None:
        """A worker's turn with one connection: its messages, until it idles, goes away or fails."""
        try:
            poller = getattr(conn, "srpy_poller", None)
            if poller is None:
                poller = conn.srpy_poller = select.poll()
                poller.register(conn.sock.fileno(), select.POLLIN | select.POLLPRI)
            wait_ms = int(IDLE_RELEASE * 1000)
            tls = hasattr(conn.sock, "pending")
            while not self.shutting_down:
                if not (tls and conn.sock.pending()) and not poller.poll(wait_ms):
                    self._park(conn)
                    return
                _pyro5.serve_message(self.daemon, conn)
        except _GONE:
            pass  # the client went away, or (srpy's daemon) sent what ends its connection: logged there
        except pyro_errors.TimeoutError as exc:
            log.warning("error during handleRequest: %s", exc)
        except Exception as exc:  # a daemon without srpy's own handling (the name server) failing on a message
            note_bad_input(conn, exc, "message")
        except BaseException as exc:  # e.g. an interrupt meant for a call that ended: only this connection ends
            log.warning("a worker stopped serving %s: %s: %s", conn, type(exc).__name__, exc)
        self._disconnect(conn)

    def _park(self, conn: Any) -> None:
        """Hand an idle connection back to the listener thread (no worker waits on it meanwhile)."""
        with self._lock:  # close() drains what is handed back under this lock: nothing lands after it
            closed = self._closed or self.shutting_down
            if not closed:
                self._returned.append(conn)
        if closed:
            self._disconnect(conn)
            return
        self.wakeup()

    def _disconnect(self, conn: Any) -> None:
        try:
            _pyro5.client_gone(self.daemon, conn)
        except Exception as exc:  # a daemon's own hook: logged, the connection closes anyway
            log.warning("error in clientDisconnect: %s", exc)
        conn.close()


class _Workers:
    """
    The threads that serve connections: THREADPOOL_SIZE at most (Pyro5's setting), THREADPOOL_SIZE_MIN
    kept waiting when there is nothing to do (as Pyro5's pool). A connection waits in line when
    every worker is busy: it is never refused. Workers start as connections come, not beforehand:
    an engine says it is ready without waiting for threads to be scheduled (on a loaded machine,
    some milliseconds each), and its first client costs one thread start, not four.
    """

    def __init__(self, serve: Callable[[Any], None]) -> None:
        if pyro_config.THREADPOOL_SIZE < 1 or pyro_config.THREADPOOL_SIZE_MIN < 1:
            raise ValueError("threadpool sizes must be greater than zero")
        self._serve = serve
        self._queue: Deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._closed = False
        self._count = 0

    def submit(self, conn: Any) -> None:
        with self._cond:
            if self._closed:
                conn.close()
                return
            self._queue.append(conn)
            if self._idle > len(self._queue) - 1:
                self._cond.notify()
            elif self._threads < pyro_config.THREADPOOL_SIZE:
                self._start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            queued, self._queue = list(self._queue), collections.deque()
            self._cond.notify_all()
        for conn in queued:
            conn.close()

    def _start(self) -> None:
        self._threads += 1
        self._count += 1
        threading.Thread(target=self._run, name="srpy-worker-%d" % self._count, daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if self._idle >= pyro_config.THREADPOOL_SIZE_MIN:
                        self._threads -= 1  # enough workers wait already
                        return
                    self._idle += 1
                    self._cond.wait()
                    self._idle -= 1
                if self._closed:
                    self._threads -= 1
                    return
                conn = self._queue.popleft()
            self._serve(conn)

    def __repr__(self) -> str:
        return "%d workers (%d idle), %d connections waiting" % (self._threads, self._idle, len(self._queue))


#: the TLS context of the daemon being created (set within L{serving_daemons} only)
_tls_override: Optional[ssl.SSLContext] = None


@contextlib.contextmanager
def serving_daemons(tls: Optional[ssl.SSLContext] = None) -> Iterator[None]:
    """
    Within this block, a Pyro5 daemon being created serves through L{GuardedServer}, with TLS
    from C{tls} if given (else from Pyro5's SSL settings, as Pyro5's own server)
    (L{srpy._pyro5.daemons_served_by}: one thread at a time).
    """
    global _tls_override
    with _pyro5.daemons_served_by(GuardedServer):
        _tls_override = tls
        try:
            yield
        finally:
            _tls_override = None


def _fileno(sock: Any) -> int:
    """The descriptor of C{sock}, or -1 once it is closed."""
    try:
        return sock.fileno()
    except (OSError, ValueError):
        return -1
