"""The runnable examples of the docs run, each in its own Python (its engines stop with it)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

PAGES = ["doc/peers.md", "doc/engbox.md", "doc/interactive.md"]


def _blocks(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as handle:
        text = handle.read()
    return [block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "srpy.newSubEngine" in block]


CASES = [(page, i, block) for page in PAGES for i, block in enumerate(_blocks(page))]


def test_examples_were_found():
    assert {page for page, _, _ in CASES} == set(PAGES)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("page,index,block", CASES, ids=["%s#%d" % (p, i) for p, i, _ in CASES])
def test_example_runs(page, index, block, tmp_path):
    script = tmp_path / "example.py"  # a file, as a user would have: shipped functions need their source
    script.write_text(block)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "False" not in done.stdout, done.stdout
