"""The type check: srpy's modules are mypy clean (settings in mypy.ini), as CI checks on every run."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # a cold mypy run takes tens of seconds


def test_srpy_is_mypy_clean():
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", os.devnull],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, "mypy finds errors (settings: mypy.ini):\n" + done.stdout + done.stderr
