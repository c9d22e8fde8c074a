"""
The launcher, C{python srpyapp.py}: every option, multi mode, supervision, and clean stops.

Each test runs the real launcher as a process and talks to its engines over loopback. A stopped
launcher must leave no engine process behind, whatever stopped it (SIGINT, SIGTERM, SIGKILL,
'quit' typed on its console).
"""

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

import psutil
import pytest

import srpy
from conftest import ROOT, SRPYAPP, URI_LINE, wait_gone

pytestmark = pytest.mark.timeout(90)


def run_app(*args, timeout=30, env=None):
    """Run the launcher to completion (for options that make it exit); return (code, out, err)."""
    full_env = dict(os.environ)
    full_env.pop("SRPY_SECRET", None)
    full_env.update(env or {})
    done = subprocess.run([sys.executable, SRPYAPP] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr


def ping_all(uris, **options):
    for uri in uris:
        with srpy.PythonEngine(uri, connect_timeout=5, **options) as eng:
            assert eng.ping() == "pong"


def engine_pids(launcher):
    """Every process the launcher started: each engine's keeper and the engine it forked."""
    return [p.pid for p in launcher.children()]


def keepers(launcher):
    """The launcher's own children: one engine process (a keeper, see srpy.supervisor.Keeper) per engine."""
    return psutil.Process(launcher.process.pid).children()


def read_stderr_until(launcher, pattern, timeout=20):
    """Read the launcher's stderr (raw, without blocking) until C{pattern} shows; return the text."""
    fd = launcher.process.stderr.fileno()
    text = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern.encode(), text):
        remaining = deadline - time.monotonic()
        assert remaining > 0, "%r not in the launcher's log:\n%s" % (pattern, text.decode(errors="replace"))
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, "the launcher closed its stderr:\n%s" % text.decode(errors="replace")
            text += chunk
    return text.decode(errors="replace")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- options that exit at once ------------------------------------------------------------------

def test_version():
    code, out, err = run_app("--version")
    assert code == 0
    assert out.strip() == "srpy %s" % srpy.__version__


def test_help_lists_every_option():
    code, out, err = run_app("-h")
    assert code == 0
    for option in ("-b, --basic", "-m, --multi", "-n N", "-u FILE", "-p FILE", "-d, --debug", "-t, --time",
                   "--version", "-h, --help", "--host", "--port", "--name", "--group", "--secret", "--insecure"):
        assert option in out, option
    assert "127.0.0.1" in out and "SRPY_SECRET" in out
    assert run_app("--help")[1] == out


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-n", "0"], "must be at least 1"),
    (["-n", "abc"], "not a whole number: 'abc'"),
    (["-n"], "expected one argument"),
    (["-b", "-m"], "not allowed with argument"),
    (["--port", "http"], "invalid int value"),
    (["stray"], "unrecognized arguments: stray"),
])
def test_bad_option_exits_2_with_a_message(args, message):
    code, out, err = run_app(*args)
    assert code == 2
    assert message in err
    assert "usage: srpyapp" in err
    assert "Traceback" not in err and out == ""


def test_missing_pyro_config_file():
    code, out, err = run_app("-p", "/nonexistent/pyro.cfg")
    assert code == 1
    assert "/nonexistent/pyro.cfg" in err and "Traceback" not in err


def test_bad_pyro_config_setting(tmp_path):
    config = tmp_path / "pyro.cfg"
    config.write_text("COMMTIMEOUT = 5\nNOT_A_SETTING = 3\n")
    code, out, err = run_app("-p", str(config))
    assert code == 1
    assert "line 2" in err and "not a Pyro5 setting" in err and "Traceback" not in err


# -- basic mode ----------------------------------------------------------------------------------

def test_basic_mode_is_the_default_and_keeps_one_engine(start_launcher):
    """Basic mode: the launcher is the engine's keeper; the engine runs in the one process it forked."""
    for args in ([], ["-b"], ["--basic"]):
        launcher = start_launcher(args)
        assert len(launcher.uris) == 1
        assert any("srpy %s" % srpy.__version__ in line for line in launcher.banner)
        with srpy.PythonEngine(launcher.uris[0]) as eng:
            pid = eng.whoami()["PID"]
            assert eng.eval("a+b", a=2, b=3) == 5
        assert [p.pid for p in launcher.children()] == [pid]
        code, err = launcher.stop()
        assert code == 0, err


def test_host_port_name_group(start_launcher):
    port = free_port()
    launcher = start_launcher(["--host", "127.0.0.1", "--port", str(port), "--name", "alpha", "--group", "lab"])
    assert launcher.uris == ["PYRO:srpy.engine@127.0.0.1:%d" % port]
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        info = eng.whoami()
        assert info["Name"] == "alpha" and info["PythonEngine ID"] == "alpha" and info["Group"] == "lab"
        assert eng.name == "alpha" and eng.group == "lab"


def test_localhost_by_default(start_launcher):
    launcher = start_launcher([])
    assert "@127.0.0.1:" in launcher.uris[0]
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        process = psutil.Process(eng.whoami()["PID"])
    listing = getattr(process, "net_connections", None) or process.connections  # psutil < 6
    listening = [conn.laddr.ip for conn in listing(kind="tcp") if conn.status == psutil.CONN_LISTEN]
    assert listening and set(listening) == {"127.0.0.1"}


def test_debug_logs_every_call_and_time_logs_durations(start_launcher):
    for args, want, unwanted in ((["-d"], r"call eval\('6\*7', \{\}\)", r"eval took"),
                                 (["-t"], r"eval took \d+\.\d+ s", r"call eval"),
                                 (["-d", "-t"], r"call eval.*\n.*eval took \d+\.\d+ s", None),
                                 (["--debug", "--time", "-n", "1"], r"call eval.*\n.*eval took", None),
                                 ([], None, r"call eval|eval took")):
        launcher = start_launcher(args, count=1)
        with srpy.PythonEngine(launcher.uris[0]) as eng:
            assert eng.eval("6*7") == 42
            with pytest.raises(ZeroDivisionError):
                eng.eval("1/0")  # a failing call is logged too, and does not break the log
            assert eng.ping() == "pong"
        code, err = launcher.stop()
        assert code == 0, err
        if want:
            assert re.search(want, err), (args, err)
            assert re.search(want.replace("eval", "ping").replace(r"\('6\*7', \{\}\)", r"\(\)"), err), (args, err)
        if unwanted:
            assert not re.search(unwanted, err), (args, err)
        assert "Traceback" not in err


def test_pyro_config_file_applies_to_basic_and_child_engines(start_launcher, tmp_path):
    config = tmp_path / "pyro.cfg"
    config.write_text("# srpy test settings\nMAX_MESSAGE_SIZE = 100000   # bytes\nPYRO_THREADPOOL_SIZE = 20\n\n")
    for args in (["-p", str(config)], ["-p", str(config), "-n", "1"]):
        launcher = start_launcher(args, count=1)
        uri = launcher.uris[0]
        with srpy.PythonEngine(uri) as eng:
            eng.set(small="x" * 50000)
            with pytest.raises(srpy.MessageTooLargeError):
                eng.set(big="x" * 200000)  # over the configured MAX_MESSAGE_SIZE
        ping_all([uri])
        code, err = launcher.stop()
        assert code == 0 and "message too large" in err


def test_uri_file_basic(start_launcher, tmp_path):
    path = tmp_path / "uris.txt"
    launcher = start_launcher(["-u", str(path)])
    wait_for_file(path)
    assert path.read_text().split() == launcher.uris
    code, err = launcher.stop()
    assert code == 0, err
    assert not path.exists(), "the URI file is removed on exit"


def wait_for_file(path, timeout=20):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "%s was never written" % path
        time.sleep(0.01)


def test_uri_file_multi_written_only_once_every_engine_answers(tmp_path):
    """Poll for the file from the moment the launcher starts: when it appears, it is complete."""
    path = tmp_path / "uris.txt"
    env = dict(os.environ)
    env.pop("SRPY_SECRET", None)
    process = subprocess.Popen([sys.executable, SRPYAPP, "-n", "2", "--uri-file", str(path)], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        uris = path.read_text().split()
        assert len(uris) == 2 and all(URI_LINE.match(u) for u in uris)
        ping_all(uris)
        kids = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        assert len(psutil.Process(process.pid).children()) == 2  # one process per engine (it forks the engine)
        printed = [line.strip() for line in process.stdout.read1().decode().splitlines() if line.startswith("PYRO:")]
        assert printed == uris
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert not path.exists()
    assert wait_gone(kids)


# -- multi mode ------------------------------------------------------------------------------------

def test_multi_mode_n2(start_launcher):
    launcher = start_launcher(["-n", "2", "--name", "w", "--group", "g"], count=2)
    assert len(set(launcher.uris)) == 2
    kids = launcher.children()
    assert len(keepers(launcher)) == 2
    engines = [srpy.PythonEngine(uri) for uri in launcher.uris]
    try:
        infos = [eng.whoami() for eng in engines]
        assert {i["PID"] for i in infos} <= {k.pid for k in kids}
        assert sorted(psutil.Process(i["PID"]).ppid() for i in infos) == sorted(k.pid for k in keepers(launcher))
        assert sorted(i["Name"] for i in infos) == ["w-1", "w-2"]
        assert {i["Group"] for i in infos} == {"g"}
        engines[0].set(only_here=1)  # one namespace per engine process
        assert "only_here" not in engines[1].get()
    finally:
        for eng in engines:
            eng.close()
    pids = [k.pid for k in kids]
    code, err = launcher.stop()
    assert code == 0, err
    assert wait_gone(pids)


@pytest.mark.parametrize("extra, forked", [([], True), (["--secret", "on-the-line"], False)],
                         ids=["forked", "secret-on-the-command-line"])
def test_multi_mode_forks_its_engine_processes_where_it_may(start_launcher, extra, forked):
    """
    Start-up (issue 11): engine processes are forked from the launcher, srpy loaded, with no
    interpreter to start; but a secret given on the command line would show on theirs: then
    they are new interpreters (C{python -m srpy --child}), given the secret by environment.
    """
    launcher = start_launcher(["-n", "2"] + extra, count=2)
    own = psutil.Process(launcher.process.pid).cmdline()
    commands = [k.cmdline() for k in keepers(launcher)]
    assert len(commands) == 2
    if forked:
        assert commands == [own, own]
    else:
        assert all("--child" in command and "on-the-line" not in " ".join(command) for command in commands)
    ping_all(launcher.uris, secret="on-the-line" if extra else None)


def _pipe_ends(pid):
    """{(pipe, 'w' or 'r')} of the pipes process C{pid} holds open."""
    ends = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            with open("/proc/%d/fdinfo/%s" % (pid, fd)) as handle:
                flags = int(handle.read().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError):
            continue  # closed meanwhile
        if target.startswith("pipe:"):
            ends.add((target, "w" if flags & os.O_ACCMODE == os.O_WRONLY else "r"))
    return ends


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_each_engine_process_holds_no_other_ones_pipe(start_launcher):
    """
    A forked engine process must not keep the launcher's end of another one's stdin: that one
    would then miss its stdin's end (its stop) when the launcher goes.
    """
    launcher = start_launcher(["-n", "3"], count=3)
    stdins = {k.pid: os.readlink("/proc/%d/fd/0" % k.pid) for k in keepers(launcher)}
    assert len(set(stdins.values())) == 3 and all(pipe.startswith("pipe:") for pipe in stdins.values())
    assert {(pipe, "w") for pipe in stdins.values()} <= _pipe_ends(launcher.process.pid)
    for process in launcher.children():
        held = {pipe for pipe, end in _pipe_ends(process.pid) if end == "w"}
        assert not held & set(stdins.values()), "process %d holds the write end of an engine's stdin" % process.pid


def test_multi_mode_one_engine_per_core(start_launcher):
    cores = srpy.detectNCPUs()
    launcher = start_launcher(["-m"], count=cores)
    assert len(keepers(launcher)) == cores
    ping_all(launcher.uris)
    assert launcher.stop()[0] == 0


def test_multi_mode_consecutive_ports(start_launcher):
    port = free_port()
    while any(_busy(p) for p in (port, port + 1)):
        port = free_port()
    launcher = start_launcher(["-n", "2", "--port", str(port)], count=2)
    assert sorted(int(u.rsplit(":", 1)[1]) for u in launcher.uris) == [port, port + 1]


def _busy(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


# -- clean stops, no orphans ------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_multi_launcher_and_every_engine(start_launcher, signum):
    launcher = start_launcher(["-n", "2"], count=2)
    pids = engine_pids(launcher)
    assert len(keepers(launcher)) == 2 and len(pids) == 4
    ping_all(launcher.uris)
    code, err = launcher.stop(signum)
    assert code == 0, err
    assert "Traceback" not in err
    assert wait_gone(pids)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_right_after_the_uris_are_printed(start_launcher, signum, tmp_path):
    """A client may signal the moment it reads a URI: that is still a clean stop."""
    for args in (["-b"], ["-n", "2"]):
        path = tmp_path / ("uris-%d.txt" % len(args))
        launcher = start_launcher(args + ["-u", str(path)], count=2 if "-n" in args else 1)
        pids = engine_pids(launcher)
        code, err = launcher.stop(signum)
        assert code == 0, (args, err)
        assert "Traceback" not in err
        assert not path.exists()
        assert wait_gone(pids)


def test_basic_mode_stop_removes_the_sandbox(start_launcher):
    launcher = start_launcher(["-b"])
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        sandbox = eng.eval("__import__('sys').path[0]")
    assert os.path.isdir(sandbox) and "srpy-sandbox-" in sandbox
    assert launcher.stop(signal.SIGINT)[0] == 0
    assert not os.path.exists(sandbox)


def test_sigkill_of_the_launcher_stops_every_engine(start_launcher):
    launcher = start_launcher(["-n", "2"], count=2)
    kids = launcher.children()
    pids = [k.pid for k in kids]
    assert len(keepers(launcher)) == 2 and len(pids) == 4
    ping_all(launcher.uris)
    launcher.send(signal.SIGKILL)
    launcher.process.wait(10)
    assert wait_gone(pids, timeout=20), "engine processes outlived their launcher"
    for uri in launcher.uris:
        with pytest.raises(srpy.SRPyServerNotFound):
            srpy.PythonEngine(uri, connect_timeout=2)


def test_sigkill_while_an_engine_is_busy(start_launcher):
    """An engine running long user code still stops when its launcher dies."""
    launcher = start_launcher(["-n", "1"], count=1)
    pids = engine_pids(launcher)
    eng = srpy.PythonEngine(launcher.uris[0])
    try:
        import threading
        threading.Thread(target=lambda: _swallow(eng.exe, "import time; time.sleep(30)"), daemon=True).start()
        deadline = time.monotonic() + 10
        while not eng.isBusy():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        launcher.send(signal.SIGKILL)
        launcher.process.wait(10)
        assert wait_gone(pids, timeout=20)
    finally:
        eng.close()


def _swallow(function, *args):
    try:
        function(*args)
    except srpy.SRPyError:
        pass


@contextlib.contextmanager
def on_a_tty(args):
    """
    The launcher with a pseudo-terminal as its stdin, once it has printed its URIs: yields
    (process, master fd, uris, banner lines, unread), where C{unread()} is how many bytes typed
    on the terminal nobody has read yet; afterwards the process is killed if it still runs and
    the terminal is closed.
    """
    master, slave = pty.openpty()
    watch = os.open(os.ttyname(slave), os.O_RDWR | os.O_NOCTTY)  # to see the terminal's input queue

    def unread():
        return struct.unpack("i", fcntl.ioctl(watch, termios.FIONREAD, b"\0\0\0\0"))[0]

    env = dict(os.environ)
    env.pop("SRPY_SECRET", None)
    try:
        try:
            process = subprocess.Popen([sys.executable, SRPYAPP] + args, stdin=slave, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        finally:
            os.close(slave)
        try:
            expected = int(args[args.index("-n") + 1]) if "-n" in args else 1
            uris, banner = [], []
            while len(uris) < expected:
                line = process.stdout.readline()
                if not line:
                    process.kill()
                    raise AssertionError("launcher exited: %s" % process.communicate()[1])
                (uris if URI_LINE.match(line.strip()) else banner).append(line.strip())
            yield process, master, uris, banner, unread
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    finally:
        os.close(master)
        os.close(watch)


def wait_read(unread, timeout=20):
    """Wait until the launcher has read everything typed on its terminal."""
    deadline = time.monotonic() + timeout
    while unread():
        assert time.monotonic() < deadline, "the launcher did not read its console within %s s" % timeout
        time.sleep(0.01)


def assert_stops_cleanly(process, pids):
    """The launcher exits with code 0 and no traceback, and every engine it started is gone."""
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err and "Fatal Python error" not in err
    assert wait_gone(pids)


@pytest.mark.parametrize("args, word", [(["-b"], "quit"), (["-n", "2"], "quit"), (["-b"], "exit"),
                                        (["-b"], "q"), (["-n", "2"], "  QUIT  ")],
                         ids=["basic-quit", "multi-quit", "basic-exit", "basic-q", "multi-QUIT"])
def test_quit_on_an_interactive_console(args, word):
    with on_a_tty(args) as (process, master, uris, banner, unread):
        assert any("'quit'" in line for line in banner), banner
        pids = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        ping_all(uris)
        os.write(master, b"hello\n")  # anything else is ignored
        wait_read(unread)
        time.sleep(0.2)  # read: time enough for a wrong stop to begin
        assert process.poll() is None
        ping_all(uris)
        os.write(master, word.encode() + b"\n")
        assert_stops_cleanly(process, pids)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("args", [["-b"], ["-n", "2"]], ids=["basic", "multi"])
def test_signal_with_an_interactive_console(args, signum):
    """A launcher on a console stops cleanly on a signal too (its console reader must not hang it)."""
    with on_a_tty(args) as (process, _, uris, _, _):
        pids = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        ping_all(uris)
        process.send_signal(signum)
        assert_stops_cleanly(process, pids)


def test_end_of_console_input_does_not_stop_the_launcher():
    with on_a_tty(["-b"]) as (process, master, uris, _, unread):
        # a line first, so that we see the launcher read the terminal (its queue does not count a Ctrl-D),
        # then Ctrl-D: the end of its input, read right after the line
        os.write(master, b"hello\n\x04")
        wait_read(unread)
        time.sleep(0.3)
        assert process.poll() is None
        ping_all(uris)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
        assert process.returncode == 0


def test_an_engine_that_dies_is_reported(start_launcher):
    launcher = start_launcher(["-n", "2"], count=2)
    engines = {}
    for uri in launcher.uris:
        with srpy.PythonEngine(uri) as eng:
            engines[eng.whoami()["PID"]] = uri
    victim = sorted(engines)[0]
    os.kill(victim, signal.SIGKILL)
    log = read_stderr_until(launcher, r"died")
    line = [l for l in log.splitlines() if "died" in l][0]
    assert engines[victim] in line and str(victim) in line and "ERROR" in line
    survivor = [uri for pid, uri in engines.items() if pid != victim]
    ping_all(survivor)  # the others keep serving
    assert launcher.process.poll() is None
    other = [pid for pid in engines if pid != victim]
    code, err = launcher.stop()
    assert code == 0, err
    assert err.count("died") == 0, "reported once"
    assert wait_gone(other)


def test_engine_that_exits_by_itself_is_reported(start_launcher):
    launcher = start_launcher(["-n", "1"], count=1)
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        with pytest.raises(srpy.ConnectionLost):
            eng.exe("import os; os._exit(7)")
    log = read_stderr_until(launcher, r"died with exit code 7")
    assert launcher.uris[0] in log
    assert launcher.stop()[0] == 0


# -- busy ports and where an engine may listen ------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["-n", "2"]], ids=["basic", "multi"])
def test_busy_port(extra):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        code, out, err = run_app("--port", str(port), *extra)
    assert code != 0
    assert "cannot listen on 127.0.0.1:%d" % port in err and "in use" in err
    assert "Traceback" not in err
    assert not [line for line in out.splitlines() if line.startswith("PYRO:")]


def test_busy_port_leaves_no_engine_behind():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        code, _, _ = run_app("--port", str(port), "-n", "2")  # the first fails, the second may start
        assert code != 0
        left = {p.pid for p in psutil.Process().children(recursive=True)} - before
        assert wait_gone(list(left))


@pytest.mark.parametrize("extra", [[], ["-n", "1"]], ids=["basic", "multi"])
def test_non_loopback_host_without_secret_is_refused(extra):
    code, out, err = run_app("--host", "0.0.0.0", *extra)
    assert code == 1
    assert "refusing to listen on 0.0.0.0 without a secret" in err
    assert "--secret" in err and "--insecure" in err
    assert "PYRO:" not in out


def test_insecure_warns_loudly(start_launcher):
    launcher = start_launcher(["--host", "0.0.0.0", "--insecure"])
    port = int(launcher.uris[0].rsplit(":", 1)[1])
    ping_all(["PYRO:srpy.engine@127.0.0.1:%d" % port])
    code, err = launcher.stop()
    assert code == 0
    assert re.search(r"WARNING.*INSECURE.*0\.0\.0\.0.*no secret", err), err


def test_insecure_multi_warns_for_each_engine(start_launcher):
    launcher = start_launcher(["--host", "0.0.0.0", "--insecure", "-n", "2"], count=2)
    code, err = launcher.stop()
    assert code == 0
    assert len(re.findall(r"WARNING.*INSECURE", err)) >= 2, err


@pytest.mark.parametrize("how", ["option", "environment"])
@pytest.mark.parametrize("extra", [[], ["-n", "1"]], ids=["basic", "multi"])
def test_non_loopback_host_with_a_secret(start_launcher, how, extra):
    args = ["--host", "0.0.0.0"] + extra
    env = None
    if how == "option":
        args += ["--secret", "s3cret"]
    else:
        env = {"SRPY_SECRET": "s3cret"}
    launcher = start_launcher(args, env=env, count=1)
    assert any("secret required" in line for line in launcher.banner)
    port = int(launcher.uris[0].rsplit(":", 1)[1])
    local = "PYRO:srpy.engine@127.0.0.1:%d" % port
    with pytest.raises(srpy.AuthenticationError):
        srpy.PythonEngine(local)
    with pytest.raises(srpy.AuthenticationError):
        srpy.PythonEngine(local, secret="wrong")
    ping_all([local], secret="s3cret")
    code, err = launcher.stop()
    assert code == 0
    assert "INSECURE" not in err
    assert "s3cret" not in " ".join(" ".join(p.cmdline()) for p in launcher.children()), \
        "the secret is not on a child's command line"


def test_secret_never_on_a_child_command_line(start_launcher):
    launcher = start_launcher(["-n", "1", "--secret", "hidden-one"], count=1)
    kids = launcher.children()
    assert kids and all("hidden-one" not in " ".join(k.cmdline()) for k in kids)
    ping_all(launcher.uris, secret="hidden-one")


# -- newSubEngine --------------------------------------------------------------------------------------

def test_new_sub_engine_is_ready_when_it_returns():
    uri, process = srpy.newSubEngine(timeout=30)
    try:
        assert process.poll() is None
        ping_all([uri])
    finally:
        assert srpy.stopSubEngine(process) == 0
    assert wait_gone([process.pid])
    with pytest.raises(srpy.SRPyServerNotFound):
        srpy.PythonEngine(uri, connect_timeout=2)


def test_new_sub_engine_that_cannot_start():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(srpy.SRPyError, match="refusing to listen"):
        srpy.newSubEngine(host="0.0.0.0", secret="")
    with pytest.raises(srpy.SRPyError, match="ready"):
        srpy.newSubEngine(timeout=0.001)
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert wait_gone(list(left))


def test_new_sub_engine_with_secret():
    uri, process = srpy.newSubEngine(secret="sub-secret")
    try:
        with pytest.raises(srpy.AuthenticationError):
            srpy.PythonEngine(uri, secret="")
        ping_all([uri], secret="sub-secret")
    finally:
        srpy.stopSubEngine(process)


@pytest.mark.parametrize("args", [["-b"], ["-n", "2"]], ids=["basic", "multi"])
def test_ctrl_c_on_the_console_process_group(args):
    """Ctrl-C in a terminal signals the launcher and its engines at once: still one clean stop."""
    env = dict(os.environ)
    env.pop("SRPY_SECRET", None)
    process = subprocess.Popen([sys.executable, SRPYAPP] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env, start_new_session=True)
    try:
        expected = 2 if "-n" in args else 1
        uris = []
        while len(uris) < expected:
            line = process.stdout.readline()
            assert line, process.communicate()[1]
            if URI_LINE.match(line.strip()):
                uris.append(line.strip())
        pids = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        ping_all(uris)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
        assert "died" not in err, "engines stopped by Ctrl-C are not reported as crashed"
        assert wait_gone(pids)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
