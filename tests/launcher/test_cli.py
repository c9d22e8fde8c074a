"""
The launcher and the client say what is wrong, in one line (issue 10): every launcher option is
checked before any engine starts, `srpyapp status` fails when no engine answers and says when one
wants a secret, an over-limit call names the limit, a closed client raises, a URI naming no object
raises SRPyServerNotFound, python_requires is the true minimum, and `--python`'s hint works.

Every launcher here is a real `srpyapp` process; the error cases also check that nothing it might
have started is left running (each run carries a marker in its environment, which engine processes
inherit).
"""

import ast
import os
import re
import shlex
import subprocess
import sys
import uuid

import psutil
import pytest

import srpy
from conftest import ROOT, SRPYAPP, wait_gone
from srpy import lite

pytestmark = pytest.mark.timeout(120)
MARK = "SRPY_TEST_CLI_MARK"
ERROR_LINE = re.compile(r"^srpyapp: error: ")


def run_cli(*args, env=None, timeout=60):
    """Run C{srpyapp args} to completion; return (code, stdout, stderr, processes it left running)."""
    mark = uuid.uuid4().hex
    full_env = dict(os.environ)
    full_env.pop("SRPY_SECRET", None)
    full_env.update(env or {})
    full_env[MARK] = mark
    done = subprocess.run([sys.executable, SRPYAPP] + list(args), capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr, marked(mark)


def marked(mark):
    """The live processes whose environment carries C{mark} (a launcher's engines inherit it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(MARK) == mark and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, OSError):
            continue  # gone, or not ours to read
    return found


def assert_one_line_error(code, out, err, left, option, exit_code):
    """The launcher refused its options: the right exit code, one error line naming C{option}, nothing started."""
    assert code == exit_code, (code, err)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ERROR_LINE.match(line)]
    assert len(errors) == 1, err
    assert option in errors[0], (option, errors[0])
    others = [line for line in err.splitlines() if not ERROR_LINE.match(line)]
    if exit_code == 2:  # argparse's way: the usage, then the error line
        assert others and others[0].startswith("usage: srpyapp")
        assert all(line.startswith("usage: ") or line.startswith(" ") for line in others), err
    else:
        assert others == [], err
    assert out == "", "something was printed as ready: %r" % out
    assert not left, "left running: %s" % [p.cmdline() for p in left]


# -- every option is checked before anything starts ------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--port", "70000"], "--port"),
    (["--port", "-1"], "--port"),
    (["-n", "2", "--port", "65536"], "--port"),
    (["-n", "2", "--port", "65535"], "--port 65535 with 2 engines"),
    (["-n", "3", "--port", "65534"], "65534 to 65536"),
    (["--ns-port", "0"], "--ns-port"),
    (["--ns", "--ns-port", "99999"], "--ns-port"),
    (["--max-task-time", "0"], "--max-task-time"),
    (["-n", "2", "--max-task-time", "-5"], "--max-task-time"),
    (["--max-task-time", "inf"], "--max-task-time"),
    (["--max-memory", "0"], "--max-memory"),
    (["-n", "2", "--max-memory", "-100"], "--max-memory"),
    (["--max-message-size", "0"], "--max-message-size"),
    (["--max-message-size", "-1"], "--max-message-size"),
    (["--max-message-size", "0.0000001"], "--max-message-size"),
    (["--ready-timeout", "0"], "--ready-timeout"),
    (["--secret", ""], "--secret"),
    (["-n", "2", "--secret="], "--secret"),
    (["--tls-key", "key.pem"], "--tls-cert"),
    (["--tls-require-client-cert"], "--tls-ca"),
    (["--python", sys.executable], "--python needs engine processes"),
    (["-b", "--restart", "--python", sys.executable, "-n", "2"], "-b/--basic"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_a_wrong_value_is_refused_before_anything_starts(args, option):
    assert_one_line_error(*run_cli(*args), option=option, exit_code=2)


def _pyro_file(tmp_path, text):
    path = tmp_path / "pyro.cfg"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, where, what", [
    ("COMMTIMEOUT = 5\nTHREADPOOL_SIZE = many\n", "line 2", "THREADPOOL_SIZE must be a whole number"),
    ("# settings\n\nCOMMTIMEOUT = soon\n", "line 3", "COMMTIMEOUT must be a number"),
    ("COMPRESSION = maybe\n", "line 1", "COMPRESSION must be true or false"),
    ("MAX_MESSAGE_SIZE = 0\n", "line 1", "MAX_MESSAGE_SIZE must be at least 1"),
    ("POLLTIMEOUT = -1\n", "line 1", "POLLTIMEOUT must be a number of 0 or more"),
    ("NS_PORT = 70000\n", "line 1", "NS_PORT must be a port"),
    ("SERIALIZER = pickle\n", "line 1", "SERIALIZER must be one of"),
    ("COMMTIMEOUT = 5\nNOT_A_SETTING = 3\n", "line 2", "not a Pyro5 setting"),
    ("reset = 1\n", "line 1", "not a Pyro5 setting"),
    ("COMMTIMEOUT 5\n", "line 1", "not a Pyro5 setting"),
])
@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["basic", "multi"])
def test_a_pyro_config_file_with_a_bad_line(tmp_path, mode, text, where, what):
    path = _pyro_file(tmp_path, text)
    code, out, err, left = run_cli("-p", path, *mode)
    assert_one_line_error(code, out, err, left, option="-p %s %s" % (path, where), exit_code=1)
    assert what in err


def test_an_unreadable_pyro_config_file(tmp_path):
    for path, why in ((str(tmp_path / "missing.cfg"), "No such file"), (str(tmp_path), "Is a directory")):
        code, out, err, left = run_cli("-n", "2", "-p", path)
        assert_one_line_error(code, out, err, left, option="-p %s" % path, exit_code=1)
        assert why in err
    binary = tmp_path / "binary.cfg"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, out, err, left = run_cli("-p", str(binary))
    assert_one_line_error(code, out, err, left, option="-p %s" % binary, exit_code=1)
    assert "UTF-8" in err


def test_a_valid_pyro_config_file_still_applies_all_at_once(start_launcher, tmp_path):
    path = _pyro_file(tmp_path, "PYRO_COMPRESSION = off  # a comment\nTHREADPOOL_SIZE = 20\nBROADCAST_ADDRS = a, b\n")
    launcher = start_launcher(["-p", path])
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        assert eng.eval("__import__('Pyro5').config.THREADPOOL_SIZE") == 20
        assert eng.eval("__import__('Pyro5').config.BROADCAST_ADDRS") == ["a", "b"]
    assert launcher.stop()[0] == 0


@pytest.mark.parametrize("mode", [[], ["-n", "2"]], ids=["basic", "multi"])
def test_an_unwritable_uri_file(tmp_path, mode):
    cases = [
        (str(tmp_path / "no" / "such" / "dir" / "uris.txt"), "dir does not exist"),
        (str(tmp_path), "is a directory"),
        ("/proc/srpy-uris.txt", "cannot write in /proc"),  # no one may create a file there, not even root
        (str(tmp_path / "plain" / "uris.txt"), "plain is not a directory"),
    ]
    (tmp_path / "plain").write_text("")
    for path, why in cases:
        code, out, err, left = run_cli("-u", path, *mode)
        assert_one_line_error(code, out, err, left, option="-u %s" % path, exit_code=1)
        assert why in err, err


def test_missing_or_wrong_tls_files(tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (["--tls-cert", missing, "--tls-key", str(key_path)], "--tls-cert %s" % missing),
        (["--tls-cert", str(cert_path), "--tls-key", missing], "--tls-key %s" % missing),
        (["--tls-cert", str(cert_path), "--tls-key", str(key_path), "--tls-ca", missing], "--tls-ca %s" % missing),
        (["--tls-cert", str(not_pem), "--tls-key", str(key_path)], "not a PEM certificate and its private key"),
        (["--tls-cert", str(cert_path), "--tls-key", str(ca_path)], "not a PEM certificate and its private key"),
        (["--tls-cert", str(cert_path), "--tls-key", str(key_path), "--tls-ca", str(not_pem)], "--tls-ca"),
    ]
    for args, option in cases:
        for mode in ([], ["-n", "2"]):
            assert_one_line_error(*run_cli(*(args + mode)), option=option, exit_code=1)


def test_an_empty_secret_in_the_environment_means_no_secret(start_launcher):
    launcher = start_launcher([], env={"SRPY_SECRET": ""})
    assert not any("secret required" in line for line in launcher.banner)
    with srpy.PythonEngine(launcher.uris[0], secret=None) as eng:
        assert eng.ping() == "pong"
    code, err = launcher.stop()
    assert code == 0
    assert "SRPY_SECRET is set but empty: treated as unset" in err


def test_the_runtime_failures_are_one_line_too():
    code, out, err, left = run_cli("--host", "0.0.0.0", "-n", "2")
    assert_one_line_error(code, out, err, left, option="--secret", exit_code=1)
    assert "refusing to listen on 0.0.0.0" in err


# -- srpyapp status --------------------------------------------------------------------------------

def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_status_fails_when_no_engine_answers(tmp_path):
    uri = "PYRO:srpy.engine@127.0.0.1:%d" % free_port()
    code, out, err, _ = run_cli("status", uri, "--timeout", "2")
    assert code == 1
    assert " down " in out and "Traceback" not in err
    assert "%s is down" % uri in err and "no engine answered" in err
    empty = tmp_path / "uris.txt"
    empty.write_text("")
    code, out, err, _ = run_cli("status", "-u", str(empty), "--ns-host", "127.0.0.1", "--ns-port", str(free_port()))
    assert code == 1 and "Traceback" not in err and err.startswith("srpyapp status: ")


def test_status_says_when_an_engine_wants_a_secret(start_launcher):
    launcher = start_launcher([], env={"SRPY_SECRET": "correct horse"})
    uri = launcher.uris[0]
    code, out, err, _ = run_cli("status", uri)
    assert code == 1
    assert re.search(re.escape(uri) + r"\s+-\s+-\s+needs secret", out), out
    assert "%s wants a secret: give it with --secret or SRPY_SECRET" % uri in err
    code, out, err, _ = run_cli("status", uri, "--secret", "wrong")
    assert code == 1 and "needs secret" in out and "%s refused the secret given" % uri in err
    code, out, err, _ = run_cli("status", uri, env={"SRPY_SECRET": "correct horse"})
    assert code == 0 and " idle " in out and err == ""
    down = "PYRO:srpy.engine@127.0.0.1:%d" % free_port()  # one answers, one does not: still a success
    code, out, err, _ = run_cli("status", uri, down, "--secret", "correct horse", "--timeout", "2")
    assert code == 0 and " idle " in out and " down " in out and "%s is down" % down in err


def test_status_options_are_checked():
    for args, option in ((["--timeout", "0"], "--timeout"), (["--ns-port", "70000"], "--ns-port")):
        code, out, err, _ = run_cli("status", *args)
        assert code == 2 and "Traceback" not in err
        assert [line for line in err.splitlines() if line.startswith("srpyapp status: error: argument " + option)]


# -- an over-limit message names the limit --------------------------------------------------------

@pytest.mark.parametrize("mode", [[], ["-n", "1"]], ids=["basic", "multi"])
def test_an_over_limit_message_says_which_limit(start_launcher, mode):
    launcher = start_launcher(["--max-message-size", "1"] + mode, count=1)
    eng = srpy.PythonEngine(launcher.uris[0])
    try:
        for value, what in ((os.urandom(2 * 1024 * 1024), " of raw data"),  # raw bytes after the call
                            ("x" * (2 * 1024 * 1024), ",")):  # one serialized message
            with pytest.raises(srpy.errors.MessageTooLargeError) as refused:
                eng.set(big=value)
            text = str(refused.value)
            sent = re.search(r"this call sends (\d+) bytes" + what, text)
            assert sent and int(sent.group(1)) >= 2 * 1024 * 1024, text
            assert "limit of 1048576 bytes" in text and "--max-message-size" in text, text
            assert eng.ping() == "pong" and eng.get() == []  # the engine serves on, nothing was set
        eng.set(small=b"y" * 500_000)
        assert len(eng.get("small")) == 500_000
    finally:
        eng.close()
    json_client = lite.Engine(launcher.uris[0])
    with pytest.raises(lite.RemoteError, match="MessageTooLargeError: message too large: .*limit of 1048576 bytes"):
        json_client.set(big="x" * (2 * 1024 * 1024))
    assert json_client.ping() == "pong"
    json_client.close()
    code, err = launcher.stop()
    assert code == 0 and "message too large" in err


# -- a closed client raises; a URI naming no object --------------------------------------------------

@pytest.mark.parametrize("client", [srpy.PythonEngine, lite.Engine], ids=["PythonEngine", "lite"])
def test_a_closed_engine_raises_instead_of_reconnecting(engine_uri, client):
    eng = client(engine_uri)
    assert eng.ping() == "pong"
    eng.close()
    eng.close()  # again: nothing happens
    for call in (eng.ping, lambda: eng.eval("1 + 1"), lambda: eng.set(a=1), eng.whoami):
        with pytest.raises(srpy.ConnectionLost, match="this %s was closed" % client.__name__):
            call()
    with client(engine_uri) as inside:
        assert inside.ping() == "pong"
    with pytest.raises(srpy.ConnectionLost, match="was closed"):
        inside.ping()
    assert not eng.pool.idle and not inside.pool.idle  # nothing reconnected behind the caller's back


def test_a_closed_engine_s_namespace_view_raises_too(engine_uri):
    eng = srpy.PythonEngine(engine_uri)
    eng.exe("def f(): return 7")
    f = eng.associateFunction("f")
    ns = eng.ns
    eng.close()
    for call in (f, lambda: ns.f, lambda: setattr(ns, "a", 1)):
        with pytest.raises(srpy.ConnectionLost, match="this PythonEngine was closed"):
            call()


def test_box_close_closes_its_engines_and_may_be_repeated(engine_uri):
    box = srpy.EngBox([engine_uri])
    assert box.submit(abs, -3).result(timeout=60) == 3
    engines = box.getEngines()
    box.close()
    box.close()
    with pytest.raises(srpy.ConnectionLost, match="was closed"):
        engines[0].ping()
    with srpy.PythonEngine(engine_uri) as fresh:  # the engine itself serves on
        assert fresh.ping() == "pong"


@pytest.mark.parametrize("client", [srpy.PythonEngine, lite.Engine], ids=["PythonEngine", "lite"])
def test_a_uri_naming_no_object_raises_server_not_found(engine_uri, client):
    _, host, port = lite.parse_uri(engine_uri)
    uri = "PYRO:nothing@%s:%d" % (host, port)
    with pytest.raises(srpy.SRPyServerNotFound, match="serves no object named 'nothing'") as refused:
        client(uri)
    assert refused.value.uri == uri
    with client(engine_uri) as eng:
        assert eng.ping() == "pong"


# -- python_requires is the true minimum ---------------------------------------------------------

def _python_requires():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as handle:
        found = re.search(r'python_requires=">=(\d+)\.(\d+)"', handle.read())
    assert found, "setup.py has no python_requires"
    return int(found.group(1)), int(found.group(2))


def _sources():
    for top in ("srpy", "tests", "bench"):
        for folder, _, names in os.walk(os.path.join(ROOT, top)):
            for name in names:
                if name.endswith(".py"):
                    yield os.path.join(folder, name)
    yield SRPYAPP
    yield os.path.join(ROOT, "setup.py")


def test_python_requires_is_what_the_code_needs():
    minimum = _python_requires()
    for path in _sources():  # no syntax newer than the minimum (match, except*, ...)
        with open(path, encoding="utf-8") as handle:
            ast.parse(handle.read(), path, feature_version=minimum)
    with open(os.path.join(ROOT, "srpy", "functions.py"), encoding="utf-8") as handle:
        functions = handle.read()
    # the newest thing srpy needs without a fallback: functions travel as ast.unparse's source (3.9)
    assert "ast.unparse(" in functions
    assert minimum == (3, 9)


# -- the --python hint names a command that works ------------------------------------------------

def _without_pythonpath():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the launcher finds srpy beside srpyapp.py; the other Python must not
    return env


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_python_hint_installs_srpy(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    code, out, err, left = run_cli("-n", "1", "--python", python, env=_without_pythonpath())
    assert_one_line_error(code, out, err, left, option="--python %s" % python, exit_code=1)
    hint = err.strip().split("Install srpy there first: ", 1)[1]
    assert hint == "%s -m pip install %s" % (shlex.quote(python), shlex.quote(ROOT))
    installed = subprocess.run(shlex.split(hint), capture_output=True, text=True, timeout=500,
                               env=_without_pythonpath(), cwd=str(tmp_path))
    if installed.returncode != 0 and re.search(r"No matching distribution|Could not find a version|"
                                               r"Failed to establish a new connection", installed.stdout
                                               + installed.stderr):
        pytest.skip("no package index reachable for srpy's dependencies: %s" % installed.stderr[-300:])
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    launcher = subprocess.Popen([sys.executable, SRPYAPP, "-n", "1", "--python", python], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=_without_pythonpath(),
                                cwd=ROOT)
    try:
        lines = []
        while not any(line.startswith("PYRO:") for line in lines):
            line = launcher.stdout.readline()
            assert line, "the launcher exited: %s" % launcher.stderr.read()
            lines.append(line.strip())
        uri = [line for line in lines if line.startswith("PYRO:")][0]
        with srpy.PythonEngine(uri) as eng:
            assert os.path.realpath(eng.info["Python Executable"]) == os.path.realpath(python)
    finally:
        kids = psutil.Process(launcher.pid).children(recursive=True)
        launcher.terminate()
        launcher.communicate(timeout=60)
        assert wait_gone([kid.pid for kid in kids])


def test_the_python_hint_for_a_python_without_pip(tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    python = str(bare / "bin" / "python")
    code, out, err, left = run_cli("-n", "1", "--python", python, env=_without_pythonpath())
    assert_one_line_error(code, out, err, left, option="--python %s" % python, exit_code=1)
    quoted = shlex.quote(python)
    assert err.strip().endswith("Install srpy there first: %s -m ensurepip && %s -m pip install %s"
                                % (quoted, quoted, shlex.quote(ROOT)))
    assert subprocess.run([python, "-m", "ensurepip"], capture_output=True, timeout=300).returncode == 0
    assert subprocess.run([python, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode == 0
