"""srpy.fanout: the one fan-out helper and the bounded worker pool (in-process, no engine needed)."""

import signal
import threading
import time

import pytest

from srpy.fanout import Workers, fan_out

pytestmark = pytest.mark.timeout(60)


def test_results_and_exceptions_come_back_in_the_items_order():
    def invert(x):
        time.sleep(0.01 * (5 - x))  # the first items finish last
        return 1 / x

    results = fan_out(invert, [1, 2, 0, 4, 5])
    assert results[:2] == [1.0, 0.5] and results[3:] == [0.25, 0.2]
    assert isinstance(results[2], ZeroDivisionError)
    assert fan_out(invert, []) == []


def test_at_most_max_workers_run_at_once():
    active, peak, lock = [0], [0], threading.Lock()

    def work(_):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return True

    assert fan_out(work, range(20), max_workers=3) == [True] * 20
    assert peak[0] <= 3


def test_items_up_to_max_workers_run_at_the_same_time():
    together = threading.Barrier(4, timeout=20)  # broken unless all four wait at once
    assert fan_out(lambda _: together.wait() >= 0, range(4), max_workers=4) == [True] * 4


def test_one_item_runs_in_the_callers_thread():
    assert fan_out(lambda _: threading.get_ident(), ["only"]) == [threading.get_ident()]


def test_a_deadline_leaves_the_slow_items_as_timeout_errors():
    release = threading.Event()
    try:
        started = time.monotonic()
        results = fan_out(lambda x: release.wait(30) and x if x else x, [0, 1, 2], timeout=0.5, name="late-ones")
        assert time.monotonic() - started < 20
        assert results[0] == 0
        assert all(isinstance(r, TimeoutError) for r in results[1:])
    finally:
        release.set()
    deadline = time.monotonic() + 30
    while any(thread.name.startswith("late-ones") for thread in threading.enumerate()):  # they answered, late
        assert time.monotonic() < deadline, "the slow items never ended"
        time.sleep(0.01)
    assert all(isinstance(r, TimeoutError) for r in results[1:]), "a late answer must not change the result"


def test_a_base_exception_in_a_worker_reaches_the_caller():
    def stop(x):
        if x == 2:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        fan_out(stop, range(4))


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks here")
def test_the_threads_leave_ctrl_c_to_the_main_thread():
    masks = fan_out(lambda _: signal.pthread_sigmask(signal.SIG_BLOCK, []), range(2))
    assert all(signal.SIGINT in mask for mask in masks)


def test_workers_run_every_job_in_a_bounded_number_of_threads():
    pool = Workers("test-workers", max_workers=2, linger=0.2)
    done, lock = [], threading.Lock()
    gate = threading.Event()

    def job(i):
        gate.wait(10)
        with lock:
            done.append(i)

    for i in range(10):
        pool.submit(job, i)
    assert pool.threads == 2, "ten jobs, at most two threads"
    gate.set()
    deadline = time.monotonic() + 20
    while (len(done) < 10 or pool.threads) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(done) == list(range(10))
    assert pool.threads == 0, "idle threads end after their linger time"


def test_a_failing_job_does_not_stop_the_pool(caplog):
    pool = Workers("test-failing", max_workers=1, linger=0.2)
    ran = threading.Event()
    pool.submit(lambda: 1 / 0)
    pool.submit(ran.set)
    assert ran.wait(10)
    assert any("a job failed" in record.getMessage() for record in caplog.records)
