"""
Engines on other machines, started over SSH: L{SSHCluster}, and C{srpyapp ssh HOST...}.

    >>> import srpy
    >>> srpy.SSHCluster.__name__
    'SSHCluster'

A cluster runs the system's OpenSSH client once per host (C{ssh HOST python3 -c ...}, with
C{BatchMode=yes}: it never prompts), so the user's keys, agent, C{~/.ssh/config}, jump hosts and
known_hosts apply. A host needs only C{python3} and an SSH server:

 - B{bootstrap}: the client packs srpy and its pure-Python dependencies (Pyro5, serpent) into one
   zip, named by the SHA-256 of its contents (L{build_dist}). The script on the host
   (L{srpy.sshbootstrap}, sent on ssh's stdin) looks for that zip in its cache
   (C{~/.cache/srpy/dist/<hash>.zip}), asks for it if it is missing, unpacks it beside it, and runs
   the launcher from there (C{python3 ~/.cache/srpy/dist/<hash> -n N --host ADDR}). A host with
   another srpy, or none, runs the client's; a second start finds the zip cached, sends nothing,
   and finds the bytecode the first start compiled. psutil (compiled) is not
   shipped: on Linux an engine serves without it; only C{srpyapp status}, C{--max-memory} and a
   non-Linux core count need it, and use the host's own psutil if it has one.
 - B{secret}: a fresh random one per cluster, sent in the JSON line on ssh's stdin and handed to the
   launcher in its environment: never on a command line (C{ps} does not show it).
 - B{binding}: the engines listen on the address the client reached the host on (the server side
   of C{$SSH_CONNECTION} there), and report their URIs back on ssh's stdout; the client checks it
   reaches each of them (a TCP connection), so that a firewalled host fails in one line.
 - B{tunnel mode} (C{tunnel=True}, for hosts whose ports the client cannot reach): the engines
   listen on a loopback address of the host's own, and the client reaches them through port
   forwards that the host's ssh, a ControlMaster, carries (L{srpy.sshtunnel}).
 - B{lifecycle}: each host's ssh stays open while the cluster lives. Its end (L{SSHCluster.close},
   the client exiting, or the client killed: the pipe to ssh closes, ssh ends the session) reaches
   the host as the end of stdin; the script there stops the launcher, which stops its engines and
   removes their sandboxes. A B{heartbeat} covers a link cut without a word: a thread of the cluster
   writes a byte to each host every C{heartbeat / 6} seconds (5 s), each host answers it, and a host
   that hears nothing for C{heartbeat} seconds (30 s) stops its engines by itself; the client marks
   a host that stopped answering L{lost<RemoteHost.lost>}.
 - B{failures}: a host that cannot be reached, or lacks python3, is one line in L{SSHCluster.failed}
   (and a warning in the log) while the other hosts start; when no host starts, or with
   C{require_all=True} when any fails, the cluster raises L{ClusterHostError} instead.

doc/cluster.md walks through it.
"""

import argparse
import atexit
import hashlib
import io
import json
import logging
import os
import queue
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import zipfile
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from . import sshtunnel
from .errors import ClusterHostError, SRPyError

if TYPE_CHECKING:
    from .box import EngBox
    from .clustertls import ClusterCA

log = logging.getLogger("srpy.cluster")

#: what the zip's __main__ runs: the launcher, from the zip
_ZIP_MAIN = b"import sys\nfrom srpy.cli import main\nsys.exit(main())\n"
#: the packages and modules the zip carries, besides srpy: srpy's pure-Python dependencies
SHIPPED = ("Pyro5", "serpent")
#: seconds a stopped host's ssh has to end by itself (its launcher stopping its engines) before it is killed
STOP_WAIT = 30.0
#: seconds a host waits without a heartbeat from the client before it stops its engines (SSHCluster's heartbeat)
HEARTBEAT_TIMEOUT = 30.0
#: heartbeats per HEARTBEAT_TIMEOUT: one every 5 s by default, so that five may be lost or late
BEATS = 6

PythonSpec = Union[str, Sequence[str]]


def _short_temp() -> Optional[str]:
    """Where the ssh masters' sockets go: the temporary folder, or /tmp when its path is too long for a socket."""
    folder = tempfile.gettempdir()
    return "/tmp" if len(folder) > 60 and os.path.isdir("/tmp") else None


def build_dist() -> Tuple[bytes, str]:
    """
    The zip a host runs srpy from, and its SHA-256 in hex: srpy's package and L{SHIPPED}, their
    C{.py} files only, with fixed dates, so that the same sources make the same zip (and hash).

    >>> data, digest = build_dist()
    >>> digest == hashlib.sha256(data).hexdigest() and build_dist()[1] == digest
    True
    >>> names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    >>> "__main__.py" in names and "srpy/cli.py" in names and "Pyro5/core.py" in names and "serpent.py" in names
    True
    """
    import importlib
    files: Dict[str, str] = {}
    for name in ("srpy",) + SHIPPED:
        module = importlib.import_module(name)
        path = getattr(module, "__file__", None)
        if not path:
            raise ClusterHostError("cannot ship %s: it has no file here" % name)
        if os.path.basename(path) == "__init__.py":
            root = os.path.dirname(path)
            for folder, subfolders, names in os.walk(root):
                subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
                for file in names:
                    if file.endswith(".py"):
                        full = os.path.join(folder, file)
                        files[name + "/" + os.path.relpath(full, root).replace(os.sep, "/")] = full
        else:
            files[os.path.basename(path)] = path
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("__main__.py", (1980, 1, 1, 0, 0, 0)), _ZIP_MAIN)
        for arcname in sorted(files):
            with open(files[arcname], "rb") as handle:
                info = zipfile.ZipInfo(arcname, (1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, handle.read())
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def _bootstrap_script() -> bytes:
    """The text of L{srpy.sshbootstrap}, as sent to a host (read as package data: works from a zip too)."""
    import pkgutil
    data = pkgutil.get_data("srpy", "sshbootstrap.py")
    assert data is not None  # srpy's own file: there wherever srpy is
    return data


def remote_command(python: PythonSpec) -> str:
    """
    The command ssh hands to the host's shell: C{python} (a command line, or its words) running
    the loader. Every word is quoted for a POSIX shell.

    >>> remote_command("python3 -I")
    "python3 -I -c 'import sys;i=sys.stdin.buffer;exec(i.read(int(i.readline())))'"
    """
    from .sshbootstrap import LOADER
    words = shlex.split(python) if isinstance(python, str) else list(python)
    if not words:
        raise ValueError("python: give the command that runs Python 3 on the host, such as 'python3'")
    return " ".join(shlex.quote(word) for word in words + ["-c", LOADER])


def ssh_command(host: str, python: PythonSpec, ssh: str = "ssh", ssh_options: Sequence[str] = (),
                connect_timeout: float = 15.0, control_path: Optional[str] = None) -> List[str]:
    """
    The argv of one host's ssh: the user's options first (ssh keeps the first value it is given
    for an option), then srpy's: never prompt, give up connecting after C{connect_timeout}
    seconds, notice a host that stops answering, no terminal. With C{control_path} (tunnel mode)
    it is also the ControlMaster that later carries the engines' port forwards
    (L{srpy.sshtunnel}), listening for them there, and ending with its session.

    >>> ssh_command("alice@node1", "python3")[-2:]
    ['alice@node1', "python3 -c 'import sys;i=sys.stdin.buffer;exec(i.read(int(i.readline())))'"]
    >>> ssh_command("node1", "python3", control_path="/tmp/m")[1:7]
    ['-o', 'ControlMaster=yes', '-o', 'ControlPath=/tmp/m', '-o', 'ControlPersist=no']
    """
    if not host or host.startswith("-"):
        raise ValueError("not a host: %r" % (host,))
    master = [] if control_path is None else ["-o", "ControlMaster=yes", "-o",
                                              "ControlPath=" + control_path.replace("%", "%%"),
                                              "-o", "ControlPersist=no"]
    return ([ssh] + master + [str(option) for option in ssh_options]
            + ["-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % max(1, round(connect_timeout)),
               "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-T", "--", host,
               remote_command(python)])


class RemoteHost:
    """
    One host of a cluster: its ssh process, the engines' URIs it reported, where its zip came from.

    @ivar host: the host as given (C{user@name}, a name, an alias of ~/.ssh/config).
    @ivar uris: its engines' URIs, once started, as this client reaches them (in tunnel mode, the
        forwards' ends here).
    @ivar engine_uris: its engines' URIs as they know themselves on the host (the same as C{uris}
        but for a tunneled engine whose port was taken here).
    @ivar tunnel: in tunnel mode, the loopback address its engines listen on (there and here); else None.
    @ivar lost: True once the host has not answered heartbeats for the cluster's C{heartbeat} seconds
        (its engines stop by themselves there).
    @ivar cache: C{"have"} (the zip was cached on the host) or C{"stored"} (it was sent now).
    @ivar dist_path: the folder on the host that srpy runs from (the zip, unpacked: C{dist_path + ".zip"}).
    @ivar seconds: how long its start took.
    @ivar phases: when, in seconds from the start, each step ended: C{"boot"} (ssh connected and the
        host's Python runs the bootstrap), C{"dist"} (the zip found in the cache, or sent), C{"up"}
        (every engine's URI reported).
    """

    def __init__(self, host: str, argv: List[str], tunnel: Optional[str] = None,
                 forwarding: Optional[Tuple[str, Sequence[str], str]] = None, probe_timeout: float = 0.0) -> None:
        self.host = host
        self.argv = argv
        self.tunnel = tunnel
        self._forwarding = forwarding  # (ssh, ssh options, control path) of the master that forwards
        self._probe_timeout = probe_timeout
        self.uris: List[str] = []
        self.engine_uris: List[str] = []
        self.cache = ""
        self.dist_path = ""
        self.seconds = 0.0
        self.phases: Dict[str, float] = {}
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stderr: Deque[str] = deque(maxlen=20)
        self._threads: List[threading.Thread] = []
        self._up = False
        self._beating = False  # the engines are up: heartbeats go to the host
        self._closing = False
        self.heard = time.monotonic()  # when the host last said anything (its answers to heartbeats, say)
        self.lost = False  # the heartbeat thread found it silent: its engines stop by themselves there
        self._stopped_at: Optional[float] = None  # when the host said its engines are stopped (SRPY-STOPPED)
        self.beat_every: Optional[float] = None  # seconds between heartbeats (set by the cluster)

    def start(self, header: Dict[str, Any], dist: bytes, script: bytes, timeout: float,
              tls: Optional["ClusterCA"] = None) -> None:
        """
        Run ssh, bootstrap the host, wait for its engines' URIs. With C{tls}, the host asks for its
        certificate (for the address its engines listen on), which C{tls} makes and signs now.

        @raise ClusterHostError: one line naming the host and why it could not start engines.
        """
        began = time.monotonic()
        deadline = began + timeout
        try:
            # a session of its own: Ctrl-C in the terminal reaches the client, which closes the cluster
            # in order, not ssh, which would drop the hosts at once
            self.process = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise self._error("cannot run %s: %s" % (self.argv[0], exc.strerror or exc)) from None
        self._pump(self.process.stdout, self._on_stdout, "out")
        self._pump(self.process.stderr, self._on_stderr, "err")
        try:
            self._send(b"%d\n" % len(script) + script + json.dumps(header).encode("utf-8") + b"\n")
            self._expect("SRPY-BOOT", deadline)
            self.phases["boot"] = time.monotonic() - began
            answer = self._expect("SRPY-CACHE", deadline).split(" ", 2)  # a path may hold spaces
            if answer[1] == "need":
                self._send(dist)
                answer = self._expect("SRPY-CACHE", deadline).split(" ", 2)
            self.phases["dist"] = time.monotonic() - began
            self.cache, self.dist_path = answer[1], answer[2] if len(answer) > 2 else ""
            if tls is not None:
                address = self._expect("SRPY-TLS", deadline).split(" ", 1)[1]
                cert, key = tls.issue(address)
                files = json.dumps({"cert": cert, "key": key, "ca": tls.ca_pem}).encode("ascii")
                self._send(b"%d\n" % len(files) + files)  # on ssh's stdin: never on a command line, never on disk here
                self.phases["tls"] = time.monotonic() - began
            while True:
                line = self._expect(("SRPY-URI", "SRPY-UP"), deadline)
                if line == "SRPY-UP":
                    break
                self.uris.append(line.split(" ", 1)[1])
            # from now on the host counts the silence: heartbeats start (written without ever blocking)
            assert self.process.stdin is not None
            os.set_blocking(self.process.stdin.fileno(), False)
            self.heard, self._beating = time.monotonic(), True
            self.engine_uris = list(self.uris)
            self._reach()
        except BaseException:
            self.stop(grace=2.0)
            raise
        self._up = True
        self.seconds = self.phases["up"] = time.monotonic() - began
        log.info("%s: %d engine%s up in %.1f s (srpy zip %s)", self.host, len(self.uris),
                 "" if len(self.uris) == 1 else "s", self.seconds,
                 "cached there" if self.cache == "have" else "sent now")

    def _reach(self) -> None:
        """
        Tunnel mode: forward the engines' ports here. Else check that this client reaches the
        engines (a TCP connection to each opens), so that a firewalled host fails now, in one line,
        rather than in the box.
        """
        from . import sshtunnel
        if self._forwarding is not None:
            ssh, options, control_path = self._forwarding
            try:
                mapped = sshtunnel.forward(ssh, options, control_path, self.host, self.engine_uris)
            except (OSError, subprocess.SubprocessError) as exc:
                raise self._error(str(exc)) from None
            self.uris = [mapped[uri] for uri in self.engine_uris]
        elif self._probe_timeout > 0:
            for uri in self.uris:
                why = sshtunnel.reachable(uri, self._probe_timeout)
                if why:
                    raise self._error("its engines listen on %s, which this client cannot reach (%s): "
                                      "give bind= the address it reaches the host on, or use tunnel mode"
                                      % (sshtunnel.split_uri(uri)[1], why))

    def _pump(self, stream: Any, sink: Any, tag: str) -> None:
        def pump() -> None:
            for raw in iter(stream.readline, b""):
                sink(raw.decode("utf-8", "replace").rstrip("\r\n"))
            sink(None)
        thread = threading.Thread(target=pump, name="srpy-ssh-%s-%s" % (tag, self.host), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _on_stdout(self, line: Optional[str]) -> None:
        self.heard = time.monotonic()
        if line == "SRPY-ALIVE":  # the answer to a heartbeat
            self.lost = False
            return
        if line is not None and line.startswith("SRPY-STOPPED"):
            self._stopped_at = time.monotonic()
        if self._up and line is not None and line.startswith("SRPY-EXIT"):
            log.warning("%s: its launcher ended (exit code %s): its engines are gone", self.host, line.split()[-1])
        if self._up and line is None and not self._closing:
            log.warning("%s: its ssh session ended%s: its engines are gone", self.host, self._last_words())
        self._lines.put(line)

    def beat(self) -> None:
        """One heartbeat to the host, if its engines are up (a byte on ssh's stdin; never blocks)."""
        process = self.process
        if not self._beating or self._closing or process is None or process.stdin is None:
            return
        try:
            os.write(process.stdin.fileno(), b".")
        except (BlockingIOError, OSError, ValueError):
            pass  # a full pipe (ssh cannot send: the link is down) or an ended ssh: the host will know

    def silent_for(self) -> float:
        """Seconds since the host last said anything."""
        return time.monotonic() - self.heard

    def quiet(self) -> bool:
        """True if the host has not answered the last two heartbeats (or is L{lost})."""
        return self.lost or (self._beating and self.beat_every is not None
                             and self.silent_for() > 2.5 * self.beat_every)

    def _on_stderr(self, line: Optional[str]) -> None:
        if line is None:
            return
        self._stderr.append(line)
        log.info("%s: %s", self.host, line)

    def _send(self, data: bytes) -> None:
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except OSError:
            raise self._error(self._why_ended()) from None

    def _expect(self, what: Union[str, Tuple[str, ...]], deadline: float) -> str:
        """The next protocol line, which must start with C{what}."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error("did not start its engines within the time allowed (%d of them up)"
                                  % len(self.uris))
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise self._error(self._why_ended())
            if line.startswith("SRPY-FAILED"):
                raise self._error(line[len("SRPY-FAILED"):].strip())
            if line.startswith("SRPY-EXIT"):
                raise self._error("its launcher ended (exit code %s)%s" % (line.split()[-1], self._last_words()))
            if line.startswith(what):
                return line
            log.debug("%s: %s", self.host, line)  # the host's shell said something (a motd, say)

    def _why_ended(self) -> str:
        """Why ssh ended before the engines were up, in one line."""
        assert self.process is not None
        try:
            code = self.process.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        for thread in self._threads:
            thread.join(2)
        last = self._last_words()
        if code == 255:
            return "ssh failed%s" % (last or " (exit code 255)")
        if code == 127:
            return "no such command on the host%s" % (last or " (exit code 127)")
        return "ssh ended (exit code %s)%s" % (code, last)

    def _last_words(self) -> str:
        lines = [line for line in self._stderr if line.strip()]
        return ": " + lines[-1].strip() if lines else ""

    def _error(self, why: str) -> ClusterHostError:
        return ClusterHostError(" ".join(("%s: %s" % (self.host, why)).split()))

    def end_session(self) -> None:
        """Close ssh's stdin: its end, on the host, stops the engines (returns at once)."""
        self._closing = True
        process = self.process
        if process is not None and process.stdin is not None and not process.stdin.closed:
            try:
                process.stdin.close()
            except OSError:
                pass

    def stop(self, grace: float = STOP_WAIT) -> Optional[int]:
        """End the session (L{end_session}); wait for ssh to end, then terminate it, then kill it."""
        process = self.process
        if process is None:
            return None
        self.end_session()
        code: Optional[int] = None
        deadline = time.monotonic() + grace
        while code is None and time.monotonic() < deadline:
            try:
                code = process.wait(0.2)
            except subprocess.TimeoutExpired:
                # the host has stopped its engines: a tunneled host's ssh still waits for forwarded
                # connections this process holds (a box not closed), which lead nowhere now
                if self._stopped_at is not None and time.monotonic() - self._stopped_at > 0.5:
                    log.debug("%s: its engines are stopped; ending ssh, which waits for forwarded connections",
                              self.host)
                    break
        for signal_it in (process.terminate, process.kill):
            if code is not None:
                break
            if self._stopped_at is None:
                log.warning("%s: ssh did not end within %.0f s: stopping it", self.host, grace)
            signal_it()
            try:
                code = process.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        for thread in self._threads:
            thread.join(5)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        return code


#: the clusters not closed yet: closed when the interpreter exits normally (a killed client's hosts stop
#: all the same, at the end of their ssh sessions, only without waiting for it)
_open_clusters: "weakref.WeakSet[SSHCluster]" = weakref.WeakSet()


@atexit.register
def _close_open_clusters() -> None:
    for cluster in list(_open_clusters):
        cluster.close()


def _beat_hosts(cluster_ref: "weakref.ref[SSHCluster]") -> None:
    """
    The cluster's heartbeat thread: every C{heartbeat / BEATS} seconds, a byte to each host whose
    engines are up, until the cluster is closed or gone. It depends on nothing the client's calls
    do (only on getting the interpreter now and then). Logs once a host that has been silent for
    longer than the heartbeat: its engines stop by themselves there.
    """
    while True:
        cluster = cluster_ref()
        if cluster is None or cluster._closed or cluster._heartbeat is None:
            return
        timeout, remotes = cluster._heartbeat, list(cluster._remotes)
        del cluster  # a cluster nobody holds any more is collected, and its sessions end
        for remote in remotes:
            remote.beat()
            if remote._beating and not remote._closing and not remote.lost and remote.silent_for() > timeout:
                remote.lost = True
                log.warning("%s: no word from the host for %.0f s: it counts as lost (its engines stop by "
                            "themselves there; a box's watchdog takes them out of its work)", remote.host, timeout)
        time.sleep(timeout / BEATS)


class SSHCluster:
    """
    Engines on every host given, started over SSH (see the module text): a context manager.

    Usage::

        with srpy.SSHCluster(["alice@node1", "node2", "node3"]) as cluster:
            with cluster.box() as box:
                print(box.map(pow, range(10), range(10)))

    @ivar uris: every engine's URI, host after host.
    @ivar secret: the cluster's secret (fresh and random unless given).
    @ivar ssl_context: with C{tls=True}, a client TLS context that trusts the cluster's CA only (else None).
    @ivar ca: with C{tls=True}, the cluster's L{ClusterCA<srpy.clustertls.ClusterCA>} (C{ca.ca_pem}: its certificate).
    @ivar hosts: the L{RemoteHost}s that started.
    @ivar failed: {host: the one line saying why it did not start}.
    @ivar dist_hash: the SHA-256 of the srpy zip the hosts run.
    """

    def __init__(self, hosts: Sequence[str], engines_per_host: Optional[int] = None,
                 python: Union[PythonSpec, Mapping[str, PythonSpec]] = "python3", ssh_options: Sequence[str] = (),
                 secret: Optional[str] = None, connect_timeout: float = 15.0, start_timeout: float = 120.0,
                 launcher_args: Sequence[str] = (), require_all: bool = False, ssh: str = "ssh",
                 cache_dir: Optional[str] = None, bind: Optional[Mapping[str, str]] = None,
                 tunnel: Union[bool, Sequence[str]] = False, tls: bool = False,
                 heartbeat: Optional[float] = HEARTBEAT_TIMEOUT) -> None:
        """
        Start the engines on every host, in parallel; return once each host is up or has failed.

        @param hosts: where to start engines: C{user@host}, C{host}, or a C{Host} of ~/.ssh/config.
        @param engines_per_host: engines on each host (default: one per core the host has).
        @param python: the command that runs Python 3 on the hosts (C{"python3"}, C{"/opt/py/bin/python"},
            C{"python3 -I"}), or {host: command} (hosts left out use C{"python3"}).
        @param ssh_options: more arguments for ssh, before srpy's (C{["-F", "my_config"]},
            C{["-i", "key", "-o", "User=alice"]}): the first value of an option wins.
        @param secret: the engines' secret (default: a fresh random one).
        @param connect_timeout: seconds ssh tries to reach a host.
        @param start_timeout: seconds a host has to report all its engines' URIs.
        @param launcher_args: more C{srpyapp} options for every host (C{["--max-task-time", "60"]}).
        @param require_all: raise if any host fails (after stopping the others), instead of starting without it.
        @param ssh: the ssh client to run.
        @param cache_dir: the hosts' cache folder (default C{$XDG_CACHE_HOME/srpy/dist}, C{~/.cache/srpy/dist}).
        @param bind: {host: the address its engines listen on}, for hosts where the address ssh
            arrived on is not the one this client reaches (through a jump host, say).
        @param tunnel: C{True} (every host) or the hosts whose engines listen on their loopback and
            are reached through SSH port forwards (L{srpy.sshtunnel}), for hosts whose ports this
            client cannot reach directly. Their engines are each other's peers only within one host.
        @param tls: the engines serve TLS with certificates made for this cluster (L{srpy.clustertls}:
            a throwaway CA, one certificate per host); L{box} and L{ssl_context} trust that CA only.
        @param heartbeat: seconds a host waits without a word from this client before it stops its
            engines by itself (a link cut without a word, which sshd may not notice); a thread of the
            cluster sends one every C{heartbeat / 6} seconds, whatever the client's calls do.
            None: the hosts wait for their sessions to end.
        @raise ClusterHostError: no host started (or, with C{require_all}, one did not): one line per host.
        """
        if isinstance(hosts, str):
            hosts = [hosts]
        if not hosts:
            raise ValueError("SSHCluster needs at least one host")
        twice = sorted({host for host in hosts if list(hosts).count(host) > 1})
        if twice:
            raise ValueError("hosts listed twice: %s (engines_per_host sets how many engines each gets)"
                             % ", ".join(twice))
        if heartbeat is not None and not heartbeat > 0:
            raise ValueError("heartbeat must be a number of seconds above 0, or None")
        if engines_per_host is not None and (not isinstance(engines_per_host, int) or engines_per_host < 1):
            raise ValueError("engines_per_host must be a whole number of at least 1, or None (one per core)")
        tunneled = set(hosts) if tunnel is True else set(tunnel or ())
        if tunneled - set(hosts):
            raise ValueError("tunnel names hosts not in the cluster: %s" % ", ".join(sorted(tunneled - set(hosts))))
        both = sorted(tunneled & set(bind or {}))
        if both:
            raise ValueError("tunnel and bind both name %s: a tunneled host's engines listen on its loopback"
                             % ", ".join(both))
        self.secret = secret or secrets.token_urlsafe(32)
        self.ca: Optional["ClusterCA"] = None
        self.ssl_context: Any = None
        if tls:
            from .clustertls import ClusterCA
            self.ca = ClusterCA()  # before any ssh starts: without cryptography this is the one error
            self.ssl_context = self.ca.client_context()
        self.hosts: List[RemoteHost] = []
        self.failed: Dict[str, str] = {}
        self._closed = False
        # the tunneled hosts' ssh masters' sockets; a short path: a socket's path has at most ~100 bytes
        self._control_dir = tempfile.mkdtemp(prefix="srpy-ssh-", dir=_short_temp()) if tunneled else None
        _open_clusters.add(self)
        dist, self.dist_hash = build_dist()
        script = _bootstrap_script()
        header = {"hash": self.dist_hash, "size": len(dist), "secret": self.secret, "engines": engines_per_host,
                  "args": [str(arg) for arg in launcher_args], "cache": cache_dir, "tls": bool(tls),
                  "heartbeat": heartbeat}
        remotes: List[RemoteHost] = []
        headers: Dict[str, Dict[str, Any]] = {}
        addresses: Set[str] = set()
        for index, host in enumerate(hosts):
            spec = python.get(host, "python3") if isinstance(python, Mapping) else python
            if host in tunneled:
                assert self._control_dir is not None
                control = os.path.join(self._control_dir, str(index))
                address = sshtunnel.loopback_address(addresses)
                remotes.append(RemoteHost(host, ssh_command(host, spec, ssh, ssh_options, connect_timeout, control),
                                          tunnel=address, forwarding=(ssh, list(ssh_options), control)))
                headers[host] = dict(header, bind=address)
            else:
                remotes.append(RemoteHost(host, ssh_command(host, spec, ssh, ssh_options, connect_timeout),
                                          probe_timeout=connect_timeout))
                headers[host] = dict(header, bind=(bind or {}).get(host))
        outcomes: Dict[str, Optional[BaseException]] = {}
        self._heartbeat = heartbeat
        self._remotes = remotes
        for remote in remotes:
            remote.beat_every = None if heartbeat is None else heartbeat / BEATS
        if heartbeat is not None:  # beats each host as soon as its engines are up
            threading.Thread(target=_beat_hosts, args=(weakref.ref(self),), name="srpy-ssh-heartbeat",
                             daemon=True).start()

        def start(remote: RemoteHost) -> None:
            try:
                remote.start(headers[remote.host], dist, script, start_timeout, self.ca)
                outcomes[remote.host] = None
            except BaseException as exc:  # noqa: B902 - handed to the caller's thread below
                outcomes[remote.host] = exc

        threads = [threading.Thread(target=start, args=(remote,), name="srpy-start-%s" % remote.host, daemon=True)
                   for remote in remotes]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:
            self._stop_all(remotes)  # Ctrl-C while starting: what started stops
            self._remove_control_dir()
            raise
        for remote in remotes:
            outcome = outcomes.get(remote.host)
            if outcome is None:
                self.hosts.append(remote)
            elif isinstance(outcome, ClusterHostError):
                self.failed[remote.host] = str(outcome)
                log.warning("%s", outcome)
            else:
                self._stop_all(remotes)
                self._remove_control_dir()
                raise outcome
        if not self.hosts or (require_all and self.failed):
            self._stop_all(self.hosts)
            self._remove_control_dir()
            self.hosts = []
            self._closed = True
            raise ClusterHostError("; ".join(self.failed.values()))

    @property
    def uris(self) -> List[str]:
        """Every engine's URI, host after host."""
        return [uri for remote in self.hosts for uri in remote.uris]

    def box(self, **options: Any) -> "EngBox":
        """
        A new L{EngBox<srpy.box.EngBox>} of the cluster's engines, with its secret (and its TLS
        context): C{options} go to EngBox.
        """
        from .box import EngBox
        options.setdefault("secret", self.secret)
        options.setdefault("ssl_context", self.ssl_context)
        return EngBox(self.uris, **options)

    def close(self) -> None:
        """Stop every host's engines (in parallel) and end the ssh sessions. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop_all(self.hosts)
        self._remove_control_dir()

    def _remove_control_dir(self) -> None:
        """The ssh masters have ended (their sockets with them): their folder goes too."""
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None

    @staticmethod
    def _stop_all(remotes: Sequence[RemoteHost]) -> None:
        # every session ends first, so the hosts stop at the same time; then each is waited for (no
        # threads: this also runs at interpreter exit, where new threads may be refused)
        for remote in remotes:
            remote.end_session()
        deadline = time.monotonic() + STOP_WAIT  # one wait for all, not one after the other
        for remote in remotes:
            # a host that no longer answers heartbeats cannot hear that the session ended either: it
            # stops by itself, and its ssh is not waited for (a reachable one that was only slow to
            # answer stops all the same once its ssh is stopped: its session ends)
            remote.stop(grace=2.0 if remote.quiet() else max(0.1, deadline - time.monotonic()))

    def __enter__(self) -> "SSHCluster":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<SSHCluster %d engines on %s%s>" % (len(self.uris), ", ".join(r.host for r in self.hosts) or "no host",
                                                   "; failed: %s" % ", ".join(self.failed) if self.failed else "")


# -- srpyapp ssh -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """C{srpyapp ssh}'s command line."""
    parser = argparse.ArgumentParser(
        prog="srpyapp ssh", description="Start engines on other hosts over SSH (nothing needs to be installed "
                                        "there but python3), print their URIs, serve until Ctrl-C.")
    parser.add_argument("hosts", nargs="+", metavar="HOST", help="user@host, host, or a Host of ~/.ssh/config")
    parser.add_argument("-n", "--engines", type=int, metavar="N", default=None,
                        help="engines per host (default: one per core of each host)")
    parser.add_argument("-u", "--uri-file", metavar="FILE", help="write the URIs to FILE (removed on exit)")
    parser.add_argument("-s", "--secret-file", metavar="FILE",
                        help="write the cluster's secret to FILE (mode 600, removed on exit): clients need it")
    parser.add_argument("--python", default="python3", help="the command that runs Python 3 on the hosts")
    parser.add_argument("-F", "--ssh-config", metavar="FILE", help="ssh's configuration file (ssh -F)")
    parser.add_argument("-o", "--ssh-option", action="append", default=[], metavar="OPTION",
                        help="an ssh option (ssh -o OPTION), repeatable")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds each host has to start")
    parser.add_argument("--tls", action="store_true",
                        help="engines serve TLS with certificates made for this cluster (needs cryptography)")
    parser.add_argument("--ca-file", metavar="FILE",
                        help="with --tls: write the cluster's CA certificate to FILE (removed on exit): "
                             "clients trust it")
    parser.add_argument("--tunnel", action="store_true",
                        help="engines listen on each host's loopback, reached through SSH port forwards "
                             "(for hosts whose ports this machine cannot reach)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """C{srpyapp ssh HOST...}: returns the exit code (1 when no host started)."""
    import signal
    parser = build_parser()
    options = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if options.engines is not None and options.engines < 1:
        parser.error("-n must be at least 1")
    if options.ca_file and not options.tls:
        parser.error("--ca-file needs --tls")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("Pyro5").setLevel(logging.WARNING)
    ssh_options: List[str] = ["-F", options.ssh_config] if options.ssh_config else []
    for option in options.ssh_option:
        ssh_options += ["-o", option]
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        cluster = SSHCluster(options.hosts, options.engines, python=options.python, ssh_options=ssh_options,
                             secret=os.environ.get("SRPY_SECRET") or None, start_timeout=options.start_timeout,
                             tunnel=options.tunnel, tls=options.tls)
    except (SRPyError, ValueError) as exc:
        print("srpyapp ssh: error: %s" % exc, file=sys.stderr)
        return 1
    written = []
    try:
        for host, why in cluster.failed.items():
            print("srpyapp ssh: not started: %s" % why, file=sys.stderr)
        print("Hosting %d engines on %d host%s over SSH. Stop with Ctrl-C."
              % (len(cluster.uris), len(cluster.hosts), "" if len(cluster.hosts) == 1 else "s"))
        for uri in cluster.uris:
            print(uri)
        sys.stdout.flush()
        if options.secret_file:
            _write_private(options.secret_file, cluster.secret + "\n")
            written.append(options.secret_file)
        if options.ca_file and cluster.ca is not None:
            _write_private(options.ca_file, cluster.ca.ca_pem)
            written.append(options.ca_file)
        if options.uri_file:
            _write_private(options.uri_file, "".join(uri + "\n" for uri in cluster.uris))
            written.append(options.uri_file)
        while not stopping.wait(0.5):
            if all(remote.process is not None and remote.process.poll() is not None for remote in cluster.hosts):
                print("srpyapp ssh: every host's session ended", file=sys.stderr)
                return 1
    finally:
        cluster.close()
        for path in written:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    return 0


def _write_private(path: str, text: str) -> None:
    """Write a file only its owner can read, in one step."""
    temporary = "%s.tmp-%d" % (path, os.getpid())
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    os.replace(temporary, path)
