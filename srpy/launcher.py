"""
Hosting engines: C{python srpyapp.py} (or C{srpyapp}) and L{newSubEngine}.

Basic mode (C{-b}, the default) serves one engine in the launcher's own process. Multi mode (C{-m},
or C{-n N}) starts one engine process per core (or N) and supervises them.

How a child engine starts and stops, with no files polled and no orphans:
 - the launcher starts C{python -m srpy --child ...} with pipes for stdin and stdout;
 - the child binds its port, then writes one line C{SRPY-READY <uri> <sandbox>} (or
   C{SRPY-FAILED <reason>}) on stdout; the launcher waits for that line with a timeout;
 - the child treats end-of-file on its stdin as "stop": when the launcher exits, however it
   exits (even SIGKILL), the pipe closes and every child stops by itself.
"""

import argparse
import gc
import collections
import atexit
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import psutil
from Pyro5 import config as pyro_config

from . import __version__, codec, copyright, discovery, lite, peers
from .engine import EXIT_RUNAWAY, OBJECT_ID, Engine, capture_output
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
    mode.add_argument("-b", "--basic", action="store_true", help="one engine in this process (default)")
    mode.add_argument("-m", "--multi", action="store_true", help="one engine process per core")
    parser.add_argument("-n", "--engines", type=_positive_int, metavar="N",
                        help="number of engine processes (implies --multi)")
    parser.add_argument("-u", "--uri-file", metavar="FILE",
                        help="write the URIs to FILE once every engine answers (removed on exit)")
    parser.add_argument("-p", "--pyro-config", metavar="FILE", help="a Pyro5 configuration file (NAME = value lines)")
    parser.add_argument("-d", "--debug", action="store_true", help="log every call")
    parser.add_argument("-t", "--time", action="store_true", help="log every call's duration")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0,
                        help="port of the first engine (the next ones count up); default: any free port")
    parser.add_argument("--name", default="", help="engine name (multi mode appends -1, -2, ...)")
    parser.add_argument("--group", default="", help="group label of the engines")
    parser.add_argument("--secret", default=None,
                        help="shared secret clients must prove they know (default: $SRPY_SECRET)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow listening on a non-loopback address without a secret")
    parser.add_argument("--ns", action="store_true",
                        help="register the engines in a Pyro5 name server (found by --ns-host, or broadcast)")
    parser.add_argument("--start-ns", action="store_true",
                        help="start a Pyro5 name server in the launcher (implies --ns)")
    parser.add_argument("--ns-host", default=None, help="name server host (default: this machine, then broadcast)")
    parser.add_argument("--ns-port", type=int, default=None, help="name server port (default 9090)")
    parser.add_argument("--python", metavar="PATH", default=None,
                        help="host the engine processes in this Python (a virtualenv's, say); it must have srpy")
    parser.add_argument("--restart", action="store_true",
                        help="restart an engine that dies or stops a runaway call (with back-off), on the same port")
    parser.add_argument("--max-task-time", type=float, metavar="SECONDS", default=None,
                        help="stop any call that runs longer (the engine restarts: implies supervision)")
    parser.add_argument("--max-memory", type=float, metavar="MB", default=None,
                        help="memory each engine may use beyond its start-up size; a call that needs more "
                             "gets MemoryError")
    parser.add_argument("--max-message-size", type=float, metavar="MB", default=None,
                        help="refuse messages larger than this (default: Pyro5's 1 GiB)")
    parser.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA bundle that signs client certificates (and peers')")
    parser.add_argument("--tls-require-client-cert", action="store_true",
                        help="accept only clients with a certificate signed by --tls-ca")
    parser.add_argument("--ready-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
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


def apply_pyro_config(path: str) -> None:
    """Apply a Pyro5 configuration file: C{NAME = value} lines, C{#} comments."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, value = line.partition("=")
            name = name.strip().upper()
            if name.startswith("PYRO_"):
                name = name[5:]
            if not sep or not hasattr(pyro_config, name):
                raise SRPyError("%s line %d: not a Pyro5 setting: %r" % (path, number, line))
            setattr(pyro_config, name, _convert(getattr(pyro_config, name), value.strip()))


def _convert(current: Any, text: str) -> Any:
    if isinstance(current, bool):
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(current, (int, float)):
        return type(current)(text)
    if isinstance(current, (list, set)):
        return type(current)(v.strip() for v in text.split(","))
    return text


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
        peers.attach(self.engine)
        self.uri = str(self.daemon.register(self.engine, OBJECT_ID))
        self.engine.uri = self.uri
        os.chdir(self.engine.sandbox)  # tasks open uploaded files by relative path
        self._stop = threading.Event()
        self._ns: Optional[Tuple[str, Optional[str], Optional[int]]] = None

    def register(self, ns_host: Optional[str], ns_port: Optional[int]) -> None:
        """Register this engine in the Pyro5 name server (removed again when it stops)."""
        self._ns = (discovery.register(self.uri, Engine.whoami.__wrapped__(self.engine), ns_host, ns_port),
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
    """An engine process started by a launcher: report readiness on stdout, stop at stdin's end."""
    die_with_parent()  # killed by the kernel when the launcher ends, even if the interpreter is stuck
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
                 secret: Optional[str] = None, python: Optional[str] = None) -> Tuple[str, "subprocess.Popen[bytes]"]:
    """
    Start one local engine process; return C{(uri, process)} once it answers. The process stops
    when L{stopSubEngine} is called, when this program exits, or when this process dies.
    """
    options = argparse.Namespace(host=host, group=group, debug=False, time=False, insecure=False, pyro_config=None)
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
    C{restart}, it is started again on the same port (so its URI stays valid), after a back-off
    that doubles with each quick death (0.5 s up to L{MAX_BACKOFF}) and resets once it has run a minute.
    """

    def __init__(self, engines: List[EngineProcess], uri_file: Optional[str], stop_ns: Any = None,
                 restart: Optional[Any] = None) -> None:
        self.engines = engines
        self.uri_file = uri_file
        self.stop_ns = stop_ns or (lambda: None)
        self.stopping = threading.Event()
        self.restart = restart  # restart(index, port) -> EngineProcess, or None: no restarts
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
        reason = "stopped a runaway call" if code == EXIT_RUNAWAY else "died with exit code %s" % code
        log.error("engine %s (pid %d) %s", engine.uri, engine.pid, reason)
        _remove_tree(engine.sandbox)
        if self.restart is None:
            return
        if time.monotonic() - self._started[index] > 60:
            self.restarts[index] = 0
        delay = min(MAX_BACKOFF, 0.5 * 2 ** self.restarts[index]) if code != EXIT_RUNAWAY else 0.0
        self.restarts[index] += 1
        self._due[index] = time.monotonic() + delay
        log.info("restarting engine %s in %.1f s", engine.uri, delay)

    def _restart(self, index: int) -> None:
        old = self.engines[index]
        try:
            new = self.restart(index, lite.parse_uri(old.uri)[2])
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
            try:
                os.remove(self.uri_file)
            except FileNotFoundError:
                pass


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
    restart = _restarter(options, names) if options.restart or options.max_task_time else None
    supervisor = Supervisor([], options.uri_file, stop_ns, restart)
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
        done = subprocess.run([python, "-c", "import srpy, sys; print(srpy.__version__)"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SRPyError("cannot run the Python at %s: %s" % (python, exc)) from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise SRPyError("the Python at %s cannot host engines: it has no srpy (%s). Install srpy "
                        "there first: %s -m pip install srpy" % (python, last, python))


def _maybe_start_ns(options: argparse.Namespace) -> Any:
    """Start a name server when asked; returns the function that stops it (a no-op otherwise)."""
    if not options.start_ns:
        return lambda: None
    uri, stop = discovery.start_name_server(options.ns_host or options.host, options.ns_port or 9090)
    options.ns_host = options.ns_host or options.host
    print("name server: %s" % uri)
    return stop


def run_basic(options: argparse.Namespace) -> int:
    """Serve one engine in this process until stopped (a supervised child, when it must restart)."""
    if options.restart or options.max_task_time:
        return run_multi(options, 1)  # a runaway call is stopped by restarting: that needs a supervisor
    if options.python:
        raise SRPyError("--python needs engine processes: use it with -m or -n N")
    stop_ns = _maybe_start_ns(options)
    try:
        server = _start_server(options, options.name, options.port)
    except BaseException:
        stop_ns()
        raise
    _on_signals(server.stop)  # before the URI is out: a client may signal as soon as it reads it
    print(_banner(1, options))
    print(server.uri)
    sys.stdout.flush()
    capture_output()
    try:
        if options.uri_file:
            _write_uri_file(options.uri_file, [server.uri])
        _watch_quit(server.stop)
        server.serve()
    finally:
        stop_ns()
        if options.uri_file and os.path.exists(options.uri_file):
            os.remove(options.uri_file)
    return 0


def configure_logging(debug: bool) -> None:
    """Log to stderr, one line per record, with the process id (engines share a console)."""
    logging.basicConfig(level=logging.DEBUG if debug and os.environ.get("SRPY_LOG_PYRO") else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
                        stream=sys.stderr)
    if not os.environ.get("SRPY_LOG_PYRO"):
        logging.getLogger("Pyro5").setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of C{srpyapp} / C{python srpyapp.py}; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["status"]:  # srpyapp status ...: what the engines are doing
        from . import status
        return status.main(args[1:])
    parser = build_parser()
    options = parser.parse_args(args)
    if options.basic and options.engines:
        parser.error("-b/--basic hosts one engine in this process; -n N needs -m/--multi (or no -b)")
    if options.uri_file:
        options.uri_file = os.path.abspath(options.uri_file)  # engines change directory to their sandbox
    if options.secret is None:
        options.secret = os.environ.get("SRPY_SECRET") or None
    configure_logging(options.debug)
    try:
        if options.pyro_config:
            apply_pyro_config(options.pyro_config)
        if options.child:
            return run_child(options)
        if options.multi or options.engines:
            return run_multi(options, options.engines or detectNCPUs())
        return run_basic(options)
    except SRPyError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
