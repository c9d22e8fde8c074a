"""
Many engines on one machine (issue 15): what grows with the number of engines, and how fast.

For each engine count (8, 16, 32, 64 by default) one launcher (C{srpyapp -n K --start-ns}) starts
K engines on loopback, registered in the name server it serves, and the bench measures:

 - start: from the launcher's start until its URI file lists every engine (all answer);
 - discovery: an L{srpy.EngBox} from the URI file, and one from the name server
   (C{EngBox.discover}), each until every engine is connected;
 - what the client holds once the box is up: threads, TCP connections, RSS;
 - what each engine holds (threads, TCP connections; the largest and the mean), before
   C{connectPeers()}, after it, and after the spawn job below; and the mesh's connections in all
   (every engine's, counted once per socket end);
 - C{connectPeers()}'s time;
 - the most threads and connections the client holds while each engine runs one 3 s call (its
   watchdog pings engines whose call has run a second);
 - a map of a cheap function of a module (C{operator.neg} over 200,000 ints): items/s, warm;
 - a recursive spawn job: a tree sum over C{range(TREE_N)} cut into leaves of C{TREE_LEAF} ints,
   started with one call on one engine, spread by work stealing: its time and how many engines
   ran part of it.

Connections and threads are counted with psutil (C{net_connections}, C{num_threads}). Measured on a
2-core machine shared with others: the times show the trend, not what a quiet machine gives.

Usage::

    python bench/bench_scale.py                    # 8, 16, 32, 64 engines
    python bench/bench_scale.py --counts 4 8 --quick --json figures.json
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

import psutil

import srpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READY_TIMEOUT = 300.0
MAP_ITEMS = 200_000
TREE_N = 100_000_000
TREE_LEAF = 200_000
#: seconds the engines get, before their threads are counted, to hand idle connections back (listener.IDLE_RELEASE)
SETTLE = 2.0
#: seconds of the call each engine runs while the client's threads are sampled
LONG_CALL = 3.0

TREE = '''
import srpy

def tree_sum(lo, hi, leaf):
    if hi - lo <= leaf:
        return sum(range(lo, hi)), {srpy.this_engine().name}
    mid = (lo + hi) // 2
    left, right = srpy.spawn(tree_sum, lo, mid, leaf), srpy.spawn(tree_sum, mid, hi, leaf)
    (a, where_a), (b, where_b) = left.result(), right.result()
    return a + b, where_a | where_b
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def engine_processes(launcher: psutil.Process, uris: List[str]) -> Dict[str, psutil.Process]:
    """The engine process serving each URI: the launcher's descendant that listens on its port."""
    ports = {int(uri.rsplit(":", 1)[1]): uri for uri in uris}
    found: Dict[str, psutil.Process] = {}
    for process in launcher.children(recursive=True):
        try:
            for conn in _connections(process):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports:
                    found[ports[conn.laddr.port]] = process
        except psutil.Error:
            continue
    return found


def _connections(process: psutil.Process) -> List[Any]:
    method = getattr(process, "net_connections", None) or process.connections  # psutil < 6 has connections()
    return list(method(kind="tcp"))


def held(process: psutil.Process) -> Dict[str, int]:
    """Threads and TCP connections (listening sockets left out) a process holds now."""
    conns = [c for c in _connections(process) if c.status != psutil.CONN_LISTEN]
    return {"threads": process.num_threads(), "connections": len(conns),
            "established": sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED)}


def engines_held(engines: Dict[str, psutil.Process]) -> Dict[str, Any]:
    figures = [held(process) for process in engines.values()]
    threads = [f["threads"] for f in figures]
    conns = [f["connections"] for f in figures]
    return {"threads_max": max(threads), "threads_mean": sum(threads) / len(threads),
            "connections_max": max(conns), "connections_mean": sum(conns) / len(conns),
            "connections_total": sum(conns)}


def during_long_calls(box: srpy.EngBox, me: psutil.Process, count: int, seconds: float) -> Dict[str, int]:
    """
    The most threads and connections the client holds while every engine runs one call of
    C{seconds} (more than the scheduler's HEARTBEAT): its watchdog pings each engine with a call
    under way once a second.
    """
    import threading

    done = threading.Event()
    most = {"threads": 0, "connections": 0}

    def sample() -> None:
        while not done.is_set():
            now = held(me)
            most["threads"] = max(most["threads"], now["threads"])
            most["connections"] = max(most["connections"], now["connections"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        list(box.map(time.sleep, [seconds] * count, chunksize=1))
    finally:
        done.set()
        sampler.join()
    return most


def read_uris(path: str, count: int, launcher: "subprocess.Popen[bytes]", deadline: float) -> List[str]:
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise RuntimeError("the launcher ended (exit %s) before its engines were up" % launcher.returncode)
        try:
            with open(path, encoding="utf-8") as handle:
                uris = [line.strip() for line in handle if line.startswith("PYRO:")]
            if len(uris) >= count:
                return uris
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError("%d engines were not up within %s s" % (count, READY_TIMEOUT))


def stop(launcher: "subprocess.Popen[bytes]") -> None:
    if launcher.poll() is None:
        launcher.send_signal(2)  # SIGINT: the launcher stops its engines and ends
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait(10)


def measure(count: int, quick: bool) -> Dict[str, Any]:
    figures: Dict[str, Any] = {"engines": count}
    me = psutil.Process()
    with tempfile.TemporaryDirectory() as scratch:
        uri_file = os.path.join(scratch, "uris")
        ns_port = free_port()
        group = "scale%d" % os.getpid()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        start = time.monotonic()
        launcher = subprocess.Popen([sys.executable, "-m", "srpy.cli", "-n", str(count), "-u", uri_file,
                                     "--group", group, "--start-ns", "--ns-port", str(ns_port)],
                                    cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
        try:
            uris = read_uris(uri_file, count, launcher, start + READY_TIMEOUT)
            figures["start_s"] = time.monotonic() - start
            begun = time.monotonic()
            box = srpy.EngBox(uris)
            figures["discover_file_s"] = time.monotonic() - begun
            try:
                begun = time.monotonic()
                found = srpy.EngBox.discover(group=group, ns_host="127.0.0.1", ns_port=ns_port)
                figures["discover_ns_s"] = time.monotonic() - begun
                figures["discover_ns_found"] = len(found)
                found.close()
                engines = engine_processes(psutil.Process(launcher.pid), uris)
                assert len(engines) == count, "found %d of %d engine processes" % (len(engines), count)
                figures["engine_before_peers"] = engines_held(engines)
                figures["client_box_up"] = held(me)

                begun = time.monotonic()
                kept = box.connectPeers()
                figures["connect_peers_s"] = time.monotonic() - begun
                figures["peers_kept_min"] = min(len(v) for v in kept.values())
                time.sleep(SETTLE)
                figures["engine_after_peers"] = engines_held(engines)

                items = MAP_ITEMS // (10 if quick else 1)
                import operator

                assert list(box.map(operator.neg, range(1000))) == [-i for i in range(1000)]  # cold: ships it
                begun = time.monotonic()
                total = sum(box.map(operator.neg, range(items)))
                elapsed = time.monotonic() - begun
                assert total == -sum(range(items))
                figures["map_items_per_s"] = items / elapsed

                figures["client_long_calls"] = during_long_calls(box, me, count, LONG_CALL / (2 if quick else 1))

                box[0].exe(TREE)
                tree_n = TREE_N // (10 if quick else 1)
                leaf = TREE_LEAF
                box[0].eval("tree_sum(0, 4 * %d, %d)" % (leaf, leaf))  # the function reaches the engines
                begun = time.monotonic()
                result, where = box[0].eval("tree_sum(0, %d, %d)" % (tree_n, leaf))
                figures["spawn_s"] = time.monotonic() - begun
                assert result == sum(range(tree_n)), result
                figures["spawn_leaves"] = tree_n // leaf
                figures["spawn_engines"] = len(where)
                time.sleep(SETTLE)
                figures["engine_after_spawn"] = engines_held(engines)
                client = held(me)
                client["rss_mb"] = me.memory_info().rss / 2 ** 20
                figures["client"] = client
            finally:
                box.close()
        finally:
            stop(launcher)
    return figures


ROWS = [("start (URI file complete)", lambda f: "%.2f s" % f["start_s"]),
        ("EngBox(uri file)", lambda f: "%.2f s" % f["discover_file_s"]),
        ("EngBox.discover (name server)", lambda f: "%.2f s (%d)" % (f["discover_ns_s"], f["discover_ns_found"])),
        ("client threads", lambda f: "%d" % f["client"]["threads"]),
        ("client TCP connections", lambda f: "%d" % f["client"]["connections"]),
        ("client RSS", lambda f: "%.0f MB" % f["client"]["rss_mb"]),
        ("client threads, most (long calls)", lambda f: "%d" % f["client_long_calls"]["threads"]),
        ("client conns, most (long calls)", lambda f: "%d" % f["client_long_calls"]["connections"]),
        ("engine threads, max (no peers)", lambda f: "%d" % f["engine_before_peers"]["threads_max"]),
        ("engine conns, max (no peers)", lambda f: "%d" % f["engine_before_peers"]["connections_max"]),
        ("connectPeers()", lambda f: "%.2f s" % f["connect_peers_s"]),
        ("engine threads, max (peers)", lambda f: "%d" % f["engine_after_peers"]["threads_max"]),
        ("engine conns, max (peers)", lambda f: "%d" % f["engine_after_peers"]["connections_max"]),
        ("mesh conns, all engines (peers)", lambda f: "%d" % f["engine_after_peers"]["connections_total"]),
        ("engine threads, max (after spawn)", lambda f: "%d" % f["engine_after_spawn"]["threads_max"]),
        ("engine conns, max (after spawn)", lambda f: "%d" % f["engine_after_spawn"]["connections_max"]),
        ("mesh conns, all (after spawn)", lambda f: "%d" % f["engine_after_spawn"]["connections_total"]),
        ("map of operator.neg, warm", lambda f: "%.0f items/s" % f["map_items_per_s"]),
        ("spawn tree sum", lambda f: "%.2f s, %d leaves, %d engines" % (f["spawn_s"], f["spawn_leaves"],
                                                                         f["spawn_engines"]))]


def table(runs: List[Dict[str, Any]]) -> str:
    width = max(len(name) for name, _ in ROWS) + 2
    cells = [[show(run) for run in runs] for _, show in ROWS]
    col = max(12, max(len(c) for row in cells for c in row) + 2)
    lines = ["%-*s" % (width, "engines") + "".join("%*d" % (col, run["engines"]) for run in runs)]
    for (name, _), row in zip(ROWS, cells):
        lines.append("%-*s" % (width, name) + "".join("%*s" % (col, c) for c in row))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--quick", action="store_true", help="a tenth of the map and of the tree, half the long calls")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)
    runs = []
    for count in args.counts:
        runs.append(measure(count, args.quick))
        print("measured %d engines" % count, flush=True)
    print("many engines on loopback (%s, %d cores, shared machine)" % (socket.gethostname(), os.cpu_count() or 0))
    print(table(runs))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"runs": runs}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
