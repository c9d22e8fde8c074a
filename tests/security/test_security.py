"""Issue 6: TLS, memory and message limits, supervision with --restart, status (time limits: test_limits.py)."""

import os
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import trustme

import srpy
from srpy import lite
from srpy.security import HANDSHAKE_TIMEOUT, client_tls

from conftest import ROOT, wait_gone


def test_tls_engine(start_launcher, pki):
    launcher = start_launcher(["-n", "1", "--tls-cert", pki["cert"], "--tls-key", pki["key"], "--secret", "s3"],
                              count=1)
    uri = launcher.uris[0]
    with srpy.PythonEngine(uri, secret="s3", ssl_context=client_tls(ca=pki["ca"])) as engine:
        assert engine.eval("2 + 3") == 5
        blob = os.urandom(300_000)
        engine.set(blob=blob)
        assert engine.get("blob") == blob  # the raw-bytes paths work over TLS too
        numpy = pytest.importorskip("numpy")
        grid = numpy.arange(500_000.0).reshape(500, 1000)
        back = engine.eval("grid * 2", grid=grid)  # bytearray buffers both ways, read without MSG_WAITALL
        assert back.dtype == grid.dtype and (back == grid * 2).all() and back.flags.writeable
        with pytest.raises(srpy.SRPyServerNotFound, match="TLS"):
            srpy.PythonEngine(uri, secret="s3")  # a plaintext client fails, and is told why
        with pytest.raises(srpy.AuthenticationError):
            srpy.PythonEngine(uri, secret="wrong", ssl_context=client_tls(ca=pki["ca"]))
        with pytest.raises(srpy.SRPyServerNotFound):
            srpy.PythonEngine(uri, secret="s3", ssl_context=client_tls())  # does not trust the CA
        assert engine.ping() == "pong"


def test_tls_with_client_certificates(start_launcher, pki):
    launcher = start_launcher(["-n", "2", "--tls-cert", pki["cert"], "--tls-key", pki["key"],
                               "--tls-ca", pki["ca"], "--tls-require-client-cert"], count=2)
    context = client_tls(ca=pki["ca"], cert=pki["client"])
    box = srpy.EngBox(launcher.uris, ssl_context=context)
    assert list(box.map(abs, [-1, -2, -3])) == [1, 2, 3]
    kept = box.connectPeers()  # engines reach each other over TLS with their own certificate
    assert all(len(peers) == 1 for peers in kept.values())
    with pytest.raises(srpy.SRPyServerNotFound):
        srpy.PythonEngine(launcher.uris[0], ssl_context=client_tls(ca=pki["ca"]))  # no client certificate
    box.close()


def test_tls_options_are_checked():
    done = subprocess.run([sys.executable, "srpyapp.py", "--tls-cert", "nowhere.pem"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--tls-key" in done.stderr


# runaway calls, time limits and their restarts: see test_limits.py


def test_killed_engine_is_restarted_with_back_off(start_launcher):
    launcher = start_launcher(["-n", "1", "--restart"], count=1)
    engine = srpy.PythonEngine(launcher.uris[0])
    for _ in range(2):
        pid = engine.whoami()["PID"]
        psutil.Process(pid).kill()
        assert wait_gone([pid])
        assert _answers(engine, within=20)
    engine.close()
    code, err = launcher.stop()
    assert code == 0
    assert err.count("died with exit code -9") == 2 and "restarting engine" in err


def test_memory_limit_gives_memory_error_and_engine_keeps_serving(start_launcher):
    launcher = start_launcher(["-n", "1", "--max-memory", "400"], count=1)
    engine = srpy.PythonEngine(launcher.uris[0])
    with pytest.raises(MemoryError):
        engine.exe("hog = bytearray(800 * 1024 * 1024)")
    assert engine.ping() == "pong" and engine.eval("len(bytearray(1024))") == 1024
    engine.close()


def test_max_message_size(start_launcher):
    launcher = start_launcher(["-n", "1", "--max-message-size", "1"], count=1)
    engine = srpy.PythonEngine(launcher.uris[0])
    with pytest.raises(srpy.MessageTooLargeError):
        engine.set(big=os.urandom(2 * 1024 * 1024))  # raw trailing bytes beyond the limit: refused
    with pytest.raises(srpy.MessageTooLargeError):
        engine.set(big=list(range(300_000)))  # a serialized message beyond the limit: refused
    assert engine.ping() == "pong" and engine.get() == []
    engine.close()


@pytest.mark.slow
def test_silent_connection_is_dropped_after_the_handshake_timeout(engine_uri):
    _, host, port = lite.parse_uri(engine_uri)
    silent = socket.create_connection((host, port))
    half = socket.create_connection((host, port))
    half.sendall(b"PYRO\x01\xf6\x01")  # half a header, then nothing
    try:
        started = time.monotonic()
        assert srpy.PythonEngine(engine_uri).ping() == "pong", "the engine serves others meanwhile"
        for sock in (silent, half):
            sock.settimeout(HANDSHAKE_TIMEOUT + 20)
            while sock.recv(4096):  # at most a CONNECTFAIL message, then the engine closes it
                pass
        assert time.monotonic() - started <= HANDSHAKE_TIMEOUT + 5
    finally:
        silent.close()
        half.close()


def test_status_command(start_launcher, tmp_path):
    uri_file = tmp_path / "uris.txt"
    launcher = start_launcher(["-n", "2", "-u", str(uri_file)], count=2)
    engine = srpy.PythonEngine(launcher.uris[0])
    gate = str(tmp_path / "gate")  # the first engine naps until the status has been taken
    napping = "import os, time\ndef napping():\n    while not os.path.exists(gate): time.sleep(0.01)\nnapping()"
    worker = threading.Thread(target=engine.exe, args=(napping,), kwargs={"gate": gate})
    worker.start()
    deadline = time.monotonic() + 30
    while not engine.isBusy():
        assert time.monotonic() < deadline, "the nap never started"
        time.sleep(0.01)
    try:
        shown = subprocess.run([sys.executable, "srpyapp.py", "status", "-u", str(uri_file), "--stack"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
    finally:
        open(gate, "w").close()
        worker.join(30)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:4] == ["URI", "HOST", "GROUP", "STATE"]
    busy = [line for line in lines if launcher.uris[0] in line and " busy " in line]
    idle = [line for line in lines if launcher.uris[1] in line and " idle " in line]
    assert busy and idle and " exe " in busy[0]
    assert "napping" in shown.stdout and "while not os.path.exists(gate): time.sleep(0.01)" in shown.stdout
    down = subprocess.run([sys.executable, "srpyapp.py", "status", "PYRO:srpy.engine@127.0.0.1:1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert " down " in down.stdout
    engine.close()


def _answers(engine, within=15.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            return engine.ping() == "pong"
        except srpy.SRPyError:
            time.sleep(0.2)
    return False
