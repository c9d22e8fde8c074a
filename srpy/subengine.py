"""
Engines from Python: L{newSubEngine} starts one local engine process and returns once it answers,
L{stopSubEngine} stops it, L{detectNCPUs} says how many cores this process may use. All three are
public as C{srpy.newSubEngine}, C{srpy.stopSubEngine} and C{srpy.detectNCPUs}.

A sub-engine is the same engine process C{srpyapp -n N} starts (C{python -m srpy --child}, with
the readiness handshake and the stop-at-stdin's-end protocol of L{srpy.supervisor}): it never
outlives this program, however this program ends.
"""

import argparse
import atexit
import os
from typing import TYPE_CHECKING, List, Optional, Tuple

from . import output
from .supervisor import child_command, spawn_engines, stop_process

if TYPE_CHECKING:
    import subprocess  # imported where used: the launcher asks detectNCPUs, and starts no program

_sub_engines: List["subprocess.Popen[bytes]"] = []


def detectNCPUs() -> int:
    """The number of cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    import psutil  # only where the affinity mask is not there to ask
    return psutil.cpu_count() or 1


def newSubEngine(timeout: float = 30, host: str = "127.0.0.1", name: str = "", group: str = "",
                 secret: Optional[str] = None, python: Optional[str] = None,
                 max_task_time: Optional[float] = None) -> Tuple[str, "subprocess.Popen[bytes]"]:
    """
    Start one local engine process; return C{(uri, process)} once it answers. The process stops
    when L{stopSubEngine} is called, when this program exits, or when this process dies. An
    engine that ends to stop a call (see L{srpy.watch.CallWatch}) serves again at the same URI
    (where the system can fork: the process keeps its engine in a child it forks again).

    @param max_task_time: stop any call that runs longer than this many seconds (as the
        launcher's C{--max-task-time}).
    """
    options = argparse.Namespace(host=host, group=group, debug=False, time=False, insecure=False, pyro_config=None,
                                 max_task_time=max_task_time)
    secret = secret if secret is not None else os.environ.get("SRPY_SECRET")
    # its log is this program's stderr: a line printed there and forwarded here is not logged twice
    started = spawn_engines([child_command(options, name, 0, python)], secret, timeout,
                            {output.LOG_FORWARDED: "0"})[0]
    import subprocess
    process = started.process
    assert isinstance(process, subprocess.Popen)  # a new interpreter: never a fork of the caller's process
    _sub_engines.append(process)
    return started.uri, process


def stopSubEngine(process: "subprocess.Popen[bytes]") -> Optional[int]:
    """Stop an engine started by L{newSubEngine}; returns its exit code."""
    if process in _sub_engines:
        _sub_engines.remove(process)
    return stop_process(process)


@atexit.register
def _stop_sub_engines() -> None:
    """At exit: stop every sub-engine still running."""
    for process in list(_sub_engines):
        stopSubEngine(process)
