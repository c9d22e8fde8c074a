"""
The engine's lock, isBusy() and wait().

The engine answers control calls (ping, whoami, isBusy, wait) while user code runs, runs calls that
touch its namespace one at a time, and is busy exactly while one of those runs.
"""

import time

import pytest

from conftest import Background, run_threads

pytestmark = pytest.mark.timeout(60)


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met within %s s" % timeout
        time.sleep(0.01)


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
