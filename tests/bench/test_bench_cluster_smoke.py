"""
Smoke test of bench/bench_cluster.py: one cold and one warm round on the sshd test hosts complete,
print both rows, and write rows whose cache states say what each kind is (cold: sent to every host,
warm: cached on every host). No timing is asserted. Needs what tests/hosts/test_ssh.py needs.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.root]
BENCH_CLUSTER = os.path.join(ROOT, "bench", "bench_cluster.py")


@pytest.mark.timeout(300)
def test_bench_cluster_one_round(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests", "hosts"))
    from test_ssh import sshd_unavailable
    reason = sshd_unavailable()
    if reason:
        pytest.skip(reason)
    rows_file = tmp_path / "rows.json"
    env = dict(os.environ, PYTHONPATH=ROOT)
    completed = subprocess.run([sys.executable, BENCH_CLUSTER, "--rounds", "1", "--json", str(rows_file)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=280,
                               env=env)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert any(line.startswith("cold ") for line in lines) and any(line.startswith("warm ") for line in lines), lines
    rows = json.loads(rows_file.read_text(encoding="utf-8"))
    assert [row["kind"] for row in rows] == ["warm-up", "cold", "warm"]
    assert [row["cache"] for row in rows] == [["stored"], ["stored"], ["have"]]
    assert all(row["start"] > 0 and row["up"] >= row["dist"] >= row["boot"] > 0 for row in rows), rows
