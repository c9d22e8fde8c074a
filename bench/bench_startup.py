#!/usr/bin/env python3
"""
Start-up: C{srpyapp -n 2} next to a spawn pool and two bare Pyro5 daemons, in one run (issue 11).

Three starts, each from nothing to "both workers answer":
 - B{srpy}: C{python srpyapp.py -n 2} until both URIs it prints answer C{ping()} through
   L{srpy.PythonEngine} (the client is imported before the clock starts);
 - B{spawn pool}: C{multiprocessing.get_context("spawn").Pool(2)} until the first result of a
   trivial map (C{map(abs, [0, -1], chunksize=1)}) is back;
 - B{bare Pyro5}: two C{python -c} processes, each serving a trivial Pyro5 object, until both
   answer a call (through C{Pyro5.api.Proxy}).

The three alternate, round after round, in a rotating order (so that no system always runs
right after another), after one untimed warm-up round; the table shows the median and the best
of the timed rounds and the two ratios issue 11 sets: srpy / spawn pool (at most 2) and srpy /
bare Pyro5 (at most 1). C{--compare DIR} adds a fourth system, srpy from another checkout (the
base commit, say), so that before and after are measured in the same run.

Every child gets the same environment: bytecode cached in a private C{PYTHONPYCACHEPREFIX} (an
installed srpy has its bytecode compiled; where C{PYTHONDONTWRITEBYTECODE} is set, a checkout's
srpy would be compiled from source at every start). This file's top level imports only the
standard library: a spawn pool's workers import it again as their main module.

C{--breakdown} prints where srpy's start-up time goes instead: interpreter start, the imports of
the launcher and of an engine process, and the launcher's own timeline (from C{SRPY_STARTUP_TRACE}).

Usage::

    python bench/bench_startup.py                  # 7 timed rounds (about 10 s)
    python bench/bench_startup.py --rounds 1       # a smoke run
    python bench/bench_startup.py --compare /work/wt-base305 --json figures.json
    python bench/bench_startup.py --breakdown
"""

import argparse
import json
import multiprocessing
import os
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = 7
READY_TIMEOUT = 60.0
TARGET_OVER_POOL = 2.0  # srpy at most this many times a spawn pool's start
TARGET_OVER_PYRO = 1.0  # srpy no slower than bare Pyro5
#: a bare Pyro5 server: one exposed object, its URI on stdout, gone when stdin ends
PYRO_SERVER = """
import os, sys, threading
from Pyro5.api import Daemon, expose

@expose
class Pong:
    def ping(self):
        return "pong"

daemon = Daemon(host="127.0.0.1")
uri = daemon.register(Pong(), "pong")
threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()
sys.stdout.write("%s\\n" % uri)
sys.stdout.flush()
daemon.requestLoop()
"""

Starter = Callable[[], Dict[str, float]]


# -- the three starts -------------------------------------------------------------------------------

def _read_lines(process: "subprocess.Popen[bytes]", wanted: Callable[[str], bool], count: int,
                deadline: float) -> List[str]:
    """The first C{count} lines of C{process}'s stdout for which C{wanted} is true."""
    found: List[str] = []
    buffer = b""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while len(found) < count:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError("process %d printed %d of %d lines in time" % (process.pid, len(found), count))
            if not selector.select(remaining):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError("process %d exited (code %s) after %d of %d lines"
                                   % (process.pid, process.wait(5), len(found), count))
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            found += [text for text in (line.decode("utf-8", "replace").strip() for line in lines) if wanted(text)]
    return found[:count]


def _stop(process: "subprocess.Popen[bytes]", first: Optional[int] = None) -> None:
    """Stop a process of this run and everything it started (SIGTERM, then SIGKILL)."""
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        family = []
    if first is not None and process.poll() is None:
        process.send_signal(first)
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _, lingering = psutil.wait_procs(family, timeout=10)
    for child in lingering:
        child.kill()
    if process.stdout is not None:
        process.stdout.close()


def start_srpy(root: str, env: Dict[str, str]) -> Dict[str, float]:
    """Seconds from spawning C{root}'s C{srpyapp.py -n 2} until both engines answer (and until printed)."""
    import srpy

    env = dict(env, PYTHONPATH=root)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, os.path.join(root, "srpyapp.py"), "-n", "2"], cwd=root, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        uris = _read_lines(process, lambda line: line.startswith("PYRO:"), 2, start + READY_TIMEOUT)
        printed = time.perf_counter() - start
        engines = [srpy.PythonEngine(uri) for uri in uris]
        try:
            if [engine.ping() for engine in engines] != ["pong", "pong"]:
                raise RuntimeError("srpy engines did not answer ping()")
            answered = time.perf_counter() - start
        finally:
            for engine in engines:
                engine.close()
    finally:
        _stop(process, signal.SIGTERM)
    return {"answered": answered, "printed": printed}


def start_pool() -> Dict[str, float]:
    """Seconds from creating a spawn C{Pool(2)} until a trivial map's first result is back."""
    start = time.perf_counter()
    pool = multiprocessing.get_context("spawn").Pool(2)
    try:
        if next(pool.imap(abs, [0, -1], chunksize=1)) != 0:
            raise RuntimeError("the pool gave a wrong result")
        answered = time.perf_counter() - start
    finally:
        pool.terminate()
        pool.join()
    return {"answered": answered}


def start_pyro(env: Dict[str, str]) -> Dict[str, float]:
    """Seconds from spawning two bare Pyro5 servers until both answer a call."""
    from Pyro5.api import Proxy

    start = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-c", PYRO_SERVER], env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE) for _ in range(2)]
    try:
        uris = [_read_lines(process, lambda line: line.startswith("PYRO:"), 1, start + READY_TIMEOUT)[0]
                for process in processes]
        printed = time.perf_counter() - start
        for uri in uris:
            with Proxy(uri) as proxy:
                if proxy.ping() != "pong":
                    raise RuntimeError("a Pyro5 server did not answer")
        answered = time.perf_counter() - start
    finally:
        for process in processes:
            _stop(process)
    return {"answered": answered, "printed": printed}


# -- the run ----------------------------------------------------------------------------------------

def child_environment(cache_dir: str) -> Dict[str, str]:
    """The environment every child of this run gets: bytecode written once (in C{cache_dir}), then reused."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("SRPY_SECRET", None)
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def starters(env: Dict[str, str], compare: Optional[str]) -> List[Tuple[str, str, Starter]]:
    """(key, label, start) of each system measured."""
    chosen = [("srpy", "srpy: srpyapp -n 2 until both answer", lambda: start_srpy(ROOT, env)),
              ("pool", "spawn Pool(2) until a map's first result", start_pool),
              ("pyro", "bare Pyro5: 2 python -c daemons until both answer", lambda: start_pyro(env))]
    if compare:
        where = os.path.abspath(compare)
        chosen.append(("compare", "srpy at %s: srpyapp -n 2" % where, lambda: start_srpy(where, env)))
    return chosen


def run(rounds: int, compare: Optional[str]) -> Dict[str, Any]:
    """Warm up, then C{rounds} rounds of every starter in a rotating order; the figures."""
    samples: Dict[str, List[Dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-pyc-") as cache_dir:
        env = child_environment(cache_dir)
        # the pool's workers get this process's environment: the same as every other child's
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            chosen = starters(env, compare)
            for _, _, start in chosen:  # warm-up: bytecode written, files in the page cache
                start()
            for index in range(rounds):
                shift = index % len(chosen)
                for key, _, start in chosen[shift:] + chosen[:shift]:
                    samples.setdefault(key, []).append(start())
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return summarize(samples, {key: label for key, label, _ in chosen})


def summarize(samples: Dict[str, List[Dict[str, float]]], labels: Dict[str, str]) -> Dict[str, Any]:
    """Medians, bests and the ratios of srpy over the others."""
    figures: Dict[str, Any] = {"systems": {}, "ratios": {}}
    for key, runs in samples.items():
        answered = [run["answered"] for run in runs]
        figures["systems"][key] = {"label": labels[key], "median": statistics.median(answered), "best": min(answered),
                                   "samples": answered}
        if "printed" in runs[0]:
            figures["systems"][key]["printed_median"] = statistics.median(run["printed"] for run in runs)
    median = {key: entry["median"] for key, entry in figures["systems"].items()}
    figures["ratios"]["srpy_over_pool"] = median["srpy"] / median["pool"]
    figures["ratios"]["srpy_over_pyro"] = median["srpy"] / median["pyro"]
    if "compare" in median:
        figures["ratios"]["srpy_over_compare"] = median["srpy"] / median["compare"]
    return figures


def report(figures: Dict[str, Any], rounds: int) -> str:
    """The table and the verdicts, as text."""
    lines = ["start-up until two workers answer (%d round%s, seconds)" % (rounds, "" if rounds == 1 else "s"),
             "%-62s %8s %8s %9s" % ("system", "median", "best", "printed")]
    for entry in figures["systems"].values():
        printed = "%9.3f" % entry["printed_median"] if "printed_median" in entry else "%9s" % "-"
        lines.append("%-62s %8.3f %8.3f %s" % (entry["label"], entry["median"], entry["best"], printed))
    ratios = figures["ratios"]
    lines.append("ratio srpy / spawn pool: %.2f (target <= %.1f: %s)"
                 % (ratios["srpy_over_pool"], TARGET_OVER_POOL, _verdict(ratios["srpy_over_pool"], TARGET_OVER_POOL)))
    lines.append("ratio srpy / bare Pyro5: %.2f (target <= %.1f: %s)"
                 % (ratios["srpy_over_pyro"], TARGET_OVER_PYRO, _verdict(ratios["srpy_over_pyro"], TARGET_OVER_PYRO)))
    if "srpy_over_compare" in ratios:
        lines.append("ratio srpy / srpy at the compared checkout: %.2f" % ratios["srpy_over_compare"])
    return "\n".join(lines)


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


# -- where the time goes ----------------------------------------------------------------------------

BREAKDOWN_STATEMENTS = (
    ("interpreter start (python -S -c pass)", ["-S", "-c", "pass"]),
    ("interpreter start with site (python -c pass)", ["-c", "pass"]),
    ("import Pyro5.api (a bare daemon's imports)", ["-c", "import Pyro5.api"]),
    ("import psutil", ["-c", "import psutil"]),
    ("import srpy (the facade)", ["-c", "import srpy"]),
    ("import srpy.cli (the launcher's command line)", ["-c", "import srpy.cli"]),
    ("import srpy.hosting (what an engine process loads)", ["-c", "import srpy.hosting"]),
)


def _median_seconds(arguments: Sequence[str], env: Dict[str, str], repeats: int) -> Optional[float]:
    """Median wall seconds of C{python ARGUMENTS} (None if it fails)."""
    times = []
    for _ in range(repeats + 1):  # the first one writes bytecode
        start = time.perf_counter()
        done = subprocess.run([sys.executable] + list(arguments), env=env, cwd=ROOT, capture_output=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            return None
    return statistics.median(times[1:])


def breakdown(repeats: int) -> str:
    """Where a start goes: interpreter, imports, and the launcher's own timeline."""
    lines = ["where srpy's start-up goes (median of %d, seconds)" % repeats]
    with tempfile.TemporaryDirectory(prefix="bench-startup-pyc-") as cache_dir:
        env = dict(child_environment(cache_dir), PYTHONPATH=ROOT)
        for label, arguments in BREAKDOWN_STATEMENTS:
            seconds = _median_seconds(arguments, env, repeats)
            lines.append("%-62s %s" % (label, "%.3f" % seconds if seconds is not None else "(not importable)"))
        lines.append("the launcher's timeline (SRPY_STARTUP_TRACE, seconds since its process started):")
        lines += ["  " + line for line in _traced_start(dict(env, SRPY_STARTUP_TRACE="1"))]
    return "\n".join(lines)


def _traced_start(env: Dict[str, str]) -> List[str]:
    """One traced start of C{srpyapp -n 2}: the trace lines it logs."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "srpyapp.py"), "-n", "2"], cwd=ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _read_lines(process, lambda line: line.startswith("PYRO:"), 2, start + READY_TIMEOUT)
        printed = time.perf_counter() - start
    finally:
        _stop(process, signal.SIGTERM)
    assert process.stderr is not None
    trace = [line for line in process.stderr.read().decode("utf-8", "replace").splitlines() if "startup:" in line]
    process.stderr.close()
    return [line.split("startup:", 1)[1].strip() for line in trace] + ["URIs read by this benchmark: %.3f" % printed]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds (default %d)" % ROUNDS)
    parser.add_argument("--compare", metavar="DIR", help="also measure the srpy checkout in DIR (srpyapp.py there)")
    parser.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    parser.add_argument("--breakdown", action="store_true", help="print where srpy's start-up time goes instead")
    options = parser.parse_args(argv)
    if options.breakdown:
        print(breakdown(max(1, options.rounds)))
        return 0
    figures = run(max(1, options.rounds), options.compare)
    print(report(figures, options.rounds))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
