"""
Smoke test of bench/bench_box.py: a C{--quick} run completes, prints a table per workload, every
target's verdict, and a row or a note for every optional peer. No timing is asserted: the figures
depend on the machine.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, importable

pytestmark = pytest.mark.slow

BENCH_BOX = os.path.join(ROOT, "bench", "bench_box.py")

TABLE_TITLES = ("per-item submit of square(x), end to end", "map of square over", "primes: 16 tasks of sum_of_primes",
                "start-up: spawn until both workers answer", "targets (issue 3, this run)")
ROWS = ("srpy EngBox.submit", "multiprocessing Pool(2).apply_async", "bare Pyro5 (marshal), 2 threads",
        "bare Pyro5 (serpent), 2 threads", "srpy EngBox.map, cold (first map)", "srpy EngBox.map, warm",
        "multiprocessing Pool(2).map, default chunks", "multiprocessing Pool(2).map, 1 chunk/worker",
        "bare Pyro5 (marshal), 1 chunk/server", "srpy EngBox (1 vs 2 engines)", "multiprocessing Pool(1) vs Pool(2)",
        "srpy: python srpyapp.py -n 2", "bare Pyro5: 2 daemon processes")
VERDICTS = ("submit throughput (median)", "map throughput, warm (median)", "map ahead of every peer's best",
            "primes speed-up 1 -> 2 engines", "start-up of srpyapp -n 2 (median)")
PEER_ROWS = {"rpyc": "rpyc, 2 threads", "dask": "dask Client.submit", "ray": "ray f.remote",
             "ipyparallel": "ipyparallel apply_async (balanced)"}
PEER_MODULES = {"rpyc": "rpyc", "dask": "dask.distributed", "ray": "ray", "ipyparallel": "ipyparallel"}


@pytest.mark.timeout(300)
def test_bench_box_quick_run(tmp_path):
    figures_file = tmp_path / "figures.json"
    completed = subprocess.run([sys.executable, BENCH_BOX, "--quick", "--json", str(figures_file)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=290)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    for text in TABLE_TITLES + ROWS:
        assert text in out, text
    for name in VERDICTS:
        assert re.search(re.escape(name) + r".*\b(PASS|FAIL)\b", out), name
    for peer, row in PEER_ROWS.items():
        if importable(PEER_MODULES[peer]):
            assert row in out or ("note: %s failed" % peer) in out, peer
        else:
            assert "note: %s not installed" % peer in out, peer
    figures = json.loads(figures_file.read_text(encoding="utf-8"))
    assert {"submit_rate", "map_rate", "map_vs_peers", "primes_speedup", "startup"} <= set(figures["targets"])
    assert figures["submit"] and figures["map"] and figures["primes"] and figures["startup"]["srpy"]
