"""
Load: 50 concurrent clients x 200 calls each against 2 engines; every answer right, no errors, and
no threads or sockets left behind in the engines afterwards.

Each client is a thread with its own L{srpy.PythonEngine} (clients alternate between the two
engines), released together by a barrier; every call is an C{eval} with arguments no other call
has, and its result is checked. Per-call latencies are recorded and printed (the figures for
C{bench/RESULTS.md} come from C{bench/bench_load.py}, which runs the same load).
"""

import statistics
import threading
import time

import psutil
import pytest
from Pyro5 import config as pyro_config

import srpy

pytestmark = pytest.mark.stress

CLIENTS = 50
CALLS = 200
ENGINES = 2
#: seconds the engines get to release a closed client's thread and socket
SETTLE = 20.0
EXPRESSION = "client * 1000003 + call * 7 + len(tag)"


def engine_sockets(process):
    """The engine's TCP connections other than its listening socket."""
    connections = process.net_connections(kind="tcp") if hasattr(process, "net_connections") \
        else process.connections(kind="tcp")
    return [c for c in connections if c.status != psutil.CONN_LISTEN]


def census(processes):
    """(threads, open TCP connections) of each engine process."""
    return [(p.num_threads(), len(engine_sockets(p))) for p in processes]


def settle_to(processes, baseline, timeout=SETTLE):
    """Wait (bounded) until every engine is back to its baseline census; return the last census."""
    deadline = time.monotonic() + timeout
    now = census(processes)
    while any(n > b for c, base in zip(now, baseline) for n, b in zip(c, base)) and time.monotonic() < deadline:
        time.sleep(0.1)
        now = census(processes)
    return now


def client(number, uri, start, latencies, errors):
    """One client: its own connection, CALLS checked calls, each one timed."""
    try:
        eng = srpy.PythonEngine(uri, connect_timeout=30.0)
    except Exception as exc:  # reported by the test, with the others
        errors.append("client %d could not connect: %r" % (number, exc))
        start.abort()
        return
    try:
        start.wait()
        own = []
        for call in range(CALLS):
            tag = "c%d-%d" % (number, call)
            begin = time.perf_counter()
            result = eng.eval(EXPRESSION, client=number, call=call, tag=tag)
            own.append(time.perf_counter() - begin)
            expected = number * 1000003 + call * 7 + len(tag)
            if result != expected:
                errors.append("client %d call %d: got %r, expected %r" % (number, call, result, expected))
        latencies.extend(own)
    except Exception as exc:  # a failed call: reported by the test, with the others
        errors.append("client %d: %r" % (number, exc))
    finally:
        eng.close()


def warm_up(uris):
    """
    Bring each engine to its resting state under load: its serving pool starts workers as calls
    come and keeps Pyro5's minimum (THREADPOOL_SIZE_MIN) of them once reached, so that many calls
    at once (held on the engine's lock) make it reach that minimum before the baseline is taken.
    """
    at_once = pyro_config.THREADPOOL_SIZE_MIN
    clients = [srpy.PythonEngine(uri) for uri in uris for _ in range(at_once)]
    try:
        threads = [threading.Thread(target=eng.eval, args=("__import__('time').sleep(0.2) or 2",)) for eng in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for eng in clients:
            eng.close()


@pytest.mark.timeout(300)
def test_fifty_clients_two_hundred_calls_each(start_launcher):
    launcher = start_launcher(["-n", str(ENGINES)], count=ENGINES)
    engines = launcher.engines()
    assert len(engines) == ENGINES
    warm_up(launcher.uris)
    baseline = settle_to(engines, census(engines), timeout=2.0)

    latencies, errors = [], []
    start = threading.Barrier(CLIENTS + 1)
    threads = [threading.Thread(target=client, args=(n, launcher.uris[n % ENGINES], start, latencies, errors),
                                name="load-client-%d" % n) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    waiting_until = time.monotonic() + 120
    while start.n_waiting < CLIENTS and not errors and time.monotonic() < waiting_until:
        time.sleep(0.01)
    # every client is connected and waiting: a census now is sure to see all their connections (one
    # CI run's samples during the calls saw an engine's threads but never its sockets)
    peak = [tuple(map(max, a, b)) for a, b in zip(baseline, census(engines))]
    try:
        start.wait(timeout=120)
    except threading.BrokenBarrierError:
        pass  # a client could not connect: its error is in errors
    began = time.perf_counter()
    deadline = time.monotonic() + 240
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
        peak = [tuple(map(max, a, b)) for a, b in zip(peak, census(engines))]
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    assert not any(thread.is_alive() for thread in threads), "clients still running after 240 s"
    assert not errors, "%d errors, e.g.:\n%s" % (len(errors), "\n".join(errors[:10]))
    assert len(latencies) == CLIENTS * CALLS

    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print("\nload: %d clients x %d calls on %d engines in %.2f s: %.0f calls/s, median %.0f us, p99 %.0f us"
          % (CLIENTS, CALLS, ENGINES, elapsed, len(latencies) / elapsed, statistics.median(latencies) * 1e6,
             p99 * 1e6))

    after = settle_to(engines, baseline)
    print("engine (threads, sockets), before -> under load -> after: %s -> %s -> %s" % (baseline, peak, after))
    assert all(p[1] > b[1] for p, b in zip(peak, baseline)), "the clients' connections never showed"
    for number, (before, now) in enumerate(zip(baseline, after)):
        assert now[0] <= before[0], "engine %d: %d threads before the load, %d after" % (number, before[0], now[0])
        assert now[1] <= before[1], "engine %d: %d sockets before the load, %d after" % (number, before[1], now[1])
    for uri in launcher.uris:  # and the engines still answer
        with srpy.PythonEngine(uri) as eng:
            assert eng.eval("6 * 7") == 42
    code, log = launcher.stop()
    assert code == 0, log
