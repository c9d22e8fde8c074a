"""
Smoke test of bench/bench_startup.py: one round completes, prints every system's row and both
target ratios, writes its figures, and leaves no process behind (the session's leak check). No
timing is asserted: the figures depend on the machine.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # about 7 s: each round starts srpy, a pool and Pyro5 twice
BENCH_STARTUP = os.path.join(ROOT, "bench", "bench_startup.py")


@pytest.mark.timeout(180)
def test_bench_startup_one_round(tmp_path):
    figures_file = tmp_path / "figures.json"
    completed = subprocess.run([sys.executable, BENCH_STARTUP, "--rounds", "1", "--json", str(figures_file)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=170)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    for label in ("srpy: srpyapp -n 2 until both answer", "spawn Pool(2) until a map's first result",
                  "bare Pyro5: 2 python -c daemons until both answer"):
        assert label in out, label
    assert "(target <= 2.0: " in out and "(target <= 1.0: " in out
    figures = json.loads(figures_file.read_text(encoding="utf-8"))
    assert set(figures["systems"]) == {"srpy", "pool", "pyro"}
    assert set(figures["ratios"]) == {"srpy_over_pool", "srpy_over_pyro"}
    assert all(len(entry["samples"]) == 1 and entry["median"] > 0 for entry in figures["systems"].values())


@pytest.mark.timeout(180)
def test_bench_startup_breakdown(tmp_path):
    completed = subprocess.run([sys.executable, BENCH_STARTUP, "--breakdown", "--rounds", "1"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=170)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    for label in ("interpreter start", "Pyro5.api", "srpy.cli", "srpy.hosting", "whoami", "bytecode writing"):
        assert label in completed.stdout, label
