"""
Smoke test of bench/bench_tunnel.py: one round of each mode (direct, tunnel, tls, tunnel+tls) on the
sshd test hosts completes and prints a row per mode. No timing is asserted. Needs what
tests/hosts/test_ssh.py needs.
"""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.root]
BENCH_TUNNEL = os.path.join(ROOT, "bench", "bench_tunnel.py")


@pytest.mark.timeout(300)
def test_bench_tunnel_one_round():
    sys.path.insert(0, os.path.join(ROOT, "tests", "hosts"))
    from test_ssh import sshd_unavailable
    reason = sshd_unavailable()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("cryptography", reason="the tls modes need cryptography (the test extra has it)")
    env = dict(os.environ, PYTHONPATH=ROOT)
    completed = subprocess.run([sys.executable, BENCH_TUNNEL, "--rounds", "1"], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, cwd=ROOT, timeout=280, env=env)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = [line.split()[0] for line in completed.stdout.splitlines()[2:]]
    assert rows == ["direct", "tunnel", "tls", "tunnel+tls"], completed.stdout
