# -*- coding: utf-8 -*-
"""
Round-trip latency of C{eval('1+1')} from Jython next to CPython (issue 5).

Measures, against one engine started by C{srpyapp.py -b} on loopback:
 - CPython 3, L{srpy.lite.Engine} (json);
 - CPython 3, L{srpy.PythonEngine} (srpy's own serializer);
 - Jython 2.7, lite with its default transport (C{java.net.Socket});
 - Jython 2.7, lite with Python's socket module (Jython's), for comparison.

Each measure is sampled call by call after a warm-up (long for Jython, whose JIT needs it). CPython's
two measures take turns within each round; Jython's two run in a C{jython} child process, taking
turns the same way. Reports median and 99th percentile per measure.

Usage (from CPython 3, with srpy installed and C{jython} on the PATH)::

    python bench/bench_jython.py [--rounds 10] [--calls 500] [--json figures.json]

This file is also the Jython side: C{jython bench/bench_jython.py --client URI --lite-dir DIR ...}
prints the samples of its measures as json, with the one-file client DIR/lite.py (which the
CPython side writes with L{srpy.lite.save}). It is Python 2.7 + 3 syntax for that reason.
"""
from __future__ import division, print_function

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
JYTHON = sys.platform.startswith("java")
clock = getattr(time, "perf_counter", None) or (time.clock if JYTHON else time.time)  # Jython: nanoTime
EXPRESSION = "1+1"
ROUNDS = 10
CALLS = 500
WARMUP = {"cpython": 500, "jython": 5000}


def percentile(samples, fraction):
    """The C{fraction} quantile of C{samples} (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def sample(call, count):
    """C{count} round-trip times of C{call}, in seconds."""
    times = []
    for _ in range(count):
        start = clock()
        call()
        times.append(clock() - start)
    return times


def take_turns(measures, rounds, calls, warmup):
    """Warm every measure up, then sample them in turns for C{rounds}; return {name: samples}."""
    for call in measures.values():
        for _ in range(warmup):
            call()
    samples = dict((name, []) for name in measures)
    for _ in range(rounds):
        for name, call in measures.items():
            samples[name].extend(sample(call, calls))
    return samples


# -- the Jython side ------------------------------------------------------------------------------

def jython_client(uri, rounds, calls, lite_dir):
    """Run in Jython: sample lite (the one file in C{lite_dir}) over Java's sockets and over Jython's socket module."""
    sys.dont_write_bytecode = True
    sys.path.append(lite_dir)
    import lite
    java = lite.Engine(uri)
    python_sockets = lite.Engine(uri, transport_factory=lite.SocketTransport)
    measures = {"jython_lite_java": lambda: java.eval(EXPRESSION),
                "jython_lite_socket": lambda: python_sockets.eval(EXPRESSION)}
    samples = take_turns(measures, rounds, calls, WARMUP["jython"])
    java.close()
    python_sockets.close()
    print(json.dumps({"version": sys.version.split()[0], "samples": samples}))


# -- the CPython side -----------------------------------------------------------------------------

def start_engine():
    """An engine hosted by srpyapp.py -b; returns (process, uri)."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "srpyapp.py"), "-b"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, universal_newlines=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("PYRO:"):
            return process, line.strip()
    process.kill()
    raise RuntimeError("the engine did not start")


def stop(process):
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpython_samples(uri, rounds, calls):
    import srpy
    from srpy import lite
    light = lite.Engine(uri)
    full = srpy.PythonEngine(uri)
    measures = {"cpython_lite_json": lambda: light.eval(EXPRESSION),
                "cpython_srpy": lambda: full.eval(EXPRESSION)}
    try:
        return take_turns(measures, rounds, calls, WARMUP["cpython"])
    finally:
        light.close()
        full.close()


def jython_samples(uri, rounds, calls):
    import tempfile
    from srpy import lite
    with tempfile.TemporaryDirectory() as folder:
        lite.save(folder)
        done = subprocess.run(["jython", os.path.abspath(__file__), "--client", uri, "--lite-dir", folder,
                               "--rounds", str(rounds), "--calls", str(calls)], stdout=subprocess.PIPE,
                              universal_newlines=True, timeout=900, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["version"], result["samples"]


LABELS = [
    ("cpython_srpy", "CPython 3, `srpy.PythonEngine` (srpy serializer)"),
    ("cpython_lite_json", "CPython 3, `srpy.lite.Engine` (json)"),
    ("jython_lite_java", "Jython 2.7, `lite.Engine` (json, java.net.Socket: the default)"),
    ("jython_lite_socket", "Jython 2.7, `lite.Engine` (json, Jython's socket module)"),
]


def report(samples):
    lines = ["| client | median | p99 |", "|---|---:|---:|"]
    for key, label in LABELS:
        if key in samples:
            values = samples[key]
            lines.append("| %s | %.1f µs | %.1f µs |" % (label, percentile(values, 0.5) * 1e6,
                                                           percentile(values, 0.99) * 1e6))
    return "\n".join(lines)


def parse(argv):
    options = {"client": None, "lite-dir": None, "rounds": ROUNDS, "calls": CALLS, "json": None}
    args = list(argv)
    while args:
        flag = args.pop(0)
        key = flag.lstrip("-")
        if key not in options or not args:
            raise SystemExit(__doc__)
        value = args.pop(0)
        options[key] = int(value) if key in ("rounds", "calls") else value
    return options


def main(argv):
    options = parse(argv)
    if options["client"]:
        jython_client(options["client"], options["rounds"], options["calls"], options["lite-dir"])
        return 0
    process, uri = start_engine()
    try:
        samples = cpython_samples(uri, options["rounds"], options["calls"])
        version, more = jython_samples(uri, options["rounds"], options["calls"])
        samples.update(more)
    finally:
        stop(process)
    print("Jython %s; %d rounds x %d calls per measure" % (version, options["rounds"], options["calls"]))
    print(report(samples))
    if options["json"]:
        with open(options["json"], "w") as handle:
            json.dump({"jython": version, "samples": samples}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
