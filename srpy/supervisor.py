"""
The engine processes of C{srpyapp} and L{srpy.newSubEngine}: starting them, waiting until they
serve, supervising them, restarting them, stopping them, with no files polled and no orphans.

The protocol between a launcher and each engine process it starts:
 - the engine process has pipes for stdin and stdout to its launcher: it is forked from the
   launcher (L{start_engines}), or started as C{python -m srpy --child ...};
 - it binds its port, then writes one line C{SRPY-READY <uri> <sandbox>} (or
   C{SRPY-FAILED <reason>}) on stdout; the launcher waits for that line with a timeout;
 - it treats end-of-file on its stdin as "stop": when the launcher exits, however it exits
   (even SIGKILL), the pipe closes and every engine process stops by itself.

How an engine comes back after a time limit ended it (L{srpy.watch.CallWatch}): the engine
process is a L{Keeper} that forks the engine itself (an I{incarnation}, served by
L{srpy.hosting}) and forks a fresh one, on the same port, when the engine ends to stop a call;
any other end is passed on, for the L{Supervisor} to report and (with C{--restart}, after a
back-off) restart. Without C{fork} (Windows), the supervisor restarts such an engine itself, at
once::

    srpyapp (basic) = Keeper ---fork---> engine
    srpyapp -n N    = Supervisor --fork (or exec: python -m srpy --child)--> N x Keeper ---fork---> engine
    newSubEngine()  --exec: python -m srpy --child--> Keeper ---fork---> engine

Package-internal: L{srpy.cli} and L{srpy.subengine} use it; the public entry points are theirs.
"""

import argparse
import collections
import gc
import logging
import os
import re
import selectors
import signal
import socket
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple, Union

from . import wire
from .errors import SRPyError

if TYPE_CHECKING:
    import subprocess  # imported where used: a launcher that forks its engines starts no program

log = logging.getLogger("srpy.supervisor")

READY = "SRPY-READY"
FAILED = "SRPY-FAILED"
#: longest wait before restarting an engine that keeps dying
MAX_BACKOFF = 30.0
#: seconds a stopping child gets before it is terminated, then killed
STOP_GRACE = 3.0
#: True where an engine process can fork its engine (and so restart it by itself)
CAN_FORK = hasattr(os, "fork") and hasattr(os, "waitpid")
#: seconds between the keeper's tries to start a fresh engine that failed to start (port not yet free)
_RESTART_RETRIES = (0.1, 0.3, 1.0, 2.0, 5.0)


# -- the engine process: a keeper, or (without fork) the engine itself ------------------------------

def run_child(options: argparse.Namespace) -> int:
    """
    The main of an engine process started by a launcher or L{srpy.newSubEngine}: report
    readiness on stdout, stop at stdin's end. Where the system can fork, this process is the
    engine's L{Keeper}, so that an engine that ends to stop a call serves again at once at the
    same URI; elsewhere it serves the engine itself.
    """
    from .orphans import die_with_parent
    die_with_parent()  # killed by the kernel when the launcher ends, even if the interpreter is stuck
    if CAN_FORK:
        return Keeper(options, options.name, options.port).run(_report_to_launcher, watch_stdin="eof")
    from . import hosting
    stopping = threading.Event()
    on_signals(stopping.set)  # before READY: a signal that comes early still stops us cleanly
    return hosting.serve(options, options.name, options.port, _report_to_launcher, stopping)


def _report_line(uri: Optional[str], sandbox: str, failure: str = "") -> bytes:
    """
    The one line an engine process says when it is ready (URI and sandbox) or cannot start (why).

    >>> _report_line("PYRO:srpy.engine@127.0.0.1:9999", "/tmp/srpy-sandbox-x")
    b'SRPY-READY PYRO:srpy.engine@127.0.0.1:9999 /tmp/srpy-sandbox-x\\n'
    """
    line = "%s %s %s\n" % (READY, uri, sandbox) if uri else "%s %s\n" % (FAILED, failure)
    return line.encode("utf-8")


def _report_to_launcher(uri: Optional[str], sandbox: str, failure: str = "") -> None:
    """The engine process's one line to its launcher (on stdout, which then leads to stderr)."""
    os.write(1, _report_line(uri, sandbox, failure))
    os.dup2(2, 1)  # nothing else may ever block on the launcher's pipe


class Keeper:
    """
    One engine, hosted in a forked child process (an I{incarnation}), started again when it
    ends to stop a call. How the pieces fit::

        launcher / newSubEngine --stdin, stdout--> keeper --fork--> incarnation (the engine)
                                                     ^  stop pipe (EOF: stop) -->|
                                                     |<-- report pipe: READY uri sandbox

     - the keeper loads the engine (L{srpy.hosting}), then forks before it ever starts a
       thread, so each incarnation starts in milliseconds from an already loaded interpreter;
     - an incarnation that exits with L{srpy.engine.EXIT_RUNAWAY} (its watchdog ended it) or whose
       faulthandler backstop fired (L{srpy.watch.BACKSTOP_FILE} in its sandbox is not empty) is
       replaced at once on the same port: a limit's restart needs no flag and is no crash;
     - any other exit is passed through as the keeper's own exit code (a signal N as 128+N),
       so that a supervising launcher's C{--restart} (with back-off) handles real crashes;
     - each dead incarnation's sandbox is removed; the stacks faulthandler wrote become one
       log line (the innermost user frame); the environment it had active
       (L{srpy.environments.ACTIVE_FILE}) is activated in the incarnation that replaces it;
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
        from . import hosting  # noqa: F401 - once here: each incarnation starts with the engine loaded
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
        """One turn of the loop: reap, stop or fork as due, then wait for the next event."""
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
        """React to the launcher's pipe (its end: stop) or the console ('quit': stop)."""
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
        """The incarnation's line: ready (the URI to keep) or failed (why)."""
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
        """Fork an incarnation, with its report and stop pipes."""
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
        """If the incarnation ended: why, and what follows (a fresh one, a retry, or the keeper's end)."""
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 0
        if pid == 0:
            return
        from .watch import EXIT_RUNAWAY  # loaded already: the keeper loads the engine before it forks
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        dead = self.pid
        # what it said before it ended comes first (its FAILED line names why): the loop may see
        # the end before the line, and the pipe of a process that ended never blocks
        while self._report >= 0 and self.exit_code is None:
            self._read_report()
        if self.exit_code is not None:  # it failed to start, and said why
            self._end_incarnation()
            return
        backstop = _read_backstop(self.sandbox)
        if self.sandbox:  # the fresh engine, forked from this process, activates the same environment
            from .environments import noted
            self.options.active_environment = noted(self.sandbox) or getattr(self.options, "active_environment", None)
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
        """Close the keeper's end of the incarnation's report pipe."""
        if self._report >= 0:
            self._selector.unregister(self._report)
            os.close(self._report)
            self._report = -1


def _incarnation(options: argparse.Namespace, name: str, port: int, report: int, stop: int, keeper: int) -> int:
    """The forked engine: serve until the stop pipe (its stdin now) ends or a signal comes."""
    from . import hosting
    from .orphans import die_with_parent
    die_with_parent()  # forked by the keeper's main thread: it ends with the keeper, however that ends
    os.dup2(stop, 0)
    os.close(stop)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stopping = threading.Event()
    on_signals(stopping.set)
    if os.getppid() != keeper:  # the keeper died before the parent-death signal was set
        return 0

    def announce(uri: Optional[str], sandbox: str, failure: str = "") -> None:
        os.write(report, _report_line(uri, sandbox, failure))
        os.close(report)

    return hosting.serve(options, name, port, announce, stopping)


def _signal_process(pid: int, signum: int) -> None:
    """Send C{signum} to C{pid}, if it still runs."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _drain(fd: int) -> None:
    """Read a non-blocking descriptor empty."""
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
    from .watch import BACKSTOP_FILE, user_frame  # an engine ended: what the engine wrote is the engine's
    path = os.path.join(sandbox, BACKSTOP_FILE) if sandbox else ""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 20)
    except OSError:
        return None
    if not text.strip():
        return None
    # one block per thread, innermost frame first; the call's thread is the one inside srpy's wrapper
    blocks = [[(m.group(1), m.group(2), m.group(3)) for m in map(_FRAME_LINE.match, block.splitlines()) if m]
              for block in re.split(r"\n(?=Thread 0x|Current thread 0x)", text)]
    calls = [b for b in blocks if any(f[2] == "wrapper" and os.path.basename(f[0]) == "calls.py" for f in b)]  # srpy.calls.engine_call
    chosen = (calls or [b for b in blocks if b] or [[]])[0]
    try:
        os.remove(path)
    except OSError:
        pass
    return user_frame(chosen)


def on_signals(stop: Callable[[], Any]) -> None:
    """SIGTERM and SIGINT call C{stop} (in a thread of its own: a handler must not block)."""
    def handler(signum: int, frame: Any) -> None:
        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# -- engine processes started by a launcher --------------------------------------------------------

class _ForkedKeeper:
    """
    An engine process this launcher forked (see L{start_engines}), with the part of
    C{subprocess.Popen}'s interface the launcher uses: C{pid}, C{stdin} (its end is the engine
    process's "stop"), C{stdout} (its ready line), C{returncode}, C{poll}, C{wait}, C{terminate},
    C{kill}.
    """

    def __init__(self, pid: int, stdin: int, stdout: int) -> None:
        self.pid = pid
        self.stdin: Optional[IO[bytes]] = os.fdopen(stdin, "wb", buffering=0)
        self.stdout: Optional[IO[bytes]] = os.fdopen(stdout, "rb", buffering=0)
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        """Its exit code if it has ended (reaping it), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped already: nothing says how it ended
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N for signal N, as Popen says
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        """Its exit code, once it has ended; C{subprocess.TimeoutExpired} after C{timeout} seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                import subprocess
                raise subprocess.TimeoutExpired("engine process %d" % self.pid, timeout or 0.0)
            time.sleep(pause)  # only while it stops: readiness comes by its pipe, never by polling
            pause = min(2 * pause, 0.05)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            _signal_process(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


#: a child engine process: started with exec (C{Popen}), or forked from this launcher
ChildProcess = Union["subprocess.Popen[bytes]", _ForkedKeeper]


class EngineProcess:
    """A child engine process and what it reported when it became ready."""

    def __init__(self, process: ChildProcess, uri: str, sandbox: str) -> None:
        self.process = process
        self.uri = uri
        self.sandbox = sandbox
        self.pid = process.pid

    def alive(self) -> bool:
        """Whether the engine process still runs."""
        return self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> Optional[int]:
        """Ask the engine to stop (close its stdin); terminate, then kill, if it does not."""
        return stop_process(self.process, grace)


def stop_process(process: ChildProcess, grace: float = STOP_GRACE) -> Optional[int]:
    """Stop a child engine: end of its stdin, then SIGTERM, then SIGKILL. Returns its exit code."""
    import subprocess
    attempts: List[Callable[[], None]] = [lambda: _close_stdin(process), process.terminate, process.kill]
    for attempt in attempts:
        if process.poll() is not None:
            break
        try:
            attempt()
        except OSError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            continue
    _close_stdin(process)  # if it had ended by itself
    if process.stdout:
        process.stdout.close()
    return process.wait()


def _close_stdin(process: ChildProcess) -> None:
    """Close our end of the child's stdin: its signal to stop."""
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


def start_engines(options: argparse.Namespace, names: Sequence[str], ports: Sequence[int], timeout: float,
                  cores: int = 1) -> List[EngineProcess]:
    """
    Start the launcher's engine processes, one per name and port, and wait for each one's ready
    line (all in parallel). Where it is safe (L{_may_fork}), each is forked from this process:
    no interpreter to start. The first C{cores} load the engine themselves, at once, one a core;
    for any more, this process loads it once and forks them with it loaded. Where it is not
    safe, each is a new interpreter (C{python -m srpy --child}, in C{--python} if given).

    @param cores: how many processes may load the engine at the same time (the usable cores).
    @raise SRPyError: an engine failed or stayed silent (those that started are stopped).
    """
    if not _may_fork(options):
        commands = [child_command(options, name, port, options.python) for name, port in zip(names, ports)]
        return spawn_engines(commands, options.secret, timeout)
    processes: List[ChildProcess] = []
    try:
        for index, (name, port) in enumerate(zip(names, ports)):
            if index == max(1, cores):
                from . import hosting  # noqa: F401 - the later keepers fork with the engine loaded
            processes.append(_fork_keeper(options, name, port))
    except BaseException:
        _stop_all(processes)
        raise
    return _ready_or_stopped(processes, timeout)


def spawn_engines(commands: Sequence[List[str]], secret: Optional[str], timeout: float,
                  environment: Optional[Dict[str, str]] = None) -> List[EngineProcess]:
    """
    Start the engine processes as new interpreters (C{commands}, from L{child_command}) and wait
    for each one's ready line (all in parallel). If any fails or times out, stop those that
    started and raise L{SRPyError} with its reason.

    @param environment: variables the processes get beside this process's own.
    """
    import subprocess
    env = dict(os.environ, **(environment or {}))
    if secret:
        env["SRPY_SECRET"] = secret  # the secret goes by environment, never on a command line
    else:
        env.pop("SRPY_SECRET", None)
    processes: List[ChildProcess] = []
    try:
        for command in commands:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            _note_pipes(process)
            processes.append(process)
    except BaseException:
        _stop_all(processes)
        raise
    return _ready_or_stopped(processes, timeout)


def _may_fork(options: argparse.Namespace) -> bool:
    """
    Whether the launcher may fork its engine processes: it can fork, it is one thread (a fork
    copies a lock another thread holds, held forever), the engines run in this Python, and the
    secret is not on the command line (a forked process shows the launcher's command line;
    started anew, it gets the secret by its environment).
    """
    secret = getattr(options, "secret", None)
    return (CAN_FORK and not getattr(options, "python", None) and threading.active_count() == 1
            and not (secret and any(secret in argument for argument in sys.argv)))


#: the launcher's ends of the pipes to its engine processes: a forked one must not hold the others'
_pipes: List[IO[bytes]] = []


def _note_pipes(process: ChildProcess) -> None:
    """Remember the launcher's ends of a new engine process's pipes (forgetting closed ones)."""
    _pipes[:] = [pipe for pipe in _pipes if not pipe.closed]
    _pipes.extend(pipe for pipe in (process.stdin, process.stdout) if pipe is not None)


def _fork_keeper(options: argparse.Namespace, name: str, port: int) -> _ForkedKeeper:
    """Fork an engine process: a L{Keeper} of the engine C{name} on C{port}, talking on two pipes."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()  # or the child would write what this process buffered a second time
    pid = os.fork()
    if pid == 0:
        _keeper_main(argparse.Namespace(**dict(vars(options), name=name, port=port)), stdin_r, stdout_w,
                     [stdin_w, stdout_r])
    os.close(stdin_r)
    os.close(stdout_w)
    process = _ForkedKeeper(pid, stdin_w, stdout_r)
    _note_pipes(process)
    return process


def _keeper_main(options: argparse.Namespace, stdin: int, stdout: int, foreign: List[int]) -> NoReturn:
    """In a forked engine process: stdin and stdout become its pipes to the launcher, then L{run_child}."""
    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)  # the launcher's handlers are not ours; the keeper sets its own
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        for fd in [stdin, stdout] + foreign:
            os.close(fd)
        for pipe in _pipes:  # the other engine processes' pipes: holding them would keep them from their EOF
            pipe.close()
        code = run_child(options)
    except BaseException:  # noqa: B902 - nothing may unwind into the launcher's stack
        log.exception("engine process failed")
    finally:
        logging.shutdown()
        os._exit(code)


def _ready_or_stopped(processes: List[ChildProcess], timeout: float) -> List[EngineProcess]:
    """L{_await_ready}; if that fails, stop them all."""
    try:
        return _await_ready(processes, timeout)
    except BaseException:
        _stop_all(processes)
        raise


def _stop_all(processes: Sequence[ChildProcess]) -> None:
    """Stop engine processes that could not all start (1 s grace each)."""
    for process in processes:
        stop_process(process, 1.0)


def _await_ready(processes: List[ChildProcess], timeout: float) -> List[EngineProcess]:
    """
    Wait for every process's first line, all at once, on their pipes (no polling); the ready
    ones as L{EngineProcess}es.

    @raise SRPyError: one failed, ended or stayed silent for C{timeout} seconds.
    """
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


# -- the launcher's supervisor ---------------------------------------------------------------------

class Supervisor:
    """
    Runs the launcher's engines until asked to stop. An engine that dies is reported; with
    C{crashes}, it is started again on the same port (so its URI stays valid), after a back-off
    that doubles with each quick death (0.5 s up to L{MAX_BACKOFF}) and resets once it has run a
    minute. An engine that ended to stop a call is no crash: where the system can fork, its
    L{Keeper} starts it again by itself; elsewhere this supervisor does, at once, with or without
    C{crashes}.
    """

    def __init__(self, engines: List[EngineProcess], uri_file: Optional[str],
                 stop_ns: Optional[Callable[[], None]] = None,
                 restart: Optional[Callable[[int, int], EngineProcess]] = None, crashes: bool = False) -> None:
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
        """Watch the engines (four times a second) until L{stop}: report deaths, restart when due."""
        while not self.stopping.wait(0.25):
            for index, engine in enumerate(self.engines):
                if index not in self._due and engine.process.returncode is None and not engine.alive():
                    self._died(index, engine)
            for index, due in sorted(self._due.items()):
                if time.monotonic() >= due and not self.stopping.is_set():
                    self._restart(index)

    def _died(self, index: int, engine: EngineProcess) -> None:
        """Report engine C{index}'s end; schedule its restart if it is to have one."""
        from .watch import EXIT_RUNAWAY
        code = engine.process.wait()  # it has ended: this is its exit code at once
        backstop = _read_backstop(engine.sandbox)
        runaway = code == EXIT_RUNAWAY or backstop is not None  # only where there is no keeper
        if runaway:
            log.warning("engine %s (pid %d) ended itself to stop a call%s; a fresh engine starts at the same URI",
                        engine.uri, engine.pid, " that held the interpreter, at %s" % backstop if backstop else "")
        elif CAN_FORK and code >= 0:  # its keeper said why
            log.debug("engine process %s (pid %d) ended with exit code %s", engine.uri, engine.pid, code)
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
        """Start engine C{index} again on its port; if that fails, try later (with back-off)."""
        old = self.engines[index]
        assert self.restart is not None  # nothing is due without it
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
            write_uri_file(self.uri_file, [e.uri for e in self.engines])

    def stop(self) -> None:
        """Make L{run} return (from any thread or signal handler)."""
        self.stopping.set()

    def shutdown(self) -> None:
        """Stop every engine, the name server and remove the URI file."""
        for engine in self.engines:
            code = engine.stop()
            _remove_tree(engine.sandbox)
            log.debug("engine %s stopped (exit code %s)", engine.uri, code)
        self.stop_ns()
        if self.uri_file:
            remove_file(self.uri_file)


def _remove_tree(path: str) -> None:
    """Remove an engine's sandbox (only a directory named as srpy names them)."""
    import shutil
    if path and os.path.basename(path).startswith("srpy-sandbox-"):
        shutil.rmtree(path, ignore_errors=True)


def write_uri_file(path: str, uris: Sequence[str]) -> None:
    """Write the URIs, one a line, in one step: a reader sees no file or the whole file."""
    temporary = path + ".tmp-%d" % os.getpid()
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write("".join(uri + "\n" for uri in uris))
    os.replace(temporary, path)


def remove_file(path: str) -> None:
    """Remove a file that may be gone already."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
