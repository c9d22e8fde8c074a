"""
Smoke test of bench/bench_scale.py: a C{--quick} run over 2 and 4 engines completes, prints every
row for each count, and its JSON holds the figures. No timing is asserted: the figures depend on
the machine; the counts it reports are checked against what the engines must hold at least.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

BENCH_SCALE = os.path.join(ROOT, "bench", "bench_scale.py")
ROWS = ("start (URI file complete)", "EngBox(uri file)", "EngBox.discover (name server)", "client threads",
        "client TCP connections", "client RSS", "client threads, most (long calls)", "connectPeers()",
        "engine conns, max (peers)", "mesh conns, all engines (peers)", "engine threads, max (after spawn)",
        "map of operator.neg, warm", "spawn tree sum")


@pytest.mark.timeout(300)
def test_bench_scale_quick_run(tmp_path):
    figures_file = tmp_path / "figures.json"
    completed = subprocess.run([sys.executable, BENCH_SCALE, "--counts", "2", "4", "--quick", "--json",
                                str(figures_file)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               cwd=ROOT, timeout=290)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    for row in ROWS:
        assert row in completed.stdout, row
    runs = json.loads(figures_file.read_text(encoding="utf-8"))["runs"]
    assert [run["engines"] for run in runs] == [2, 4]
    for run in runs:
        count = run["engines"]
        assert run["discover_ns_found"] == count  # the name server lists every engine
        assert run["peers_kept_min"] == count - 1
        assert run["client_box_up"]["connections"] >= count  # one connection per engine at least
        # a full mesh: each engine holds a link to and from every peer
        assert run["engine_after_peers"]["connections_max"] >= 2 * (count - 1)
        assert run["spawn_leaves"] >= 1 and 1 <= run["spawn_engines"] <= count
