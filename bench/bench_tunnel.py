#!/usr/bin/env python3
"""
What tunnel mode and per-cluster TLS cost an L{srpy.SSHCluster} (issue 15), on the test hosts of
tests/hosts/test_ssh.py (three network namespaces on a bridge, each running Debian's sshd on one
core, the client in a fourth). Needs root, C{ip} (iproute2) and openssh-server, as that test does.

For each mode (C{direct}, C{tunnel}, C{tls}, C{tunnel+tls}), rounds of: a warm start of one
engine per host (the zip cached), then, on the box:

 - B{call}: 300 sequential C{eval("1")} calls to h1's engine, one at a time: the round trip;
 - B{bulk}: 8 MB of bytes sent to h1's engine and back (C{set}, C{get}): MB/s both ways;
 - B{map}: 30000 cheap items (C{abs}) across the three engines: items per second (batched).

Reported: the median over the rounds of each, with the close (every host stopped). Usage (as root)::

    python bench/bench_tunnel.py              # 3 rounds of each mode (about a minute)
    python bench/bench_tunnel.py --rounds 1   # a smoke run
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODES = {"direct": {}, "tunnel": {"tunnel": True}, "tls": {"tls": True}, "tunnel+tls": {"tunnel": True, "tls": True}}


def worker(config: str, rounds: int) -> None:
    """In the client's namespace: the timed rounds, one JSON line each."""
    sys.path.insert(0, ROOT)
    import srpy
    options = ["-F", config]
    srpy.SSHCluster(["h1", "h2", "h3"], 1, python=sys.executable, ssh_options=options).close()  # fills the caches
    blob = os.urandom(8 << 20)
    for _ in range(rounds):
        for mode, extra in MODES.items():
            began = time.perf_counter()
            with srpy.SSHCluster(["h1", "h2", "h3"], 1, python=sys.executable, ssh_options=options,
                                 **extra) as cluster:
                start = time.perf_counter() - began
                with cluster.box() as box:
                    engine = box[0]
                    engine.eval("1")
                    began = time.perf_counter()
                    for _ in range(300):
                        engine.eval("1")
                    call = (time.perf_counter() - began) / 300
                    began = time.perf_counter()
                    engine.set(blob=blob)
                    assert engine.get("blob") == blob
                    bulk = 2 * len(blob) / (time.perf_counter() - began) / 1e6
                    list(box.map(abs, range(-300, 0)))
                    began = time.perf_counter()
                    assert list(box.map(abs, range(-30000, 0))) == list(range(30000, 0, -1))
                    mapped = 30000 / (time.perf_counter() - began)
                began = time.perf_counter()
            close = time.perf_counter() - began
            print(json.dumps({"mode": mode, "start": start, "call": call, "bulk": bulk, "map": mapped,
                              "close": close}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.worker, options.rounds)
        return 0
    from bench_cluster import rows_on_ssh_hosts  # bench/, beside this file

    rows = rows_on_ssh_hosts(__file__, "tunnel", options.rounds, timeout=900)
    if rows is None:
        return 1
    print("3-host SSHCluster, 1 engine per host, %d rounds (medians)" % options.rounds)
    print("%-11s %10s %10s %14s %12s %14s" % ("mode", "warm start", "close", "call (ms)", "bulk (MB/s)",
                                              "map (items/s)"))
    for mode in MODES:
        mine = [row for row in rows if row["mode"] == mode]
        median = {key: statistics.median(r[key] for r in mine) for key in ("start", "close", "call", "bulk", "map")}
        print("%-11s %9.2fs %9.2fs %14.2f %12.0f %14.0f" % (mode, median["start"], median["close"],
                                                           1000 * median["call"], median["bulk"], median["map"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
