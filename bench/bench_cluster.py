#!/usr/bin/env python3
"""
Cold and warm start of a 3-host L{srpy.SSHCluster} (issue 15), on the test hosts of
tests/hosts/test_ssh.py: three network namespaces on a bridge, each running Debian's sshd, the
client in a fourth. Needs root, C{ip} (iproute2) and openssh-server, as that test does.

A round starts a cluster of one engine per host (h3 runs its Python with C{-I -S}: no srpy, no
Pyro5, no psutil there), runs one small map across the three, and closes the cluster:

 - B{cold}: each host's srpy cache is emptied first, so the client sends the zip (about 300 kB) to
   every host, which unpacks it and compiles srpy and Pyro5 as it starts the launcher;
 - B{warm}: the zips, unpacked, and their bytecode are cached from the round before: nothing is sent.

Cold and warm rounds alternate, after one untimed warm-up round. Reported, median and best:
the start (constructor to every URI reported), the first map's answer (connecting the EngBox
included), the close (every host's engines stopped and ssh ended), and the start's phases on the
slowest host (C{boot}: ssh connected and the host's Python runs the bootstrap; C{dist}: the zip
found or sent; C{up}: every URI reported), and, for scale, one bare C{ssh h1 true}.

Usage (as root)::

    python bench/bench_cluster.py              # 5 rounds of each (about 30 s)
    python bench/bench_cluster.py --rounds 1   # a smoke run
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker(config: str, rounds: int, caches: list) -> None:
    """In the client's namespace: the timed rounds, one JSON line each."""
    sys.path.insert(0, ROOT)
    import srpy
    python = {"h1": sys.executable, "h2": sys.executable, "h3": "%s -I -S" % sys.executable}
    plan = ["warm-up"] + [kind for _ in range(rounds) for kind in ("cold", "warm")]
    for kind in plan:
        if kind in ("cold", "warm-up"):
            for folder in caches:
                shutil.rmtree(folder, ignore_errors=True)
        began = time.perf_counter()
        cluster = srpy.SSHCluster(["h1", "h2", "h3"], 1, python=python, ssh_options=["-F", config])
        started = time.perf_counter()
        with cluster.box() as box:
            assert list(box.map(abs, [-1, -2, -3])) == [1, 2, 3]
        mapped = time.perf_counter()
        cluster.close()
        closed = time.perf_counter()
        ssh_began = time.perf_counter()  # the floor: one bare ssh session to one host, doing nothing
        subprocess.run(["ssh", "-F", config, "-o", "BatchMode=yes", "h1", "true"], check=True, timeout=60)
        ssh_true = time.perf_counter() - ssh_began
        phases = {phase: max(r.phases[phase] for r in cluster.hosts) for phase in ("boot", "dist", "up")}
        print(json.dumps({"kind": kind, "start": started - began, "map": mapped - started,
                          "close": closed - mapped, "ssh": ssh_true,
                          "cache": sorted({r.cache for r in cluster.hosts}), **phases}), flush=True)


def rows_on_ssh_hosts(script: str, tag: str, rounds: int, more_args: Callable[[Any], List[str]] = lambda net: [],
                      timeout: float = 600) -> Optional[List[Dict[str, Any]]]:
    """
    Build tests/hosts/test_ssh.py's sshd hosts, run C{script --rounds ROUNDS --worker SSH_CONFIG
    *more_args(net)} in their client's namespace, tear them down, and return the JSON rows it
    printed (one object per line); None, after saying why on stderr, where that cannot run or fails.
    Also bench_tunnel's.
    """
    sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "hosts")]
    import pathlib

    from test_ssh import SSHHosts, sshd_unavailable
    reason = sshd_unavailable()
    if reason:
        print("bench_%s: cannot run here: %s" % (tag, reason), file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(prefix="srpy-bench-%s-" % tag) as tmp:
        net = SSHHosts("%s%d" % (tag[0], os.getpid()), pathlib.Path(tmp))
        try:
            net.build()
            env = dict(os.environ, PYTHONPATH=ROOT)
            env.pop("SRPY_SECRET", None)
            done = subprocess.run(["ip", "netns", "exec", net.client, sys.executable, os.path.abspath(script),
                                   "--rounds", str(rounds), "--worker", str(net.ssh_config)] + more_args(net),
                                  capture_output=True, text=True, env=env, timeout=timeout)
            if done.returncode != 0:
                print(done.stdout, done.stderr, file=sys.stderr)
                return None
        finally:
            net.teardown()
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        config, caches = options.worker
        worker(config, options.rounds, json.loads(caches))
        return 0
    rows = rows_on_ssh_hosts(__file__, "cluster", options.rounds,
                             lambda net: [json.dumps([str(net.folder(name, "cache") / "srpy") for name in net.names])],
                             timeout=600)
    if rows is None:
        return 1
    timed = [row for row in rows if row["kind"] != "warm-up"]
    assert all(row["cache"] == (["stored"] if row["kind"] == "cold" else ["have"]) for row in timed), timed
    print("3-host SSHCluster, 1 engine per host, %d rounds each (seconds: median / best)" % options.rounds)
    print("%-6s %13s %13s %13s %13s %13s %13s %13s" % ("", "start", "boot", "dist", "up", "first map", "close",
                                                       "ssh h1 true"))
    for kind in ("cold", "warm"):
        mine = [row for row in timed if row["kind"] == kind]
        cells = ["%5.2f / %5.2f" % (statistics.median(r[key] for r in mine), min(r[key] for r in mine))
                 for key in ("start", "boot", "dist", "up", "map", "close", "ssh")]
        print("%-6s %s" % (kind, " ".join(cells)))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
