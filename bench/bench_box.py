#!/usr/bin/env python3
"""
L{srpy.EngBox} as an executor next to its peers, in one run (issue 3).

Four workloads, all on this machine over loopback, with two workers for every system:
 - B{submit}: C{square(x)} submitted item by item, C{ITEMS} times, end to end (submit all, wait for
   every result): srpy C{EngBox.submit}, C{multiprocessing.Pool(2).apply_async}, bare Pyro5 (two
   daemon processes exposing a function runner, one calling thread per daemon, serializers
   marshal and serpent), rpyc (the same with two rpyc servers), Ray (C{f.remote}), Dask
   (C{Client.submit}) and ipyparallel (a load-balanced view's C{apply_async});
 - B{map}: C{square} over C{ITEMS} items: srpy C{EngBox.map} with its own chunking (the first map
   of a fresh box, which also defines the function on the engines, reported apart as I{cold}),
   next to C{Pool.map} (default chunksize, and one chunk per worker), app-level chunks (one per
   server or worker) for bare Pyro5, rpyc, Ray and Dask, and ipyparallel's load-balanced map
   (chunksize 1000) and direct-view map (one chunk per engine);
 - B{primes}: 16 tasks of C{srpy.benchmark.sum_of_primes(200_000)}, submitted at once and all
   awaited, on an EngBox of 1 engine and of 2 engines (speed-up), and the same with
   C{multiprocessing.Pool(1)} / C{Pool(2)} for reference, with how busy the workers were (their
   CPU seconds / (workers x wall seconds): on a shared machine, what it gave them);
 - B{start-up}: seconds from spawning C{python srpyapp.py -n 2} until both URIs it prints answer
   C{ping()}; bare Pyro5 (two daemon processes spawned until both answer), and Dask
   (C{LocalCluster} with 2 worker processes), Ray (C{ray.init(num_cpus=2)} until two tasks ran)
   and ipyparallel (a 2-engine C{Cluster} until both engines ran a function), those three in
   this process with their modules already imported; the median of C{STARTUP_REPEATS} starts.
   srpy and bare Pyro5 are started once untimed first, with bytecode cached in a private
   C{PYTHONPYCACHEPREFIX} (an installed srpy has its bytecode compiled); where
   C{PYTHONDONTWRITEBYTECODE} is set, one more row shows srpy recompiled at every start. A peer's
   first sample is the start that served its workloads.

ipyparallel, dask.distributed, ray and rpyc are measured only when importable (C{pip install
.[bench]}); a missing one is skipped with a printed note. A peer's modules are imported only
when it is measured, after srpy: a bigger heap in this process would slow srpy's submit through
the garbage collector. Every system is warmed up once before
it is timed; each measure is repeated (C{REPEATS}) and reported as the median and the best rate.
Per-item submission through a slow peer (hundreds of tasks/s) would take minutes at C{ITEMS}, so
such a peer gets fewer items: as many as its warm-up rate covers in about C{SLOW_SECONDS} (at
least C{MIN_ITEMS}); the table shows the count used. Ratios are srpy's median over the peer's.

Usage::

    python bench/bench_box.py                    # default settings (a few minutes)
    python bench/bench_box.py --quick            # a smoke run
    python bench/bench_box.py --json figures.json --skip ray,ipyparallel

The bare Pyro5 and rpyc servers are this same file started with C{--serve pyro} or C{--serve rpyc}:
each prints C{READY <address>} and exits when its stdin reaches end-of-file. Everything the run
starts is stopped in C{finally} blocks; a watchdog ends a run that overstays C{RUN_LIMIT} seconds,
and any process of ours still alive at the end is terminated by its id.

@var ITEMS: items of the submit and map workloads (C{--quick}: L{QUICK_ITEMS}).
@var REPEATS: timed repeats of each submit and map measure (C{--quick}: L{QUICK_REPEATS}).
"""

import argparse
import array
import datetime
import inspect
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import helper_process  # bench/helper_process.py, beside this file

ITEMS = 20_000
REPEATS = 5
QUICK_ITEMS = 2_000
QUICK_REPEATS = 2
SLOW_SECONDS = 1.5  # a slow peer's submit measure aims at about this many seconds per repeat
MIN_ITEMS = 1_000
QUICK_MIN_ITEMS = 100
PRIMES_TASKS = 16
PRIMES_LIMIT = 200_000
PRIMES_REPEATS = 3
QUICK_PRIMES_LIMIT = 20_000
QUICK_PRIMES_REPEATS = 1
STARTUP_REPEATS = 3
QUICK_STARTUP_REPEATS = 1
IPP_CHUNKSIZE = 1_000
MAP_CHUNKSIZE = 1_000  # srpy's map and Pool's map, each with this chunksize, side by side
PARTS = ("submit", "map", "primes", "startup")
RUN_LIMIT = 600.0  # seconds; then the watchdog unwinds the run (and kills what lingers a minute later)
READY_TIMEOUT = 60.0
CALL_TIMEOUT = 120.0  # the longest any single wait of a peer may take
TARGET_SUBMIT = 50_000.0  # tasks/s, at least
TARGET_MAP = 2_000_000.0  # tasks/s, at least, and ahead of every peer's best
TARGET_SPEEDUP = 1.95  # 1 -> 2 engines, at least
TARGET_STARTUP = 0.5  # seconds, at most
OPTIONAL_PEERS = ("rpyc", "dask", "ray", "ipyparallel")
PEER_MODULES = {"rpyc": "rpyc", "dask": "dask.distributed", "ray": "ray", "ipyparallel": "ipyparallel"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRPYAPP = os.path.join(ROOT, "srpyapp.py")
PYRO_OBJECT_ID = "bench.runner"

Row = Dict[str, Any]


# -- the work (module level: srpy ships these by source, the others pickle or import them) -----------

def square(x: int) -> int:
    """The per-item task of the submit and map workloads."""
    return x * x


def square_chunk(xs: Sequence[int]) -> List[int]:
    """One app-level chunk of the map workload."""
    return [x * x for x in xs]


def square_chunk_array(xs: Sequence[int]) -> "array.array[int]":
    """One chunk whose results travel as an array (dask moves a long list of ints slowly)."""
    return array.array("q", [x * x for x in xs])


def answer() -> str:
    """What a freshly started worker runs to show it answers."""
    return "pong"


# -- helper servers (child processes of this file) --------------------------------------------------

class FunctionRunner:
    """The server side of bare Pyro5 and rpyc: functions defined from source, called one by one or by chunk."""

    def __init__(self) -> None:
        self.functions: Dict[str, Callable[..., Any]] = {}

    def ping(self) -> str:
        """Answer, to show the server is up."""
        return "pong"

    def define(self, name: str, source: str) -> None:
        """Define the function C{name} from its source text (as srpy ships it)."""
        namespace: Dict[str, Any] = {}
        exec(compile(source, "<bench>", "exec"), namespace)
        self.functions[name] = namespace[name]

    def call(self, name: str, args: Sequence[Any]) -> Any:
        """One call of a defined function."""
        return self.functions[name](*args)

    def map(self, name: str, items: Sequence[Any]) -> List[Any]:
        """A defined function over a chunk of items."""
        function = self.functions[name]
        return [function(item) for item in items]


def serve_pyro() -> None:
    """A Pyro5 daemon (default thread server) exposing a L{FunctionRunner}, until stdin closes."""
    from Pyro5.api import Daemon, expose

    daemon = Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(expose(FunctionRunner)(), PYRO_OBJECT_ID)
    helper_process.exit_at_stdin_eof()
    helper_process.announce(str(uri))
    daemon.requestLoop()


def serve_rpyc() -> None:
    """An rpyc ThreadedServer exposing a L{FunctionRunner} (results as tuples: by value), until stdin closes."""
    import rpyc
    from rpyc.utils.server import ThreadedServer

    runner = FunctionRunner()

    class RunnerService(rpyc.Service):  # type: ignore[misc]
        def exposed_ping(self) -> str:
            return runner.ping()

        def exposed_define(self, name: str, source: str) -> None:
            runner.define(name, source)

        def exposed_call(self, name: str, *args: Any) -> Any:
            return runner.call(name, args)

        def exposed_map(self, name: str, items: Sequence[Any]) -> Tuple[Any, ...]:
            return tuple(runner.map(name, items))

    server = ThreadedServer(RunnerService, hostname="127.0.0.1", port=0,
                            protocol_config={"allow_public_attrs": False})
    helper_process.exit_at_stdin_eof()
    helper_process.announce("%s:%d" % (server.host, server.port))
    server.start()


# -- processes --------------------------------------------------------------------------------------

class Resources:
    """Everything the run starts, so that one C{close} stops it all, whatever happened."""

    def __init__(self, limit: float) -> None:
        self.closers: List[Tuple[str, Callable[[], Any]]] = []
        self.watchdog = threading.Timer(limit, self._expire, args=(limit,))
        self.watchdog.daemon = True
        self.watchdog.start()
        self._last_resort: Optional[threading.Timer] = None

    def _expire(self, limit: float) -> None:
        print("error: the run took longer than %.0f s; stopping it" % limit, file=sys.stderr, flush=True)
        self._last_resort = threading.Timer(60.0, self._kill_everything)
        self._last_resort.daemon = True
        self._last_resort.start()
        os.kill(os.getpid(), signal.SIGTERM)  # unwinds the main thread through its finally blocks

    def _kill_everything(self) -> None:
        print("error: cleanup did not finish; killing every process of this run", file=sys.stderr, flush=True)
        sweep_descendants(grace=1.0)
        os._exit(3)

    def add(self, name: str, closer: Callable[[], Any]) -> None:
        """Remember how to stop something just started (stopped last-in, first-out)."""
        self.closers.append((name, closer))

    def close_one(self, closer: Callable[[], Any]) -> None:
        """Run (and forget) one registered closer now."""
        for index, (name, registered) in enumerate(self.closers):
            if registered == closer:  # bound methods are new objects at each access
                del self.closers[index]
                self._run(name, closer)
                return

    @staticmethod
    def _run(name: str, closer: Callable[[], Any]) -> None:
        try:
            closer()
        except Exception as exc:  # one failing cleanup must not keep the others from running
            print("warning: stopping %s failed: %s" % (name, exc), file=sys.stderr)

    def close(self) -> None:
        """Stop everything still registered, then any leftover process of ours."""
        self.watchdog.cancel()
        while self.closers:
            name, closer = self.closers.pop()
            self._run(name, closer)
        left = sweep_descendants()
        if left:
            print("warning: %d leftover process(es) of this run had to be terminated: %s"
                  % (len(left), ", ".join(left)), file=sys.stderr)
        if self._last_resort is not None:
            self._last_resort.cancel()


def sweep_descendants(grace: float = 5.0) -> List[str]:
    """Terminate (then kill) every process this one started that is still alive; their descriptions."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    names = []
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(child.cmdline())
            if "multiprocessing" not in command:  # a resource tracker or fork server lives until we exit
                names.append("%d %s" % (child.pid, command[:80]))
            child.terminate()
            alive.append(child)
        except psutil.Error:
            pass
    _, lingering = psutil.wait_procs(alive, timeout=grace)
    for child in lingering:
        try:
            child.kill()
        except psutil.Error:
            pass
    return names


def _default_sigterm() -> None:
    """In a pool worker: die on SIGTERM (Pool.terminate), not unwind like the benchmark's main process."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# -- measuring --------------------------------------------------------------------------------------

class Settings:
    """The sizes of one run."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.items = QUICK_ITEMS if quick else ITEMS
        self.repeats = QUICK_REPEATS if quick else REPEATS
        self.min_items = QUICK_MIN_ITEMS if quick else MIN_ITEMS
        self.primes_limit = QUICK_PRIMES_LIMIT if quick else PRIMES_LIMIT
        self.primes_repeats = QUICK_PRIMES_REPEATS if quick else PRIMES_REPEATS
        self.startup_repeats = QUICK_STARTUP_REPEATS if quick else STARTUP_REPEATS

    def as_dict(self) -> Dict[str, Any]:
        """The sizes, for the JSON figures."""
        return {"items": self.items, "repeats": self.repeats, "min_items": self.min_items,
                "slow_seconds": SLOW_SECONDS, "primes_tasks": PRIMES_TASKS, "primes_limit": self.primes_limit,
                "primes_repeats": self.primes_repeats, "startup_repeats": self.startup_repeats, "quick": self.quick}


def timed(action: Callable[[], Any]) -> Tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def rate_row(label: str, system: str, items: int, seconds: List[float], srpy: bool = False,
             note: str = "") -> Row:
    """A table row: tasks/s of each repeat, their median and best."""
    rates = [items / s for s in seconds]
    return {"label": label, "system": system, "items": items, "seconds": seconds, "rates": rates,
            "median": statistics.median(rates), "best": max(rates), "srpy": srpy, "note": note}


def measure(label: str, system: str, action: Callable[[int], Any], items: int, repeats: int,
            expected: Optional[int] = None, srpy: bool = False, note: str = "") -> Row:
    """Time C{action(items)} C{repeats} times (already warmed up); check its results' sum."""
    seconds = []
    for _ in range(repeats):
        elapsed, results = timed(lambda: action(items))
        seconds.append(elapsed)
        _check(label, results, items, expected)
    return rate_row(label, system, items, seconds, srpy, note)


def _check(label: str, results: Any, items: int, expected: Optional[int]) -> None:
    if expected is None:
        expected = sum(x * x for x in range(items))
    total = sum(results)
    if total != expected:
        raise RuntimeError("%s returned wrong results (sum %s, expected %s)" % (label, total, expected))


def adaptive_items(label: str, action: Callable[[int], Any], settings: Settings) -> int:
    """Warm C{action} up; the item count it gets: C{ITEMS}, or fewer for a slow peer (see the module doc)."""
    warm = min(settings.items, 100 if settings.quick else 500)
    elapsed, results = timed(lambda: action(warm))
    _check(label, results, warm, None)
    affordable = int(warm / elapsed * SLOW_SECONDS)
    if affordable >= settings.items:
        return settings.items
    return max(settings.min_items, int(round(affordable, -2)) or settings.min_items)


def in_two_threads(work: Callable[[int], Any]) -> List[Any]:
    """Run C{work(0)} and C{work(1)} in two threads; their results, in order (exceptions re-raised)."""
    results: List[Any] = [None, None]
    errors: List[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(index)
        except BaseException as exc:  # handed to the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(CALL_TIMEOUT)
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError("a calling thread did not finish within %.0f s" % CALL_TIMEOUT)
    return results


def halves(items: Sequence[int]) -> List[List[int]]:
    """The items cut into one chunk per worker (2)."""
    middle = (len(items) + 1) // 2
    return [list(items[:middle]), list(items[middle:])]


def chunks(items: Sequence[int], size: int) -> List[List[int]]:
    """The items cut into chunks of C{size}."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _joined(parts: Sequence[Sequence[int]]) -> List[int]:
    out: List[int] = []
    for part in parts:
        out.extend(part)
    return out


# -- srpy ---------------------------------------------------------------------------------------------

def start_helpers(kind: str, label: str, resources: "Resources", count: int = 2) -> List[str]:
    """Start C{count} helper servers of C{kind} (this file, run as a helper); their addresses, stopped with C{resources}."""
    addresses = []
    for _ in range(count):
        process, address = helper_process.start_helper(__file__, kind, READY_TIMEOUT)
        resources.add(label, lambda p=process: helper_process.stop_process(p))
        addresses.append(address)
    return addresses


def bench_srpy(uris: List[str], settings: Settings, figures: Dict[str, Any], resources: Resources,
               parts: Sequence[str] = ("submit", "map")) -> None:
    """srpy's rows of the submit and map workloads, on a fresh EngBox of the two engines."""
    import srpy

    box = srpy.EngBox(uris)
    resources.add("srpy EngBox", box.close)
    n, repeats = settings.items, settings.repeats
    data = list(range(n))
    expected = sum(x * x for x in data)

    elapsed, results = timed(lambda: list(box.map(square, data)))  # first map: defines square, unmeasured engines
    _check("srpy map (cold)", results, n, expected)
    figures["map"].append(rate_row("srpy EngBox.map, cold (first map)", "srpy", n, [elapsed], srpy=True,
                                   note="one sample: defines square, scheduler not yet measured"))
    figures["map"].append(measure("srpy EngBox.map, warm", "srpy", lambda k: list(box.map(square, data)),
                                  n, repeats, expected, srpy=True))
    figures["map"].append(measure("srpy EngBox.map, chunksize=n/2", "srpy",
                                  lambda k: list(box.map(square, data, chunksize=(n + 1) // 2)),
                                  n, repeats, expected, srpy=True, note="for reference"))
    figures["map"].append(measure("srpy EngBox.map, chunksize=%d" % MAP_CHUNKSIZE, "srpy",
                                  lambda k: list(box.map(square, data, chunksize=MAP_CHUNKSIZE)),
                                  n, repeats, expected, srpy=True, note="vs Pool's same chunksize"))
    if "submit" not in parts:
        figures["srpy_stats"] = box.stats()
        return

    def submit_all(count: int) -> List[int]:
        futures = [box.submit(square, i) for i in range(count)]
        return [future.result(CALL_TIMEOUT) for future in futures]

    submit_all(min(n, 1000))  # warm-up
    figures["submit"].append(measure("srpy EngBox.submit", "srpy", submit_all, n, repeats, expected, srpy=True))
    figures["srpy_stats"] = box.stats()


# -- multiprocessing ----------------------------------------------------------------------------------

def bench_multiprocessing(pool: Any, settings: Settings, figures: Dict[str, Any],
                          parts: Sequence[str] = ("submit", "map")) -> None:
    """
    multiprocessing.Pool(2): apply_async per item; map with its default chunksize, with
    C{MAP_CHUNKSIZE} and with one chunk per worker.
    """
    n, repeats = settings.items, settings.repeats
    data = list(range(n))
    expected = sum(x * x for x in data)

    def submit_all(count: int) -> List[int]:
        pending = [pool.apply_async(square, (i,)) for i in range(count)]
        return [result.get(CALL_TIMEOUT) for result in pending]

    if "submit" in parts:
        items = adaptive_items("Pool.apply_async", submit_all, settings)
        figures["submit"].append(measure("multiprocessing Pool(2).apply_async", "multiprocessing", submit_all,
                                         items, repeats))
    if "map" not in parts:
        return
    pool.map(square, data)  # warm-up
    figures["map"].append(measure("multiprocessing Pool(2).map, default chunks", "multiprocessing",
                                  lambda k: pool.map(square, data), n, repeats, expected))
    figures["map"].append(measure("multiprocessing Pool(2).map, chunksize=%d" % MAP_CHUNKSIZE, "multiprocessing",
                                  lambda k: pool.map(square, data, chunksize=MAP_CHUNKSIZE), n, repeats, expected))
    half = (n + 1) // 2
    figures["map"].append(measure("multiprocessing Pool(2).map, 1 chunk/worker", "multiprocessing",
                                  lambda k: pool.map(square, data, chunksize=half), n, repeats, expected))


# -- bare Pyro5 -------------------------------------------------------------------------------------

def bench_pyro(uris: List[str], settings: Settings, figures: Dict[str, Any], resources: Resources) -> None:
    """Bare Pyro5, marshal and serpent: per-item calls from 2 threads; one app-level chunk per server."""
    from Pyro5.api import Proxy

    n, repeats = settings.items, settings.repeats
    data = list(range(n))
    expected = sum(x * x for x in data)
    source = inspect.getsource(square)
    for serializer in ("marshal", "serpent"):
        proxies = []
        for uri in uris:
            proxy = Proxy(uri)
            proxy._pyroSerializer = serializer
            resources.add("Pyro5 proxy", proxy._pyroRelease)
            proxy.define("square", source)  # shipped as source, as srpy does
            proxies.append(proxy)

        def per_item(count: int) -> List[int]:
            def work(k: int) -> List[int]:
                proxy = proxies[k]
                proxy._pyroClaimOwnership()
                return [proxy.call("square", [x]) for x in range(k, count, 2)]
            return _joined(in_two_threads(work))

        def chunked(count: int) -> List[int]:
            parts = halves(data)

            def work(k: int) -> List[int]:
                proxy = proxies[k]
                proxy._pyroClaimOwnership()
                return proxy.map("square", parts[k])
            return _joined(in_two_threads(work))

        label = "bare Pyro5 (%s)" % serializer
        items = adaptive_items(label, per_item, settings)
        figures["submit"].append(measure(label + ", 2 threads", "pyro5", per_item, items, repeats))
        chunked(n)
        figures["map"].append(measure(label + ", 1 chunk/server", "pyro5", chunked, n, repeats, expected))
        for proxy in proxies:
            proxy._pyroClaimOwnership()
            resources.close_one(proxy._pyroRelease)


# -- rpyc -------------------------------------------------------------------------------------------

def bench_rpyc(addresses: List[str], settings: Settings, figures: Dict[str, Any], resources: Resources) -> None:
    """rpyc: per-item calls from 2 threads (one connection each); one chunk per server."""
    import rpyc

    n, repeats = settings.items, settings.repeats
    data = list(range(n))
    expected = sum(x * x for x in data)
    source = inspect.getsource(square)
    calls, maps = [], []
    for address in addresses:
        host, _, port = address.rpartition(":")
        conn = rpyc.connect(host, int(port), config={"sync_request_timeout": CALL_TIMEOUT})
        resources.add("rpyc connection", conn.close)
        conn.root.define("square", source)
        calls.append(conn.root.call)  # bound once: each call is then one round trip
        maps.append(conn.root.map)

    def per_item(count: int) -> List[int]:
        return _joined(in_two_threads(lambda k: [calls[k]("square", x) for x in range(k, count, 2)]))

    def chunked(count: int) -> List[int]:
        parts = [tuple(part) for part in halves(data)]  # tuples travel by value
        return _joined(in_two_threads(lambda k: maps[k]("square", parts[k])))

    items = adaptive_items("rpyc", per_item, settings)
    figures["submit"].append(measure("rpyc, 2 threads", "rpyc", per_item, items, repeats))
    chunked(n)
    figures["map"].append(measure("rpyc, 1 chunk/server", "rpyc", chunked, n, repeats, expected))


# -- dask ---------------------------------------------------------------------------------------------

def start_dask() -> Tuple[Any, Any]:
    """A LocalCluster of 2 worker processes (1 thread each) and its client, both workers answering."""
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.CRITICAL)
    try:
        client = Client(cluster)
        client.wait_for_workers(2, timeout=READY_TIMEOUT)
        if set(client.run(answer).values()) != {"pong"}:
            raise RuntimeError("dask workers did not answer")
    except BaseException:
        cluster.close()
        raise
    return cluster, client


def stop_dask(cluster: Any, client: Any) -> None:
    """Close the client, then the cluster (its worker processes end)."""
    client.close()
    cluster.close()


def bench_dask(settings: Settings, figures: Dict[str, Any], resources: Resources) -> None:
    """dask.distributed: Client.submit per item; one chunk per worker (list results, and array results)."""
    elapsed, (cluster, client) = timed(start_dask)
    figures["startup_samples"]["dask"] = [elapsed]
    stopper = lambda: stop_dask(cluster, client)  # noqa: E731
    resources.add("dask cluster", stopper)
    try:
        n, repeats = settings.items, settings.repeats
        data = list(range(n))
        expected = sum(x * x for x in data)

        def submit_all(count: int) -> List[int]:
            futures = [client.submit(square, i, pure=False) for i in range(count)]
            return client.gather(futures)

        def chunked(count: int) -> List[int]:
            return _joined(client.gather(client.map(square_chunk, halves(data), pure=False)))

        def chunked_array(count: int) -> List[int]:
            parts = client.gather(client.map(square_chunk_array, halves(data), pure=False))
            return _joined([part.tolist() for part in parts])

        items = adaptive_items("dask", submit_all, settings)
        figures["submit"].append(measure("dask Client.submit", "dask", submit_all, items, repeats))
        chunked(n)
        figures["map"].append(measure("dask, 1 chunk/worker", "dask", chunked, n, repeats, expected))
        chunked_array(n)
        figures["map"].append(measure("dask, 1 chunk/worker, array results", "dask", chunked_array, n,
                                      repeats, expected))
    finally:
        resources.close_one(stopper)


# -- ray ----------------------------------------------------------------------------------------------

def start_ray() -> Any:
    """Ray with 2 CPUs in this process, two tasks run; returns the ray module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        remote_answer = ray.remote(answer)
        if ray.get([remote_answer.remote(), remote_answer.remote()], timeout=READY_TIMEOUT) != ["pong"] * 2:
            raise RuntimeError("ray workers did not answer")
    except BaseException:
        ray.shutdown()
        raise
    return ray


def bench_ray(settings: Settings, figures: Dict[str, Any], resources: Resources) -> None:
    """Ray: f.remote per item; manual chunks, one per worker and of 1000 items."""
    elapsed, ray = timed(start_ray)
    figures["startup_samples"]["ray"] = [elapsed]
    resources.add("ray", ray.shutdown)
    try:
        n, repeats = settings.items, settings.repeats
        data = list(range(n))
        expected = sum(x * x for x in data)
        remote_square = ray.remote(square)
        remote_chunk = ray.remote(square_chunk)

        def submit_all(count: int) -> List[int]:
            return ray.get([remote_square.remote(i) for i in range(count)], timeout=CALL_TIMEOUT)

        def chunked(parts: List[List[int]]) -> Callable[[int], List[int]]:
            return lambda count: _joined(ray.get([remote_chunk.remote(p) for p in parts], timeout=CALL_TIMEOUT))

        items = adaptive_items("ray", submit_all, settings)
        figures["submit"].append(measure("ray f.remote", "ray", submit_all, items, repeats))
        for label, parts in (("ray, 1 chunk/worker", halves(data)),
                             ("ray, chunks of %d" % IPP_CHUNKSIZE, chunks(data, IPP_CHUNKSIZE))):
            chunked(parts)(n)
            figures["map"].append(measure(label, "ray", chunked(parts), n, repeats, expected))
    finally:
        resources.close_one(ray.shutdown)


# -- ipyparallel --------------------------------------------------------------------------------------

def start_ipyparallel() -> Tuple[Any, Any]:
    """A 2-engine ipyparallel cluster and its client, both engines having run a function."""
    import ipyparallel

    cluster = ipyparallel.Cluster(n=2, log_level=logging.ERROR)
    try:
        client = cluster.start_and_connect_sync()
        client.wait_for_engines(2, timeout=READY_TIMEOUT)
        if client[:].apply_sync(answer) != ["pong"] * 2:
            raise RuntimeError("ipyparallel engines did not answer")
    except BaseException:
        cluster.stop_cluster_sync()
        raise
    return cluster, client


def stop_ipyparallel(cluster: Any, client: Any) -> None:
    """Close the client, then stop the controller and engines."""
    client.close()
    cluster.stop_cluster_sync()


def bench_ipyparallel(settings: Settings, figures: Dict[str, Any], resources: Resources) -> None:
    """ipyparallel: load-balanced apply_async per item; load-balanced map (chunks of 1000), direct map."""
    elapsed, (cluster, client) = timed(start_ipyparallel)
    figures["startup_samples"]["ipyparallel"] = [elapsed]
    stopper = lambda: stop_ipyparallel(cluster, client)  # noqa: E731
    resources.add("ipyparallel cluster", stopper)
    try:
        n, repeats = settings.items, settings.repeats
        data = list(range(n))
        expected = sum(x * x for x in data)
        balanced, direct = client.load_balanced_view(), client[:]

        def submit_all(count: int) -> List[int]:
            pending = [balanced.apply_async(square, i) for i in range(count)]
            return [result.get(CALL_TIMEOUT) for result in pending]

        def balanced_map(count: int) -> List[int]:
            return balanced.map(square, data, chunksize=IPP_CHUNKSIZE).get(CALL_TIMEOUT)

        def direct_map(count: int) -> List[int]:
            return direct.map(square, data).get(CALL_TIMEOUT)

        items = adaptive_items("ipyparallel", submit_all, settings)
        figures["submit"].append(measure("ipyparallel apply_async (balanced)", "ipyparallel", submit_all,
                                         items, repeats))
        balanced_map(n)
        figures["map"].append(measure("ipyparallel balanced map, chunksize %d" % IPP_CHUNKSIZE, "ipyparallel",
                                      balanced_map, n, repeats, expected))
        direct_map(n)
        figures["map"].append(measure("ipyparallel direct map, 1 chunk/engine", "ipyparallel", direct_map, n,
                                      repeats, expected))
    finally:
        resources.close_one(stopper)


# -- primes: scaling from 1 to 2 engines ------------------------------------------------------------

def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes C{pids} have used so far."""
    import psutil

    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def bench_primes(uris: List[str], engine_pids: List[int], pools: Dict[int, Any], settings: Settings,
                 resources: Resources) -> Dict[str, Any]:
    """
    16 sum-of-primes tasks on 1 and on 2 engines (and pool workers), in turns; seconds of each
    repeat, and how busy the workers were (their CPU seconds / (workers x wall seconds)): below 1
    with 2 workers means the machine did not give them both cores. On 2 engines, four ways (W3 of
    issue 10), each right after a map of the cheap C{square} (speed is learned per function, so
    that map must not make the long tasks look short): submitted at once on a box that has run
    them before; submitted at once on a fresh box (C{burst}, the first time it sees the
    function); C{EngBox.map} with srpy's own chunking; and with C{chunksize=1}.
    """
    import srpy
    from srpy.benchmark import sum_of_primes

    limit = settings.primes_limit
    expected = sum_of_primes(limit)
    cheap = list(range(settings.items))
    boxes = {1: srpy.EngBox(uris[:1]), 2: srpy.EngBox(uris[:2])}
    for box in boxes.values():
        resources.add("srpy EngBox", box.close)

    def on_box(count: int) -> Callable[[], List[int]]:
        def run() -> List[int]:
            futures = [boxes[count].submit(sum_of_primes, limit) for _ in range(PRIMES_TASKS)]
            return [future.result(CALL_TIMEOUT) for future in futures]
        return run

    def burst() -> List[int]:
        box = burst_box[0]
        futures = [box.submit(sum_of_primes, limit) for _ in range(PRIMES_TASKS)]
        return [future.result(CALL_TIMEOUT) for future in futures]

    def mapped(chunksize: Optional[int]) -> Callable[[], List[int]]:
        def run() -> List[int]:
            return list(boxes[2].map(sum_of_primes, [limit] * PRIMES_TASKS, chunksize=chunksize))
        return run

    def on_pool(count: int) -> Callable[[], List[int]]:
        def run() -> List[int]:
            pending = [pools[count].apply_async(sum_of_primes, (limit,)) for _ in range(PRIMES_TASKS)]
            return [result.get(CALL_TIMEOUT) for result in pending]
        return run

    def before(key: str) -> None:
        """Untimed: what comes right before a measure (a cheap map; a fresh box for the burst)."""
        if key == "srpy_2_burst":
            burst_box[0] = srpy.EngBox(uris[:2])
            resources.add("srpy EngBox", burst_box[0].close)
            list(burst_box[0].map(square, cheap))
        elif key.startswith("srpy_2"):
            list(boxes[2].map(square, cheap))

    def after(key: str) -> None:
        if key == "srpy_2_burst":
            resources.close_one(burst_box[0].close)

    burst_box: List[Any] = [None]
    for count in (1, 2):  # warm-up: defines the function, measures the engines; one task per worker
        for future in [boxes[count].submit(sum_of_primes, limit) for _ in range(count)]:
            future.result(CALL_TIMEOUT)
        for result in [pools[count].apply_async(sum_of_primes, (limit,)) for _ in range(count)]:
            result.get(CALL_TIMEOUT)
    pair, mp_pair = engine_pids[:2], [worker.pid for worker in pools[2]._pool]
    workers = {"srpy_1": engine_pids[:1], "srpy_2": pair, "srpy_2_burst": pair, "srpy_2_map": pair,
               "srpy_2_map1": pair, "mp_1": [worker.pid for worker in pools[1]._pool], "mp_2": mp_pair}
    actions = (("srpy_1", on_box(1)), ("srpy_2", on_box(2)), ("srpy_2_burst", burst),
               ("srpy_2_map", mapped(None)), ("srpy_2_map1", mapped(1)), ("mp_1", on_pool(1)), ("mp_2", on_pool(2)))
    seconds: Dict[str, List[float]] = {key: [] for key in workers}
    busy: Dict[str, List[float]] = {key: [] for key in workers}
    shares: Dict[str, List[List[int]]] = {key: [] for key in workers if key.startswith("srpy_2")}
    for _ in range(settings.primes_repeats):
        for key, action in actions:
            before(key)
            box = burst_box[0] if key == "srpy_2_burst" else boxes[2]
            done_before = box.stats() if key in shares else {}
            used = cpu_seconds(workers[key])
            elapsed, results = timed(action)
            used = cpu_seconds(workers[key]) - used
            if results != [expected] * PRIMES_TASKS:
                raise RuntimeError("%s returned wrong sums of primes" % key)
            if key in shares:  # what each engine did of these 16 (map items and tasks count one each)
                done = box.stats()
                shares[key].append(sorted(done[uri] - done_before.get(uri, 0)
                                          for uri in done))
            after(key)
            seconds[key].append(elapsed)
            busy[key].append(used / (len(workers[key]) * elapsed))
    for box in boxes.values():
        resources.close_one(box.close)
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    speedup = {key: medians["srpy_1"] / medians[key] for key in workers if key.startswith("srpy_2")}
    speedup["srpy"] = speedup.pop("srpy_2")
    speedup["mp"] = medians["mp_1"] / medians["mp_2"]
    return {
        "tasks": PRIMES_TASKS, "limit": limit, "seconds": seconds, "median_seconds": medians,
        "tasks_per_engine_2": shares["srpy_2"][-1], "tasks_per_engine": shares, "load_average_after": _load(),
        "workers_busy": busy, "workers_busy_median": {key: statistics.median(v) for key, v in busy.items()},
        "best_seconds": {key: min(values) for key, values in seconds.items()},
        "speedup": speedup,
        "speedup_per_repeat": {
            "srpy": [a / b for a, b in zip(seconds["srpy_1"], seconds["srpy_2"])],
            "mp": [a / b for a, b in zip(seconds["mp_1"], seconds["mp_2"])]},
    }


# -- start-up -------------------------------------------------------------------------------------

def startup_srpy(env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Seconds from spawning C{python srpyapp.py -n 2} until both URIs answer ping(); and until printed."""
    import bench_startup  # bench/bench_startup.py, beside this file: the one measure of srpy's start-up

    return bench_startup.start_srpy(ROOT, dict(os.environ if env is None else env))


def startup_pyro(env: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Seconds from spawning 2 bare Pyro5 daemons until both answer a call."""
    from Pyro5.api import Proxy

    start = time.perf_counter()
    processes = [helper_process.spawn_helper(__file__, "pyro", env) for _ in range(2)]
    try:
        uris = [helper_process.ready_address(process, "pyro", READY_TIMEOUT) for process in processes]
        printed = time.perf_counter() - start
        for uri in uris:
            with Proxy(uri) as proxy:
                if proxy.ping() != "pong":
                    raise RuntimeError("a Pyro5 daemon did not answer")
        answered = time.perf_counter() - start
    finally:
        for process in processes:
            helper_process.stop_process(process)
    return {"answered": answered, "printed": printed}


def startup_dask() -> Dict[str, float]:
    """Seconds to start a 2-worker LocalCluster until both workers ran a function."""
    start = time.perf_counter()
    cluster, client = start_dask()
    answered = time.perf_counter() - start
    stop_dask(cluster, client)
    return {"answered": answered}


def startup_ray() -> Dict[str, float]:
    """Seconds of C{ray.init(num_cpus=2)} until two tasks ran."""
    start = time.perf_counter()
    ray = start_ray()
    answered = time.perf_counter() - start
    ray.shutdown()
    return {"answered": answered}


def startup_ipyparallel() -> Dict[str, float]:
    """Seconds to start a 2-engine ipyparallel cluster until both engines ran a function."""
    start = time.perf_counter()
    cluster, client = start_ipyparallel()
    answered = time.perf_counter() - start
    stop_ipyparallel(cluster, client)
    return {"answered": answered}


def cached_bytecode_env(cache_dir: str) -> Dict[str, str]:
    """
    The environment of a normal install: bytecode written once and reused. (Where
    C{PYTHONDONTWRITEBYTECODE} is set, an editable srpy is compiled from source at every start,
    which no pip-installed srpy does; a private C{PYTHONPYCACHEPREFIX} keeps the checkout clean.)
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def bench_startup(peers: List[str], settings: Settings, prior: Dict[str, List[float]]) -> Dict[str, Any]:
    """
    Start-up seconds of srpy, bare Pyro5 and the installed peers. srpy and bare Pyro5 start once
    untimed first; a peer's first sample is the start that served its workloads (C{prior}).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-box-pyc-") as cache_dir:
        env = cached_bytecode_env(cache_dir)
        starters: List[Tuple[str, str, Callable[[], Dict[str, float]]]] = [
            ("srpy", "srpy: python srpyapp.py -n 2", lambda: startup_srpy(env)),
            ("pyro5", "bare Pyro5: 2 daemon processes", lambda: startup_pyro(env))]
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            starters.append(("srpy_no_bytecode", "srpy, recompiled (PYTHONDONTWRITEBYTECODE=1)", startup_srpy))
        labels = {"dask": ("dask LocalCluster, 2 worker processes", startup_dask),
                  "ray": ("ray.init(num_cpus=2) + 2 tasks", startup_ray),
                  "ipyparallel": ("ipyparallel Cluster(n=2) + apply", startup_ipyparallel)}
        for peer in peers:
            if peer in labels:
                starters.append((peer, labels[peer][0], labels[peer][1]))
        results: Dict[str, Any] = {}
        for key, label, starter in starters:
            try:
                if key in ("srpy", "pyro5"):  # the peers already started once for the workloads
                    starter()  # untimed: writes bytecode, warms the file cache
                samples = [{"answered": seconds} for seconds in prior.get(key, [])]
                samples += [starter() for _ in range(settings.startup_repeats - len(samples))]
            except Exception as exc:  # a peer that fails to start is reported, not fatal
                print("  note: start-up of %s failed: %s: %s" % (key, type(exc).__name__, exc), flush=True)
                continue
            answered = [sample["answered"] for sample in samples]
            entry = {"label": label, "seconds": answered, "median": statistics.median(answered),
                     "best": min(answered)}
            if "printed" in samples[0]:
                entry["printed_median"] = statistics.median(sample["printed"] for sample in samples)
            results[key] = entry
    return results


# -- the run --------------------------------------------------------------------------------------

def installed_peers(skip: Sequence[str]) -> Tuple[List[str], Dict[str, str]]:
    """The optional peers to measure, and why each other one is left out."""
    import importlib.util

    peers, skipped = [], {}
    for peer in OPTIONAL_PEERS:
        if peer in skip:
            skipped[peer] = "skipped (--skip)"
            continue
        try:  # found, not imported: a peer's objects would slow this process's garbage collections
            found = importlib.util.find_spec(PEER_MODULES[peer]) is not None
        except ImportError:  # its parent package is missing
            found = False
        if not found:
            skipped[peer] = "not installed (no module %s); pip install .[bench] to measure it" % PEER_MODULES[peer]
            continue
        peers.append(peer)
    return peers, skipped


def run(settings: Settings, skip: Sequence[str], parts: Sequence[str] = PARTS) -> Dict[str, Any]:
    """Start everything, measure the C{parts} asked for, stop everything; return the figures."""
    import multiprocessing

    import srpy

    peers, skipped = installed_peers(skip)
    if set(parts) != set(PARTS):  # a partial run measures srpy and multiprocessing only
        for peer in peers:
            skipped[peer] = "skipped (--only)"
        peers = []
    for peer, reason in skipped.items():
        print("note: %s %s" % (peer, reason), flush=True)
    figures: Dict[str, Any] = {"machine": machine(), "settings": settings.as_dict(), "submit": [], "map": [],
                               "peers": peers, "skipped": dict(skipped), "failed": {}, "startup_samples": {},
                               "parts": list(parts)}
    resources = Resources(RUN_LIMIT)
    try:
        pools = {count: multiprocessing.Pool(count, initializer=_default_sigterm)  # forked before srpy's threads
                 for count in (1, 2)}
        for pool in pools.values():
            resources.add("multiprocessing pool", pool.terminate)
        engines, engine_pids = [], []
        for _ in range(2):
            uri, process = srpy.newSubEngine()
            resources.add("srpy engine", lambda p=process: srpy.stopSubEngine(p))
            engines.append(uri)
            with srpy.PythonEngine(uri) as engine:  # the engine's own process (its keeper is process)
                engine_pids.append(engine.info["PID"])

        rates = [part for part in ("submit", "map") if part in parts]
        if rates:
            step("srpy")
            bench_srpy(engines, settings, figures, resources, rates)
            step("multiprocessing")
            bench_multiprocessing(pools[2], settings, figures, rates)
        if set(rates) == {"submit", "map"}:
            step("bare Pyro5")
            bench_pyro(start_helpers("pyro", "Pyro5 daemon", resources), settings, figures, resources)
        for peer in peers:
            step(peer)
            try:
                if peer == "rpyc":
                    bench_rpyc(start_helpers("rpyc", "rpyc server", resources), settings, figures, resources)
                elif peer == "dask":
                    bench_dask(settings, figures, resources)
                elif peer == "ray":
                    bench_ray(settings, figures, resources)
                elif peer == "ipyparallel":
                    bench_ipyparallel(settings, figures, resources)
            except Exception as exc:  # a broken peer is reported, the run goes on
                figures["failed"][peer] = "%s: %s" % (type(exc).__name__, exc)
                print("  note: %s failed: %s: %s" % (peer, type(exc).__name__, exc), flush=True)
        if "primes" in parts:
            step("primes (%d tasks of sum_of_primes(%d), 1 vs 2 workers)" % (PRIMES_TASKS, settings.primes_limit))
            figures["primes"] = bench_primes(engines, engine_pids, pools, settings, resources)
        if "startup" in parts:
            step("start-up")
            figures["startup"] = bench_startup([p for p in peers if p not in figures["failed"]], settings,
                                               figures["startup_samples"])
    finally:
        resources.close()
    figures["targets"] = verdicts(figures)
    return figures


def step(name: str) -> None:
    """Say on stderr what is being measured (the tables go to stdout at the end)."""
    print("measuring %s ..." % name, file=sys.stderr, flush=True)


def _row(figures: Dict[str, Any], label: str) -> Optional[Row]:
    return next((r for r in figures["map"] if r["label"] == label), None)


def verdicts(figures: Dict[str, Any]) -> Dict[str, Any]:
    """The targets of issues 3 and 10 against this run's figures (those of the parts it measured)."""
    targets: Dict[str, Any] = {}
    submit = next((r for r in figures["submit"] if r["srpy"]), None)
    if submit is not None:
        targets["submit_rate"] = {"value": submit["median"], "target": ">= {:,.0f}/s".format(TARGET_SUBMIT),
                                  "pass": submit["median"] >= TARGET_SUBMIT}
    warm_map = _row(figures, "srpy EngBox.map, warm")
    if warm_map is not None:
        peer_maps = [r for r in figures["map"] if not r["srpy"]]
        best_peer = max(peer_maps, key=lambda r: r["median"]) if peer_maps else None
        targets["map_rate"] = {"value": warm_map["median"], "target": ">= {:,.0f}/s".format(TARGET_MAP),
                               "pass": warm_map["median"] >= TARGET_MAP}
        targets["map_vs_peers"] = {
            "value": warm_map["median"] / best_peer["median"] if best_peer else None,
            "best_peer": best_peer["label"] if best_peer else None,
            "best_peer_median": best_peer["median"] if best_peer else None,
            "best_vs_best": (warm_map["best"] / max(r["best"] for r in peer_maps)) if peer_maps else None,
            "target": "> 1.00x (medians)", "pass": best_peer is None or warm_map["median"] > best_peer["median"]}
        for key, mine, theirs in (
                ("map_vs_pool_default", "srpy EngBox.map, warm", "multiprocessing Pool(2).map, default chunks"),
                ("map_vs_pool_chunksize", "srpy EngBox.map, chunksize=%d" % MAP_CHUNKSIZE,
                 "multiprocessing Pool(2).map, chunksize=%d" % MAP_CHUNKSIZE)):
            a, b = _row(figures, mine), _row(figures, theirs)
            if a is not None and b is not None:
                targets[key] = {"value": a["median"] / b["median"], "target": ">= 1.00x (medians)",
                                "pass": a["median"] >= b["median"]}
    primes = figures.get("primes")
    if primes is not None:
        speedup = primes["speedup"]
        targets["primes_speedup"] = {"value": speedup["srpy"], "target": ">= %.2f" % TARGET_SPEEDUP,
                                     "pass": speedup["srpy"] >= TARGET_SPEEDUP}
        for key in ("srpy_2_burst", "srpy_2_map", "srpy_2_map1"):
            ratio = speedup[key] / speedup["mp"]
            targets["w3_" + key[7:]] = {"value": speedup[key], "vs_mp": ratio,
                                        "target": ">= 0.95 x Pool's (%.2f)" % speedup["mp"], "pass": ratio >= 0.95}
    startup = figures.get("startup", {}).get("srpy")
    if "startup" in figures:
        targets["startup"] = {"value": startup["median"] if startup else None, "target": "<= %.1f s" % TARGET_STARTUP,
                              "pass": bool(startup) and startup["median"] <= TARGET_STARTUP}
        uncached = figures["startup"].get("srpy_no_bytecode")
        if uncached:
            targets["startup_no_bytecode"] = {"value": uncached["median"], "target": "<= %.1f s" % TARGET_STARTUP,
                                              "pass": uncached["median"] <= TARGET_STARTUP}
    return targets


def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    import Pyro5

    import srpy

    from importlib import metadata

    versions: Dict[str, Optional[str]] = {"python": platform.python_version(), "pyro5": Pyro5.__version__,
                                          "srpy": srpy.__version__}
    for peer in OPTIONAL_PEERS:
        try:
            versions[peer] = metadata.version("distributed" if peer == "dask" else peer)
        except metadata.PackageNotFoundError:
            versions[peer] = None
    return {"versions": versions, "cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": _processor(), "load_average_at_start": _load(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def _load() -> Optional[List[float]]:
    """The 1, 5 and 15 minute load averages (other work on this machine skews every figure)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _processor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# -- output -------------------------------------------------------------------------------------------

def _rate(value: float) -> str:
    return "{:,.0f}".format(value)


def rate_table(title: str, rows: List[Row], reference: Row) -> List[str]:
    """One workload's rows, with srpy's median over each row's median."""
    lines = [title, "  %-46s %7s %13s %13s %9s" % ("system", "items", "median/s", "best/s", "srpy x")]
    for row in rows:
        ratio = "-" if row["srpy"] else "%.2fx" % (reference["median"] / row["median"])
        lines.append("  %-46s %7d %13s %13s %9s%s" % (row["label"], row["items"], _rate(row["median"]),
                                                      _rate(row["best"]), ratio,
                                                      "   (%s)" % row["note"] if row["note"] else ""))
    return lines


def report(figures: Dict[str, Any]) -> str:
    """The run's figures as text tables (of the parts it measured)."""
    info, settings = figures["machine"], figures["settings"]
    versions = ", ".join("%s %s" % (k, v) for k, v in info["versions"].items() if v)
    lines = ["srpy EngBox benchmark - %s; %s cores (%s); %s; load average at start %s"
             % (versions, info["cpus"], info["processor"], info["date"], info["load_average_at_start"]),
             "%d repeats per measure; rates in tasks/s; 'srpy x' = srpy's median / that row's median"
             % settings["repeats"], ""]
    submit_ref = next((r for r in figures["submit"] if r["srpy"]), None)
    if submit_ref is not None:
        lines += rate_table("per-item submit of square(x), end to end (submit all, then wait for all)",
                            figures["submit"], submit_ref)
        lines.append("")
    map_ref = _row(figures, "srpy EngBox.map, warm")
    if map_ref is not None:
        lines += rate_table("map of square over %d items" % settings["items"], figures["map"], map_ref)
        cs_ref = _row(figures, "srpy EngBox.map, chunksize=%d" % MAP_CHUNKSIZE)
        cs_pool = _row(figures, "multiprocessing Pool(2).map, chunksize=%d" % MAP_CHUNKSIZE)
        if cs_ref is not None and cs_pool is not None:
            lines.append("  (chunksize=%d: srpy %s/s vs Pool(2) %s/s, %.2fx)" % (
                MAP_CHUNKSIZE, _rate(cs_ref["median"]), _rate(cs_pool["median"]), cs_ref["median"] / cs_pool["median"]))
    primes = figures.get("primes")
    if primes is not None:
        lines += primes_table(primes)
    if "startup" in figures:
        lines += ["", "start-up: spawn until both workers answer (seconds)",
                  "  %-46s %10s %10s %10s" % ("system", "median", "best", "srpy x")]
        startup = figures["startup"]
        srpy_start = startup.get("srpy")
        for key, entry in startup.items():
            ratio = "-" if key == "srpy" or not srpy_start else "%.2fx" % (entry["median"] / srpy_start["median"])
            extra = ("   (URIs printed after %.3f s)" % entry["printed_median"]) if "printed_median" in entry else ""
            lines.append("  %-46s %10.3f %10.3f %10s%s" % (entry["label"], entry["median"], entry["best"], ratio,
                                                           extra))
        lines.append("  (srpy x for start-up = that row's time / srpy's: above 1 means srpy is faster)")
    for peer, reason in figures["skipped"].items():
        lines.append("note: %s %s" % (peer, reason))
    for peer, reason in figures["failed"].items():
        lines.append("note: %s failed: %s" % (peer, reason))
    lines += ["", "targets (issue 3, this run)"]
    names = {"submit_rate": "submit throughput (median)", "map_rate": "map throughput, warm (median)",
             "map_vs_peers": "map ahead of every peer's best",
             "map_vs_pool_default": "map, own chunks vs Pool's default",
             "map_vs_pool_chunksize": "map, chunksize=%d vs Pool's same" % MAP_CHUNKSIZE,
             "primes_speedup": "primes speed-up 1 -> 2 engines",
             "w3_burst": "W3 speed-up, burst after a cheap map", "w3_map": "W3 speed-up, map, own chunking",
             "w3_map1": "W3 speed-up, map, chunksize=1",
             "startup": "start-up of srpyapp -n 2 (median)",
             "startup_no_bytecode": "  the same, recompiled at each start"}
    for key, target in figures["targets"].items():
        value = target["value"]
        if value is None:
            shown = "n/a"
        elif key in ("submit_rate", "map_rate"):
            shown = _rate(value) + "/s"
        elif key.startswith("startup"):
            shown = "%.3f s" % value
        else:
            shown = "%.3fx" % value
        extra = "   (best peer: %s, %s/s; best vs best %.2fx)" % (
            target["best_peer"], _rate(target["best_peer_median"]), target["best_vs_best"]) \
            if key == "map_vs_peers" and target["best_peer"] else ""
        if key.startswith("w3_"):
            extra = "   (%.2fx Pool's)" % target["vs_mp"]
        lines.append("  %-40s %14s   target %-24s %s%s" % (names[key], shown, target["target"],
                                                           "PASS" if target["pass"] else "FAIL", extra))
    return "\n".join(lines)


def primes_table(primes: Dict[str, Any]) -> List[str]:
    """The primes workload's table: 1 vs 2 workers, and srpy's four ways on 2 engines (W3)."""
    med, best, busy = primes["median_seconds"], primes["best_seconds"], primes["workers_busy_median"]
    speedup, shares = primes["speedup"], primes["tasks_per_engine"]
    lines = ["", "primes: %d tasks of sum_of_primes(%d), all awaited (seconds); srpy's 2-engine rows each right "
             "after a map of square" % (primes["tasks"], primes["limit"]),
             "  %-44s %9s %9s %9s %11s %11s  %s" % ("system", "1 worker", "2 workers", "speed-up", "best 1/2",
                                                     "busy 1/2", "tasks per engine (last)")]
    rows = (("srpy EngBox (1 vs 2 engines)", "srpy_2", "srpy"),
            ("srpy, burst of submits on a fresh box", "srpy_2_burst", "srpy_2_burst"),
            ("srpy EngBox.map, own chunking", "srpy_2_map", "srpy_2_map"),
            ("srpy EngBox.map, chunksize=1", "srpy_2_map1", "srpy_2_map1"))
    for label, key, speed in rows:
        lines.append("  %-44s %9.3f %9.3f %8.3fx %11s %11s  %s" % (
            label, med["srpy_1"], med[key], speedup[speed], "%.2f/%.2f" % (best["srpy_1"], best[key]),
            "%.2f/%.2f" % (busy["srpy_1"], busy[key]), "/".join(str(n) for n in shares[key][-1])))
    lines += ["  %-44s %9.3f %9.3f %8.3fx %11s %11s" % (
                  "multiprocessing Pool(1) vs Pool(2)", med["mp_1"], med["mp_2"], speedup["mp"],
                  "%.2f/%.2f" % (best["mp_1"], best["mp_2"]), "%.2f/%.2f" % (busy["mp_1"], busy["mp_2"])),
              "  (busy = the workers' CPU seconds / (workers x wall seconds), median: below 1.00 the machine"
              " did not give them their cores)",
              "  (srpy's speed-up / multiprocessing's, what the machine gave at the time: %.2f; load average after: %s)"
              % (speedup["srpy"] / speedup["mp"], primes["load_average_after"])]
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description="srpy's EngBox executor next to its peers (issue 3).")
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repeats (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    parser.add_argument("--skip", default="", metavar="PEERS",
                        help="comma-separated optional peers not to measure: %s" % ",".join(OPTIONAL_PEERS))
    parser.add_argument("--only", default=",".join(PARTS), metavar="PARTS",
                        help="comma-separated parts to measure (default all): %s; a partial run measures srpy "
                             "and multiprocessing only" % ",".join(PARTS))
    parser.add_argument("--serve", choices=("pyro", "rpyc"), help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark (or, with C{--serve}, one helper server); return the exit code."""
    options = build_parser().parse_args(argv)
    if options.serve:
        (serve_pyro if options.serve == "pyro" else serve_rpyc)()
        return 0
    skip = [name.strip() for name in options.skip.split(",") if name.strip()]
    unknown = set(skip) - set(OPTIONAL_PEERS)
    if unknown:
        build_parser().error("unknown peer(s) for --skip: %s" % ", ".join(sorted(unknown)))
    parts = [name.strip() for name in options.only.split(",") if name.strip()]
    if not parts or set(parts) - set(PARTS):
        build_parser().error("--only takes parts among: %s" % ", ".join(PARTS))
    helper_process.raise_on_sigterm()
    figures = run(Settings(options.quick), skip, parts)
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
