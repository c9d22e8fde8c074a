"""
doc/environments.md's worked example, end to end: a script with its imports analysed on the
client, its package installed on engines that did not have it (no package index, wheels shipped
from the client), the script run there, its output and results back. The package is a wheel built
in the test (L{wheels.make_wheel}); the client has it installed (the wheel unpacked on its
C{sys.path}, as pip would leave it), the engines do not.
"""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

import srpy
from conftest import ROOT
from wheels import make_wheel

pytestmark = [pytest.mark.timeout(180)]

NO_INDEX = {"UV_INDEX_URL": "http://127.0.0.1:9/simple", "UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple",
            "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "UV_HTTP_RETRIES": "0"}

FIT = '''\
# fit.py: the mean and spread of the numbers in the files named on the command line
import sys

import tinystats                      # a package your engines do not have

from helpers import numbers_in        # your own module, beside fit.py

for path in sys.argv[1:]:
    values = numbers_in(path)
    print(path, tinystats.mean(values), tinystats.spread(values), "tinystats", tinystats.__version__)
'''

HELPERS = '''\
# helpers.py
def numbers_in(text):
    return [float(word) for word in text.split(",")]
'''

TINYSTATS = '''\
__version__ = "1.3"


def mean(values):
    return sum(values) / len(values)


def spread(values):
    return max(values) - min(values)
'''

CLIENT = '''\
import json, sys
import srpy

needs = srpy.analyze("fit.py")
with srpy.EngBox(sys.argv[1:], forward_output=False) as box:
    box.require(*needs["requirements"], install=True, find_links="wheels")
    results = box.run("fit.py", "1,2,3", "10,20")
print(json.dumps({"needs": needs["requirements"], "local": needs["local"], "results": results}))
'''


def test_from_a_script_to_results_on_engines_without_its_package(start_launcher, tmp_path):
    job = tmp_path / "job"
    (job / "wheels").mkdir(parents=True)
    (job / "fit.py").write_text(FIT)
    (job / "helpers.py").write_text(HELPERS)
    (job / "client.py").write_text(CLIENT)
    wheel = make_wheel(job / "wheels", name="tinystats", version="1.3", source=TINYSTATS)
    site = tmp_path / "client-site"  # the client's own install of tinystats
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    launcher = start_launcher(["-n", "2", "--env-dir", str(tmp_path / "envs")], count=2, env=NO_INDEX)
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        assert eng.eval("__import__('importlib').util.find_spec('tinystats') is None"), "the engines lack it"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), ROOT]))
    done = subprocess.run([sys.executable, "client.py"] + launcher.uris, cwd=str(job), env=env,
                          capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["needs"] == ["tinystats==1.3"] and report["local"] == ["helpers"]
    assert sorted(report["results"]) == sorted(launcher.uris)
    for result in report["results"].values():
        assert result == {"exit": 0, "stderr": "", "stdout": textwrap.dedent('''\
            1,2,3 2.0 2.0 tinystats 1.3
            10,20 15.0 10.0 tinystats 1.3
            ''')}
