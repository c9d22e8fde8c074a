"""
Serving one engine in this process: the engine process's side of C{srpyapp} and L{srpy.newSubEngine}.

An engine process (an I{incarnation}, forked by its L{srpy.supervisor.Keeper}) calls L{serve}:
it applies the process limits, binds the engine's port with srpy's Pyro5 daemon
(L{srpy.daemon.EngineDaemon}), registers the namespace object (L{srpy.engine.Engine}) and its
peer side, optionally in a name server, says where it serves through the C{announce} callback
its caller gave (the caller owns the protocol with the launcher), and serves until told to stop.

This module knows nothing of processes, pipes or restarts (L{srpy.supervisor} does); it is the
one part of the launcher that imports the engine, so that a launcher that only supervises does
not load it.
"""

import argparse
import gc
import logging
import os
import threading
from typing import Any, Callable, Dict, Optional, Tuple

from Pyro5 import config as pyro_config

from . import codec, peerservice
from .daemon import EngineDaemon
from .engine import Engine
from .output import capture_output
from .errors import SRPyError
from .security import check_listen_policy, client_tls

log = logging.getLogger("srpy.hosting")

#: address space reserved for the stacks of an engine's server threads, on top of --max-memory
THREAD_ALLOWANCE = 512 * 1024 * 1024

#: C{announce(uri, sandbox)} once the engine serves, or C{announce(None, "", reason)} if it cannot
Announce = Callable[..., None]


def serve(options: argparse.Namespace, name: str, port: int, announce: Announce, stopping: threading.Event) -> int:
    """
    Serve one engine in this process until C{stopping} is set or stdin reaches its end; returns
    the exit code (1 if the engine could not start: C{announce} was told why).

    @param options: the launcher's options (host, group, secret, limits, TLS, name server).
    @param announce: how the caller tells whoever started it that the engine serves (or not).
    @param stopping: set (from any thread, a signal handler's say) to stop serving.
    """
    try:
        server = _start_server(options, name, port)
    except Exception as exc:  # whatever stops the engine from starting, the one who started it must hear it
        announce(None, "", str(exc))
        return 1
    announce(server.uri, server.engine.sandbox)
    os.dup2(2, 1)  # nothing may block on the launcher's pipe or print on its console
    capture_output()
    threading.Thread(target=_stop_at_eof, args=(stopping,), name="srpy-parent-watch", daemon=True).start()
    threading.Thread(target=_stop_when_set, args=(stopping, server), name="srpy-stopper", daemon=True).start()
    gc.freeze()  # what start-up built lives as long as the engine: keep the collector off it
    server.serve()
    return 0


def tls_options(options: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """
    The launcher's TLS options as keywords of L{_configure_tls} and of
    L{srpy.discovery.start_name_server}; None without TLS.

    >>> tls_options(argparse.Namespace(tls_cert=None, tls_key=None))
    """
    if not (options.tls_cert or options.tls_key):
        return None
    if not (options.tls_cert and options.tls_key):
        raise SRPyError("TLS needs both --tls-cert and --tls-key")
    if options.tls_require_client_cert and not options.tls_ca:
        raise SRPyError("--tls-require-client-cert needs --tls-ca (the CA that signs client certificates)")
    return {"cert": options.tls_cert, "key": options.tls_key, "ca": options.tls_ca,
            "require_client_cert": options.tls_require_client_cert}


class _EngineServer:
    """One engine served by a Pyro5 daemon in this process, until L{stop}."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "", group: str = "",
                 secret: Optional[str] = None, insecure: bool = False, debug: bool = False,
                 timing: bool = False, max_task_time: Optional[float] = None,
                 tls: Optional[Dict[str, Any]] = None) -> None:
        check_listen_policy(host, secret, insecure)
        codec.register()
        pyro_config.SERVERTYPE = "thread"
        pyro_config.SOCK_NODELAY = True  # replies (and bulk bytes then a reply) leave at once: no Nagle wait
        peer_tls = _configure_tls(**tls) if tls else None
        self.daemon = EngineDaemon(host=host, port=port, secret=secret)
        self.engine = Engine(name=name, group=group, debug=debug, timing=timing, secret=secret,
                             max_task_time=max_task_time)
        self.engine.peer_ssl_context = peer_tls
        self.uri = peerservice.register(self.daemon, self.engine)  # the engine and its peer object
        self.engine.uri = self.uri
        self.engine.stop_listening = self._stop_listening
        os.chdir(self.engine.sandbox)  # tasks open uploaded files by relative path
        self._stop = threading.Event()
        self._ns: Optional[Tuple[str, Optional[str], Optional[int]]] = None

    def _stop_listening(self) -> None:
        """
        Close the listening socket (the engine is about to end its process to stop a call): a
        client that connects meanwhile is refused at once, and tries again until the fresh engine
        listens, instead of being accepted by a process that is going away.
        """
        listener = getattr(self.daemon.transportServer, "sock", None)
        if listener is not None:
            listener.close()

    def register(self, ns_host: Optional[str], ns_port: Optional[int]) -> None:
        """Register this engine in the Pyro5 name server (removed again when it stops)."""
        from . import discovery  # only with --ns: the name server client is not needed to serve
        self._ns = (discovery.register(self.uri, self.engine.describe(), ns_host, ns_port),
                    ns_host, ns_port)

    def serve(self) -> None:
        """Serve until L{stop} is called; then release the port and remove the sandbox."""
        try:
            self.daemon.requestLoop(lambda: not self._stop.is_set())
        finally:
            if self._ns is not None:
                from . import discovery
                discovery.unregister(*self._ns)
            self.daemon.close()
            self.engine.close()

    def stop(self) -> None:
        """
        Make L{serve} return (safe from any thread, from signal handlers, and before L{serve}
        has started: then it returns at once).
        """
        self._stop.set()
        server = self.daemon.transportServer
        if server is not None:
            server.shutdown()  # not the daemon's: that one breaks a request loop that has not started


def _configure_tls(cert: str, key: str, ca: Optional[str] = None, require_client_cert: bool = False) -> Any:
    """
    Make this process's Pyro5 daemons serve TLS (Pyro5's SSL settings); returns the client context
    the engine uses to reach its TLS peers (with its own certificate when client certificates are
    required).
    """
    for path in (cert, key, ca):
        if path and not os.path.isfile(path):
            raise SRPyError("TLS file not found: %s" % path)
    pyro_config.SSL = True
    pyro_config.SSL_SERVERCERT, pyro_config.SSL_SERVERKEY = cert, key
    pyro_config.SSL_CACERTS = ca or ""
    pyro_config.SSL_REQUIRECLIENTCERT = bool(require_client_cert)
    return client_tls(ca=ca or cert, cert=cert if require_client_cert else None,
                      key=key if require_client_cert else None)


def _apply_process_limits(options: argparse.Namespace) -> None:
    """The limits that hold for the whole engine process: descriptors, memory and message size."""
    _raise_descriptor_limit()
    if options.max_message_size:
        pyro_config.MAX_MESSAGE_SIZE = int(options.max_message_size * 1024 * 1024)
    if options.max_memory:
        import resource

        import psutil  # only with --max-memory: an engine needs no psutil to start serving
        # the address space the engine has at start-up (interpreter, libraries, thread stacks to come)
        # plus the memory it may add for the work it is given
        base = psutil.Process().memory_info().vms + THREAD_ALLOWANCE
        limit = base + int(options.max_memory * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _raise_descriptor_limit() -> None:
    """
    Raise this process's soft limit of open descriptors to its hard limit: in a full peer mesh an
    engine holds two sockets per peer (and up to two idle more per link after bursts), so the
    usual soft limit of 1,024 ends a mesh at about 500 engines, while the hard limit (often
    524,288) is there for the asking.
    """
    import resource  # a built-in module: nothing to load

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # a hard limit the kernel caps lower (nr_open): keep the soft one
            log.debug("descriptor limit stays at %d: %s", soft, exc)


def _start_server(options: argparse.Namespace, name: str, port: int) -> _EngineServer:
    """The engine, bound and registered (in the name server too with C{--ns}), per the options."""
    try:
        _apply_process_limits(options)
        server = _EngineServer(host=options.host, port=port, name=name, group=options.group,
                               secret=options.secret, insecure=options.insecure,
                               debug=options.debug, timing=options.time,
                               max_task_time=options.max_task_time, tls=tls_options(options))
    except OSError as exc:
        raise SRPyError("cannot listen on %s:%s: %s" % (options.host, port, exc.strerror or exc)) from None
    environment = getattr(options, "active_environment", None)
    if environment:  # this engine replaces one that had an environment active (srpy.supervisor.Keeper)
        from . import environments
        environments.restore(environment, server.engine.sandbox)
    if options.ns or options.start_ns:
        try:
            server.register(options.ns_host, options.ns_port)
        except SRPyError:
            server.daemon.close()
            server.engine.close()
            raise
    return server


def _stop_at_eof(stopping: threading.Event) -> None:
    """Ask the engine to stop when the launcher's end of our stdin closes (the launcher is gone)."""
    try:  # the raw descriptor: a buffered reader blocked here would abort interpreter shutdown
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stopping.set()


def _stop_when_set(stopping: threading.Event, server: _EngineServer) -> None:
    """Stop serving once C{stopping} is set."""
    stopping.wait()
    server.stop()
