"""
Smoke test of bench/bench_data.py: a C{--quick} run completes, prints a table per workload, every
target's verdict, and a row or a note for each optional system (pandas, Dask, Ray), and writes
its figures as JSON. No timing is asserted: the figures depend on the machine. It passes where
pandas, Dask and Ray are missing (each is then a note).
"""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, importable

pytestmark = pytest.mark.slow  # a few seconds: two engines, three pools and an echo server

BENCH_DATA = os.path.join(ROOT, "bench", "bench_data.py")

TITLES = ("srpy data benchmark - ", "set+get of a 8 MB float64 array (MB/s)",
          "round trip of a 4 MB float64 array (MB/s)", "map of echo over 1000 arrays of 100 float64 (arrays/s)",
          "large bytes, 4 MB of os.urandom (MB/s)", "targets (issue 13, this run's medians)")
ROWS = ("srpy eng.set(a=...) + eng.get('a')", "raw loopback echo", "srpy box.submit(echo, a).result()",
        "multiprocessing Pool.apply (spawn)", "multiprocessing Pool.apply (fork)", "srpy box.map(echo, arrays)",
        "multiprocessing Pool(2).map (fork)", "srpy set + get", "srpy associateFunction callable",
        "srpy box.submit(echo, data).result()")
VERDICTS = ("array set+get / echo", "array submit / echo", "array submit / multiprocessing Pool.apply (spawn)",
            "array submit / multiprocessing Pool.apply (fork)", "map over small arrays")
PEERS = {"dask": ("dask.distributed", "dask client.submit(echo, a).result()"),
         "ray": ("ray", "ray ray.get(echo.remote(a))")}
TARGETS = {"set_get_vs_echo", "submit_vs_echo", "submit_vs_pool_spawn", "submit_vs_pool_fork", "map_rate",
           "dataframe_vs_arrays"}


@pytest.mark.timeout(300)
def test_bench_data_quick_run(tmp_path):
    figures_file = tmp_path / "figures.json"
    completed = subprocess.run([sys.executable, BENCH_DATA, "--quick", "--json", str(figures_file)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=290)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    for text in TITLES + ROWS:
        assert text in out, text
    for name in VERDICTS:
        assert re.search(re.escape(name) + r" .*\b(PASS|FAIL)$", out, re.MULTILINE), name
    # the DataFrame: measured and judged, or a note saying why not
    assert re.search(r"DataFrame set\+get / its arrays .*\b(PASS|FAIL|NOT MEASURED)$", out, re.MULTILINE)
    assert "set+get of a 20000-row mixed DataFrame" in out or "DataFrame: not measured: " in out
    if not importable("pandas"):
        assert "DataFrame: not measured: pandas is not installed" in out
    for peer, (module, row) in PEERS.items():
        if importable(module):
            assert row in out or ("note: %s failed" % peer) in out, peer
        else:
            assert "note: %s not installed" % peer in out, peer
    figures = json.loads(figures_file.read_text(encoding="utf-8"))
    assert {"machine", "settings", "set_get", "submit", "map", "dataframe", "bytes", "targets", "skipped",
            "failed"} <= set(figures)
    assert TARGETS <= set(figures["targets"])
    assert {"echo", "srpy"} <= set(figures["set_get"])
    assert {"echo", "srpy", "pool_spawn", "pool_fork"} <= set(figures["submit"])
    assert {"srpy", "pool_fork"} <= set(figures["map"])
    assert {"echo", "set_get", "associate", "submit"} <= set(figures["bytes"])
    for target in figures["targets"].values():
        assert target["pass"] in (True, False, None)
    if figures["dataframe"] is None:
        assert figures["targets"]["dataframe_vs_arrays"]["pass"] is None
        assert figures["skipped"]["dataframe"].startswith("not measured: ")
    assert figures["machine"]["srpy_commit"]
