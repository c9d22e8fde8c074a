"""
One PythonEngine shared by many threads; the engine's lock, isBusy() and wait().

The engine answers control calls (ping, whoami, isBusy, wait) while user code runs, runs calls that
touch its namespace one at a time, and is busy exactly while one of those runs.
"""

import threading
import time

import pytest

import srpy

pytestmark = pytest.mark.timeout(60)


def run_threads(target, count, *args):
    """Run C{target(index, *args)} in C{count} threads; re-raise the first failure."""
    failures = []

    def guarded(index):
        try:
            target(index, *args)
        except BaseException as exc:  # collected, re-raised in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
        assert not thread.is_alive(), "a thread is stuck"
    if failures:
        raise failures[0]


class Background:
    """A call running in another thread; C{.result()} waits for it and returns (or raises) its outcome."""

    def __init__(self, function, *args, **kwargs):
        self.started = threading.Event()
        self._outcome = None

        def run():
            self.started.set()
            try:
                self._outcome = (True, function(*args, **kwargs))
            except BaseException as exc:  # handed to result()
                self._outcome = (False, exc)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self.started.wait(10)

    def result(self, timeout=30):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the background call did not finish"
        ok, value = self._outcome
        if not ok:
            raise value
        return value


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within %s s" % timeout
        time.sleep(0.01)


def test_many_threads_share_one_engine(engine):
    def work(index):
        for j in range(200):
            assert engine.eval("a * b + c", a=index, b=j, c=1) == index * j + 1
            if j % 50 == 0:
                assert engine.ping() == "pong"
                assert engine.vexe("r = x * 2", get=["r"], x=j) == {"r": 2 * j}

    run_threads(work, 16)
    assert engine.ping() == "pong"


def test_threads_with_their_own_variables(engine):
    def work(index):
        name = "v%d" % index
        for j in range(50):
            engine.set(**{name: (index, j)})
            assert engine.get(name) == (index, j)
            assert engine.eval("%s[1] + 1" % name) == j + 1

    run_threads(work, 8)
    assert sorted(engine.get()) == sorted("v%d" % i for i in range(8))


def test_large_values_from_many_threads(engine):
    def work(index):
        data = bytes([index]) * (200 * 1024 + index)
        for _ in range(5):
            assert engine.eval("x", x=data) == data
            assert engine.eval("bytes([i]) * n", i=index, n=len(data)) == data

    run_threads(work, 6)


def test_the_lock_serializes_namespace_updates(engine):
    engine.set(x=0)

    def work(index):
        for _ in range(50):
            engine.exe("x = x + 1")

    run_threads(work, 8)
    assert engine.get("x") == 400


def test_the_lock_covers_a_whole_read_modify_write(engine):
    """With a pause between read and write, any interleaving would lose updates."""
    engine.exe("import time\ncount = 0\ndef bump():\n    global count\n    seen = count\n"
               "    time.sleep(0.002)\n    count = seen + 1\n")

    def work(index):
        for _ in range(10):
            engine.exe("bump()")
        engine.eval("bump()")
        engine.ns.bump()

    run_threads(work, 6)
    assert engine.get("count") == 6 * 12


class Gate:
    """
    User code that holds the engine busy until the test opens the gate (a file appearing), so
    that "busy" lasts exactly as long as the test needs, with no timing guesses.
    """

    CODE = "import os, time\nwhile not os.path.exists(gate):\n    time.sleep(0.005)\n"

    def __init__(self, engine, tmp_path, then=""):
        self.path = str(tmp_path / ("gate-%d" % id(self)))
        self.call = Background(engine.exe, self.CODE + then, gate=self.path)
        wait_until(engine.isBusy)

    def open(self):
        with open(self.path, "w"):
            pass
        return self.call.result()


def test_busy_while_a_long_exe_runs(engine):
    """The issue's own example: another thread runs exe('time.sleep(1)')."""
    assert engine.isBusy() is False
    assert engine.wait(0) is True
    long = Background(engine.exe, "import time; time.sleep(1); done = True")
    wait_until(engine.isBusy)
    assert engine.wait(timeout=0.1) is False
    assert engine.wait() is True  # blocks until the exe is over
    assert engine.isBusy() is False
    long.result()
    assert engine.get("done") is True


def test_busy_exactly_while_the_lock_is_held(engine, tmp_path):
    gate = Gate(engine, tmp_path, then="done = True")
    for _ in range(5):
        assert engine.isBusy() is True
        assert engine.wait(timeout=0.05) is False
        assert engine.wait(0) is False
    waiter = Background(engine.wait)
    assert waiter.thread.is_alive()
    gate.open()
    assert waiter.result() is True
    assert engine.isBusy() is False and engine.wait(0) is True
    assert engine.get("done") is True


def test_control_calls_answer_during_a_long_exe(engine, tmp_path):
    gate = Gate(engine, tmp_path)
    try:
        assert engine.ping() == "pong"
        info = engine.whoami()
        assert info["Busy"] is True and info["Current Call"] == "exe"
        net, proc, busy = engine.benchmark(cycles=1000)
        assert busy is True
        assert engine.isBusy() is True
        assert engine.wait(0.01) is False
    finally:
        gate.open()
    assert engine.isBusy() is False and engine.whoami()["Busy"] is False


def test_locked_calls_queue_behind_a_long_exe(engine, tmp_path):
    engine.set(order=[])
    gate = Gate(engine, tmp_path, then="order.append('first')")
    second = Background(engine.exe, "order.append('second')")
    getter = Background(engine.get, "order")
    assert engine.isBusy() is True
    gate.open()
    second.result()
    assert getter.result() in (["first"], ["first", "second"])
    assert engine.get("order") == ["first", "second"]


def test_many_waiters(engine, tmp_path):
    gate = Gate(engine, tmp_path)
    waiters = [Background(engine.wait, timeout=30) for _ in range(6)]
    assert all(w.thread.is_alive() for w in waiters)
    gate.open()
    assert [w.result() for w in waiters] == [True] * 6
    assert engine.isBusy() is False


def test_an_exception_releases_the_lock(engine, tmp_path):
    gate = Gate(engine, tmp_path, then="1/0")
    with pytest.raises(ZeroDivisionError):
        gate.open()
    assert engine.isBusy() is False and engine.wait(0) is True
    gate = Gate(engine, tmp_path, then="import sys; sys.exit(1)")
    with pytest.raises(SystemExit):
        gate.open()
    assert engine.isBusy() is False
    assert engine.eval("1") == 1


def test_each_thread_its_own_client(engine_uri):
    def work(index):
        with srpy.PythonEngine(engine_uri) as eng:
            for j in range(30):
                assert eng.eval("i + j", i=index, j=j) == index + j

    run_threads(work, 8)


def test_lite_engine_is_thread_safe_too(engine_uri):
    eng = srpy.lite.Engine(engine_uri)
    try:
        def work(index):
            for j in range(100):
                assert eng.eval("i * j", i=index, j=j) == index * j

        run_threads(work, 8)
    finally:
        eng.close()


def test_close_while_other_threads_call(engine_uri):
    eng = srpy.PythonEngine(engine_uri)
    done = []

    def work(index):
        try:
            while True:
                assert eng.eval("1 + 1") == 2
                done.append(index)
        except srpy.ConnectionLost as exc:  # once closed, a call raises: it never reconnects
            assert "was closed" in str(exc)

    worker = Background(run_threads, work, 4)
    deadline = time.monotonic() + 30
    while len(done) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    eng.close()  # closes idle connections; calls under way finish, later ones raise
    worker.result()
    assert len(done) >= 20
    with pytest.raises(srpy.ConnectionLost, match="this PythonEngine was closed"):
        eng.ping()
    eng.close()  # closing again does nothing