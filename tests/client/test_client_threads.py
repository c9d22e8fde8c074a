"""
One client shared by many threads (a PythonEngine, a lite.Engine), a client per thread, and a
client closed while other threads call through it.
"""

import time

import pytest

import srpy
from conftest import Background, run_threads

pytestmark = pytest.mark.timeout(60)


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
