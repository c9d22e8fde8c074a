"""
Smoke test of bench/bench_core.py: a C{--quick} run completes and prints its table and both target
ratios. No timing is asserted: the figures depend on the machine.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

BENCH_CORE = os.path.join(ROOT, "bench", "bench_core.py")


@pytest.mark.timeout(180)
def test_bench_core_quick_run(tmp_path):
    figures_file = tmp_path / "figures.json"
    completed = subprocess.run([sys.executable, BENCH_CORE, "--quick", "--json", str(figures_file)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT,
                               timeout=170)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "ratio eval round trip / RPC floor" in out
    assert "ratio bulk bytes / raw echo" in out
    for label in ("srpy PythonEngine.eval", "bare Pyro5, marshal", "bare Pyro5, json",
                  "bare Pyro5, serpent", "RPC floor", "srpy set + get", "raw loopback echo"):
        assert label in out
    figures = json.loads(figures_file.read_text(encoding="utf-8"))
    assert set(figures["ratios"]) == {"eval_over_floor", "bulk_over_echo"}
