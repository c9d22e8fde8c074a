"""
Hosting engines: C{python srpyapp.py} (or C{srpyapp}) and L{newSubEngine}.

Basic mode (C{-b}, the default) serves one engine, in a process the launcher forks and keeps.
Multi mode (C{-m}, or C{-n N}) starts one engine process per core (or N) and supervises them.

How a child engine starts and stops, with no files polled and no orphans:
 - the launcher starts C{python -m srpy --child ...} with pipes for stdin and stdout;
 - the child binds its port, then writes one line C{SRPY-READY <uri> <sandbox>} (or
   C{SRPY-FAILED <reason>}) on stdout; the launcher waits for that line with a timeout;
 - the child treats end-of-file on its stdin as "stop": when the launcher exits, however it
   exits (even SIGKILL), the pipe closes and every child stops by itself.

How an engine comes back after a time limit ended it (L{srpy.watch.CallWatch}): the engine
process is a L{Keeper} that forks the engine itself and forks a fresh one, on the same port,
when the engine ends to stop a call; any other end is passed on, for the L{Supervisor} to report
and (with C{--restart}, after a back-off) restart. Without C{fork} (Windows), the supervisor
restarts such an engine itself, at once::

    srpyapp (basic) = Keeper ---fork---> engine
    srpyapp -n N    = Supervisor --exec--> N x (python -m srpy --child = Keeper ---fork---> engine)
    newSubEngine()  ---------------------exec--> (python -m srpy --child = Keeper ---fork---> engine)
"""

import argparse
import gc
import collections
import atexit
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import psutil
from Pyro5 import config as pyro_config

from . import codec, discovery, peerservice, wire
from ._version import __version__, copyright
from .engine import Engine
from .output import capture_output
from .watch import BACKSTOP_FILE, EXIT_RUNAWAY, user_frame
from .errors import SRPyError
from .daemon import EngineDaemon
from .security import check_listen_policy, client_tls
from .orphans import die_with_parent

log = logging.getLogger("srpy.launcher")

READY = "SRPY-READY"
FAILED = "SRPY-FAILED"
#: address space reserved for the stacks of an engine's server threads, on top of --max-memory
THREAD_ALLOWANCE = 512 * 1024 * 1024
#: longest wait before restarting an engine that keeps dying
MAX_BACKOFF = 30.0
#: seconds a stopping child gets before it is terminated, then killed
STOP_GRACE = 3.0


def detectNCPUs() -> int:
    """The number of cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return psutil.cpu_count() or 1


# -- options ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The launcher's command line."""
    parser = argparse.ArgumentParser(
        prog="srpyapp", description="Host srpy engines: Python namespaces that clients run code in. "
                                    "'srpyapp status -h': show what running engines are doing.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-b", "--basic", action="store_true",
                      help="one engine, in a process this one keeps (and restarts after a limit) (default)")
    mode.add_argument("-m", "--multi", action="store_true", help="one engine process per core")
    parser.add_argument("-n", "--engines", type=_positive_int, metavar="N",
                        help="number of engine processes (implies --multi)")
    parser.add_argument("-u", "--uri-file", metavar="FILE",
                        help="write the URIs to FILE once every engine answers (removed on exit)")
    parser.add_argument("-p", "--pyro-config", metavar="FILE", help="a Pyro5 configuration file (NAME = value lines)")
    parser.add_argument("-d", "--debug", action="store_true", help="log every call")
    parser.add_argument("-t", "--time", action="store_true", help="log every call's duration")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0,
                        help="port of the first engine (the next ones count up); default: any free port")
    parser.add_argument("--name", default="", help="engine name (multi mode appends -1, -2, ...)")
    parser.add_argument("--group", default="", help="group label of the engines")
    parser.add_argument("--secret", type=_secret, default=None,
                        help="shared secret clients must prove they know (default: $SRPY_SECRET)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening on a non-loopback address without a secret")
    parser.add_argument("--ns", action="store_true",
                        help="register the engines in a Pyro5 name server (found by --ns-host, or broadcast)")
    parser.add_argument("--start-ns", action="store_true",
                        help="start a Pyro5 name server in the launcher (implies --ns)")
    parser.add_argument("--ns-host", default=None, help="name server host (default: this machine, then broadcast)")
    parser.add_argument("--ns-port", type=_ns_port, default=None, help="name server port (default 9090)")
    parser.add_argument("--python", metavar="PATH", default=None,
                        help="host the engine processes in this Python (a virtualenv's, say); it must have srpy")
    parser.add_argument("--restart", action="store_true",
                        help="restart an engine that crashes (with back-off), on the same port; an engine that ends "
                             "to stop a call over its time limit restarts without this flag")
    parser.add_argument("--max-task-time", type=_positive_number, metavar="SECONDS", default=None,
                        help="stop any call that runs longer: its code is interrupted, or, if it holds the "
                             "interpreter, the engine restarts on the same port")
    parser.add_argument("--max-memory", type=_positive_number, metavar="MB", default=None,
                        help="memory each engine may use beyond its start-up size; a call that needs more "
                             "gets MemoryError")
    parser.add_argument("--max-message-size", type=_message_size, metavar="MB", default=None,
                        help="refuse messages larger than this (default: Pyro5's 1 GiB)")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signs client certificates (and peers')")
    parser.add_argument("--tls-require-client-cert", action="store_true",
                        help="accept only clients with a certificate signed by --tls-ca")
    parser.add_argument("--ready-timeout", type=_positive_number, default=30.0, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version="srpy %s" % __version__)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % (text,)) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str, lowest: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid int value: %r" % (text,)) from None
    if not lowest <= value <= 65535:
        raise argparse.ArgumentTypeError("%d is not a port: use %d to 65535%s"
                                         % (value, lowest, " (0: any free port)" if lowest == 0 else ""))
    return value


def _ns_port(text: str) -> int:
    return _port(text, lowest=1)


def _positive_number(text: str) -> float:
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % (text,)) from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be a positive number, not %s" % (text,))
    return value


def _message_size(text: str) -> float:
    value = _positive_number(text)
    if value * 1024 * 1024 < 1024:  # a smaller limit would refuse every call, even a ping
        raise argparse.ArgumentTypeError("%s MB is too small for any call: use at least 0.001 (1 KiB)" % (text,))
    return value


def _secret(text: str) -> str:
    if not text:  # an empty secret would silently mean "no secret"
        raise argparse.ArgumentTypeError("an empty secret is no secret: give a real one, or leave --secret out")
    return text


def engine_count(options: argparse.Namespace) -> int:
    """How many engine processes the options ask for (1 in basic mode)."""
    if options.multi or options.engines:
        return options.engines or detectNCPUs()
    return 1


def check_values(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """
    Refuse (through C{parser.error}: usage, one error line, exit code 2) option values that do not
    fit together; each value on its own was checked by its argparse type.
    """
    if options.basic and options.engines:
        parser.error("-b/--basic hosts one engine in this process; -n N needs -m/--multi (or no -b)")
    if options.python and not (options.multi or options.engines or options.restart or options.max_task_time):
        parser.error("--python needs engine processes: use it with -m or -n N")
    count = engine_count(options)
    if options.port and options.port + count - 1 > 65535:
        parser.error("--port %d with %d engines needs ports %d to %d, past the last port, 65535: use a lower "
                     "--port" % (options.port, count, options.port, options.port + count - 1))
    if bool(options.tls_cert) != bool(options.tls_key):
        parser.error("TLS needs both --tls-cert and --tls-key")
    if options.tls_ca and not options.tls_cert:
        parser.error("--tls-ca needs --tls-cert and --tls-key (the engines' own certificate)")
    if options.tls_require_client_cert and not (options.tls_ca and options.tls_cert):
        parser.error("--tls-require-client-cert needs --tls-ca (the CA that signs client certificates) "
                     "and --tls-cert/--tls-key")


def check_files(options: argparse.Namespace) -> None:
    """
    Make sure what the options name can be used before any engine starts: the C{-u} file can be
    written, the TLS files are a certificate, its key and a CA bundle. (The C{-p} file is checked as
    it is applied, L{apply_pyro_config}.)

    @raise SRPyError: one line naming the option and what is wrong.
    """
    if options.uri_file:
        _check_uri_file(options.uri_file)
    if options.tls_cert:
        _check_tls_files(options.tls_cert, options.tls_key, options.tls_ca)


def _check_uri_file(path: str) -> None:
    import tempfile
    directory = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise SRPyError("-u %s: that is a directory; give the name of a file to write" % path)
    if not os.path.isdir(directory):
        why = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise SRPyError("-u %s: %s %s" % (path, directory, why))
    try:  # the file is written as a temporary file renamed into place: the directory must take new files
        handle, probe = tempfile.mkstemp(prefix=".srpy-uri-check-", dir=directory)
    except OSError as exc:
        raise SRPyError("-u %s: cannot write in %s: %s" % (path, directory, exc.strerror or exc)) from None
    os.close(handle)
    os.remove(probe)


def _check_tls_files(cert: str, key: str, ca: Optional[str]) -> None:
    import ssl
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise SRPyError("%s %s: %s" % (option, path, exc.strerror or exc)) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    password = pyro_config.SSL_SERVERKEYPASSWD or ""  # never a prompt on the terminal: a key without one fails
    try:
        context.load_cert_chain(cert, key, password=lambda: password)
    except (ssl.SSLError, ValueError) as exc:
        raise SRPyError("--tls-cert %s / --tls-key %s: not a PEM certificate and its private key (%s)"
                        % (cert, key, exc)) from None
    if ca:
        try:
            context.load_verify_locations(ca)
        except ssl.SSLError as exc:
            raise SRPyError("--tls-ca %s: not a PEM bundle of CA certificates (%s)" % (ca, exc)) from None


def apply_pyro_config(path: str) -> None:
    """
    Apply a Pyro5 configuration file: C{NAME = value} lines, C{#} comments. Every line is checked
    before any setting changes.

    @raise SRPyError: the file cannot be read, or a line is not a Pyro5 setting with a valid value
        (the message names the file and the line).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as exc:
        raise SRPyError("-p %s: cannot read it: %s" % (path, exc.strerror or exc)) from None
    except UnicodeDecodeError as exc:
        raise SRPyError("-p %s: not a UTF-8 text file (%s)" % (path, exc)) from None
    known = pyro_config.as_dict()
    settings = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, value = line.partition("=")
        name = name.strip().upper()
        if name.startswith("PYRO_"):
            name = name[5:]
        if not sep or name not in known:
            raise SRPyError("-p %s line %d: not a Pyro5 setting: %r" % (path, number, line))
        try:
            settings[name] = _convert(name, known[name], value.strip())
        except ValueError as exc:
            raise SRPyError("-p %s line %d: %s" % (path, number, exc)) from None
    for name, value in settings.items():
        setattr(pyro_config, name, value)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: Pyro5 settings with fewer valid values than their type allows
_CHOICES = {"SERVERTYPE": ("thread", "multiplex"), "SERIALIZER": ("serpent", "marshal", "json", "msgpack"),
            "PREFER_IP_VERSION": (0, 4, 6)}
_AT_LEAST_ONE = ("MAX_MESSAGE_SIZE", "THREADPOOL_SIZE", "THREADPOOL_SIZE_MIN")


def _convert(name: str, current: Any, text: str) -> Any:
    """
    The value of Pyro5 setting C{name} written as C{text}, of the type of its C{current} value.

    >>> _convert("COMPRESSION", False, "yes"), _convert("NS_PORT", 9090, "9190")
    (True, 9190)

    @raise ValueError: C{text} is not a valid value for it (the message says what would be).
    """
    import math
    if isinstance(current, bool):
        if text.lower() not in _TRUE + _FALSE:
            raise ValueError("%s must be true or false (1/0, yes/no, on/off), not %r" % (name, text))
        return text.lower() in _TRUE
    if isinstance(current, (int, float)):
        kind = type(current)
        try:
            value = kind(text)
        except ValueError:
            raise ValueError("%s must be a %s, not %r" % (name, "whole number" if kind is int else "number",
                                                            text)) from None
        if not math.isfinite(value) or value < 0:
            raise ValueError("%s must be a number of 0 or more, not %r" % (name, text))
        if name.endswith("PORT") and value > 65535:
            raise ValueError("%s must be a port (0 to 65535), not %r" % (name, text))
        if name in _AT_LEAST_ONE and value < 1:
            raise ValueError("%s must be at least 1, not %r" % (name, text))
        current = value
    elif isinstance(current, (list, set)):
        return type(current)(v.strip() for v in text.split(","))
    else:
        current = text
    if name in _CHOICES and current not in _CHOICES[name]:
        raise ValueError("%s must be one of %s, not %r" % (name, ", ".join(map(str, _CHOICES[name])), text))
    return current


# -- one engine in this process -------------------------------------------------------------------

class EngineServer:
    """One engine served by a Pyro5 daemon in this process, until L{stop}."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "", group: str = "",
                 secret: Optional[str] = None, insecure: bool = False, debug: bool = False,
                 timing: bool = False, max_task_time: Optional[float] = None,
                 tls: Optional[Dict[str, Any]] = None) -> None:
        check_listen_policy(host, secret, insecure)
        codec.register()
        pyro_config.SERVERTYPE = "thread"
        pyro_config.SOCK_NODELAY = True  # replies (and bulk bytes then a reply) leave at once: no Nagle wait
        peer_tls = configure_tls(**tls) if tls else None
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
        self._ns = (discovery.register(self.uri, self.engine.describe(), ns_host, ns_port),
                    ns_host, ns_port)

    def serve(self) -> None:
        """Serve until L{stop} is called; then release the port and remove the sandbox."""
        try:
            self.daemon.requestLoop(lambda: not self._stop.is_set())
        finally:
            if self._ns is not None:
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


def _tls_options(options: argparse.Namespace) -> Optional[Dict[str, Any]]:
    if not (options.tls_cert or options.tls_key):
        return None
    if not (options.tls_cert and options.tls_key):
        raise SRPyError("TLS needs both --tls-cert and --tls-key")
    if options.tls_require_client_cert and not options.tls_ca:
        raise SRPyError("--tls-require-client-cert needs --tls-ca (the CA that signs client certificates)")
    return {"cert": options.tls_cert, "key": options.tls_key, "ca": options.tls_ca,
            "require_client_cert": options.tls_require_client_cert}


def configure_tls(cert: str, key: str, ca: Optional[str] = None, require_client_cert: bool = False) -> Any:
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


def apply_process_limits(options: argparse.Namespace) -> None:
    """The limits that hold for the whole engine process: memory and message size."""
    if options.max_message_size:
        pyro_config.MAX_MESSAGE_SIZE = int(options.max_message_size * 1024 * 1024)
    if options.max_memory:
        import resource
        # the address space the engine has at start-up (interpreter, libraries, thread stacks to come)
        # plus the memory it may add for the work it is given
        base = psutil.Process().memory_info().vms + THREAD_ALLOWANCE
        limit = base + int(options.max_memory * 1024 * 1024)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _start_server(options: argparse.Namespace, name: str, port: int) -> EngineServer:
    try:
        apply_process_limits(options)
        server = EngineServer(host=options.host, port=port, name=name, group=options.group,
                              secret=options.secret, insecure=options.insecure,
                              debug=options.debug, timing=options.time,
                              max_task_time=options.max_task_time, tls=_tls_options(options))
    except OSError as exc:
        raise SRPyError("cannot listen on %s:%s: %s" % (options.host, port, exc.strerror or exc)) from None
    if options.ns or options.start_ns:
        try:
            server.register(options.ns_host, options.ns_port)
        except SRPyError:
            server.daemon.close()
            server.engine.close()
            raise
    return server


def run_child(options: argparse.Namespace) -> int:
    """
    An engine process started by a launcher or L{newSubEngine}: report readiness on stdout, stop
    at stdin's end. Where the system can fork, this process is the engine's L{Keeper}, so that an
    engine that ends to stop a call serves again at once at the same URI.
    """
    die_with_parent()  # killed by the kernel when the launcher ends, even if the interpreter is stuck
    if _CAN_FORK:
        return Keeper(options, options.name, options.port).run(_report_to_launcher, watch_stdin="eof")
    out = sys.stdout
    stopping = threading.Event()
    _on_signals(stopping.set)  # before READY: a signal that comes early still stops us cleanly
    try:
        server = _start_server(options, options.name, options.port)
    except Exception as exc:  # whatever stops the engine from starting, the launcher must hear it
        out.write("%s %s\n" % (FAILED, exc))
        out.flush()
        return 1
    out.write("%s %s %s\n" % (READY, server.uri, server.engine.sandbox))
    out.flush()
    os.dup2(sys.stderr.fileno(), 1)  # nothing else may ever block on the launcher's pipe
    capture_output()
    threading.Thread(target=_stop_at_eof, args=(stopping,), name="srpy-parent-watch", daemon=True).start()
    threading.Thread(target=_stop_when_set, args=(stopping, server), name="srpy-stopper", daemon=True).start()
    gc.freeze()  # what start-up built lives as long as the engine: keep the collector off it
    server.serve()
    return 0


def _report_to_launcher(uri: Optional[str], sandbox: str, failure: str = "") -> None:
    """The child's one line to its launcher: ready (URI and sandbox) or failed (why)."""
    line = "%s %s %s\n" % (READY, uri, sandbox) if uri else "%s %s\n" % (FAILED, failure)
    os.write(1, line.encode("utf-8"))
    os.dup2(2, 1)  # nothing else may ever block on the launcher's pipe


#: True where an engine process can fork its engine (and so restart it by itself)
_CAN_FORK = hasattr(os, "fork") and hasattr(os, "waitpid")
#: seconds between the keeper's tries to start a fresh engine that failed to start (port not yet free)
_RESTART_RETRIES = (0.1, 0.3, 1.0, 2.0, 5.0)


class Keeper:
    """
    One engine, hosted in a forked child process (an I{incarnation}), started again when it
    ends to stop a call. How the pieces fit::

        launcher / newSubEngine --stdin, stdout--> keeper --fork--> incarnation (the engine)
                                                     ^  stop pipe (EOF: stop) -->|
                                                     |<-- report pipe: READY uri sandbox

     - the keeper imports srpy, then forks before it ever starts a thread, so each incarnation
       starts in milliseconds from an already loaded interpreter;
     - an incarnation that exits with L{EXIT_RUNAWAY} (its watchdog ended it) or whose
       faulthandler backstop fired (L{srpy.watch.BACKSTOP_FILE} in its sandbox is not empty) is
       replaced at once on the same port: a limit's restart needs no flag and is no crash;
     - any other exit is passed through as the keeper's own exit code (a signal N as 128+N),
       so that a supervising launcher's C{--restart} (with back-off) handles real crashes;
     - each dead incarnation's sandbox is removed; the stacks faulthandler wrote become one
       log line (the innermost user frame);
     - stdin's end (C{watch_stdin="eof"}), SIGTERM or SIGINT stop the incarnation (end of its
       stop pipe, then SIGTERM, then SIGKILL) and the keeper; an incarnation also dies with its
       keeper (Linux's parent-death signal, else the stop pipe's end).

    The keeper itself stays single-threaded (a selector over stdin, the report pipe and a
    signal wake-up pipe), so that forking it again later is safe.
    """

    def __init__(self, options: argparse.Namespace, name: str, port: int) -> None:
        self.options = options
        # a name that outlives incarnations: the name server entry and whoami stay the same
        self.name = name or "engine-%d@%s" % (os.getpid(), socket.gethostname())
        self.port = port
        self.uri = ""
        self.pid = 0
        self.sandbox = ""
        self.stopping = False
        self.exit_code: Optional[int] = None
        self._stop_w = -1
        self._report = -1
        self._buffer = b""
        self._ready = False
        self._restarting = False  # the incarnation under way replaces one that ended for a limit
        self._retry = 0
        self._fork_at: Optional[float] = None
        self._kill_at: List[Tuple[float, int]] = []
        self._selector = selectors.DefaultSelector()

    # -- the loop ------------------------------------------------------------------------------------

    def run(self, on_ready: Any, watch_stdin: Optional[str] = None) -> int:
        """
        Serve until stopped; returns the exit code. C{on_ready(uri, sandbox, failure)} is called
        once, when the first incarnation is ready (or failed: uri None). C{watch_stdin}: "eof"
        stops at stdin's end; "console" stops on a line 'quit', 'exit' or 'q'; None: not read.
        """
        self._on_ready = on_ready
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        previous = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        handlers = {signum: signal.signal(signum, self._on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        self._selector.register(wake_r, selectors.EVENT_READ, "wake")
        if watch_stdin:
            try:
                self._selector.register(0, selectors.EVENT_READ, watch_stdin)
            except (OSError, ValueError):
                pass  # no stdin to watch
        self._private = [wake_r, wake_w]
        gc.freeze()  # what start-up built is shared with each incarnation: keep the collector off it
        try:
            self._fork()
            while self.exit_code is None:
                self._step()
            return self.exit_code
        finally:
            self._end_incarnation()
            signal.set_wakeup_fd(previous)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self._selector.close()
            os.close(wake_r)
            os.close(wake_w)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGCHLD:
            self.stopping = True  # the wake-up pipe makes the loop look

    def _step(self) -> None:
        if self.pid:
            self._reap()
        if self.exit_code is not None:
            return
        now = time.monotonic()
        if self.stopping:
            if not self.pid:
                self.exit_code = 0
                return
            if self._stop_w >= 0:  # first ask nicely: the end of its stop pipe
                os.close(self._stop_w)
                self._stop_w = -1
                self._kill_at = [(now + STOP_GRACE / 2, signal.SIGTERM), (now + STOP_GRACE, signal.SIGKILL)]
            while self._kill_at and now >= self._kill_at[0][0]:
                _, signum = self._kill_at.pop(0)
                _signal_process(self.pid, signum)
        elif self._fork_at is not None and now >= self._fork_at:
            self._fork_at = None
            self._fork()
        waits = [at for at, _ in self._kill_at] + ([self._fork_at] if self._fork_at is not None else [])
        timeout = max(0.0, min(waits) - now) if waits else 1.0
        for key, _ in self._selector.select(timeout):
            if key.data == "wake":
                _drain(key.fd)
            elif key.data == "report":
                self._read_report()
            else:
                self._read_stdin(key.fd, key.data)

    def _read_stdin(self, fd: int, mode: str) -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(fd)
            if mode == "eof":  # the launcher is gone (or stopped us): stop
                self.stopping = True
            return  # end of a console's input does not stop a launcher
        if mode == "console" and any(line.strip().lower() in (b"quit", b"exit", b"q") for line in data.splitlines()):
            self.stopping = True

    def _read_report(self) -> None:
        try:
            data = os.read(self._report, 4096)
        except OSError:
            data = b""
        if not data:
            self._close_report()
            return
        self._buffer += data
        if b"\n" not in self._buffer:
            return
        line, _, self._buffer = self._buffer.partition(b"\n")
        words = line.decode("utf-8", "replace").split(" ", 2)
        if words[0] == READY and len(words) == 3:
            self.uri, self.sandbox = words[1], words[2]
            self.port = wire.parse_uri(self.uri)[2]
            self._restarting = False
            if not self._ready:
                self._ready = True
                self._on_ready(self.uri, self.sandbox)
            else:
                log.info("engine %s serves again (pid %d)", self.uri, self.pid)
        elif words[0] == FAILED:
            reason = line.decode("utf-8", "replace")[len(FAILED) + 1:]
            if not self._ready:
                self._on_ready(None, "", reason)
                self.exit_code = 1
            else:
                log.error("engine %s could not start again: %s", self.uri, reason)

    # -- incarnations ---------------------------------------------------------------------------------

    def _fork(self) -> None:
        report_r, report_w = os.pipe()
        stop_r, stop_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()  # or the child would write what the keeper buffered a second time
        keeper = os.getpid()
        pid = os.fork()
        if pid == 0:  # the incarnation
            code = 1
            try:
                signal.set_wakeup_fd(-1)  # before its pipe closes: a signal now must not write to a closed fd
                os.close(report_r)
                os.close(stop_w)
                for fd in self._private + ([self._stop_w] if self._stop_w >= 0 else []):
                    os.close(fd)
                self._selector.close()
                code = _incarnation(self.options, self.name, self.port, report_w, stop_r, keeper)
            except BaseException:  # noqa: B902 - nothing may unwind into the keeper's stack
                log.exception("engine process failed")
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(report_w)
        os.close(stop_r)
        self.pid, self._stop_w, self._report, self._buffer = pid, stop_w, report_r, b""
        self._selector.register(report_r, selectors.EVENT_READ, "report")

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        dead = self.pid
        backstop = _read_backstop(self.sandbox)
        self._end_incarnation()
        if self.stopping:
            self.exit_code = 0
        elif not self._ready:  # died before it could say why
            self._on_ready(None, "", "exited with code %s" % code)
            self.exit_code = code if code > 0 else 1
        elif code == EXIT_RUNAWAY or backstop is not None:
            if backstop is not None:
                log.warning("engine %s (pid %d) ended itself: a call held the interpreter past its time limit, "
                            "at %s; a fresh engine starts at the same URI", self.uri, dead, backstop)
            self._restarting, self._retry = True, 0
            self._fork()  # at once, on the same port: no back-off for a limit
        elif self._restarting and self._retry < len(_RESTART_RETRIES):
            # the fresh engine could not start (its port not free yet, say): try again shortly
            self._fork_at = time.monotonic() + _RESTART_RETRIES[self._retry]
            self._retry += 1
        else:
            log.error("engine %s (pid %d) died with exit code %s", self.uri, dead, code)
            self.exit_code = code if code >= 0 else 128 - code

    def _end_incarnation(self) -> None:
        """Forget the incarnation that ended: its pipes, its sandbox; stop it if it still runs."""
        if self.pid:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0] == 0:
                    _signal_process(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        if self._stop_w >= 0:
            os.close(self._stop_w)
            self._stop_w = -1
        self._close_report()
        _remove_tree(self.sandbox)
        self.pid, self.sandbox, self._kill_at = 0, "", []

    def _close_report(self) -> None:
        if self._report >= 0:
            self._selector.unregister(self._report)
            os.close(self._report)
            self._report = -1


def _incarnation(options: argparse.Namespace, name: str, port: int, report: int, stop: int, keeper: int) -> int:
    """The forked engine: serve until the stop pipe (its stdin now) ends or a signal comes."""
    die_with_parent()  # forked by the keeper's main thread: it ends with the keeper, however that ends
    os.dup2(stop, 0)
    os.close(stop)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stopping = threading.Event()
    _on_signals(stopping.set)
    if os.getppid() != keeper:  # the keeper died before the parent-death signal was set
        return 0
    try:
        server = _start_server(options, name, port)
    except Exception as exc:  # whatever stops the engine from starting, the keeper must hear it
        os.write(report, ("%s %s\n" % (FAILED, exc)).encode("utf-8"))
        return 1
    os.write(report, ("%s %s %s\n" % (READY, server.uri, server.engine.sandbox)).encode("utf-8"))
    os.close(report)
    os.dup2(2, 1)  # nothing may block on the launcher's pipe or print on its console
    capture_output()
    threading.Thread(target=_stop_at_eof, args=(stopping,), name="srpy-parent-watch", daemon=True).start()
    threading.Thread(target=_stop_when_set, args=(stopping, server), name="srpy-stopper", daemon=True).start()
    gc.freeze()
    server.serve()
    return 0


def _signal_process(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


_FRAME_LINE = re.compile(r'^\s*File "(.*)", line (\S+) in (.*)$')


def _read_backstop(sandbox: str) -> Optional[str]:
    """
    If faulthandler's backstop fired in the engine whose sandbox this is: the innermost user frame
    of the thread that ran the call (one line; the file itself goes with the sandbox). Else None.
    """
    path = os.path.join(sandbox, BACKSTOP_FILE) if sandbox else ""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 20)
    except OSError:
        return None
    if not text.strip():
        return None
    # one block per thread, innermost frame first; the call's thread is the one inside srpy's wrapper
    # (srpy.calls.engine_call)
    blocks = [[(m.group(1), m.group(2), m.group(3)) for m in map(_FRAME_LINE.match, block.splitlines()) if m]
              for block in re.split(r"\n(?=Thread 0x|Current thread 0x)", text)]
    calls = [b for b in blocks if any(f[2] == "wrapper" and os.path.basename(f[0]) == "calls.py" for f in b)]
    chosen = (calls or [b for b in blocks if b] or [[]])[0]
    try:
        os.remove(path)
    except OSError:
        pass
    return user_frame(chosen)


def _stop_at_eof(stopping: threading.Event) -> None:
    """Ask the engine to stop when the launcher's end of our stdin closes (the launcher is gone)."""
    try:  # the raw descriptor: a buffered reader blocked here would abort interpreter shutdown
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stopping.set()


def _stop_when_set(stopping: threading.Event, server: "EngineServer") -> None:
    stopping.wait()
    server.stop()


def _on_signals(stop: Any) -> None:
    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# -- engine processes ------------------------------------------------------------------------------

class EngineProcess:
    """A child engine process and what it reported when it became ready."""

    def __init__(self, process: "subprocess.Popen[bytes]", uri: str, sandbox: str) -> None:
        self.process = process
        self.uri = uri
        self.sandbox = sandbox
        self.pid = process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> Optional[int]:
        """Ask the engine to stop (close its stdin); terminate, then kill, if it does not."""
        return stop_process(self.process, grace)


def stop_process(process: "subprocess.Popen[bytes]", grace: float = STOP_GRACE) -> Optional[int]:
    """Stop a child engine: end of its stdin, then SIGTERM, then SIGKILL. Returns its exit code."""
    for attempt in (_close_stdin, process.terminate, process.kill):
        if process.poll() is not None:
            break
        try:
            attempt(process) if attempt is _close_stdin else attempt()
        except OSError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            continue
    if process.stdout:
        process.stdout.close()
    return process.wait()


def _close_stdin(process: "subprocess.Popen[bytes]") -> None:
    if process.stdin and not process.stdin.closed:
        process.stdin.close()


def child_command(options: argparse.Namespace, name: str, port: int, python: Optional[str] = None) -> List[str]:
    """The command line of one child engine process."""
    command = [python or sys.executable, "-m", "srpy", "--child", "--host", options.host,
               "--port", str(port), "--name", name, "--group", options.group]
    if options.debug:
        command.append("--debug")
    if options.time:
        command.append("--time")
    if options.insecure:
        command.append("--insecure")
    if options.pyro_config:
        command += ["--pyro-config", options.pyro_config]
    for flag in ("max_task_time", "max_memory", "max_message_size", "tls_cert", "tls_key", "tls_ca"):
        value = getattr(options, flag, None)
        if value:
            command += ["--" + flag.replace("_", "-"), str(value)]
    if getattr(options, "tls_require_client_cert", False):
        command.append("--tls-require-client-cert")
    if getattr(options, "ns", False) or getattr(options, "start_ns", False):
        command.append("--ns")
        if options.ns_host:
            command += ["--ns-host", options.ns_host]
        if options.ns_port:
            command += ["--ns-port", str(options.ns_port)]
    return command


def spawn_engines(commands: Sequence[List[str]], secret: Optional[str], timeout: float) -> List[EngineProcess]:
    """
    Start the engine processes and wait for each one's ready line (all in parallel). If any fails
    or times out, stop those that started and raise L{SRPyError} with its reason.
    """
    env = dict(os.environ)
    if secret:
        env["SRPY_SECRET"] = secret  # the secret goes by environment, never on a command line
    else:
        env.pop("SRPY_SECRET", None)
    processes = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
                 for cmd in commands]
    try:
        return _await_ready(processes, timeout)
    except BaseException:
        for process in processes:
            stop_process(process, 1.0)
        raise


def _await_ready(processes: List["subprocess.Popen[bytes]"], timeout: float) -> List[EngineProcess]:
    deadline = time.monotonic() + timeout
    lines: Dict[int, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for index, process in enumerate(processes):
            selector.register(process.stdout, selectors.EVENT_READ, index)  # type: ignore[arg-type]
        pending = set(range(len(processes)))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SRPyError("engine process did not become ready within %.0f s" % timeout)
            for key, _ in selector.select(remaining):
                index = key.data
                chunk = os.read(key.fd, 4096)
                lines[index] = lines.get(index, b"") + chunk
                if not chunk or b"\n" in lines[index]:
                    selector.unregister(key.fileobj)
                    pending.discard(index)
    ready = []
    for index, process in enumerate(processes):
        words = lines.get(index, b"").decode("utf-8", "replace").strip().split(" ", 2)
        if words[0] != READY or len(words) != 3:
            reason = " ".join(words[1:]) if words[0] == FAILED else "exited with code %s" % process.wait(5)
            raise SRPyError("engine process failed to start: %s" % reason)
        ready.append(EngineProcess(process, words[1], words[2]))
    return ready


_sub_engines: List["subprocess.Popen[bytes]"] = []


def newSubEngine(timeout: float = 30, host: str = "127.0.0.1", name: str = "", group: str = "",
                 secret: Optional[str] = None, python: Optional[str] = None,
                 max_task_time: Optional[float] = None) -> Tuple[str, "subprocess.Popen[bytes]"]:
    """
    Start one local engine process; return C{(uri, process)} once it answers. The process stops
    when L{stopSubEngine} is called, when this program exits, or when this process dies. An
    engine that ends to stop a call (see L{srpy.watch.CallWatch}) serves again at the same URI
    (where the system can fork: the process keeps its engine in a child it forks again).

    @param max_task_time: stop any call that runs longer than this many seconds (as the
        launcher's C{--max-task-time}).
    """
    options = argparse.Namespace(host=host, group=group, debug=False, time=False, insecure=False, pyro_config=None,
                                 max_task_time=max_task_time)
    secret = secret if secret is not None else os.environ.get("SRPY_SECRET")
    started = spawn_engines([child_command(options, name, 0, python)], secret, timeout)[0]
    _sub_engines.append(started.process)
    return started.uri, started.process


def stopSubEngine(process: "subprocess.Popen[bytes]") -> Optional[int]:
    """Stop an engine started by L{newSubEngine}; returns its exit code."""
    if process in _sub_engines:
        _sub_engines.remove(process)
    return stop_process(process)


@atexit.register
def _stop_sub_engines() -> None:
    for process in list(_sub_engines):
        stopSubEngine(process)


# -- the launcher ----------------------------------------------------------------------------------

class Supervisor:
    """
    Runs the launcher's engines until asked to stop. An engine that dies is reported; with
    C{crashes}, it is started again on the same port (so its URI stays valid), after a back-off
    that doubles with each quick death (0.5 s up to L{MAX_BACKOFF}) and resets once it has run a
    minute. An engine that ended to stop a call is no crash: where the system can fork, its
    L{Keeper} starts it again by itself; elsewhere this supervisor does, at once, with or without
    C{crashes}.
    """

    def __init__(self, engines: List[EngineProcess], uri_file: Optional[str], stop_ns: Any = None,
                 restart: Optional[Any] = None, crashes: bool = False) -> None:
        self.engines = engines
        self.uri_file = uri_file
        self.stop_ns = stop_ns or (lambda: None)
        self.stopping = threading.Event()
        self.restart = restart  # restart(index, port) -> EngineProcess, or None: no restarts
        self.crashes = crashes
        self.restarts: Dict[int, int] = collections.defaultdict(int)
        self._started: Dict[int, float] = collections.defaultdict(time.monotonic)
        self._due: Dict[int, float] = {}

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            for index, engine in enumerate(self.engines):
                if index not in self._due and engine.process.returncode is None and not engine.alive():
                    self._died(index, engine)
            for index, due in sorted(self._due.items()):
                if time.monotonic() >= due and not self.stopping.is_set():
                    self._restart(index)

    def _died(self, index: int, engine: EngineProcess) -> None:
        code = engine.process.returncode
        backstop = _read_backstop(engine.sandbox)
        runaway = code == EXIT_RUNAWAY or backstop is not None  # only where there is no keeper
        if runaway:
            log.warning("engine %s (pid %d) ended itself to stop a call%s; a fresh engine starts at the same URI",
                        engine.uri, engine.pid, " that held the interpreter, at %s" % backstop if backstop else "")
        elif _CAN_FORK and code >= 0:
            log.debug("engine process %s (pid %d) ended with exit code %s", engine.uri, engine.pid, code)  # its keeper said why
        else:
            log.error("engine %s (pid %d) died with exit code %s", engine.uri, engine.pid, code)
        _remove_tree(engine.sandbox)
        if self.restart is None or not (runaway or self.crashes):
            return
        if time.monotonic() - self._started[index] > 60:
            self.restarts[index] = 0
        delay = 0.0 if runaway else min(MAX_BACKOFF, 0.5 * 2 ** self.restarts[index])
        self.restarts[index] += 0 if runaway else 1
        self._due[index] = time.monotonic() + delay
        log.info("restarting engine %s in %.1f s", engine.uri, delay)

    def _restart(self, index: int) -> None:
        old = self.engines[index]
        try:
            new = self.restart(index, wire.parse_uri(old.uri)[2])
        except SRPyError as exc:
            log.error("could not restart engine %s: %s", old.uri, exc)
            self._due[index] = time.monotonic() + min(MAX_BACKOFF, 0.5 * 2 ** self.restarts[index])
            self.restarts[index] += 1
            return
        del self._due[index]
        self.engines[index] = new
        self._started[index] = time.monotonic()
        log.info("engine restarted: %s (pid %d)", new.uri, new.pid)
        if new.uri != old.uri and self.uri_file:
            _write_uri_file(self.uri_file, [e.uri for e in self.engines])

    def stop(self) -> None:
        self.stopping.set()

    def shutdown(self) -> None:
        for engine in self.engines:
            code = engine.stop()
            _remove_tree(engine.sandbox)
            log.debug("engine %s stopped (exit code %s)", engine.uri, code)
        self.stop_ns()
        if self.uri_file:
            _remove_file(self.uri_file)


def _remove_tree(path: str) -> None:
    import shutil
    if path and os.path.basename(path).startswith("srpy-sandbox-"):
        shutil.rmtree(path, ignore_errors=True)


def _write_uri_file(path: str, uris: Sequence[str]) -> None:
    temporary = path + ".tmp-%d" % os.getpid()
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write("".join(uri + "\n" for uri in uris))
    os.replace(temporary, path)


def _banner(count: int, options: argparse.Namespace) -> str:
    return ("srpy %s - Simple Remote Python. %s\nHosting %d engine%s on %s%s. Stop with Ctrl-C%s."
            % (__version__, copyright, count, "" if count == 1 else "s", options.host,
               " (secret required)" if options.secret else "",
               " or 'quit'" if sys.stdin.isatty() else ""))


def _watch_quit(stop: Any) -> None:
    stdin = sys.__stdin__  # the console, even once user code got an empty sys.stdin
    if stdin is None or not stdin.isatty():
        return

    def reader() -> None:
        for line in stdin:
            if line.strip().lower() in ("quit", "exit", "q"):
                break
        else:
            return  # end of input does not stop a launcher
        stop()

    threading.Thread(target=reader, name="srpy-quit", daemon=True).start()


def run_multi(options: argparse.Namespace, count: int) -> int:
    """Start C{count} engine processes, print their URIs, supervise them until stopped."""
    names = ["%s-%d" % (options.name, i + 1) if options.name else "" for i in range(count)]
    ports = [options.port + i if options.port else 0 for i in range(count)]
    if options.python:
        check_python(options.python)
    commands = [child_command(options, names[i], ports[i], options.python) for i in range(count)]
    stop_ns = _maybe_start_ns(options)
    supervisor = Supervisor([], options.uri_file, stop_ns, _restarter(options, names), crashes=options.restart)
    _on_signals(supervisor.stop)  # from here on a signal is a clean stop, even while engines start
    try:
        supervisor.engines = engines = spawn_engines(commands, options.secret, options.ready_timeout)
    except BaseException:
        stop_ns()
        raise
    try:
        print(_banner(count, options))
        for engine in engines:
            print(engine.uri)
        sys.stdout.flush()
        if options.uri_file:
            _write_uri_file(options.uri_file, [e.uri for e in engines])
        _watch_quit(supervisor.stop)
        supervisor.run()
    finally:
        supervisor.shutdown()
    return 0


def _restarter(options: argparse.Namespace, names: List[str]) -> Any:
    """How the supervisor starts engine C{index} again, on C{port}: C{restart(index, port)}."""
    def restart(index: int, port: int) -> EngineProcess:
        command = child_command(options, names[index], port, options.python)
        return spawn_engines([command], options.secret, options.ready_timeout)[0]
    return restart


def check_python(python: str) -> None:
    """Make sure C{python} runs and has srpy (and its dependencies) importable."""
    try:
        # what an engine imports (srpy's façade alone loads nothing): its dependencies must be there too
        done = subprocess.run([python, "-c", "import srpy, srpy.engine, srpy.daemon; print(srpy.__version__)"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SRPyError("--python %s: cannot run it: %s" % (python, exc)) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise SRPyError("--python %s cannot host engines: it has no srpy (%s). Install srpy there first: %s"
                        % (python, last, install_hint(python)))


def install_hint(python: str) -> str:
    """
    The command that installs this srpy into C{python}: srpy is installed from its source
    directory (it is not on a package index), with pip, which a bare virtualenv may lack.
    """
    import shlex
    package = os.path.dirname(os.path.abspath(__file__))
    source = os.path.dirname(package)
    if not os.path.isfile(os.path.join(source, "setup.py")):  # an installed copy: its source is elsewhere
        source = "/path/to/srpy"
        where = " (the directory of srpy's setup.py)"
    else:
        where = ""
    command = "%s -m pip install %s" % (shlex.quote(python), shlex.quote(source))
    try:
        has_pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        has_pip = True  # it ran a moment ago: say the usual command
    if not has_pip:
        command = "%s -m ensurepip && %s" % (shlex.quote(python), command)
    return command + where


def _maybe_start_ns(options: argparse.Namespace) -> Any:
    """Start a name server when asked; returns the function that stops it (a no-op otherwise)."""
    if not options.start_ns:
        return lambda: None
    uri, stop = discovery.start_name_server(options.ns_host or options.host, options.ns_port or 9090,
                                            tls=_tls_options(options))
    options.ns_host = options.ns_host or options.host
    print("name server: %s" % uri)
    return stop


def run_basic(options: argparse.Namespace) -> int:
    """
    Serve one engine until stopped: in a child process this one forks and keeps (a L{Keeper}), so
    that an engine that ends to stop a call serves again at the same URI. With C{--restart} or
    C{--start-ns}, or where the system cannot fork, the engine is a supervised child process
    instead (L{run_multi} with one engine).
    """
    if options.python:
        raise SRPyError("--python needs engine processes: use it with -m or -n N")
    if options.restart or options.start_ns or not _CAN_FORK:
        return run_multi(options, 1)

    def ready(uri: Optional[str], sandbox: str, failure: str = "") -> None:
        if uri is None:
            raise SRPyError(failure)
        print(_banner(1, options))
        print(uri)
        sys.stdout.flush()
        if options.uri_file:
            _write_uri_file(options.uri_file, [uri])

    console = sys.__stdin__ is not None and sys.__stdin__.isatty()
    try:
        return Keeper(options, options.name, options.port).run(ready, watch_stdin="console" if console else None)
    finally:
        if options.uri_file:
            _remove_file(options.uri_file)


def _remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def configure_logging(debug: bool) -> None:
    """Log to stderr, one line per record, with the process id (engines share a console)."""
    logging.basicConfig(level=logging.DEBUG if debug and os.environ.get("SRPY_LOG_PYRO") else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
                        stream=sys.stderr)
    if not os.environ.get("SRPY_LOG_PYRO"):
        logging.getLogger("Pyro5").setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Entry point of C{srpyapp} / C{python srpyapp.py}; returns the exit code: 0 after a clean stop,
    2 for option values that are wrong in themselves (usage and one error line, as argparse does),
    1 when what an option names cannot be used or the engines cannot start (one error line).
    Everything is checked before any engine starts or any URI is printed.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["status"]:  # srpyapp status ...: what the engines are doing
        from . import status
        return status.main(args[1:])
    parser = build_parser()
    options = parser.parse_args(args)
    if not options.child:
        check_values(parser, options)
    if options.uri_file:
        options.uri_file = os.path.abspath(options.uri_file)  # engines change directory to their sandbox
    configure_logging(options.debug)
    if options.secret is None:
        options.secret = os.environ.get("SRPY_SECRET") or None
        if os.environ.get("SRPY_SECRET") == "" and not options.child:
            # the same rule as the client's: empty means unset (a shell's way to clear it), said aloud
            log.warning("SRPY_SECRET is set but empty: treated as unset, so these engines take no secret")
    try:
        if options.pyro_config:
            apply_pyro_config(options.pyro_config)
        if options.child:
            return run_child(options)
        check_files(options)
        if options.multi or options.engines:
            return run_multi(options, engine_count(options))
        return run_basic(options)
    except (SRPyError, OSError) as exc:
        if options.child:
            log.error("%s", exc)
        else:
            print("srpyapp: error: %s" % " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever it said
        return 1


if __name__ == "__main__":
    sys.exit(main())
