"""
Shared fixtures and helpers: real engine processes started by the real launcher, on loopback.

The tests live in one folder per component (engine, client, box, envs, codec, peers, launcher,
security, lite, hosts, dashboard, docs, bench, structure, stress); every folder imports its
helpers from here (C{from conftest import ...}: pytest puts this folder on sys.path).

Every launcher a test starts is stopped when the test ends, and the session fails if any process
that a test started is still running at the end (no leaks).
"""

import ctypes
import ctypes.util
import os
import re
import signal as signals
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

import srpy
from srpy import lite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRPYAPP = os.path.join(ROOT, "srpyapp.py")
URI_LINE = re.compile(r"^PYRO:\S+@\S+:\d+$")

#: scripts the tests run in other interpreters (Jython, a network namespace), not test modules:
#: importing them here would run them (lite_script.py exits without SRPY_LITE_DIR)
collect_ignore = [os.path.join("lite", "lite_script.py"), os.path.join("hosts", "hosts_client.py"),
                  os.path.join("hosts", "ssh_client.py")]


def _children(process):
    try:
        return process.children()
    except psutil.NoSuchProcess:
        return []


def die_with_parent():
    """In a child about to exec: ask Linux to SIGTERM it when the test process dies (even by a timeout)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signals.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the session-end leak check still catches leftovers


class Launcher:
    """A running `python srpyapp.py ...` and the URIs it printed."""

    def __init__(self, args, env=None, count=None, timeout=60):
        self.args = list(args)
        full_env = dict(os.environ)
        full_env.pop("SRPY_SECRET", None)
        full_env.update(env or {})
        self.process = subprocess.Popen([sys.executable, SRPYAPP] + self.args, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=full_env,
                                        text=True, cwd=ROOT, preexec_fn=die_with_parent)
        self.uris = []
        self.banner = []
        expected = count if count is not None else 1
        deadline = time.monotonic() + timeout
        while len(self.uris) < expected:
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("launcher printed %d of %d URIs in %s s" % (len(self.uris), expected, timeout))
            line = self.process.stdout.readline()
            if not line:
                err = self.process.stderr.read()
                self.process.wait(10)
                raise AssertionError("launcher exited (%s) before printing its URIs:\n%s" % (self.process.returncode, err))
            line = line.strip()
            if URI_LINE.match(line):
                self.uris.append(line)
            else:
                self.banner.append(line)

    def children(self):
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def engines(self):
        """The processes that serve (each engine's keeper forks it): the leaves of the launcher's tree."""
        return [child for child in self.children()
                if not any(grandchild.status() != psutil.STATUS_ZOMBIE for grandchild in _children(child))]

    def send(self, signum):
        self.process.send_signal(signum)

    def shutdown(self):
        """Stop the launcher and make sure its engine processes are gone; return (exit code, stderr)."""
        kids = self.children()
        result = self.stop()
        psutil.wait_procs(kids, timeout=10)
        for kid in kids:
            if kid.is_running():
                kid.kill()
        return result

    def stop(self, signum=signals.SIGTERM, timeout=30):
        """Stop the launcher; return (exit code, stderr text)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return self.process.returncode, err


@pytest.fixture
def start_launcher():
    """Factory: start_launcher(args, count=N, env=...) -> Launcher; all are stopped after the test."""
    started = []

    def start(args=(), count=None, env=None, timeout=60):
        launcher = Launcher(args, env=env, count=count, timeout=timeout)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.shutdown()


@pytest.fixture(scope="module")
def engine_uri():
    """One engine, hosted by the launcher in basic mode, shared by a module's tests."""
    launcher = Launcher(["-b"])
    yield launcher.uris[0]
    code, err = launcher.stop()
    assert code == 0, err


@pytest.fixture
def engine(engine_uri):
    """A fresh client to the module's engine, with an empty namespace."""
    eng = srpy.PythonEngine(engine_uri)
    eng.clear()
    yield eng
    eng.close()


def wait_gone(pids, timeout=10):
    """True once none of the pids is running (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if _running(p)]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def _running(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # gone (and reaped) between the two looks
        return False


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes():
    """Fail the session if any process the tests started outlives them."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    deadline = time.monotonic() + 10  # processes a test stopped may still be on their way out
    while [p for p in left if _running(p.pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = []
    for proc in left:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append("%d %s" % (proc.pid, " ".join(proc.cmdline())))
        except psutil.NoSuchProcess:
            pass
    for proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    assert not alive, "processes leaked by the tests: %s" % alive


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, an engine certificate for 127.0.0.1 and a client certificate, made on the fly (trustme)."""
    import trustme
    where = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@srpy")
    files = {name: str(where / (name + ".pem")) for name in ("ca", "cert", "key", "client")}
    ca.cert_pem.write_to_path(files["ca"])
    server.cert_chain_pems[0].write_to_path(files["cert"])
    server.private_key_pem.write_to_path(files["key"])
    client.private_key_and_cert_chain_pem.write_to_path(files["client"])
    return files


def executions(log_dir):
    """{engine pid: [value, ...] in the order that engine ran them}, from the <pid>.log files tasks write."""
    runs = {}
    for name in os.listdir(log_dir):
        if name.endswith(".log"):
            with open(os.path.join(log_dir, name)) as handle:
                runs[int(name[:-4])] = [int(line) for line in handle.read().split()]
    return runs


@pytest.fixture(scope="module")
def pair():
    """Two engine processes (URIs), shared by a module's tests that do not break them."""
    launcher = Launcher(["-n", "2"], count=2)
    yield launcher.uris
    code, err = launcher.shutdown()
    assert code == 0, err


# -- raw connections and threads -------------------------------------------------------------

def importable(module):
    """Whether C{module} can be imported here (a dotted name whose parent package is missing cannot)."""
    import importlib.util
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package (dask of dask.distributed) is missing
        return False


def address(uri):
    """(host, port) of a direct URI."""
    _, host, port = lite.parse_uri(uri)
    return host, port


def raw_socket(uri, timeout=5.0):
    """A plain TCP connection to the engine at C{uri}, to send it bytes by hand."""
    sock = socket.create_connection(address(uri), timeout)
    sock.settimeout(timeout)
    return sock


def header(msgtype, data_size, serializer_id=lite.JSON_SERIALIZER_ID, ann_size=0, seq=0):
    """A Pyro5 message header packed by hand (tests send malformed messages with it)."""
    return lite.HEADER.pack(b"PYRO", lite.PROTOCOL_VERSION, msgtype, serializer_id, 0, seq, data_size,
                            ann_size, b"\0" * 16, 0, lite.MAGIC)


def assert_serving(uri, **options):
    """The engine at C{uri} still answers a fresh client."""
    with srpy.PythonEngine(uri, **options) as eng:
        assert eng.ping() == "pong"
        assert eng.eval("6*7") == 42


def run_threads(target, count, *args):
    """Run C{target(index, *args)} in C{count} threads; re-raise the first failure."""
    failures = []

    def guarded(index):
        try:
            target(index, *args)
        except BaseException as exc:  # collected, re-raised in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
        assert not thread.is_alive(), "a thread is stuck"
    if failures:
        raise failures[0]


class Background:
    """A call running in another thread; C{.result()} waits for it and returns (or raises) its outcome."""

    def __init__(self, function, *args, **kwargs):
        self.started = threading.Event()
        self._outcome = None

        def run():
            self.started.set()
            try:
                self._outcome = (True, function(*args, **kwargs))
            except BaseException as exc:  # handed to result()
                self._outcome = (False, exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self.started.wait(10)

    def result(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the background call did not finish"
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def refuse_crafted_values(engine_uri, cases):
    """
    Send each of C{cases} (C{{name: (tag, payload)}}) to the engine as the value of a C{set} call,
    crafted as one of codec's tagged items, on one raw connection; each must be answered with an
    exception naming bad srpy data (and the connection stays in step).
    """
    import marshal
    from srpy import codec, lite
    conn = lite.Connection(engine_uri, serializer=codec.WIRE_FORMAT)
    try:
        for seq, (name, (tag, payload)) in enumerate(cases.items(), 1):
            call = ("srpy.engine", "set", ({"v": (codec._TAG, tag, payload)},), {})
            conn._send(lite.MSG_INVOKE, codec.SERIALIZER_ID, marshal.dumps((codec._MARK, call), 2), seq)
            msgtype, _, flags, got, data, _, _ = conn._receive()
            assert msgtype == lite.MSG_RESULT and flags & lite.FLAGS_EXCEPTION and got == seq, name
            assert b"bad srpy data" in data, (name, data[:300])
    finally:
        conn.close()
