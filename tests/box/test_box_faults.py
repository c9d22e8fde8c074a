"""
EngBox under faults, and its scheduling: nothing is lost, nothing hangs.

Every test runs real engine processes (hosted by the real launcher) on loopback, and breaks them
for real: SIGKILL for an engine that dies, SIGSTOP for one that vanishes without closing its
connections, a CPU hog pinned beside an engine for a slow one. Tasks note each execution in a
file per engine process, so the tests can count what ran where, not only what came back.
"""

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import psutil
import pytest

import srpy
from srpy.benchmark import sum_of_primes
from srpy.errors import EngineDead, NoEnginesError, SRPyError

pytestmark = pytest.mark.timeout(60)


# -- what the engines run (module-level functions: they travel by reference) ----------------------

def record_square(x, log_dir):
    """x * x, after noting this execution in the engine's own file in C{log_dir}."""
    with open(os.path.join(log_dir, "%d.log" % os.getpid()), "a") as handle:
        handle.write("%d\n" % x)
    time.sleep(0.01)
    return x * x


def nap(seconds, value):
    """C{(value, engine pid)} after C{seconds}."""
    time.sleep(seconds)
    return value, os.getpid()


def nap_noted(seconds, path):
    """Note this engine's pid in C{path}, then sleep C{seconds}."""
    with open(path, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


def fail_on_seven(x):
    if x == 7:
        raise ValueError("seven is not welcome here")
    return x


# -- helpers ---------------------------------------------------------------------------------------

def executions(log_dir):
    """{engine pid: [value, ...]} (see conftest), imported late: this module travels to engines, conftest does not."""
    from conftest import executions as read
    return read(log_dir)


def wait_for(predicate, timeout=10.0, step=0.005):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %s s" % timeout)
        time.sleep(step)


class Saboteur(threading.Thread):
    """Send C{signum} to every pid in C{pids} as soon as C{condition()} is true (polled)."""

    def __init__(self, condition, pids, signum=signal.SIGKILL, timeout=30.0):
        super().__init__(daemon=True)
        self.condition, self.pids, self.signum, self.timeout = condition, list(pids), signum, timeout
        self.fired_at = None
        self.start()

    def run(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.condition():
                for pid in self.pids:
                    os.kill(pid, self.signum)
                self.fired_at = time.monotonic()
                return
            time.sleep(0.002)


def engine_pids(launcher, box):
    """The pids of the box's engines, checked to be children of C{launcher} (we kill only those)."""
    pids = [engine.info["PID"] for engine in box]
    assert set(pids) <= {child.pid for child in launcher.children()}
    return pids


def pin(pid, cpu, nice=None):
    """
    Pin every thread of process C{pid} to C{cpu} (affinity and niceness are per thread on Linux; new
    threads inherit them), and give them C{nice} if allowed (a negative one needs privileges).
    """
    for thread in psutil.Process(pid).threads():
        os.sched_setaffinity(thread.id, {cpu})
        if nice is not None:
            try:
                os.setpriority(os.PRIO_PROCESS, thread.id, nice)
            except PermissionError:
                pass


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def check_exactly_once(runs, victim_pids, items, results, expected):
    """
    The caller got every result once, in order; each item ran at most once on the survivors, and
    an item ran twice only if it was in the batch a victim was running when it died (a suffix of
    what that victim ran).
    """
    assert results == expected
    survivors = [x for pid, done in runs.items() if pid not in victim_pids for x in done]
    assert [x for x, n in Counter(survivors).items() if n > 1] == []
    on_survivors = set(survivors)
    lost_everywhere = set(items) - on_survivors - {x for pid in victim_pids for x in runs.get(pid, [])}
    assert lost_everywhere == set()
    for pid in victim_pids:
        ran = runs.get(pid, [])
        again = [x for x in ran if x in on_survivors]
        assert ran[len(ran) - len(again):] == again, "re-run items must be the victim's last batch"


# -- an engine dies or vanishes mid-task -------------------------------------------------------------

@pytest.mark.timeout(40)
def test_map_survives_an_engine_killed_mid_map(start_launcher, tmp_path):
    launcher = start_launcher(["-n", "3"], count=3)
    box = srpy.EngBox(launcher.uris)
    pids = engine_pids(launcher, box)
    victim = box[1]
    log_dir = str(tmp_path)
    items = list(range(300))
    killer = Saboteur(lambda: len(executions(log_dir).get(pids[1], [])) >= 20, [pids[1]])
    results = list(box.map(record_square, items, [log_dir] * len(items), timeout=30))
    finished = time.monotonic()
    killer.join(5)
    assert killer.fired_at is not None and killer.fired_at < finished, "the kill must land mid-map"
    wait_for(lambda: gone(pids[1]))

    runs = executions(log_dir)
    check_exactly_once(runs, {pids[1]}, items, results, [x * x for x in items])
    assert len(box) == 2 and victim not in box.getEngines()
    assert [e.info["PID"] for e in box] == [pids[0], pids[2]]
    stats = box.stats()
    assert sum(stats.values()) == len(items)
    for engine in box:
        assert stats[engine.uri] == len(runs[engine.info["PID"]]) > 0
    survivors = set(runs[pids[0]]) | set(runs[pids[2]])
    assert stats.get(victim.uri, 0) == len([x for x in runs[pids[1]] if x not in survivors])
    assert list(box.map(abs, [-1, -2, -3])) == [1, 2, 3]  # the box goes on working
    box.close()


@pytest.mark.timeout(40)
def test_as_completed_survives_an_engine_killed(start_launcher, tmp_path):
    launcher = start_launcher(["-n", "3"], count=3)
    box = srpy.EngBox(launcher.uris)
    pids = engine_pids(launcher, box)
    log_dir = str(tmp_path)
    items = list(range(150))
    futures = [box.submit(record_square, x, log_dir) for x in items]
    killer = Saboteur(lambda: len(executions(log_dir).get(pids[0], [])) >= 10, [pids[0]])
    completed = list(concurrent.futures.as_completed(futures, timeout=30))
    killer.join(5)
    assert killer.fired_at is not None
    assert len(completed) == len(futures) and set(completed) == set(futures)
    runs = executions(log_dir)
    check_exactly_once(runs, {pids[0]}, items, [f.result() for f in futures], [x * x for x in items])
    assert len(box) == 2 and pids[0] not in [e.info["PID"] for e in box]
    assert sum(box.stats().values()) == len(items)
    box.close()


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_map_survives_an_engine_that_vanishes(start_launcher, tmp_path):
    """SIGSTOP: the engine's sockets stay open but nothing answers, as when its machine drops off."""
    launcher = start_launcher(["-n", "2"], count=2)
    box = srpy.EngBox(launcher.uris)
    pids = engine_pids(launcher, box)
    log_dir = str(tmp_path)
    items = list(range(200))
    stopper = Saboteur(lambda: len(executions(log_dir).get(pids[1], [])) >= 10, [pids[1]], signal.SIGSTOP)
    try:
        results = list(box.map(record_square, items, [log_dir] * len(items), timeout=30))
        stopper.join(5)
        assert stopper.fired_at is not None
        check_exactly_once(executions(log_dir), {pids[1]}, items, results, [x * x for x in items])
        assert [e.info["PID"] for e in box] == [pids[0]]
    finally:
        os.kill(pids[1], signal.SIGKILL)
        os.kill(pids[1], signal.SIGCONT)
    box.close()


# -- timeouts and exceptions fail only their own future --------------------------------------------

@pytest.mark.timeout(40)
def test_task_timeout_fails_only_that_task_and_the_engine_works_again(start_launcher, tmp_path):
    """
    The overrunning task's future fails with a TimeoutError; the other tasks go on, on the other
    engine; the engine that overran stops the task (by restarting, under C{--restart}) and gets
    work again.
    """
    launcher = start_launcher(["-n", "2", "--restart"], count=2)
    box = srpy.EngBox(launcher.uris, task_timeout=0.6)
    pids = engine_pids(launcher, box)
    marker = str(tmp_path / "long.pid")
    start = time.monotonic()
    long = box.submit(nap_noted, 30, marker)
    wait_for(lambda: os.path.exists(marker) and os.path.getsize(marker) > 0)
    with open(marker) as handle:
        busy_pid = int(handle.read())
    busy_uri = box[pids.index(busy_pid)].uri
    shorts = [box.submit(nap, 0.05, i) for i in range(6)]
    with pytest.raises(TimeoutError):
        long.result(timeout=10)
    assert time.monotonic() - start < 5, "the timeout fired late"
    assert isinstance(long.exception(), SRPyError)  # srpy's TaskTimeout: a TimeoutError and an SRPyError
    for i, future in enumerate(shorts):
        value, pid = future.result(timeout=10)
        assert value == i and pid != busy_pid
    wait_for(lambda: gone(busy_pid), timeout=10)  # the task did not run on: its process ended

    assert len(box) == 2
    before = box.stats().get(busy_uri, 0)
    deadline = time.monotonic() + 20
    while box.stats().get(busy_uri, 0) == before:
        assert time.monotonic() < deadline, "the engine that overran never got work again"
        assert [v for v, _ in box.map(nap, [0.05] * 8, range(8), timeout=20)] == list(range(8))
    assert busy_uri in [e.uri for e in box]
    box.close()


@pytest.mark.timeout(30)
def test_a_raising_task_fails_only_its_own_future(pair):
    box = srpy.EngBox(pair)
    futures = [box.submit(fail_on_seven, x) for x in range(12)]
    concurrent.futures.wait(futures, timeout=20)
    for x, future in enumerate(futures):
        if x == 7:
            exc = future.exception()
            assert type(exc) is ValueError and "seven is not welcome here" in str(exc)
            assert 'raise ValueError("seven is not welcome here")' in exc.remote_traceback
            assert "fail_on_seven" in exc.remote_traceback
        else:
            assert future.result() == x

    got = []
    with pytest.raises(ValueError) as info:
        for value in box.map(fail_on_seven, range(40), chunksize=3):
            got.append(value)
    assert got == list(range(7))
    assert 'raise ValueError("seven is not welcome here")' in info.value.remote_traceback
    assert list(box.map(fail_on_seven, range(7))) == list(range(7))  # the engines carry on
    box.close()


# -- all engines gone ------------------------------------------------------------------------------

@pytest.mark.timeout(40)
def test_all_engines_gone_fails_pending_work_and_nothing_hangs(start_launcher, tmp_path):
    launcher = start_launcher(["-n", "2"], count=2)
    box = srpy.EngBox(launcher.uris)
    pids = engine_pids(launcher, box)
    log_dir = str(tmp_path)
    results = box.map(record_square, range(400), [log_dir] * 400)
    wait_for(lambda: sum(len(r) for r in executions(log_dir).values()) >= 10)
    futures = [box.submit(nap, 0.02, i) for i in range(100)]  # these go before the map's rest
    killer = Saboteur(lambda: sum(f.done() for f in futures) >= 10, pids)
    start = time.monotonic()
    with pytest.raises(SRPyError):
        for _ in results:
            pass
    done, not_done = concurrent.futures.wait(futures, timeout=20)
    assert not not_done and time.monotonic() - start < 20
    killer.join(5)
    assert killer.fired_at is not None
    failures = [f.exception() for f in futures if f.exception() is not None]
    assert failures, "the engines died before all the work was done"
    for exc in failures:
        assert isinstance(exc, (NoEnginesError, EngineDead)), repr(exc)
    for i, future in enumerate(futures):
        if future.exception() is None:
            assert future.result()[0] == i
    assert len(box) == 0
    with pytest.raises(NoEnginesError, match="no engine"):
        box.submit(nap, 0, 0)
    with pytest.raises(NoEnginesError, match="no engine"):
        box.map(abs, [1])
    box.shutdown(wait=True)


# -- SRPy's dead-engine surface --------------------------------------------------------------------

@pytest.mark.timeout(40)
def test_getDead_and_cleanDead_with_two_dead_engines(start_launcher):
    launcher = start_launcher(["-n", "4"], count=4)
    box = srpy.EngBox(launcher.uris)
    pids = engine_pids(launcher, box)
    engines = box.getEngines()
    assert box.getDead() == []
    for i in (1, 3):
        os.kill(pids[i], signal.SIGKILL)
    wait_for(lambda: gone(pids[1]) and gone(pids[3]))
    assert box.getDead() == [1, 3]
    dead_box = box.getDead(new=True)
    assert isinstance(dead_box, srpy.EngBox) and dead_box.getEngines() == [engines[1], engines[3]]
    assert box.cleanDead() == [engines[1], engines[3]]
    assert box.getEngines() == [engines[0], engines[2]]
    assert box.getDead() == [] and box.cleanDead() == []
    assert [e.ping() for e in box] == ["pong", "pong"]
    assert list(box.map(abs, [-1, -2, -3, -4])) == [1, 2, 3, 4]
    box.close()


@pytest.mark.timeout(40)
def test_getFastest_skips_a_dead_engine(start_launcher):
    launcher = start_launcher(["-n", "3"], count=3)
    box = srpy.EngBox(launcher.uris)
    pids = engine_pids(launcher, box)
    dead = box[0]
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: gone(pids[0]))
    fastest = box.getFastest(cycles=5000)
    assert fastest is not dead and fastest in box.getEngines()
    assert fastest.ping() == "pong"
    ranked = box.getFastest(single=False, basis="proc", cycles=5000)
    assert isinstance(ranked, srpy.EngBox) and len(ranked) == 2 and dead not in ranked.getEngines()
    box.close()


# -- scheduling: a slower engine gets less work ------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_slowed_engine_completes_less_of_a_map(start_launcher):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs to pin a fast and a slowed engine apart; this machine lets us use %d" % len(cpus))
    launcher = start_launcher(["-n", "2"], count=2)
    box = srpy.EngBox(launcher.uris)
    fast_pid, slow_pid = engine_pids(launcher, box)
    # Three hogs beside the slowed engine leave it a quarter of its CPU. Everything else on the machine
    # then crowds onto the fast engine's CPU, so that engine gets a higher priority where allowed:
    # the test is about the scheduler, not about what else this machine runs.
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        pin(fast_pid, cpus[0], nice=-10)
        pin(slow_pid, cpus[1])
        for hog in hogs:
            pin(hog.pid, cpus[1])
        results = list(box.map(sum_of_primes, [8000] * 300, timeout=45))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)
    assert results == [sum_of_primes(8000)] * 300
    stats = box.stats()
    fast, slow = stats[box[0].uri], stats[box[1].uri]
    assert fast + slow == 300
    assert fast > 1.3 * slow, "the engine sharing its CPU with a hog should do less: %d vs %d" % (fast, slow)
    box.close()


# -- the concurrent.futures contract ---------------------------------------------------------------

def queued(box, future):
    """True while C{future}'s task waits in the box's queue (read under the scheduler's lock)."""
    scheduler = box._scheduler
    with scheduler._cond:
        return any(task.future is future for task in scheduler._tasks)


def running_on(future, timeout=10):
    wait_for(future.running, timeout)


@pytest.mark.timeout(30)
def test_cancel_a_queued_future(pair, tmp_path):
    box = srpy.EngBox(pair[:1])
    log_dir = str(tmp_path)
    blocker = box.submit(nap, 0.8, "blocker")
    running_on(blocker)
    assert blocker.cancel() is False  # running: too late
    queued = [box.submit(record_square, x, log_dir) for x in range(5)]
    assert queued[2].cancel() is True and queued[2].cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued[2].result()
    assert blocker.result(timeout=10)[0] == "blocker"
    assert [f.result(timeout=10) for i, f in enumerate(queued) if i != 2] == [0, 1, 9, 16]
    assert sorted(x for done in executions(log_dir).values() for x in done) == [0, 1, 3, 4]
    box.close()


@pytest.mark.timeout(30)
def test_wait_first_completed(pair):
    box = srpy.EngBox(pair)
    slow = box.submit(nap, 2.0, "slow")
    running_on(slow)
    fast = box.submit(nap, 0.05, "fast")
    start = time.monotonic()
    done, not_done = concurrent.futures.wait([slow, fast], timeout=10,
                                             return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    assert time.monotonic() - start < 1.5
    assert slow.result(timeout=10)[0] == "slow"
    box.close()


@pytest.mark.timeout(30)
def test_shutdown_cancel_futures_cancels_queued_work(pair, tmp_path):
    box = srpy.EngBox(pair[:1])
    log_dir = str(tmp_path)
    blocker = box.submit(nap, 0.5, "blocker")
    running_on(blocker)
    queued = [box.submit(record_square, x, log_dir) for x in range(10)]
    mapped = box.map(record_square, range(100, 120), [log_dir] * 20)
    box.shutdown(wait=True, cancel_futures=True)
    assert blocker.done() and blocker.result()[0] == "blocker"
    assert all(f.cancelled() for f in queued)
    done, not_done = concurrent.futures.wait(queued, timeout=5)  # they end for wait() too
    assert not not_done
    assert len(list(concurrent.futures.as_completed(queued, timeout=5))) == len(queued)
    with pytest.raises(concurrent.futures.CancelledError):
        list(mapped)
    assert executions(log_dir) == {}
    with pytest.raises(RuntimeError, match="shutdown"):
        box.submit(nap, 0, 0)
    with pytest.raises(RuntimeError, match="shutdown"):
        box.map(abs, [1])


@pytest.mark.timeout(30)
def test_shutdown_cancel_futures_keeps_work_an_engine_died_running(start_launcher, tmp_path):
    """A task whose engine died is running work to its caller: cancel_futures must not drop it."""
    launcher = start_launcher(["-n", "2"], count=2)
    box = srpy.EngBox(launcher.uris)
    pids = engine_pids(launcher, box)
    marker = str(tmp_path / "blocker.pid")
    blocker = box.submit(nap_noted, 1.5, marker)
    wait_for(lambda: os.path.exists(marker) and os.path.getsize(marker) > 0)
    with open(marker) as handle:
        busy_pid = int(handle.read())
    other = [pid for pid in pids if pid != busy_pid][0]
    futures = [box.submit(nap, 0.5, i) for i in range(4)]
    running_on(futures[0])
    os.kill(other, signal.SIGKILL)  # futures[0] goes back to the queue, behind the busy blocker
    wait_for(lambda: len(box) == 1)
    wait_for(lambda: queued(box, futures[0]))  # what this test is about: back in the queue, started
    box.shutdown(wait=True, cancel_futures=True)
    done, not_done = concurrent.futures.wait(futures + [blocker], timeout=10)
    assert not not_done, "shutdown dropped work without ending its future"
    assert blocker.result() == busy_pid and [e.info["PID"] for e in box] == [busy_pid]
    assert futures[0].result()[0] == 0
    assert all(f.cancelled() for f in futures[1:])


@pytest.mark.timeout(30)
def test_shutdown_wait_waits_for_running_work(pair):
    box = srpy.EngBox(pair)
    futures = [box.submit(nap, 0.4, i) for i in range(4)]
    running_on(futures[0])
    start = time.monotonic()
    box.shutdown(wait=True)
    assert time.monotonic() - start >= 0.2
    assert all(f.done() for f in futures)
    assert [f.result()[0] for f in futures] == [0, 1, 2, 3]

    box = srpy.EngBox(pair)
    futures = [box.submit(nap, 0.8, i) for i in range(2)]
    start = time.monotonic()
    box.shutdown(wait=False)
    assert time.monotonic() - start < 0.4
    assert [f.result(timeout=10)[0] for f in futures] == [0, 1]  # accepted work still completes


@pytest.mark.timeout(30)
def test_context_manager(pair):
    with srpy.EngBox(pair) as box:
        futures = [box.submit(nap, 0.2, i) for i in range(4)]
        squares = box.map(pow, range(10), [2] * 10)
    assert all(f.done() for f in futures)
    assert [f.result()[0] for f in futures] == [0, 1, 2, 3]
    assert list(squares) == [x * x for x in range(10)]
    with pytest.raises(RuntimeError, match="shutdown"):
        box.submit(nap, 0, 0)


def test_a_box_starts_with_the_engines_that_answer_and_takes_the_others_when_they_do(start_launcher, caplog):
    """An engine frozen (SIGSTOP) when the box is made: the box starts without it, then takes it."""
    launcher = start_launcher(["-n", "2"], count=2)
    with srpy.PythonEngine(launcher.uris[1]) as probe:
        frozen = probe.info["PID"]
    os.kill(frozen, signal.SIGSTOP)
    try:
        with caplog.at_level("WARNING", logger="srpy.box"):
            box = srpy.EngBox(launcher.uris)
        assert [e.uri for e in box] == [launcher.uris[0]]
        assert list(box.pending) == [launcher.uris[1]]
        named = [r.getMessage() for r in caplog.records if launcher.uris[1] in r.getMessage()]
        assert len(named) == 1 and "TLS" not in named[0], "one line naming it, no false TLS hint"
        assert box.submit(pow, 2, 5).result(30) == 32, "the box works meanwhile"
    finally:
        os.kill(frozen, signal.SIGCONT)
    wait_for(lambda: len(box) == 2, timeout=60)  # the engine joins once it answers
    assert box.pending == {}
    assert sorted(box.map(abs, range(-50, 0))) == list(range(1, 51))
    box.close()


def test_a_box_none_of_whose_engines_answer_names_each():
    uris = ["PYRO:srpy.engine@127.0.0.1:%d" % port for port in free_ports(2)]
    with pytest.raises(NoEnginesError) as info:
        srpy.EngBox(uris)
    assert all(uri in str(info.value) for uri in uris)


def free_ports(count):
    import socket
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_a_task_too_large_for_the_engine_fails_alone_and_the_engine_stays(start_launcher):
    launcher = start_launcher(["-n", "1", "--max-message-size", "1"], count=1)
    with srpy.EngBox(launcher.uris) as box:
        too_big = box.submit(len, "x" * (2 * 1024 * 1024))
        with pytest.raises(srpy.MessageTooLargeError, match="limit of 1048576 bytes"):
            too_big.result(60)
        assert len(box) == 1, "the engine answered: it stays in the box"
        assert box.submit(len, "x" * 1000).result(60) == 1000
