#!/usr/bin/env python3
"""
Load on srpy engines (issue 6): many concurrent clients, each making many small checked calls.

The load of C{tests/stress/test_load.py}: C{--clients} threads (default 50) in this process, each
with its own L{srpy.PythonEngine}, alternating between C{--engines} engines (default 2, started with
L{srpy.newSubEngine}); all are released together by a barrier, then each makes C{--calls} calls
(default 200) of C{eval} with arguments no other call has, and checks every result. Each call is
timed on its own; throughput is all calls over the wall time from the barrier to the last answer.
The whole load runs C{--runs} times (default 3) with fresh clients against the same engines.

Reported per run: throughput (calls/s), median, p99 and maximum latency, errors, and each engine's
RSS, thread and socket counts before the load and after its clients closed.

Usage::

    python bench/bench_load.py                 # 3 runs of 50 clients x 200 calls on 2 engines
    python bench/bench_load.py --quick         # a smoke run (5 clients x 20 calls, 1 run)
    python bench/bench_load.py --json figures.json

Every engine it starts is stopped in a C{finally} block (and by srpy at exit).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import srpy  # noqa: E402  (the srpy of this checkout, installed or not)

EXPRESSION = "client * 1000003 + call * 7 + len(tag)"
SETTLE = 20.0  # seconds the engines get to release closed clients' threads and sockets


def engine_census(process: psutil.Process) -> Dict[str, float]:
    """An engine process's resident memory (MB), threads, and TCP connections other than its listener."""
    connections = process.net_connections(kind="tcp") if hasattr(process, "net_connections") \
        else process.connections(kind="tcp")
    return {"rss_mb": process.memory_info().rss / 2 ** 20, "threads": process.num_threads(),
            "sockets": sum(1 for c in connections if c.status != psutil.CONN_LISTEN)}


def settle(processes: List[psutil.Process], baseline: List[Dict[str, float]]) -> List[Dict[str, float]]:
    """The engines' census once threads and sockets are back to C{baseline} (or after L{SETTLE} s)."""
    deadline = time.monotonic() + SETTLE
    while True:
        now = [engine_census(p) for p in processes]
        back = all(n["threads"] <= b["threads"] and n["sockets"] <= b["sockets"] for n, b in zip(now, baseline))
        if back or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def client(number: int, uri: str, calls: int, start: threading.Barrier, latencies: List[float],
           errors: List[str]) -> None:
    """One client thread: its own connection, C{calls} checked calls, each timed."""
    try:
        eng = srpy.PythonEngine(uri, connect_timeout=30.0)
    except Exception as exc:  # counted and printed by the run
        errors.append("client %d could not connect: %r" % (number, exc))
        start.abort()
        return
    try:
        start.wait()
        own = []
        for call in range(calls):
            tag = "c%d-%d" % (number, call)
            begin = time.perf_counter()
            result = eng.eval(EXPRESSION, client=number, call=call, tag=tag)
            own.append(time.perf_counter() - begin)
            if result != number * 1000003 + call * 7 + len(tag):
                errors.append("client %d call %d: wrong result %r" % (number, call, result))
        latencies.extend(own)
    except Exception as exc:  # counted and printed by the run
        errors.append("client %d: %r" % (number, exc))
    finally:
        eng.close()


def run_load(uris: List[str], processes: List[psutil.Process], clients: int, calls: int) -> Dict[str, Any]:
    """One run of the load; its figures."""
    before = settle(processes, [engine_census(p) for p in processes])
    latencies: List[float] = []
    errors: List[str] = []
    start = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=client, args=(n, uris[n % len(uris)], calls, start, latencies, errors))
               for n in range(clients)]
    for thread in threads:
        thread.start()
    try:
        start.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass
    began = time.perf_counter()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.perf_counter() - began
    after = settle(processes, before)
    latencies.sort()
    count = len(latencies)
    return {
        "calls": count, "errors": len(errors), "error_examples": errors[:5], "seconds": elapsed,
        "calls_per_s": count / elapsed if elapsed else 0.0,
        "median_us": statistics.median(latencies) * 1e6 if latencies else None,
        "p99_us": latencies[max(0, int(count * 0.99) - 1)] * 1e6 if latencies else None,
        "max_us": latencies[-1] * 1e6 if latencies else None,
        "engines_before": before, "engines_after": after,
    }


def describe(run: Dict[str, Any]) -> str:
    engines = "; ".join("engine %d: RSS %.1f -> %.1f MB, threads %d -> %d, sockets %d -> %d"
                        % (i + 1, b["rss_mb"], a["rss_mb"], b["threads"], a["threads"], b["sockets"], a["sockets"])
                        for i, (b, a) in enumerate(zip(run["engines_before"], run["engines_after"])))
    return ("%d calls in %.2f s: %.0f calls/s, median %.0f us, p99 %.0f us, max %.0f us, %d errors\n    %s"
            % (run["calls"], run["seconds"], run["calls_per_s"], run["median_us"] or 0, run["p99_us"] or 0,
               run["max_us"] or 0, run["errors"], engines))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (threads), default 50")
    parser.add_argument("--calls", type=int, default=200, help="calls per client, default 200")
    parser.add_argument("--engines", type=int, default=2, help="engine processes, default 2")
    parser.add_argument("--runs", type=int, default=3, help="runs of the whole load, default 3")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 clients x 20 calls, 1 run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    options = parser.parse_args(argv)
    if options.quick:
        options.clients, options.calls, options.runs = 5, 20, 1

    print("srpy %s, Python %s, %s, %d CPUs; %s" % (srpy.__version__, platform.python_version(), platform.platform(),
                                                 psutil.cpu_count(), datetime.datetime.now().isoformat(timespec="seconds")))
    print("load: %d clients x %d calls of eval(%r) on %d engines, %d run(s)"
          % (options.clients, options.calls, EXPRESSION, options.engines, options.runs))
    started = []
    runs = []
    try:
        for _ in range(options.engines):
            started.append(srpy.newSubEngine())
        uris = [uri for uri, _ in started]
        processes = [psutil.Process(process.pid) for _, process in started]
        for uri in uris:  # a first client each: the engines' thread pools make their idle workers
            with srpy.PythonEngine(uri) as eng:
                eng.eval("1 + 1")
        for number in range(options.runs):
            run = run_load(uris, processes, options.clients, options.calls)
            runs.append(run)
            print("run %d: %s" % (number + 1, describe(run)))
            for example in run["error_examples"]:
                print("    error: %s" % example)
    finally:
        for _, process in started:
            srpy.stopSubEngine(process)
    if options.json:
        with open(options.json, "w", encoding="utf-8") as out:
            json.dump({"clients": options.clients, "calls": options.calls, "engines": options.engines,
                       "runs": runs}, out, indent=2)
    return 1 if any(run["errors"] or run["calls"] != options.clients * options.calls for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
