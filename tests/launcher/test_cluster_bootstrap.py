"""
The SSH cluster's bootstrap without SSH: the exact remote command an L{srpy.SSHCluster} has ssh run
(C{python -c LOADER}) runs here as a child, with the protocol on its stdin and stdout, in a Python
that cannot import srpy (C{-I -S}). So every step but the ssh connection is checked without root or
sshd (tests/hosts/test_ssh.py does it across real sshd hosts): the zip is asked for, stored (and
unpacked) and then found in the cache, the launcher runs from it on loopback (no SSH_CONNECTION here), its engine takes
the cluster's secret (which is on no command line), and the end of stdin stops it all. With TLS, the
certificate and key made for the host arrive on stdin, the engine serves TLS, and their folder goes with
the engine; a host that hears no heartbeat for the header's seconds stops its engine by itself.
"""

import os
import subprocess
import sys

import psutil
import pytest

import srpy
from srpy.cluster import RemoteHost, _bootstrap_script, build_dist
from srpy.sshbootstrap import LOADER

from conftest import wait_gone


def start(tmp_path, secret):
    dist, digest = build_dist()
    remote = RemoteHost("local", [sys.executable, "-I", "-S", "-c", LOADER])
    header = {"hash": digest, "size": len(dist), "secret": secret, "engines": 1, "args": [],
              "cache": str(tmp_path / "cache")}
    remote.start(header, dist, _bootstrap_script(), timeout=60)
    return remote, digest


def test_bootstrap_stores_then_finds_the_zip_and_stops_at_the_end_of_stdin(tmp_path):
    assert subprocess.run([sys.executable, "-I", "-S", "-c", "import srpy"], capture_output=True).returncode != 0
    secret = "a-cluster-secret-%d" % os.getpid()
    for expected in ("stored", "have"):
        remote, digest = start(tmp_path, secret)
        try:
            assert remote.cache == expected and remote.dist_path == str(tmp_path / "cache" / digest)
            assert len(remote.uris) == 1 and "@127.0.0.1:" in remote.uris[0]
            with pytest.raises(srpy.AuthenticationError):
                srpy.PythonEngine(remote.uris[0], secret="wrong").ping()
            with srpy.PythonEngine(remote.uris[0], secret=secret) as engine:
                assert engine.eval("__import__('srpy').__file__").startswith(remote.dist_path + os.sep)
                assert engine.eval("6 * 7") == 42
                pid = engine.eval("__import__('os').getpid()")
            tree = psutil.Process(remote.process.pid).children(recursive=True)
            assert tree and not [p for p in tree if any(secret in word for word in p.cmdline())]
        finally:
            code = remote.stop()
        assert code == 0
        assert wait_gone([pid] + [p.pid for p in tree], timeout=30)
    assert sorted(os.listdir(tmp_path / "cache")) == [digest, digest + ".zip"]
    # the second start found the bytecode the first one wrote beside the sources
    assert list((tmp_path / "cache" / digest / "srpy" / "__pycache__").glob("hosting.*.pyc"))


def test_a_damaged_zip_in_transit_is_refused_with_one_line(tmp_path):
    dist, digest = build_dist()
    remote = RemoteHost("local", [sys.executable, "-I", "-S", "-c", LOADER])
    header = {"hash": digest, "size": len(dist), "secret": "s" * 32, "engines": 1, "args": [],
              "cache": str(tmp_path / "cache")}
    damaged = dist[:100] + bytes([dist[100] ^ 0xFF]) + dist[101:]
    with pytest.raises(srpy.ClusterHostError, match=r"^local: the srpy zip arrived damaged"):
        remote.start(header, damaged, _bootstrap_script(), timeout=60)
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_an_unpacked_folder_missing_a_file_is_unpacked_again(tmp_path):
    remote, digest = start(tmp_path, "s" * 32)
    remote.stop()
    folder = tmp_path / "cache" / digest
    (folder / "srpy" / "engine.py").unlink()
    (folder / "srpy" / "cli.py").write_text("raise SystemExit('not srpy')\n")  # another size: replaced too
    remote, _ = start(tmp_path, "s" * 32)
    try:
        assert remote.cache == "have" and len(remote.uris) == 1
        with srpy.PythonEngine(remote.uris[0], secret="s" * 32) as engine:
            assert engine.eval("1 + 1") == 2
    finally:
        assert remote.stop() == 0
    assert (folder / "srpy" / "engine.py").is_file() and "not srpy" not in (folder / "srpy" / "cli.py").read_text()
    assert sorted(os.listdir(tmp_path / "cache")) == [digest, digest + ".zip"]  # no leftover of the swap


def test_tls_certificates_made_for_the_cluster_travel_on_stdin_and_leave_with_the_engines(tmp_path):
    pytest.importorskip("cryptography", reason="SSHCluster(tls=True) needs cryptography (the test extra has it)")
    from srpy.clustertls import ClusterCA
    dist, digest = build_dist()
    ca = ClusterCA()
    remote = RemoteHost("local", [sys.executable, "-I", "-S", "-c", LOADER])
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    header = {"hash": digest, "size": len(dist), "secret": "s" * 32, "engines": 1, "args": [],
              "cache": str(tmp_path / "cache"), "tls": True}
    old = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(temporary)  # the bootstrap (a child) puts its TLS folder there
    try:
        remote.start(header, dist, _bootstrap_script(), timeout=60, tls=ca)
    finally:
        if old is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = old
    try:
        folders = list(temporary.glob("srpy-tls-*"))
        assert len(folders) == 1 and oct(folders[0].stat().st_mode & 0o777) == "0o700"
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in folders[0].iterdir())
        with pytest.raises(srpy.SRPyServerNotFound, match="TLS"):
            srpy.PythonEngine(remote.uris[0], secret="s" * 32)  # a plain client is refused
        with srpy.PythonEngine(remote.uris[0], secret="s" * 32, ssl_context=ca.client_context()) as engine:
            assert engine.eval("6 * 7") == 42
        other = ClusterCA()  # another cluster's CA does not vouch for this one's engines
        with pytest.raises(srpy.SRPyServerNotFound):
            srpy.PythonEngine(remote.uris[0], secret="s" * 32, ssl_context=other.client_context())
        tree = psutil.Process(remote.process.pid).children(recursive=True)
        key = (folders[0] / "key.pem").read_text().splitlines()[1]
        assert not [p for p in tree if any(key in word for word in p.cmdline())]
    finally:
        assert remote.stop() == 0
    assert not list(temporary.glob("srpy-tls-*"))  # removed once the launcher ended


@pytest.mark.slow
def test_a_host_that_hears_no_heartbeat_stops_its_engines_by_itself(tmp_path):
    import time
    dist, digest = build_dist()
    remote = RemoteHost("local", [sys.executable, "-I", "-S", "-c", LOADER])
    header = {"hash": digest, "size": len(dist), "secret": "s" * 32, "engines": 1, "args": [],
              "cache": str(tmp_path / "cache"), "heartbeat": 3}
    remote.start(header, dist, _bootstrap_script(), timeout=60)
    try:
        with srpy.PythonEngine(remote.uris[0], secret="s" * 32) as engine:
            pid = engine.eval("__import__('os').getpid()")
            # heartbeats for twice the host's patience: it answers each, and its engine serves on
            until = time.monotonic() + 6
            while time.monotonic() < until:
                remote.beat()
                time.sleep(0.5)
            assert engine.ping() == "pong" and remote.silent_for() < 3
        # no more heartbeats (stdin still open: a cut link): the host stops its engines and ends
        assert remote.process.wait(60) == 0
        assert wait_gone([pid], timeout=30)
        assert any("no word from the client for 3 s" in line for line in remote._stderr), list(remote._stderr)
    finally:
        remote.stop()


def test_tunnel_tls_and_heartbeat_options_are_checked_before_any_ssh_runs():
    with pytest.raises(ValueError, match="tunnel names hosts not in the cluster: h9"):
        srpy.SSHCluster(["h1"], tunnel=["h9"], ssh="/nonexistent/ssh")
    with pytest.raises(ValueError, match="tunnel and bind both name h1"):
        srpy.SSHCluster(["h1"], tunnel=True, bind={"h1": "10.0.0.1"}, ssh="/nonexistent/ssh")
    with pytest.raises(ValueError, match="heartbeat"):
        srpy.SSHCluster(["h1"], heartbeat=0, ssh="/nonexistent/ssh")
    done = subprocess.run([sys.executable, "-m", "srpy", "ssh", "h1", "--ca-file", "ca.pem"], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                              srpy.__file__))))
    assert done.returncode == 2 and "--ca-file needs --tls" in done.stderr, done.stderr
