"""
doc/examples/slurm_job.sh in its single-node form (no Slurm here, so SLURM_JOB_ID is unset): the
same steps on this machine. One launcher serves the name server and two engines, a second one
registers two more there, the client finds all four through the name server, maps, meshes them
and spreads a spawn job over them; at the end no process of the job is left.
"""

import os
import subprocess
import sys

import psutil
import pytest

from conftest import ROOT, wait_gone

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(ROOT, "doc", "examples", "slurm_job.sh")


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _processes_of(group):
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if group in " ".join(process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found


@pytest.mark.timeout(240)
def test_the_slurm_job_script_runs_its_steps_on_one_machine(tmp_path):
    group = "slurm-test-%d" % os.getpid()
    env = dict(os.environ, SRPYAPP="%s -m srpy.cli" % sys.executable, PYTHON=sys.executable,
               SRPY_NS_PORT=str(_free_port()), SRPY_GROUP=group, TMPDIR=str(tmp_path),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in [name for name in env if name.startswith("SLURM_")]:
        del env[name]
    env.pop("SRPY_SECRET", None)  # the script makes a fresh one
    completed = subprocess.run(["bash", SCRIPT], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=220, cwd=ROOT)
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert "no Slurm here" in out
    assert "engines: 4 on" in out
    assert "map: sum of squares below 10,000 = %d" % sum(i * i for i in range(10_000)) in out
    assert "spawn: a tree sum over 100 leaves ran on" in out
    assert wait_gone(_processes_of(group), timeout=30), _processes_of(group)
