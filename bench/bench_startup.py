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
bare Pyro5 (at most 1), as ratios of the medians and paired (the median of the rounds' own
ratios). C{--compare DIR} (repeatable) adds srpy from another checkout (the base commit, say), so
that before and after are measured in the same run.

Every child gets the same environment: bytecode cached in a private C{PYTHONPYCACHEPREFIX} (an
installed srpy has its bytecode compiled; where C{PYTHONDONTWRITEBYTECODE} is set, a checkout's
srpy would be compiled from source at every start). This file's top level imports only the
standard library: a spawn pool's workers import it again as their main module.

C{--breakdown} prints where srpy's start-up time goes instead: interpreter start, and the CPU time
of the imports of the launcher before it forks, of an engine process, and of a bare Pyro5 server.

Usage::

    python bench/bench_startup.py                  # 7 timed rounds (about 15 s)
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


def starters(env: Dict[str, str], compare: Sequence[str]) -> List[Tuple[str, str, Starter]]:
    """(key, label, start) of each system measured."""
    chosen = [("srpy", "srpy: srpyapp -n 2 until both answer", lambda: start_srpy(ROOT, env)),
              ("pool", "spawn Pool(2) until a map's first result", start_pool),
              ("pyro", "bare Pyro5: 2 python -c daemons until both answer", lambda: start_pyro(env))]
    for index, where in enumerate(os.path.abspath(path) for path in compare):
        chosen.append(("compare%d" % (index + 1), "srpy at %s" % where,
                       lambda where=where: start_srpy(where, env)))  # type: ignore[misc]
    return chosen


def run(rounds: int, compare: Sequence[str]) -> Dict[str, Any]:
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
    """
    Medians, bests and the ratios of srpy over the others: of the medians, and paired (the
    median of each round's ratio: the systems of one round ran back to back, under the same load).
    """
    figures: Dict[str, Any] = {"systems": {}, "ratios": {}}
    for key, runs in samples.items():
        answered = [run["answered"] for run in runs]
        figures["systems"][key] = {"label": labels[key], "median": statistics.median(answered), "best": min(answered),
                                   "samples": answered}
        if "printed" in runs[0]:
            figures["systems"][key]["printed_median"] = statistics.median(run["printed"] for run in runs)
    systems = figures["systems"]
    for other in [key for key in systems if key != "srpy"]:
        paired = [mine / theirs for mine, theirs in zip(systems["srpy"]["samples"], systems[other]["samples"])]
        figures["ratios"]["srpy_over_" + other] = {"of_medians": systems["srpy"]["median"] / systems[other]["median"],
                                                   "paired": statistics.median(paired)}
    return figures


def bytecode_note() -> str:
    """Whether this run writes bytecode (C{PYTHONDONTWRITEBYTECODE} or C{-B}): the figures depend on it."""
    if sys.flags.dont_write_bytecode:
        return ("bytecode writing: OFF in this process (PYTHONDONTWRITEBYTECODE or -B; a spawn pool's workers "
                "inherit it; srpy's and Pyro5's children cache theirs in a private PYTHONPYCACHEPREFIX)")
    return "bytecode writing: on (the normal case; children cache theirs in a private PYTHONPYCACHEPREFIX)"


def report(figures: Dict[str, Any], rounds: int) -> str:
    """The table and the verdicts, as text."""
    lines = [bytecode_note(),
             "start-up until two workers answer (%d round%s, seconds)" % (rounds, "" if rounds == 1 else "s"),
             "%-62s %8s %8s %9s" % ("system", "median", "best", "printed")]
    for entry in figures["systems"].values():
        printed = "%9.3f" % entry["printed_median"] if "printed_median" in entry else "%9s" % "-"
        lines.append("%-62s %8.3f %8.3f %s" % (entry["label"], entry["median"], entry["best"], printed))
    targets = {"pool": TARGET_OVER_POOL, "pyro": TARGET_OVER_PYRO}
    for key, ratio in figures["ratios"].items():
        other = key[len("srpy_over_"):]
        line = "ratio srpy / %s: %.2f of the medians, %.2f paired" % (
            figures["systems"][other]["label"].split(":")[0], ratio["of_medians"], ratio["paired"])
        if other in targets:
            line += " (target <= %.1f: %s)" % (targets[other], _verdict(ratio["of_medians"], targets[other]))
        lines.append(line)
    return "\n".join(lines)


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


# -- where the time goes ----------------------------------------------------------------------------

#: a bare Pyro5 server's start, as the modules it loads
BARE_STEPS = (("a bare Pyro5 server's imports (Pyro5.api)", "import Pyro5.api"),)
#: each step of an srpy engine process's start, as what it loads, one after the other
SRPY_STEPS = (
    ("srpyapp before it forks: srpy.cli (argparse, logging, socket, json ...)", "import srpy.cli"),
    ("an engine process's imports after that: srpy.hosting (Pyro5, the engine)", "import srpy.hosting"),
    ("a client's first whoami, in the engine (the machine's memory, load, processor)",
     "import srpy.engine as e; e.machine_memory(); e.machine_load(); e.processor_name()"),
)
#: runs steps (a JSON list of (label, statement)) one after the other in one interpreter; prints their CPU ms
_CPU_TIMER = """
import json, sys, time
out = []
for label, statement in json.loads(sys.argv[1]):
    start = time.process_time()
    exec(statement)
    out.append((label, (time.process_time() - start) * 1e3))
print(json.dumps(out))
"""


def _median_wall(arguments: Sequence[str], env: Dict[str, str], repeats: int) -> float:
    """Median wall seconds of C{python ARGUMENTS}."""
    times = []
    for _ in range(repeats + 1):  # the first one writes bytecode
        start = time.perf_counter()
        subprocess.run([sys.executable] + list(arguments), env=env, cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _median_cpu(steps: Sequence[Tuple[str, str]], env: Dict[str, str], repeats: int) -> List[Tuple[str, float]]:
    """Median CPU milliseconds of each step, each run in a fresh interpreter after the ones before it."""
    runs = []
    for _ in range(repeats + 1):
        done = subprocess.run([sys.executable, "-c", _CPU_TIMER, json.dumps(steps)], env=env, cwd=ROOT,
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout))
    return [(label, statistics.median(run[index][1] for run in runs[1:])) for index, (label, _) in enumerate(steps)]


def breakdown(repeats: int) -> str:
    """
    Where a start goes: the interpreter (wall time), then the imports of each step (CPU time: it
    does not depend on what else runs on the machine).
    """
    lines = [bytecode_note(), "where srpy's start-up goes (median of %d)" % repeats]
    with tempfile.TemporaryDirectory(prefix="bench-startup-pyc-") as cache_dir:
        env = dict(child_environment(cache_dir), PYTHONPATH=ROOT)
        lines.append("%-76s %6.1f ms wall" % ("interpreter start (python -S -c pass)",
                                             1e3 * _median_wall(["-S", "-c", "pass"], env, repeats)))
        lines.append("%-76s %6.1f ms wall" % ("interpreter start with site (python -c pass)",
                                             1e3 * _median_wall(["-c", "pass"], env, repeats)))
        for label, ms in _median_cpu(BARE_STEPS, env, repeats) + _median_cpu(SRPY_STEPS, env, repeats):
            lines.append("%-76s %6.1f ms CPU" % (label, ms))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds (default %d)" % ROUNDS)
    parser.add_argument("--compare", metavar="DIR", action="append", default=[],
                        help="also measure the srpy checkout in DIR (srpyapp.py there); may be repeated")
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
