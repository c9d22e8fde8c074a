"""
Engine-to-engine benchmark (issue 4): work sharing speed-up, message and tuple-space rates.

Prints, in one run:
 - a divide-and-conquer job (a tree of spawned calls, CPU-bound leaves) started with one call on
   one engine: wall time with 1 engine vs 2 engines sharing work, and the speed-up (target >= 1.8x);
   beside it, in the same rounds, the same leaves on multiprocessing Pool(1) vs Pool(2) (one leaf
   per task): what this machine gives two processes at the time, since a VM's two cores are not
   always two full cores;
 - messages: 10,000 sends from one engine to another, and 10,000 both ways at once (messages/s);
 - tuple space: put + take of 2,000 keys from one engine (operations/s).

Usage: C{python bench/bench_peers.py [--quick] [--json FILE]}
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import threading
import time
from typing import Any, Dict, List

import srpy
from srpy.benchmark import sum_of_primes

TREE = '''
import srpy
from srpy.benchmark import sum_of_primes

def tree(lo, hi, work):
    if hi - lo <= 1:
        return sum_of_primes(work) * 0 + lo
    mid = (lo + hi) // 2
    left, right = srpy.spawn(tree, lo, mid, work), srpy.spawn(tree, mid, hi, work)
    return left.result() + right.result()
'''

MESSAGES = '''
import srpy
me = srpy.this_engine()

def send_many(to, n):
    for i in range(n):
        me.send(to, "m", i)

def receive_many(n):
    return sum(me.receive("m", timeout=120)[1] for _ in range(n))

def exchange(to, n):
    send_many(to, n)
    return receive_many(n)

def space(n):
    for i in range(n):
        me.put("k%d" % i, i)
    return sum(me.take("k%d" % i, timeout=30) for i in range(n))
'''


def timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def tree_speedup(box: srpy.EngBox, leaves: int, work: int, rounds: int) -> Dict[str, Any]:
    """
    Rounds of: the tree on 1 engine, on 2 engines, then its leaves on Pool(1) and Pool(2);
    the median of each. One unmeasured 2-engine run first (both engines build the function).
    """
    first = box[0]
    first.exe(TREE)
    one: List[float] = []
    two: List[float] = []
    pool_one: List[float] = []
    pool_two: List[float] = []
    expected = sum(range(leaves))
    box.connectPeers()
    _check(first.eval("tree(0, n, w)", n=leaves, w=work // 10), expected)
    with multiprocessing.Pool(1) as pool1, multiprocessing.Pool(2) as pool2:
        for pool in (pool1, pool2):
            pool.map(sum_of_primes, [work // 10] * 4, chunksize=1)
        for _ in range(rounds):
            for engine in box:
                engine.call("set_peers", [])
            one.append(timed(lambda: _check(first.eval("tree(0, n, w)", n=leaves, w=work), expected)))
            box.connectPeers()
            two.append(timed(lambda: _check(first.eval("tree(0, n, w)", n=leaves, w=work), expected)))
            pool_one.append(timed(lambda: pool1.map(sum_of_primes, [work] * leaves, chunksize=1)))
            pool_two.append(timed(lambda: pool2.map(sum_of_primes, [work] * leaves, chunksize=1)))
    for engine in box:
        engine.call("set_peers", [])
    m1, m2 = statistics.median(one), statistics.median(two)
    p1, p2 = statistics.median(pool_one), statistics.median(pool_two)
    return {"leaves": leaves, "leaf_work": work, "one_engine_s": one, "two_engines_s": two,
            "median_one_s": m1, "median_two_s": m2, "speedup": m1 / m2,
            "pool_one_s": pool_one, "pool_two_s": pool_two, "pool_speedup": p1 / p2}


def _check(value: Any, expected: Any) -> None:
    if value != expected:
        raise AssertionError("wrong result %r, expected %r" % (value, expected))


def messages(box: srpy.EngBox, count: int) -> Dict[str, float]:
    a, b = box[0], box[1]
    box.connectPeers()
    for engine in box:
        engine.exe(MESSAGES)
    expected = count * (count - 1) // 2
    receiver: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: receiver.update(v=b.eval("receive_many(n)", n=count)))
    start = time.perf_counter()
    thread.start()
    a.eval("send_many(to, n)", to=b.uri, n=count)
    thread.join()
    one_way = time.perf_counter() - start
    _check(receiver["v"], expected)
    results: Dict[str, Any] = {}

    def run(engine: Any, other: Any) -> None:
        results[engine.uri] = engine.eval("exchange(to, n)", to=other.uri, n=count)

    threads = [threading.Thread(target=run, args=(a, b)), threading.Thread(target=run, args=(b, a))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    both = time.perf_counter() - start
    _check(sorted(results.values()), [expected, expected])
    space_n = max(200, count // 5)
    space_s = timed(lambda: _check(a.eval("space(n)", n=space_n), space_n * (space_n - 1) // 2))
    return {"one_way_msgs_per_s": count / one_way, "both_ways_msgs_per_s": 2 * count / both,
            "space_ops_per_s": 2 * space_n / space_s}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and fast")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    options = parser.parse_args(argv)
    leaves, work, rounds, count = (16, 5000, 1, 1000) if options.quick else (64, 40000, 5, 10000)
    started = [srpy.newSubEngine() for _ in range(2)]
    box = srpy.EngBox([uri for uri, _ in started])
    try:
        tree = tree_speedup(box, leaves, work, rounds)
        rates = messages(box, count)
    finally:
        box.close()
        for _, process in started:
            srpy.stopSubEngine(process)
    print("srpy engine-to-engine benchmark (%d cores, Python %s)" % (srpy.detectNCPUs(), sys.version.split()[0]))
    print("divide and conquer: %d leaves of sum_of_primes(%d), started with one call on one engine"
          % (tree["leaves"], tree["leaf_work"]))
    print("  1 engine : median %.3f s  runs %s" % (tree["median_one_s"], ["%.3f" % t for t in tree["one_engine_s"]]))
    print("  2 engines: median %.3f s  runs %s" % (tree["median_two_s"], ["%.3f" % t for t in tree["two_engines_s"]]))
    verdict = "PASS" if tree["speedup"] >= 1.8 else "FAIL"
    print("  speed-up : %.2fx (target >= 1.8x) %s" % (tree["speedup"], verdict))
    print("  the same leaves on multiprocessing Pool(1) vs Pool(2), same rounds: %.2fx (Pool(1) %.3f s, Pool(2) %.3f s);"
          " srpy / multiprocessing: %.2f" % (tree["pool_speedup"], statistics.median(tree["pool_one_s"]),
                                            statistics.median(tree["pool_two_s"]),
                                            tree["speedup"] / tree["pool_speedup"]))
    print("messages one way     : %10.0f msg/s" % rates["one_way_msgs_per_s"])
    print("messages both ways   : %10.0f msg/s" % rates["both_ways_msgs_per_s"])
    print("tuple space put+take : %10.0f op/s" % rates["space_ops_per_s"])
    if options.json:
        with open(options.json, "w", encoding="utf-8") as handle:
            json.dump({"tree": tree, "rates": rates}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
