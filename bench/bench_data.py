#!/usr/bin/env python3
"""
Scientific data through srpy next to its references, in one run (issue 13, "Speed").

What it measures, all over loopback, each server in its own process, MB = 10**6 bytes:
 - B{set+get}: a float64 array of C{ARRAY_BYTES} (200 MB) sent with C{eng.set(a=...)} and read back
   with C{eng.get('a')} (bytes moved / set time + get time), next to a raw loopback echo of the same
   bytes (bench_core's echo server: it receives all of them, then sends them back);
 - B{submit}: a float64 array of C{SUBMIT_BYTES} (100 MB) through C{box.submit(echo, a).result()} on
   an L{srpy.EngBox} of two engines, next to the echo, C{multiprocessing.Pool(1).apply(echo, (a,))}
   with the spawn and the fork context, and, where installed, Dask's C{client.submit(echo,
   a).result()} (a C{LocalCluster} of one worker process) and Ray's C{ray.get(echo.remote(a))};
 - B{map}: C{box.map(echo, arrays)} over C{MAP_ARRAYS} (10,000) arrays of 100 float64 each, arrays
   per second, next to C{Pool(2).map} (fork);
 - B{DataFrame}: a C{DATAFRAME_ROWS}-row DataFrame of mixed dtypes, set+get, next to set+get of the
   numpy arrays it holds - only where pandas is installed and srpy's codec carries a DataFrame;
   otherwise a note says why it was not measured;
 - B{bytes paths}: C{BYTES_SIZE} of C{os.urandom} through C{set}/C{get}, through a function
   obtained with C{associateFunction} (argument and result), and through C{box.submit}, MB/s each.

Each workload's measures take turns, round by round (C{REPEATS} rounds), so that the machine's slow
moments fall on all of them alike; the median of each is reported, and the issue's targets are
judged on ratios of medians of this run: set+get >= 0.8x the echo; submit >= 0.6x the echo and
faster than every Pool/Dask/Ray row; map >= 100,000 arrays/s; DataFrame within 2x its arrays.

Dask and Ray are installed for the benchmark only, in a virtual environment of its own
(C{python -m venv /tmp/benchenv && /tmp/benchenv/bin/pip install -e .[bench]}, then
C{/tmp/benchenv/bin/python bench/bench_data.py}); without them their rows are left out with a note.

Usage::

    python bench/bench_data.py            # default settings (a couple of minutes)
    python bench/bench_data.py --quick    # a smoke run (small sizes)
    python bench/bench_data.py --json figures.json

Everything the run starts is stopped in C{finally} blocks; a watchdog ends a run that overstays
C{RUN_LIMIT} seconds.
"""

import argparse
import functools
import json
import multiprocessing
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import bench_box  # bench/bench_box.py: Resources, the process sweep, the machine's description
import bench_core  # bench/bench_core.py: the raw loopback echo
import helper_process  # bench/helper_process.py, beside this file

ARRAY_BYTES = 200 * 10**6
SUBMIT_BYTES = 100 * 10**6
BYTES_SIZE = 50 * 10**6
MAP_ARRAYS = 10_000
MAP_ARRAY_LENGTH = 100
DATAFRAME_ROWS = 1_000_000
REPEATS = 5
QUICK_ARRAY_BYTES = 8 * 10**6
QUICK_SUBMIT_BYTES = 4 * 10**6
QUICK_BYTES_SIZE = 4 * 10**6
QUICK_MAP_ARRAYS = 1_000
QUICK_DATAFRAME_ROWS = 20_000
QUICK_REPEATS = 2
TARGET_SET_GET = 0.8  # srpy set+get MB/s / echo MB/s, at least
TARGET_SUBMIT = 0.6  # srpy submit MB/s / echo MB/s, at least (and ahead of every peer)
TARGET_MAP = 100_000.0  # arrays/s, at least
TARGET_DATAFRAME = 2.0  # DataFrame set+get seconds / its arrays' set+get seconds, at most
RUN_LIMIT = 900.0
READY_TIMEOUT = 30.0
OPTIONAL_PEERS = {"dask": "dask.distributed", "ray": "ray"}


# -- the work (module level: srpy ships it by source, the others pickle it by name) -------------------

def echo(value: Any) -> Any:
    """Return the argument: what travels is all there is to measure."""
    return value


# -- settings -----------------------------------------------------------------------------------------

class Settings:
    """The sizes of one run."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.array_bytes = QUICK_ARRAY_BYTES if quick else ARRAY_BYTES
        self.submit_bytes = QUICK_SUBMIT_BYTES if quick else SUBMIT_BYTES
        self.bytes_size = QUICK_BYTES_SIZE if quick else BYTES_SIZE
        self.map_arrays = QUICK_MAP_ARRAYS if quick else MAP_ARRAYS
        self.dataframe_rows = QUICK_DATAFRAME_ROWS if quick else DATAFRAME_ROWS
        self.repeats = QUICK_REPEATS if quick else REPEATS

    def as_dict(self) -> Dict[str, Any]:
        """The sizes, for the JSON figures."""
        return {"array_bytes": self.array_bytes, "submit_bytes": self.submit_bytes, "bytes_size": self.bytes_size,
                "map_arrays": self.map_arrays, "map_array_length": MAP_ARRAY_LENGTH,
                "dataframe_rows": self.dataframe_rows, "repeats": self.repeats, "quick": self.quick}


# -- measuring ----------------------------------------------------------------------------------------

Timer = Callable[[], float]  # one transfer; returns its seconds (checks done outside the timed span)


def timed(action: Callable[[], Any]) -> Tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def in_turns(timers: Dict[str, Timer], repeats: int) -> Dict[str, List[float]]:
    """Warm each timer up once, then run them in turns, C{repeats} rounds; seconds of each run."""
    for timer in timers.values():
        timer()
    seconds: Dict[str, List[float]] = {name: [] for name in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            seconds[name].append(timer())
    return seconds


def summary(seconds: List[float], amount: float, unit: str) -> Dict[str, Any]:
    """Rates (C{amount} per second) of each run, their median, best and worst."""
    rates = [amount / s for s in seconds]
    return {"unit": unit, "median": statistics.median(rates), "best": max(rates), "worst": min(rates),
            "rates": rates, "seconds": seconds}


def echo_timer(sock: Any, data: bytes) -> Timer:
    """The raw echo of C{data} (bench_core's)."""
    return lambda: bench_core.echo_once(sock, data)


def same_array(back: Any, sent: Any, where: str) -> None:
    """Raise unless C{back} is an ndarray equal to C{sent} in dtype, shape and values."""
    import numpy

    if type(back) is not numpy.ndarray or back.dtype != sent.dtype or back.shape != sent.shape \
            or not numpy.array_equal(back, sent):
        raise RuntimeError("%s returned a different array" % where)


def checker(sent: Any, where: str) -> Callable[[Any], None]:
    """A check that what came back is C{sent} (L{same_array})."""
    return lambda back: same_array(back, sent, where)


def set_get_timer(engine: Any, value: Any, check: Callable[[Any], None]) -> Timer:
    """C{engine.set(a=value)} then C{engine.get('a')}; checked after the clock stops."""
    def run() -> float:
        start = time.perf_counter()
        engine.set(bench_a=value)
        back = engine.get("bench_a")
        elapsed = time.perf_counter() - start
        check(back)
        engine.exe("del bench_a")
        return elapsed

    return run


def call_timer(call: Callable[[], Any], check: Callable[[Any], None]) -> Timer:
    """One call, checked after the clock stops."""
    def run() -> float:
        elapsed, back = timed(call)
        check(back)
        return elapsed

    return run


# -- workloads ----------------------------------------------------------------------------------------

def bench_set_get(engine: Any, sock: Any, settings: Settings) -> Dict[str, Any]:
    """The 200 MB array's set+get beside the echo of its bytes."""
    import numpy

    a = numpy.random.default_rng(1).random(settings.array_bytes // 8)
    data = a.tobytes()
    moved = 2 * a.nbytes / 1e6
    seconds = in_turns({"echo": echo_timer(sock, data),
                        "srpy": set_get_timer(engine, a, lambda back: same_array(back, a, "set+get"))},
                       settings.repeats)
    return {name: summary(values, moved, "MB/s") for name, values in seconds.items()}


def bench_submit(box: Any, sock: Any, pools: Dict[str, Any], settings: Settings, figures: Dict[str, Any],
                 peers: List[str]) -> Dict[str, Any]:
    """The 100 MB array's round trip through box.submit, the echo, Pool.apply and the installed peers."""
    import numpy

    a = numpy.random.default_rng(2).random(settings.submit_bytes // 8)
    data = a.tobytes()
    moved = 2 * a.nbytes / 1e6
    timers: Dict[str, Timer] = {
        "echo": echo_timer(sock, data),
        "srpy": call_timer(lambda: box.submit(echo, a).result(), lambda b: same_array(b, a, "box.submit"))}
    for context, pool in pools.items():
        timers["pool_" + context] = call_timer(functools.partial(pool.apply, echo, (a,)),
                                               checker(a, "Pool.apply (%s)" % context))
    closers: List[Callable[[], Any]] = []
    try:
        for peer in peers:
            try:
                call, close = start_peer(peer)
                closers.append(close)
                timers[peer] = call_timer(functools.partial(call, a), checker(a, peer))
                timers[peer]()  # a failing peer is caught here, not in the middle of the rounds
            except Exception as exc:  # a broken peer is reported, the run goes on
                timers.pop(peer, None)
                figures["failed"][peer] = "%s: %s" % (type(exc).__name__, exc)
                print("  note: %s failed: %s: %s" % (peer, type(exc).__name__, exc), flush=True)
        seconds = in_turns(timers, settings.repeats)
    finally:
        for close in reversed(closers):
            try:
                close()
            except Exception as exc:  # one failing cleanup must not keep the others from running
                print("warning: stopping a peer failed: %s" % exc, file=sys.stderr)
    return {name: summary(values, moved, "MB/s") for name, values in seconds.items()}


def start_peer(peer: str) -> Tuple[Callable[[Any], Any], Callable[[], Any]]:
    """Start Dask or Ray with one worker; (round trip of an array, stop)."""
    if peer == "dask":
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)

        def dask_close() -> None:
            client.close()
            cluster.close()

        return (lambda a: client.submit(echo, a, pure=False).result()), dask_close
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    remote_echo = ray.remote(echo)
    return (lambda a: ray.get(remote_echo.remote(a))), ray.shutdown


def bench_map(box: Any, pool: Any, settings: Settings) -> Dict[str, Any]:
    """box.map(echo, arrays) over many small arrays, beside Pool(2).map (fork), arrays/s."""
    import numpy

    arrays = [numpy.full(MAP_ARRAY_LENGTH, float(i)) for i in range(settings.map_arrays)]
    expected = float(sum(i * MAP_ARRAY_LENGTH for i in range(settings.map_arrays)))

    def check(results: List[Any]) -> None:
        if len(results) != len(arrays) or type(results[-1]) is not numpy.ndarray \
                or float(sum(r.sum() for r in results)) != expected:
            raise RuntimeError("map returned different arrays")

    seconds = in_turns({"srpy": call_timer(lambda: list(box.map(echo, arrays)), check),
                        "pool_fork": call_timer(lambda: pool.map(echo, arrays), check)}, settings.repeats)
    return {name: summary(values, len(arrays), "arrays/s") for name, values in seconds.items()}


def dataframe_support() -> Optional[str]:
    """None if a DataFrame can be measured; else why not."""
    try:
        import pandas
    except ImportError:
        return "not measured: pandas is not installed"
    from srpy import codec
    from srpy.errors import SerializationError

    try:
        codec.dumps(pandas.DataFrame({"x": [1]}))
    except SerializationError as exc:
        return "not measured: srpy cannot send a pandas.DataFrame yet (%s)" % str(exc).split(":")[0]
    return None


def bench_dataframe(engine: Any, settings: Settings) -> Dict[str, Any]:
    """A mixed-dtype DataFrame's set+get beside set+get of the arrays it holds (seconds, median)."""
    import numpy
    import pandas
    from pandas.testing import assert_frame_equal

    rows = settings.dataframe_rows
    rng = numpy.random.default_rng(3)
    frame = pandas.DataFrame({
        "f8": rng.random(rows), "i8": rng.integers(0, 10**9, rows), "i4": rng.integers(0, 1000, rows, dtype="i4"),
        "b": rng.random(rows) > 0.5,
        "t": pandas.date_range("2026-01-01", periods=rows, freq="s"),
        "c": pandas.Categorical(rng.choice(["red", "green", "blue"], rows))})
    arrays = tuple([frame[name].to_numpy() for name in ("f8", "i8", "i4", "b", "t")]
                   + [frame["c"].cat.codes.to_numpy()])
    nbytes = sum(a.nbytes for a in arrays)

    def check_arrays(back: Any) -> None:
        for got, sent in zip(back, arrays):
            same_array(got, sent, "set+get of the frame's arrays")

    seconds = in_turns({"dataframe": set_get_timer(engine, frame, lambda back: assert_frame_equal(back, frame)),
                        "arrays": set_get_timer(engine, arrays, check_arrays)}, settings.repeats)
    out = {name: summary(values, 2 * nbytes / 1e6, "MB/s") for name, values in seconds.items()}
    out["array_bytes"] = nbytes
    return out


def bench_bytes(engine: Any, box: Any, sock: Any, settings: Settings) -> Dict[str, Any]:
    """Large bytes through set/get, an associateFunction callable and box.submit, beside the echo."""
    data = os.urandom(settings.bytes_size)
    moved = 2 * len(data) / 1e6

    def check(back: Any) -> None:
        if type(back) is not bytes or back != data:
            raise RuntimeError("bytes came back different")

    engine.exe("def bench_echo(value):\n    return value\n")
    remote_echo = engine.associateFunction("bench_echo")
    seconds = in_turns({"echo": echo_timer(sock, data), "set_get": set_get_timer(engine, data, check),
                        "associate": call_timer(lambda: remote_echo(data), check),
                        "submit": call_timer(lambda: box.submit(echo, data).result(), check)}, settings.repeats)
    return {name: summary(values, moved, "MB/s") for name, values in seconds.items()}


# -- the run ------------------------------------------------------------------------------------------

class Resources(bench_box.Resources):
    """bench_box's, but the final sweep spares multiprocessing's resource tracker (the spawn pool started it)."""

    def close(self) -> None:
        """Stop everything registered, then any leftover process of ours but the resource tracker."""
        self.watchdog.cancel()
        while self.closers:
            name, closer = self.closers.pop()
            self._run(name, closer)
        left = [child for child in _children() if "resource_tracker" not in " ".join(_cmdline(child))]
        for child in left:  # killed, it would be relaunched and complain about semaphores it never saw
            print("warning: leftover process %d had to be terminated" % child.pid, file=sys.stderr)
            child.terminate()
        if self._last_resort is not None:
            self._last_resort.cancel()


def _children() -> List[Any]:
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _cmdline(process: Any) -> List[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:
        return []


def installed_peers() -> Tuple[List[str], Dict[str, str]]:
    """The optional peers importable here, and a note for each one that is not."""
    import importlib.util

    peers, skipped = [], {}
    for peer, module in OPTIONAL_PEERS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # the parent package (dask) is missing
            found = False
        if found:
            peers.append(peer)
        else:
            skipped[peer] = "not installed (no module %s); install it to measure it" % module
    return peers, skipped


def step(name: str) -> None:
    """Say what is being measured (a full run takes minutes)."""
    print("measuring %s ..." % name, file=sys.stderr, flush=True)


def run(settings: Settings) -> Dict[str, Any]:
    """Start everything, measure every workload, stop everything; return the figures."""
    import srpy

    peers, skipped = installed_peers()
    for peer, reason in skipped.items():
        print("note: %s %s" % (peer, reason), flush=True)
    figures: Dict[str, Any] = {"machine": machine(), "settings": settings.as_dict(), "skipped": dict(skipped),
                               "failed": {}}
    resources = Resources(RUN_LIMIT)
    try:
        # the pools first: fork before srpy's threads exist
        pools = {context: multiprocessing.get_context(context).Pool(1, initializer=bench_box._default_sigterm)
                 for context in ("spawn", "fork")}
        map_pool = multiprocessing.get_context("fork").Pool(2, initializer=bench_box._default_sigterm)
        for pool in list(pools.values()) + [map_pool]:
            resources.add("multiprocessing pool", pool.terminate)
        echo_process, echo_address = helper_process.start_helper(bench_core.__file__, "raw", READY_TIMEOUT)
        resources.add("raw echo server", lambda: helper_process.stop_process(echo_process))
        sock = bench_core._connect_raw(echo_address, bench_core.MODE_ECHO)
        resources.add("echo socket", sock.close)
        uris = []
        for _ in range(2):
            uri, process = srpy.newSubEngine()
            resources.add("srpy engine", functools.partial(srpy.stopSubEngine, process))
            uris.append(uri)
        engine = srpy.PythonEngine(uris[0])
        resources.add("srpy engine client", engine.close)
        box = srpy.EngBox(uris)
        resources.add("srpy EngBox", box.close)

        step("set+get of a %d MB array" % (settings.array_bytes // 10**6))
        figures["set_get"] = bench_set_get(engine, sock, settings)
        step("submit of a %d MB array" % (settings.submit_bytes // 10**6))
        figures["submit"] = bench_submit(box, sock, pools, settings, figures, peers)
        step("map over %d arrays" % settings.map_arrays)
        figures["map"] = bench_map(box, map_pool, settings)
        frame_reason = dataframe_support()
        if frame_reason is None:
            step("DataFrame of %d rows" % settings.dataframe_rows)
            figures["dataframe"] = bench_dataframe(engine, settings)
        else:
            figures["dataframe"] = None
            figures["skipped"]["dataframe"] = frame_reason
        step("bytes paths, %d MB" % (settings.bytes_size // 10**6))
        figures["bytes"] = bench_bytes(engine, box, sock, settings)
    finally:
        resources.close()
    figures["machine"]["load_average_after"] = bench_box._load()
    figures["targets"] = targets(figures)
    return figures


def targets(figures: Dict[str, Any]) -> Dict[str, Any]:
    """The issue's targets, judged on this run's medians."""
    set_get, submit, map_ = figures["set_get"], figures["submit"], figures["map"]
    out: Dict[str, Any] = {}
    ratio = set_get["srpy"]["median"] / set_get["echo"]["median"]
    out["set_get_vs_echo"] = {"value": ratio, "target": ">= %.1fx echo" % TARGET_SET_GET,
                              "pass": ratio >= TARGET_SET_GET}
    ratio = submit["srpy"]["median"] / submit["echo"]["median"]
    out["submit_vs_echo"] = {"value": ratio, "target": ">= %.1fx echo" % TARGET_SUBMIT,
                             "pass": ratio >= TARGET_SUBMIT}
    for name in [key for key in submit if key not in ("echo", "srpy")]:
        ratio = submit["srpy"]["median"] / submit[name]["median"]
        out["submit_vs_" + name] = {"value": ratio, "target": "> 1.0x", "pass": ratio > 1.0}
    rate = map_["srpy"]["median"]
    out["map_rate"] = {"value": rate, "target": ">= {:,.0f} arrays/s".format(TARGET_MAP), "pass": rate >= TARGET_MAP}
    frame = figures.get("dataframe")
    if frame:
        ratio = frame["arrays"]["median"] / frame["dataframe"]["median"]  # = frame seconds / arrays seconds
        out["dataframe_vs_arrays"] = {"value": ratio, "target": "<= %.1fx its arrays' time" % TARGET_DATAFRAME,
                                      "pass": ratio <= TARGET_DATAFRAME}
    else:
        out["dataframe_vs_arrays"] = {"value": None, "target": "<= %.1fx its arrays' time" % TARGET_DATAFRAME,
                                      "pass": None, "note": figures["skipped"].get("dataframe", "")}
    return out


def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    import subprocess

    info = bench_box.machine()
    for peer in ("numpy", "pandas"):
        try:
            module = __import__(peer)
            info["versions"][peer] = module.__version__
        except ImportError:
            info["versions"][peer] = None
    try:  # the srpy commit the figures belong to
        info["srpy_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                             cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["srpy_commit"] = None
    return info


# -- output -------------------------------------------------------------------------------------------

def _table(title: str, rows: List[Tuple[str, Dict[str, Any]]], reference: Optional[Dict[str, Any]],
           ref_name: str) -> List[str]:
    lines = [title, "  %-50s %12s %12s %12s %9s" % ("", "median", "best", "worst", "x " + ref_name)]
    for label, figure in rows:
        ratio = "%.2fx" % (figure["median"] / reference["median"]) if reference else "-"
        lines.append("  %-50s %12s %12s %12s %9s" % (label, _number(figure["median"]), _number(figure["best"]),
                                                     _number(figure["worst"]), ratio))
    return lines


def _number(value: float) -> str:
    return "{:,.0f}".format(value)


SUBMIT_LABELS = {"echo": "raw loopback echo", "srpy": "srpy box.submit(echo, a).result()",
                 "pool_spawn": "multiprocessing Pool.apply (spawn)", "pool_fork": "multiprocessing Pool.apply (fork)",
                 "dask": "dask client.submit(echo, a).result()", "ray": "ray ray.get(echo.remote(a))"}


def report(figures: Dict[str, Any]) -> str:
    """The run's figures as text tables."""
    info, settings = figures["machine"], figures["settings"]
    versions = ", ".join("%s %s" % (k, v) for k, v in info["versions"].items() if v)
    lines = ["srpy data benchmark - %s; srpy commit %s; %s cores (%s); %s; load average at start %s, after %s"
             % (versions, info["srpy_commit"], info["cpus"], info["processor"], info["date"],
                info["load_average_at_start"], info["load_average_after"]),
             "%d rounds, measures in turns; MB = 10**6 bytes; MB/s = bytes there and back / seconds"
             % settings["repeats"],
             ""]
    set_get = figures["set_get"]
    lines += _table("set+get of a %d MB float64 array (MB/s)" % (settings["array_bytes"] // 10**6),
                    [("srpy eng.set(a=...) + eng.get('a')", set_get["srpy"]), ("raw loopback echo", set_get["echo"])],
                    set_get["echo"], "echo")
    submit = figures["submit"]
    lines += [""] + _table("round trip of a %d MB float64 array (MB/s)" % (settings["submit_bytes"] // 10**6),
                           [(SUBMIT_LABELS[name], figure) for name, figure in submit.items()], submit["echo"], "echo")
    map_ = figures["map"]
    lines += [""] + _table("map of echo over %d arrays of %d float64 (arrays/s)"
                           % (settings["map_arrays"], MAP_ARRAY_LENGTH),
                           [("srpy box.map(echo, arrays)", map_["srpy"]),
                            ("multiprocessing Pool(2).map (fork)", map_["pool_fork"])], map_["pool_fork"], "Pool")
    frame = figures.get("dataframe")
    if frame:
        lines += [""] + _table("set+get of a %d-row mixed DataFrame, %.0f MB of arrays (MB/s of those bytes)"
                               % (settings["dataframe_rows"], frame["array_bytes"] / 1e6),
                               [("srpy set+get of the DataFrame", frame["dataframe"]),
                                ("srpy set+get of its numpy arrays", frame["arrays"])], frame["arrays"], "arrays")
    else:
        lines += ["", "DataFrame: %s" % figures["skipped"]["dataframe"]]
    data = figures["bytes"]
    lines += [""] + _table("large bytes, %d MB of os.urandom (MB/s)" % (settings["bytes_size"] // 10**6),
                           [("srpy set + get", data["set_get"]), ("srpy associateFunction callable", data["associate"]),
                            ("srpy box.submit(echo, data).result()", data["submit"]),
                            ("raw loopback echo", data["echo"])], data["echo"], "echo")
    for peer, reason in figures["skipped"].items():
        if peer != "dataframe":
            lines.append("note: %s %s" % (peer, reason))
    for peer, reason in figures["failed"].items():
        lines.append("note: %s failed: %s" % (peer, reason))
    names = {"set_get_vs_echo": "array set+get / echo", "submit_vs_echo": "array submit / echo",
             "map_rate": "map over small arrays", "dataframe_vs_arrays": "DataFrame set+get / its arrays"}
    lines += ["", "targets (issue 13, this run's medians)"]
    for key, target in figures["targets"].items():
        label = names.get(key) or "array submit / " + SUBMIT_LABELS[key[len("submit_vs_"):]]
        value = target["value"]
        if value is None:
            shown, verdict = "n/a", "NOT MEASURED"
        else:
            shown = ("{:,.0f}/s".format(value) if key == "map_rate" else "%.2fx" % value)
            verdict = "PASS" if target["pass"] else "FAIL"
        lines.append("  %-52s %12s   target %-26s %s" % (label, shown, target["target"], verdict))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description="numpy arrays, DataFrames and bytes through srpy (issue 13).")
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer rounds (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; return the exit code."""
    options = build_parser().parse_args(argv)
    helper_process.raise_on_sigterm()
    figures = run(Settings(options.quick))
    print(report(figures))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump(figures, handle, indent=2)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
