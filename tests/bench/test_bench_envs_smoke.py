"""
Smoke test of bench/bench_envs.py: one round of the small package (a wheel it builds, shipped with
find_links: no index needed) provisions two engines cold and cached with each installer at hand,
prints its table and writes its figures. No timing is asserted: the figures depend on the machine.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # about 5 s: two launchers per installer
BENCH_ENVS = os.path.join(ROOT, "bench", "bench_envs.py")


@pytest.mark.timeout(180)
def test_bench_envs_one_round(tmp_path):
    installers = ["uv", "pip"] if shutil.which("uv") else ["pip"]
    figures_file = tmp_path / "figures.json"
    completed = subprocess.run([sys.executable, BENCH_ENVS, "--rounds", "1", "--packages", "small", "--installers",
                                ",".join(installers), "--json", str(figures_file)],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=170)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "tinypkg==1.0" in completed.stdout
    figures = json.loads(figures_file.read_text(encoding="utf-8"))
    assert sorted(figures) == sorted("small/%s" % installer for installer in installers)
    for entry in figures.values():
        assert entry["cold"]["median"] > 0 and entry["cached"]["median"] > 0
