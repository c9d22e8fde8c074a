"""
The scheduler's rules in-process: how big a chunk or a batch is, whose share of the work is what,
how speed is remembered, and how a map's chunks come back to its consumer. No engine, no socket:
these are the pure functions and objects of L{srpy.scheduler} (the dispatching itself runs
against real engines in test_box.py and test_box_faults.py).
"""

import math
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from srpy import scheduler
from srpy.errors import TaskAborted
from srpy.scheduler import MapJob, Scheduler, batch_limit, chunk_size, remember_speed, speed_share


# -- sizing ---------------------------------------------------------------------------------------------

def test_chunk_sizes_small_job_one_chunk_per_idle_engine_long_job_shrinking_chunks():
    """
    The sizing rule (a pure function of a function's measured seconds per item): a job under
    5 ms of work per idle engine goes out as one equal chunk per idle engine; long tasks go out
    in shrinking fair shares.
    """
    assert chunk_size(1e-7, 20000, 0.5, 2, probe=32) == 10000  # x*x: 0.1 us an item; both engines idle: half each
    assert chunk_size(1e-7, 10000, 0.5, 1, probe=32) == 10000  # the other has its half: the rest
    assert chunk_size(0.02, 16, 0.5, 2, probe=32) == 8  # 20 ms an item
    assert chunk_size(0.02, 8, 0.5, 1, probe=32) == 4  # the fair share shrinks as the work runs out
    assert chunk_size(1e-3, 100000, 0.5, 2, probe=32) == 250  # at most 0.25 s of work in one chunk
    assert chunk_size(None, 20000, 0.5, 2, probe=32) == 32  # not measured yet: a small probe


def test_a_probe_is_an_eighth_of_the_fair_share_and_never_empty():
    assert chunk_size(None, 64, 0.5, 2, probe=32) == 4
    assert chunk_size(None, 1, 0.5, 2, probe=32) == 1
    assert chunk_size(None, 0, 1.0, 1, probe=32) == 1


@pytest.mark.parametrize("per_item", [1e-9, 1e-6, 1e-4, 1e-2, 1.0, 100.0])
@pytest.mark.parametrize("pending", [1, 7, 1000, 10 ** 6])
@pytest.mark.parametrize("share, idle", [(1.0, 1), (0.5, 2), (0.25, 4), (0.9, 1)])
def test_a_chunk_is_at_least_one_item_and_no_more_than_there_are(per_item, pending, share, idle):
    size = chunk_size(per_item, pending, share, idle, probe=32)
    assert 1 <= size <= max(pending, 1)
    if size * per_item > scheduler.MIN_SECONDS:  # a chunk past the small-job rule: its fair share, 0.25 s at most
        assert size <= max(1, math.ceil(pending * share))
        assert size == 1 or size * per_item <= scheduler.TARGET_SECONDS * 5


def test_batches_of_submitted_tasks():
    assert batch_limit(1e-6, 10, 0.5) == 10  # a short queue goes whole: tasks keep arriving while engines work
    assert batch_limit(1e-6, 10 ** 6, 0.5) == scheduler.MAX_BATCH
    assert batch_limit(scheduler.SHORT_TASK, 100, 0.5) == 25  # 0.25 s of 10 ms tasks
    assert batch_limit(1e-3, 1, 1.0) == 1


# -- shares and speeds ------------------------------------------------------------------------------------

def test_shares_follow_measured_speed_then_benchmarks_then_are_equal():
    assert speed_share(0, [0.1, 0.3], [None, None]) == pytest.approx(0.75)  # measured on both: 3x as fast
    assert speed_share(1, [0.1, None], [2.0, 6.0]) == pytest.approx(0.75)  # not on both: the benchmarks
    assert speed_share(0, [0.1, None], [2.0, None]) == pytest.approx(0.5)  # neither on all: equal
    assert sum(speed_share(i, [0.2, 0.1, 0.4], [None] * 3) for i in range(3)) == pytest.approx(1.0)


def test_speed_is_a_moving_average_and_the_memory_is_bounded():
    table = {}
    remember_speed(table, "f", 1.0)
    assert table == {"f": 1.0}
    remember_speed(table, "f", 3.0)
    assert table["f"] == pytest.approx(1.0 + (3.0 - 1.0) * scheduler._SMOOTHING)
    for index in range(scheduler._SPEED_MEMORY + 5):
        remember_speed(table, "g%d" % index, 0.5)
    assert len(table) == scheduler._SPEED_MEMORY and "f" not in table, "the oldest are forgotten first"
    remember_speed(table, "g%d" % (scheduler._SPEED_MEMORY + 4), 1.5)  # a known one takes no room
    assert len(table) == scheduler._SPEED_MEMORY


# -- a map's chunks, and its consumer -----------------------------------------------------------------------

BUNDLE = {"hash": "h"}


@pytest.fixture
def idle_scheduler():
    """A scheduler with no engine (it starts no thread): enough to read a map's results through."""
    sched = Scheduler(on_dead=lambda engine: None)
    yield sched
    sched.shutdown(wait=False)


def new_job(sched, items, ordered=True):
    job = MapJob(BUNDLE, "map1", list(items), chunksize=None, timeout=None, ordered=ordered)
    job.scheduler = sched
    return job


def test_chunks_are_cut_in_order_and_stop_at_the_end(idle_scheduler):
    job = new_job(idle_scheduler, range(10))
    tasks = [job.cut(4), job.cut(4), job.cut(4)]
    assert [task.payload for task in tasks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [task.size for task in tasks] == [4, 4, 2] and job.remaining == 0
    assert all(task.started and task.future.running() for task in tasks), "a cut chunk runs: it cannot be cancelled"


def test_results_come_in_item_order_whatever_order_the_chunks_end_in(idle_scheduler):
    job = new_job(idle_scheduler, range(6))
    first, second = job.cut(3), job.cut(3)
    second.future.set_result(("ok", [9, 16, 25]))
    first.future.set_result(("ok", [0, 1, 4]))
    assert list(scheduler.results(job, None)) == [0, 1, 4, 9, 16, 25]


def test_unordered_results_come_as_the_chunks_end(idle_scheduler):
    job = new_job(idle_scheduler, range(4), ordered=False)
    first, second = job.cut(2), job.cut(2)
    second.future.set_result(("ok", ["c", "d"]))
    first.future.set_result(("ok", ["a", "b"]))
    assert list(scheduler.results(job, None)) == ["c", "d", "a", "b"]


def test_a_chunk_that_failed_part_way_gives_its_values_then_raises(idle_scheduler):
    job = new_job(idle_scheduler, range(4))
    first, second = job.cut(2), job.cut(2)
    first.future.set_result(("part", [10], ZeroDivisionError("item 1")))
    second.future.set_result(("ok", [12, 13]))
    seen = []
    with pytest.raises(ZeroDivisionError, match="item 1"):
        for value in scheduler.results(job, None):
            seen.append(value)
    assert seen == [10] and job.cancelled, "the rest of the map is given up"


def test_a_result_not_there_by_the_deadline_is_a_timeout_and_the_map_is_given_up(idle_scheduler):
    job = new_job(idle_scheduler, range(2))
    job.cut(2)
    with pytest.raises(FutureTimeout):
        next(scheduler.results(job, deadline=0.0))
    assert job.cancelled


def test_a_stopped_map_raises_its_reason_after_what_was_cut(idle_scheduler):
    job = new_job(idle_scheduler, range(6))
    task = job.cut(2)
    job.stop(TaskAborted("stopped"))
    task.future.set_result(("ok", [0, 1]))
    iterator = scheduler.results(job, None)
    assert [next(iterator), next(iterator)] == [0, 1]
    with pytest.raises(TaskAborted, match="stopped"):
        next(iterator)
