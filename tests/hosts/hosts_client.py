"""
The client side of tests/hosts/test_hosts.py, run inside the client's own network namespace::

    ip netns exec NS python tests/hosts/hosts_client.py --ns-host ADDR --log-dir DIR --items N

with the engines' secret in C{SRPY_SECRET}. It prints one JSON object per line on stdout, one per
step, in this order: C{discover} (through the name server at ADDR), C{broadcast} (the name server
found by UDP broadcast), C{wrong-secret}, C{map} (a map across every engine), C{cut-map-start},
C{cut-map} (the map during which the test cuts one host's link), C{rediscover}. Each step's object
carries C{"step"}; a failure prints C{{"step": "error", ...}} and exits 1.
"""

import argparse
import json
import os
import sys
import time
import traceback


def plus_one_where(x):
    """C{(x + 1, engine pid)}, after a short nap (so that every engine gets a share)."""
    time.sleep(0.01)
    return x + 1, os.getpid()


def square_noted(x, log_dir):
    """x * x, after noting this execution in the engine's own file in C{log_dir} (shared filesystem)."""
    with open(os.path.join(log_dir, "%d.log" % os.getpid()), "a") as handle:
        handle.write("%d\n" % x)
    time.sleep(0.02)
    return x * x


def emit(step, **fields):
    fields["step"] = step
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def describe(box):
    return [{"uri": e.uri, "ip": e.ip, "pid": e.info["PID"], "name": e.name} for e in box]


def run(options):
    import srpy
    from srpy.errors import SRPyError

    secret = os.environ["SRPY_SECRET"]
    start = time.monotonic()
    box = srpy.EngBox.discover(ns_host=options.ns_host, ns_port=options.ns_port, secret=secret)
    emit("discover", engines=describe(box), seconds=time.monotonic() - start)

    start = time.monotonic()  # no address: Pyro5 looks on this host, then broadcasts on the link
    by_broadcast = srpy.EngBox.discover(secret=secret)
    emit("broadcast", engines=describe(by_broadcast), seconds=time.monotonic() - start)
    by_broadcast.close()

    refusals = []
    for engine in box:
        try:
            srpy.PythonEngine(engine.uri, secret=secret + "-wrong").close()
            refusals.append("accepted")
        except SRPyError as exc:
            refusals.append(type(exc).__name__)
    emit("wrong-secret", refusals=refusals)

    start = time.monotonic()
    items = list(range(options.items // 2))
    results = list(box.map(plus_one_where, items, timeout=60))
    emit("map", values=[value for value, _ in results], expected=[x + 1 for x in items],
         pids=sorted({pid for _, pid in results}), stats=box.stats(), seconds=time.monotonic() - start)

    items = list(range(options.items))
    before = box.stats()
    emit("cut-map-start")
    start = time.monotonic()
    results = list(box.map(square_noted, items, [options.log_dir] * len(items), timeout=150))
    emit("cut-map", results=results, expected=[x * x for x in items], seconds=time.monotonic() - start,
         engines=describe(box), stats_before=before, stats_after=box.stats())

    start = time.monotonic()
    again = srpy.EngBox.discover(ns_host=options.ns_host, ns_port=options.ns_port, secret=secret, timeout=3)
    entries = [uri for _, uri, _ in srpy.discovery.find(None, options.ns_host, options.ns_port)]
    emit("rediscover", engines=describe(again), seconds=time.monotonic() - start, entries=entries)
    again.close()
    box.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--ns-host", required=True)
    parser.add_argument("--ns-port", type=int, default=None)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--items", type=int, default=600)
    options = parser.parse_args()
    try:
        run(options)
    except BaseException as exc:  # the test reads stdout: every way out must say what happened
        emit("error", error="%s: %s" % (type(exc).__name__, exc), traceback=traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
