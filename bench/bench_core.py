#!/usr/bin/env python3
"""
srpy's core costs next to their floors, in one run (issue 2).

What it measures, all over loopback, each server in its own process:
 - the round trip of C{eval('1+1')} through L{srpy.PythonEngine} on an engine started by
   L{srpy.newSubEngine};
 - the same call through a bare Pyro5 proxy to a Pyro5 daemon exposing an C{eval} method, with
   the marshal, json and serpent serializers;
 - a minimal Python RPC floor: a small pickled request, length-prefixed, over a raw TCP socket with
   C{TCP_NODELAY}; the server unpickles it, calls a no-op and pickles the reply back;
 - bulk bytes: 50 MB of C{os.urandom} data sent with C{set} and read back with C{get}
   (100 MB moved / set time + get time), next to a raw loopback echo of the same 50 MB (the server
   receives all of it into a fresh buffer, then sends it back into a fresh buffer on the client).

Latencies are sampled call by call; the measures take turns in several rounds, so that the
machine's slow moments fall on all of them alike. They are taken three times, with the processes
placed three ways (L{PLACEMENTS}): unpinned (the kernel chooses), all on one core, and client and
servers on two different cores. Where the processes run decides a loopback round trip more than
anything in the software (on a 2-core VM, 26 us on one core, 85-110 us across two), and unpinned,
the kernel may put one pair of processes on one core and another pair on two, so only the pinned
placements compare like with like: the round-trip target is judged on those, and the unpinned
figures are printed beside them. Bulk transfers are repeated and their median
is reported. Two ratios are checked against the issue's targets: eval round trip at most 2.5x the
RPC floor, bulk bytes at least 0.4x the raw echo's MB/s. MB means 10**6 bytes.

Usage::

    python bench/bench_core.py            # default settings (well under a minute)
    python bench/bench_core.py --quick    # a smoke run
    python bench/bench_core.py --json figures.json

The helper servers are this same file started with C{--serve pyro} or C{--serve raw}: each one
prints C{READY <address>} on stdout and exits when its stdin reaches end-of-file, so none outlives
the benchmark however it ends. The benchmark stops every process it started in C{finally} blocks.

@var ROUNDS: rounds of latency samples at default settings (C{--quick}: L{QUICK_ROUNDS}).
@var CALLS: calls per measure and round (C{--quick}: L{QUICK_CALLS}).
@var BULK_REPEATS: transfers per bulk measure (C{--quick}: L{QUICK_BULK_REPEATS}).
"""

import argparse
import datetime
import json
import os
import pickle
import platform
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import helper_process  # bench/helper_process.py, beside this file

ROUNDS = 12
CALLS = 500
WARMUP = 300
BULK_REPEATS = 7
QUICK_ROUNDS = 3
QUICK_CALLS = 100
QUICK_BULK_REPEATS = 2
BULK_SIZE = 50 * 10**6
EXPRESSION = "1+1"
PYRO_SERIALIZERS = ("marshal", "json", "serpent")
TARGET_EVAL_RATIO = 2.5  # srpy eval median / RPC floor median, at most
TARGET_BULK_RATIO = 0.4  # srpy bulk MB/s / raw echo MB/s, at least
READY_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
#: (name, client CPUs, server CPUs): None leaves a side where the kernel puts it
PLACEMENTS = (("unpinned", None, None), ("same core", {0}, {0}), ("cross core", {0}, {1}))
RUN_LIMIT = 160.0  # seconds; then the watchdog kills every server, so blocked calls fail and unwind
LENGTH = struct.Struct("!Q")
SMALL_LENGTH = struct.Struct("!I")
MODE_RPC, MODE_ECHO = b"R", b"E"
PYRO_OBJECT_ID = "bench.evaluator"
_WAITALL = getattr(socket, "MSG_WAITALL", 0)

Sampler = Callable[[], Any]


# -- helper servers (run in child processes) ------------------------------------------------------

def serve_pyro() -> None:
    """A Pyro5 daemon (thread server) exposing an C{eval} method, until stdin closes."""
    from Pyro5.api import Daemon, expose

    @expose
    class Evaluator:
        """The bare-Pyro5 counterpart of an engine's C{eval}."""

        def __init__(self) -> None:
            self.namespace: Dict[str, Any] = {}

        def eval(self, expression: str) -> Any:
            return eval(expression, self.namespace)

    daemon = Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Evaluator(), PYRO_OBJECT_ID)
    helper_process.exit_at_stdin_eof()
    helper_process.announce(str(uri))
    daemon.requestLoop()


def noop(*args: Any, **kwargs: Any) -> None:
    """What the RPC floor's server calls."""


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    """Receive exactly C{size} bytes (one C{MSG_WAITALL} receive where the platform has it)."""
    chunk = sock.recv(size, _WAITALL) if size else b""
    if len(chunk) == size:
        return chunk
    chunks, got = [chunk], len(chunk)
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection after %d of %d bytes" % (got, size))
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _serve_rpc(sock: socket.socket) -> None:
    """The RPC floor: length-prefixed pickled (name, args, kwargs) in, pickled result out."""
    while True:
        header = _recv_exact(sock, SMALL_LENGTH.size)
        _name, args, kwargs = pickle.loads(_recv_exact(sock, SMALL_LENGTH.unpack(header)[0]))
        reply = pickle.dumps(noop(*args, **kwargs), pickle.HIGHEST_PROTOCOL)
        sock.sendall(SMALL_LENGTH.pack(len(reply)) + reply)


def _serve_echo(sock: socket.socket) -> None:
    """The raw echo: length-prefixed bytes in, all received, then sent back."""
    while True:
        header = _recv_exact(sock, LENGTH.size)
        sock.sendall(_recv_exact(sock, LENGTH.unpack(header)[0]))


def _serve_connection(sock: socket.socket) -> None:
    with sock:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = sock.recv(1)
            if mode == MODE_RPC:
                _serve_rpc(sock)
            elif mode == MODE_ECHO:
                _serve_echo(sock)
        except OSError:  # the client went away: that connection is done
            pass


def serve_raw() -> None:
    """The RPC floor and raw echo server: one thread per connection, until stdin closes."""
    listener = socket.create_server(("127.0.0.1", 0))
    helper_process.exit_at_stdin_eof()
    helper_process.announce("%s:%d" % listener.getsockname()[:2])
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(conn,), daemon=True).start()


# -- clients --------------------------------------------------------------------------------------

def _connect_raw(address: str, mode: bytes) -> socket.socket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(mode)
    sock.settimeout(None)  # plain blocking calls, as srpy's client makes them; the watchdog bounds the run
    return sock


def floor_call(sock: socket.socket) -> Sampler:
    """One RPC floor round trip per call of the returned function."""
    def call() -> None:
        request = pickle.dumps(("eval", (EXPRESSION,), {}), pickle.HIGHEST_PROTOCOL)
        sock.sendall(SMALL_LENGTH.pack(len(request)) + request)
        header = _recv_exact(sock, SMALL_LENGTH.size)
        pickle.loads(_recv_exact(sock, SMALL_LENGTH.unpack(header)[0]))

    return call


def pyro_proxy(uri: str, serializer: str) -> Any:
    """A bare Pyro5 proxy to the helper's evaluator, speaking C{serializer}."""
    from Pyro5.api import Proxy

    proxy = Proxy(uri)
    proxy._pyroSerializer = serializer  # otherwise Pyro5's defaults: blocking calls, thread server
    if proxy.eval(EXPRESSION) != 2:
        raise RuntimeError("the Pyro5 evaluator answered wrongly")
    return proxy


def echo_once(sock: socket.socket, data: bytes) -> float:
    """Send C{data} to the echo server and receive it back; return the seconds it took."""
    start = time.perf_counter()
    sock.sendall(LENGTH.pack(len(data)))
    sock.sendall(data)
    back = _recv_exact(sock, len(data))
    elapsed = time.perf_counter() - start
    if back != data:
        raise RuntimeError("the raw echo returned different bytes")
    return elapsed


def srpy_bulk_once(engine: Any, data: bytes) -> Tuple[float, float]:
    """C{set} then C{get} C{data} on the engine; return (set seconds, get seconds)."""
    start = time.perf_counter()
    engine.set(bench_blob=data)
    middle = time.perf_counter()
    back = engine.get("bench_blob")
    end = time.perf_counter()
    if type(back) is not bytes or back != data:
        raise RuntimeError("srpy get returned different data than set")
    del back
    engine.exe("del bench_blob")
    return middle - start, end - middle


# -- measuring ------------------------------------------------------------------------------------

def sample(call: Sampler, count: int) -> List[float]:
    """Time C{count} calls one by one; seconds each."""
    clock = time.perf_counter
    samples = []
    for _ in range(count):
        start = clock()
        call()
        samples.append(clock() - start)
    return samples


def measure_latencies(samplers: Dict[str, Sampler], rounds: int, calls: int) -> Dict[str, List[float]]:
    """Warm every sampler up, then take C{calls} samples of each, in turns, C{rounds} times."""
    for call in samplers.values():
        sample(call, min(WARMUP, calls))
    results: Dict[str, List[float]] = {name: [] for name in samplers}
    for _ in range(rounds):
        for name, call in samplers.items():
            results[name].extend(sample(call, calls))
    return results


def can_pin() -> bool:
    """True where processes can be pinned to cores (Linux, two cores or more)."""
    return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task") and (os.cpu_count() or 1) >= 2


def pin(pid: int, cpus: Optional[set]) -> None:
    """Run every thread of process C{pid} on C{cpus} (None: on any core)."""
    cpus = cpus if cpus is not None else set(range(os.cpu_count() or 1))
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, FileNotFoundError):  # a thread that ended meanwhile
            pass


def measure_placements(samplers: Dict[str, Sampler], servers: List[int], rounds: int,
                       calls: int) -> Dict[str, Dict[str, List[float]]]:
    """L{measure_latencies} once per placement of L{PLACEMENTS} (only unpinned where pinning is impossible)."""
    placements = PLACEMENTS if can_pin() else PLACEMENTS[:1]
    results = {}
    try:
        for name, client_cpus, server_cpus in placements:
            pin(os.getpid(), client_cpus)
            for pid in servers:
                pin(pid, server_cpus)
            results[name] = measure_latencies(samplers, rounds, calls)
    finally:
        if len(placements) > 1:
            for pid in [os.getpid()] + servers:
                pin(pid, None)
    return results


def summarize_latency(samples: List[float]) -> Dict[str, float]:
    """Median and 99th percentile, in microseconds."""
    ordered = sorted(samples)
    p99_index = min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))
    return {"median_us": statistics.median(ordered) * 1e6, "p99_us": ordered[p99_index] * 1e6,
            "samples": len(ordered)}


def measure_bulk(engine: Any, echo_sock: socket.socket, repeats: int) -> Dict[str, List[float]]:
    """Raw echo and srpy set+get of the same random bytes, in turns; MB/s of each transfer."""
    data = os.urandom(BULK_SIZE)
    moved = 2 * len(data) / 1e6
    echo_once(echo_sock, data)  # warm-up: first touch of the buffers and connections
    srpy_bulk_once(engine, data)
    rates: Dict[str, List[float]] = {"echo": [], "srpy": [], "srpy_set": [], "srpy_get": []}
    for _ in range(repeats):
        rates["echo"].append(moved / echo_once(echo_sock, data))
        set_seconds, get_seconds = srpy_bulk_once(engine, data)
        rates["srpy"].append(moved / (set_seconds + get_seconds))
        rates["srpy_set"].append(moved / 2 / set_seconds)
        rates["srpy_get"].append(moved / 2 / get_seconds)
    return rates


# -- the run --------------------------------------------------------------------------------------

class Resources:
    """Everything the run starts, so that one C{close} stops it all, whatever happened."""

    def __init__(self, limit: float) -> None:
        self.helpers: List["subprocess.Popen[bytes]"] = []
        self.closers: List[Callable[[], Any]] = []
        self.engine_process: Optional["subprocess.Popen[bytes]"] = None
        self.watchdog = threading.Timer(limit, self._expire, args=(limit,))
        self.watchdog.daemon = True
        self.watchdog.start()

    def _expire(self, limit: float) -> None:
        print("error: the run took longer than %.0f s; killing its servers" % limit, file=sys.stderr)
        for process in self.helpers + [self.engine_process]:
            if process is not None and process.poll() is None:
                process.kill()

    def helper(self, role: str) -> str:
        process, address = helper_process.start_helper(__file__, role, READY_TIMEOUT)
        self.helpers.append(process)
        return address

    def close(self) -> None:
        import srpy

        self.watchdog.cancel()
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as exc:  # a client that fails to close must not keep a server running
                print("warning: closing a client failed: %s" % exc, file=sys.stderr)
        try:
            for process in self.helpers:
                helper_process.stop_process(process, grace=3.0)
        finally:
            if self.engine_process is not None:
                srpy.stopSubEngine(self.engine_process)


def run(rounds: int, calls: int, repeats: int) -> Dict[str, Any]:
    """Start the servers, measure, stop everything; return the figures."""
    import srpy

    resources = Resources(RUN_LIMIT)
    try:
        uri, resources.engine_process = srpy.newSubEngine()
        pyro_uri = resources.helper("pyro")
        raw_address = resources.helper("raw")
        engine = srpy.PythonEngine(uri)
        resources.closers.append(engine.close)
        if engine.eval(EXPRESSION) != 2:
            raise RuntimeError("the srpy engine answered wrongly")
        samplers: Dict[str, Sampler] = {"srpy": lambda: engine.eval(EXPRESSION)}
        for serializer in PYRO_SERIALIZERS:
            proxy = pyro_proxy(pyro_uri, serializer)
            resources.closers.append(proxy._pyroRelease)
            samplers["pyro_" + serializer] = _bind(proxy.eval, EXPRESSION)
        rpc_sock = _connect_raw(raw_address, MODE_RPC)
        resources.closers.append(rpc_sock.close)
        samplers["floor"] = floor_call(rpc_sock)
        # the engine itself (its keeper forks it: engine.info names the serving process), and the helpers
        servers = [engine.info["PID"]] + [helper.pid for helper in resources.helpers]
        latencies = measure_placements(samplers, servers, rounds, calls)
        echo_sock = _connect_raw(raw_address, MODE_ECHO)
        resources.closers.append(echo_sock.close)
        bulk = measure_bulk(engine, echo_sock, repeats)
    finally:
        resources.close()
    return figures(latencies, bulk, rounds, calls, repeats)


def _bind(function: Callable[[str], Any], argument: str) -> Sampler:
    return lambda: function(argument)


def figures(latencies: Dict[str, Dict[str, List[float]]], bulk: Dict[str, List[float]], rounds: int, calls: int,
            repeats: int) -> Dict[str, Any]:
    """
    The run's figures and verdicts, as plain data (what C{--json} writes). The round-trip ratio
    judged is the larger of the pinned placements' (the unpinned one where nothing could be pinned).
    """
    latency = {placement: {name: summarize_latency(samples) for name, samples in measures.items()}
               for placement, measures in latencies.items()}
    bulk_summary = {name: {"median_mb_s": statistics.median(values), "min_mb_s": min(values),
                           "max_mb_s": max(values), "runs_mb_s": values} for name, values in bulk.items()}
    by_placement = {placement: figures["srpy"]["median_us"] / figures["floor"]["median_us"]
                    for placement, figures in latency.items()}
    judged = [ratio for placement, ratio in by_placement.items() if placement != "unpinned"] \
        or list(by_placement.values())
    eval_ratio = max(judged)
    bulk_ratio = bulk_summary["srpy"]["median_mb_s"] / bulk_summary["echo"]["median_mb_s"]
    return {
        "machine": machine(),
        "settings": {"rounds": rounds, "calls_per_round": calls, "bulk_repeats": repeats,
                     "bulk_bytes": BULK_SIZE, "expression": EXPRESSION},
        "latency": latency,
        "bulk": bulk_summary,
        "ratios": {
            "eval_over_floor": {"value": eval_ratio, "target": "<= %.1f" % TARGET_EVAL_RATIO,
                                "pass": eval_ratio <= TARGET_EVAL_RATIO, "by_placement": by_placement},
            "bulk_over_echo": {"value": bulk_ratio, "target": ">= %.1f" % TARGET_BULK_RATIO,
                               "pass": bulk_ratio >= TARGET_BULK_RATIO},
        },
    }


def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    import Pyro5
    import srpy

    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "pyro5": Pyro5.__version__, "srpy": srpy.__version__, "cpus": os.cpu_count(),
            "platform": platform.platform(), "date": datetime.datetime.now().isoformat(timespec="seconds")}


# -- output ---------------------------------------------------------------------------------------

LATENCY_LABELS = [
    ("srpy", "srpy PythonEngine.eval"),
    ("pyro_marshal", "bare Pyro5, marshal"),
    ("pyro_json", "bare Pyro5, json"),
    ("pyro_serpent", "bare Pyro5, serpent"),
    ("floor", "RPC floor (pickle, raw TCP)"),
]
BULK_LABELS = [
    ("srpy", "srpy set + get (100 MB moved)"),
    ("srpy_set", "  of which set (50 MB)"),
    ("srpy_get", "  of which get (50 MB)"),
    ("echo", "raw loopback echo (100 MB moved)"),
]


def report(result: Dict[str, Any]) -> str:
    """The run's figures as a text table."""
    info, settings = result["machine"], result["settings"]
    lines = ["srpy core benchmark - Python %s, Pyro5 %s, srpy %s, %s cores, %s"
             % (info["python"], info["pyro5"], info["srpy"], info["cpus"], info["date"]),
             "",
             "round trip of eval(%r): %d rounds x %d calls each, per placement"
             % (settings["expression"], settings["rounds"], settings["calls_per_round"])]
    for placement, latency in result["latency"].items():
        lines += ["  %-34s %10s %10s %9s" % (placement, "median us", "p99 us", "x floor")]
        floor = latency["floor"]["median_us"]
        for key, label in LATENCY_LABELS:
            figure = latency[key]
            lines.append("    %-32s %10.1f %10.1f %8.2fx" % (label, figure["median_us"], figure["p99_us"],
                                                             figure["median_us"] / floor))
    lines += ["", "bulk bytes, %d MB of os.urandom: %d transfers each (MB = 10**6 bytes)"
              % (settings["bulk_bytes"] // 10**6, settings["bulk_repeats"]),
              "  %-34s %10s %10s %10s" % ("", "median MB/s", "min", "max")]
    for key, label in BULK_LABELS:
        figure = result["bulk"][key]
        lines.append("  %-34s %10.0f %10.0f %10.0f" % (label, figure["median_mb_s"], figure["min_mb_s"],
                                                      figure["max_mb_s"]))
    lines += ["", "targets (ratios of medians, this run; the round trip's is the worst pinned placement's: %s)"
              % ", ".join("%s %.2fx" % item for item in result["ratios"]["eval_over_floor"]["by_placement"].items())]
    for key, label in (("eval_over_floor", "eval round trip / RPC floor"), ("bulk_over_echo", "bulk bytes / raw echo")):
        ratio = result["ratios"][key]
        lines.append("  ratio %-28s %6.2fx   target %s   %s"
                     % (label, ratio["value"], ratio["target"], "PASS" if ratio["pass"] else "FAIL"))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description="srpy round trip and bulk bytes next to their floors.")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--serve", choices=("pyro", "raw"), help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark (or, with C{--serve}, one helper server); return the exit code."""
    options = build_parser().parse_args(argv)
    if options.serve:
        (serve_pyro if options.serve == "pyro" else serve_raw)()
        return 0
    helper_process.raise_on_sigterm()
    if options.quick:
        result = run(QUICK_ROUNDS, QUICK_CALLS, QUICK_BULK_REPEATS)
    else:
        result = run(ROUNDS, CALLS, BULK_REPEATS)
    print(report(result))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
