"""
The benchmarks' helper servers, and how they start and stop.

A helper server is a benchmark script started again with C{--serve ROLE}: it prints
C{READY <address>} on stdout once it serves, and exits when its stdin reaches end-of-file (the
benchmark closed it, or died), so none outlives the benchmark that started it. Shared by
C{bench_core.py} and C{bench_box.py}, which import it from this directory.
"""

import os
import signal
import subprocess
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple


# -- in the helper ---------------------------------------------------------------------------------

def exit_at_stdin_eof() -> None:
    """Stop this helper process as soon as its parent closes our stdin (or dies), and only then."""
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os._exit(0)  # nothing to flush or save: a helper server only answers calls

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides


def announce(address: str) -> None:
    """Tell the benchmark where this helper serves."""
    sys.stdout.write("READY %s\n" % address)
    sys.stdout.flush()


# -- in the benchmark ------------------------------------------------------------------------------

def read_line(process: "subprocess.Popen[bytes]", timeout: float) -> str:
    """One line of the process's stdout, waiting at most C{timeout} seconds ('' at end of file)."""
    lines: List[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()),  # type: ignore[union-attr]
                              name="read-line", daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines:
        raise TimeoutError("no line from process %d within %.0f s" % (process.pid, timeout))
    return lines[0].decode("utf-8", "replace").strip()


def ready_address(process: "subprocess.Popen[bytes]", role: str, timeout: float) -> str:
    """The address in a helper's C{READY <address>} line."""
    words = read_line(process, timeout).split()
    if len(words) != 2 or words[0] != "READY":
        raise RuntimeError("%s helper failed to start (exit code %s)" % (role, process.poll()))
    return words[1]


def spawn_helper(script: str, role: str, env: Optional[Dict[str, str]] = None) -> "subprocess.Popen[bytes]":
    """Start C{script} as a helper server of C{role} (not waiting for it)."""
    return subprocess.Popen([sys.executable, os.path.abspath(script), "--serve", role],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def start_helper(script: str, role: str, timeout: float) -> Tuple["subprocess.Popen[bytes]", str]:
    """Start C{script} as a helper server of C{role}; return the process and the address it announced."""
    process = spawn_helper(script, role)
    try:
        return process, ready_address(process, role, timeout)
    except BaseException:
        stop_process(process)
        raise


def stop_process(process: "subprocess.Popen[bytes]", grace: float = 5.0, first: Optional[int] = None) -> None:
    """Send C{first} if given, then srpy's own sequence: close stdin, terminate, kill (C{grace} s apart)."""
    from srpy import supervisor
    if first is not None and process.poll() is None:
        try:
            process.send_signal(first)
            process.wait(grace)
        except (OSError, subprocess.TimeoutExpired):
            pass
    supervisor.stop_process(process, grace)


def raise_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every C{finally} block stops its processes."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, handler)
