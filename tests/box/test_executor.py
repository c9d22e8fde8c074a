"""
EngBox keeps the executor's word (issue 10): every future ends, nothing is lost or stuck, every
engine is used, and exit, map and Ctrl-C behave as in the standard library.

Real engine processes (hosted by the real launcher) on loopback; scripts that must exit or be
interrupted run as real subprocesses. Tasks note each execution in a file per engine process, so
the tests count what ran where, not only what came back. Waits are on state, with generous bounds.
"""

import concurrent.futures
import itertools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import srpy
from srpy import functions, scheduler
from srpy.errors import SerializationError, TaskAborted

# the checkout (not from conftest: this module travels to engines, conftest does not)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.timeout(90)


# -- what the engines run (module-level: they travel by reference) ----------------------------------

class Custom(BaseException):
    """A BaseException of the user's own."""


def raise_base(kind, x):
    if kind == "exit":
        sys.exit(3)
    if kind == "interrupt":
        raise KeyboardInterrupt("pressed on the engine")
    if kind == "custom":
        raise Custom("a user's own BaseException")
    return x


def square(x):
    return x * x


def doze(seconds):
    """Sleep in short steps: Python code between them, so that an abort interrupts it at once."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.02, max(0.0, end - time.monotonic())))


def dozed(seconds):
    doze(seconds)
    return seconds


def nap(seconds, value=None):
    """C{(value, engine pid)} after C{seconds}."""
    doze(seconds)
    return value, os.getpid()


def noted(seconds, value, log_dir):
    """Note this execution in the engine's own file in C{log_dir}, then sleep; C{(value, pid)}."""
    with open(os.path.join(log_dir, "%d.log" % os.getpid()), "a") as handle:
        handle.write("%s\n" % value)
    doze(seconds)
    return value, os.getpid()


def unsendable(x):
    return threading.Lock() if x >= 2 else x


def executions(log_dir):
    """{engine pid: [value, ...]} (see conftest), imported late: this module travels to engines, conftest does not."""
    from conftest import executions as read
    return read(log_dir)


def ran(log_dir):
    return sorted(x for done in executions(log_dir).values() for x in done)


def wait_for(predicate, timeout=20.0, step=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %s s" % timeout)
        time.sleep(step)


def idle(engine):
    """The engine runs nothing (one that just restarted to stop a call counts as not idle yet)."""
    try:
        return not engine.isBusy()
    except srpy.SRPyError:
        return False


@pytest.fixture
def box(pair):
    engines = srpy.EngBox(pair)
    yield engines
    engines.abort_all()
    engines.close()


@pytest.fixture
def one(pair):
    engines = srpy.EngBox(pair[0])
    yield engines
    engines.abort_all()
    engines.close()


# -- tasks that raise anything -----------------------------------------------------------------------

def test_base_exceptions_fail_their_own_future_and_every_engine_keeps_working(box):
    futures = {kind: box.submit(raise_base, kind, 1) for kind in ("exit", "interrupt", "custom")}
    plain = [box.submit(raise_base, "none", i) for i in range(6)]
    done, not_done = concurrent.futures.wait(list(futures.values()) + plain, timeout=30)
    assert not not_done
    exit_exc = futures["exit"].exception()
    assert isinstance(exit_exc, SystemExit) and exit_exc.remote_code == 3 and "sys.exit(3)" in str(exit_exc)
    interrupt = futures["interrupt"].exception()
    assert isinstance(interrupt, KeyboardInterrupt) and "pressed on the engine" in str(interrupt)
    assert "raise KeyboardInterrupt" in interrupt.remote_traceback
    custom = futures["custom"].exception()
    # a user's own class, imported here, comes back as itself (issue 13), with the engine's traceback
    assert type(custom) is Custom and custom.args == ("a user's own BaseException",)
    assert "raise Custom" in custom.remote_traceback
    assert [f.result() for f in plain] == list(range(6))

    with pytest.raises(SystemExit):
        list(box.map(raise_base, ["none", "exit", "none"], [0, 1, 2]))
    # both dispatchers still serve: a burst of long-ish tasks runs on both engines
    pids = {future.result(timeout=30)[1] for future in [box.submit(nap, 0.3) for _ in range(6)]}
    assert len(pids) == 2 and len(box) == 2
    box.shutdown(wait=True)  # returns: no future is left running
    assert all(f.done() for f in list(futures.values()) + plain)


def test_a_dispatcher_that_must_end_says_so_and_its_work_goes_to_the_other_engine(pair, monkeypatch, caplog):
    box = srpy.EngBox(pair)
    real = scheduler.Scheduler._deliver
    ended = []

    def deliver_or_end(self, slot, batch, outcomes):
        if not ended:
            ended.append(slot.uri)
            raise SystemExit("a dispatcher that must end")
        return real(self, slot, batch, outcomes)

    monkeypatch.setattr(scheduler.Scheduler, "_deliver", deliver_or_end)
    with caplog.at_level(logging.ERROR, logger="srpy.scheduler"):
        futures = [box.submit(nap, 0.05, i) for i in range(6)]
        assert [f.result(timeout=30)[0] for f in futures] == list(range(6))
    assert ended and [e.uri for e in box] == [uri for uri in pair if uri != ended[0]]
    assert any("dispatcher of engine %s ended" % ended[0] in r.getMessage() and "leaves the box" in r.getMessage()
               for r in caplog.records)
    box.close()


def _flaky_module(tmp_path, name, body):
    """A local module that behaves as C{body} says on engines only (not in this client process)."""
    path = tmp_path / ("%s.py" % name)
    path.write_text("import os\nON_ENGINE = os.getpid() != %d\nMARK = %r\n%s\ndef work(x):\n    return x + 1\n"
                    % (os.getpid(), str(tmp_path / (name + ".mark")), textwrap.dedent(body)))
    return path


def test_a_transient_definition_failure_does_not_break_the_function(one, tmp_path, monkeypatch):
    _flaky_module(tmp_path, "flaky_memory_srpy", """
        if ON_ENGINE and not os.path.exists(MARK):
            open(MARK, "w").close()
            raise MemoryError("pretend the engine ran out of memory while defining")
    """)
    _flaky_module(tmp_path, "always_broken_srpy", """
        if ON_ENGINE:
            with open(MARK, "a") as handle:
                handle.write("x")
            raise RuntimeError("this module cannot be imported on an engine")
    """)
    _flaky_module(tmp_path, "needs_missing_srpy", """
        if ON_ENGINE:
            import surely_not_a_package_srpy
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    import always_broken_srpy
    import flaky_memory_srpy
    import needs_missing_srpy

    with pytest.raises(MemoryError, match="pretend"):
        one.submit(flaky_memory_srpy.work, 1).result(timeout=30)
    assert one.submit(flaky_memory_srpy.work, 1).result(timeout=30) == 2  # defined on the next try
    assert list(one.map(flaky_memory_srpy.work, range(3))) == [1, 2, 3]

    for _ in range(2):  # broken for good: the engine says so, and the second try does not define again
        with pytest.raises(RuntimeError, match="cannot be imported"):
            one.submit(always_broken_srpy.work, 1).result(timeout=30)
    assert (tmp_path / "always_broken_srpy.mark").read_text() == "x"

    with pytest.raises(srpy.MissingPackagesError) as info:  # named by the engine, not guessed from text
        one.submit(needs_missing_srpy.work, 1).result(timeout=30)
    assert "surely_not_a_package_srpy" in str(info.value) and one[0].uri in str(info.value)


# -- scheduling is work-conserving ----------------------------------------------------------------

def test_speed_is_learned_per_function_long_tasks_spread_after_a_cheap_map(box):
    for _ in range(2):
        assert list(box.map(square, range(20000))) == [x * x for x in range(20000)]
        futures = [box.submit(nap, 0.25, i) for i in range(16)]
        pids = [future.result(timeout=60)[1] for future in futures]
        counts = sorted(pids.count(pid) for pid in set(pids))
        assert len(counts) == 2 and counts[0] >= 4, "16 long tasks after a cheap map: %s per engine" % counts


def test_own_chunking_spreads_a_long_map_over_both_engines(box):
    list(box.map(square, range(5000)))
    pids = [pid for _, pid in box.map(nap, [0.25] * 16)]
    counts = sorted(pids.count(pid) for pid in set(pids))
    assert len(counts) == 2 and counts[0] >= 4, counts


def test_quick_tasks_run_on_the_idle_engine_while_the_other_is_busy(box, tmp_path):
    """A long task and quick ones in one burst, right after a cheap map: never one batch on one engine."""
    log_dir = str(tmp_path)
    assert list(box.map(square, range(2000))) == [x * x for x in range(2000)]
    functions.pack(noted), functions.pack(nap)  # packed ahead (file reads): nothing pauses the burst
    long = box.submit(noted, 4, 0, log_dir)
    quick = [box.submit(nap, 0.02, i) for i in range(4)]
    done, _ = concurrent.futures.wait(quick, timeout=30)
    assert len(done) == 4 and not long.done(), "quick tasks waited behind the long one"
    wait_for(lambda: ran(log_dir) == [0])
    busy_pid = next(iter(executions(log_dir)))
    assert all(f.result()[1] != busy_pid for f in quick), "quick tasks went to the busy engine"
    assert long.result(timeout=30)[1] == busy_pid


@pytest.mark.parametrize("measured", [False, True], ids=["function not measured", "known short function"])
def test_tasks_not_started_report_not_running_and_can_be_cancelled(one, tmp_path, measured):
    log_dir = str(tmp_path)
    if measured:  # the scheduler knows noted(0, ...) is short: such tasks may share a batch
        assert [v for v, _ in [one.submit(noted, 0, 100 + i, log_dir).result(timeout=30) for i in range(3)]] \
            == [100, 101, 102]
    assert list(one.map(square, range(2000))) == [x * x for x in range(2000)]  # the engine looks fast
    functions.pack(noted), functions.pack(nap)  # packed ahead (file reads): nothing pauses the burst
    blocker = one.submit(nap, 2.5, "blocker")
    queued = [one.submit(noted, 0, i, log_dir) for i in range(6)]
    wait_for(blocker.running)
    assert not any(f.running() for f in queued), "handed to a busy engine before it could start them"
    assert queued[1].cancel() and queued[4].cancel()
    assert blocker.result(timeout=30)[0] == "blocker"
    done, not_done = concurrent.futures.wait(queued, timeout=30)
    assert not not_done
    assert [f.result()[0] for i, f in enumerate(queued) if i not in (1, 4)] == [0, 2, 3, 5]
    assert [x for x in ran(log_dir) if x < 100] == [0, 2, 3, 5]


# -- exit -----------------------------------------------------------------------------------------

def run_script(tmp_path, body, *args, timeout=60):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, str(script)] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=str(tmp_path))


EXIT_SCRIPT = """
    import atexit, os, sys, time
    import srpy

    def work(i, folder):
        time.sleep(0.2)
        with open(os.path.join(folder, "done-%d" % i), "w") as handle:
            handle.write(str(os.getpid()))
        return i

    def late_submit():
        try:
            box.submit(work, 99, sys.argv[2])
        except RuntimeError as exc:
            print("refused:", exc, flush=True)

    atexit.register(late_submit)
    box = srpy.EngBox(sys.argv[1].split(","))
    futures = [box.submit(work, i, sys.argv[2]) for i in range(8)]
    if sys.argv[3] == "shutdown-nowait":
        start = time.monotonic()
        box.shutdown(wait=False)
        print("shutdown took %.3f" % (time.monotonic() - start), flush=True)
    elif sys.argv[3] == "map":
        results = box.map(work, range(100, 104), [sys.argv[2]] * 4)  # never read
    print("leaving with %d of 8 done" % sum(f.done() for f in futures), flush=True)
"""


@pytest.mark.parametrize("how", ["no shutdown", "shutdown-nowait", "map"])
def test_interpreter_exit_waits_for_pending_work(pair, tmp_path, how):
    folder = tmp_path / "out"
    folder.mkdir()
    done = run_script(tmp_path, EXIT_SCRIPT, ",".join(pair), folder, how)
    assert done.returncode == 0, done.stderr
    assert "leaving with" in done.stdout
    expected = {"done-%d" % i for i in range(8)}
    if how == "map":
        expected |= {"done-%d" % i for i in range(100, 104)}
    assert set(os.listdir(folder)) == expected, done.stdout + done.stderr
    assert "refused: cannot schedule new work after interpreter shutdown" in done.stdout
    if how == "shutdown-nowait":
        took = float(done.stdout.split("shutdown took ")[1].split()[0])
        assert took < 0.5
    assert "Traceback" not in done.stderr


# -- map: timeouts, close, results that cannot travel -----------------------------------------------

def test_map_timeout_returns_results_already_there_and_times_out_only_on_missing_ones(one):
    start = time.monotonic()
    results = one.map(nap, [0.2, 0.2, 0.2, 30.0], range(4), timeout=0.5)
    wait_for(lambda: sum(one.stats().values()) >= 3)
    wait_for(lambda: time.monotonic() > start + 0.6)  # past the deadline
    assert [next(results)[0] for _ in range(3)] == [0, 1, 2]
    before = time.monotonic()
    with pytest.raises(TimeoutError):
        next(results)
    assert time.monotonic() - before < 2
    assert list(results) == []  # the rest is cancelled
    wait_for(lambda: idle(one[0]), timeout=15)  # and the long chunk is stopped on its engine


def test_map_close_break_and_drop_cancel_the_rest_quietly(box, tmp_path, capfd, caplog):
    log_dir = str(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="srpy"):
        results = box.map(noted, [0.3] * 20, range(20), [log_dir] * 20)
        assert next(results)[0] == 0
        results.close()
        assert list(results) == []
        for value, _ in box.map(noted, [0.3] * 20, range(100, 120), [log_dir] * 20):
            break
        with box.map(noted, [0.3] * 20, range(200, 220), [log_dir] * 20) as results:
            next(results)
        wait_for(lambda: idle(box[0]) and idle(box[1]), timeout=15)
    for base in (0, 100, 200):
        assert len([x for x in ran(log_dir) if base <= x < base + 20]) < 8
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    assert list(box.map(square, range(10))) == [x * x for x in range(10)]


def test_map_whose_results_cannot_travel_raises_serialization_error_naming_the_type(box):
    got = []
    with pytest.raises(SerializationError, match="_thread.lock"):
        for value in box.map(unsendable, range(5), chunksize=5):
            got.append(value)
    assert got == [0, 1]
    with pytest.raises(SerializationError, match="_thread.lock"):
        list(box.map(unsendable, range(2, 6)))
    with pytest.raises(SerializationError, match="_thread.lock"):
        box.submit(unsendable, 3).result(timeout=30)


# -- what multiprocessing users reach for -------------------------------------------------------------

def test_imap_is_lazy_over_an_endless_iterable(box):
    read = [0]

    def counting():
        for i in itertools.count():
            read[0] = i + 1
            yield i

    results = box.imap(square, counting(), buffersize=500)
    assert list(itertools.islice(results, 5000)) == [x * x for x in range(5000)]
    assert read[0] <= 5000 + 500, "imap read %d items for 5000 results" % read[0]
    results.close()
    assert list(results) == []
    assert list(box.imap(square, range(10), chunksize=3)) == [x * x for x in range(10)]
    assert list(box.imap(square, iter([]))) == []


def test_imap_raises_what_its_iterable_raises_after_the_results_before_it(box):
    def failing():
        yield from range(3)
        raise ValueError("the iterable broke")

    got = []
    with pytest.raises(ValueError, match="the iterable broke"):
        for value in box.imap(square, failing()):
            got.append(value)
    assert got == [0, 1, 4]


def test_imap_unordered_gives_results_as_they_complete(box):
    results = list(box.imap_unordered(dozed, [2.0, 0.05, 0.05, 0.05], chunksize=1))
    assert sorted(results) == [0.05, 0.05, 0.05, 2.0]
    assert results[-1] == 2.0, "the slow item came back before the quick ones: %s" % results
    values = list(box.imap_unordered(square, range(300)))
    assert sorted(values) == [x * x for x in range(300)]


def test_starmap_and_one_uri(pair):
    box = srpy.EngBox(pair[0])
    assert len(box) == 1 and box[0].uri == pair[0]
    assert box.starmap(pow, [(2, 3), (3, 2), (10, 0)]) == [8, 9, 1]
    assert box.starmap(pow, iter([])) == []
    box.close()


# -- abort ----------------------------------------------------------------------------------------

def test_abort_stops_a_running_task_and_cancels_a_queued_one(one):
    running = one.submit(nap, 60, "long")
    wait_for(running.running)
    wait_for(lambda: not idle(one[0]))
    queued = one.submit(nap, 0, "queued")
    assert one.abort(queued) is True and queued.cancelled()
    assert one.abort(running) is True
    with pytest.raises(TaskAborted):
        running.result(timeout=15)
    wait_for(lambda: idle(one[0]), timeout=15)
    assert one.abort(running) is False  # ended already
    other = concurrent.futures.Future()
    assert one.abort(other) is False  # not this box's
    assert one.submit(nap, 0, "after").result(timeout=30)[0] == "after"


def test_abort_all_stops_everything_and_the_box_works_on(box):
    running = [box.submit(nap, 60, i) for i in range(2)]
    wait_for(lambda: all(f.running() for f in running))
    queued = [box.submit(nap, 60, i) for i in range(2, 6)]
    mapped = box.map(nap, [60] * 4)
    assert box.abort_all() >= 6
    done, not_done = concurrent.futures.wait(running + queued, timeout=15)
    assert not not_done
    assert all(isinstance(f.exception(), TaskAborted) for f in running)
    assert all(f.cancelled() for f in queued)
    with pytest.raises(TaskAborted):
        list(mapped)
    wait_for(lambda: idle(box[0]) and idle(box[1]), timeout=15)
    assert box.submit(square, 7).result(timeout=30) == 49


# -- Ctrl-C -----------------------------------------------------------------------------------------

CTRL_C_SCRIPT = """
    import os, sys, time
    import srpy

    def work(seconds, folder):
        with open(os.path.join(folder, "started-%d" % os.getpid()), "w"):
            pass
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.02)
        return seconds

    box = srpy.EngBox(sys.argv[1])
    if sys.argv[3] == "map":
        print(list(box.map(work, [60] * 4, [sys.argv[2]] * 4)))
    else:
        print(box.submit(work, 60, sys.argv[2]).result())
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("blocked_in", ["map", "result"])
def test_ctrl_c_interrupts_a_script_blocked_in_map_or_result_every_time(pair, tmp_path, blocked_in):
    script = tmp_path / "blocked.py"
    script.write_text(textwrap.dedent(CTRL_C_SCRIPT))
    engine = srpy.PythonEngine(pair[0])
    env = dict(os.environ, PYTHONPATH=ROOT)
    tries = 10 if blocked_in == "map" else 3
    for attempt in range(tries):
        folder = tmp_path / ("run%d" % attempt)
        folder.mkdir()
        process = subprocess.Popen([sys.executable, str(script), pair[0], str(folder), blocked_in],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            wait_for(lambda: os.listdir(folder) or process.poll() is not None, timeout=30)
            assert process.poll() is None, process.communicate()
            time.sleep(0.05 * (attempt % 4))  # land at different points of the wait
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError("try %d: the script did not exit within 10 s of Ctrl-C" % attempt)
        assert process.returncode in (-signal.SIGINT, 130, 1), err
        assert "KeyboardInterrupt" in err
        wait_for(lambda: idle(engine), timeout=15)  # the abandoned work was stopped on the engine
    engine.close()


def test_shutdown_from_a_done_callback_returns(pair):
    """As in concurrent.futures, a callback may shut its executor down: it must not wait for itself."""
    box = srpy.EngBox(pair)
    done = threading.Event()

    def stop(_future):
        box.shutdown(wait=True)
        done.set()

    box.submit(pow, 2, 3).add_done_callback(stop)
    assert done.wait(60), "shutdown(wait=True) from a done-callback hung"
    with pytest.raises(RuntimeError):
        box.submit(pow, 2, 3)
    box.close()


def test_an_imap_dropped_before_its_first_result_leaves_the_queue(pair):
    import gc
    box = srpy.EngBox(pair)
    box.imap(square, itertools.count())  # dropped at once, never read
    gc.collect()
    scheduler = box._scheduler
    deadline = time.monotonic() + 30
    while scheduler._maps and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not scheduler._maps, "the dropped imap still waits in the queue"
    assert box.submit(pow, 3, 2).result(60) == 9
    box.close()
