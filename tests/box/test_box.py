"""EngBox: SRPy's container API, the Executor surface, function shipping, uploads, discovery."""

import concurrent.futures
import functools
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest

import srpy
from srpy import functions

from conftest import ROOT, wait_gone

SCALE = 10


def square(x):
    return x * x


def scaled(x, factor=SCALE):
    return _helper(x) * factor


def _helper(x):
    return x + 1


class Point:
    def __init__(self, x):
        self.x = x

    def norm(self):
        return math.hypot(self.x, self.x)


def uses_class(x):
    return round(Point(x).norm(), 6)


def add(a, b, c=0):
    return a + b + c


@pytest.fixture(scope="module")
def three(request):
    from conftest import Launcher
    launcher = Launcher(["-n", "3", "--group", "trio"], count=3)
    yield launcher
    launcher.stop()


@pytest.fixture
def box(three):
    engines = srpy.EngBox(three.uris)
    for engine in engines:
        engine.clear()
    yield engines
    engines.close()


# -- container -----------------------------------------------------------------------------------

def test_container_basics(box, three):
    assert len(box) == 3 and [e.uri for e in box] == three.uris
    assert isinstance(box[0], srpy.PythonEngine)
    assert [e.uri for e in box[1:]] == three.uris[1:]
    assert [e.uri for e in box[[0, 2]]] == [three.uris[0], three.uris[2]]
    assert box.toList() == box.getEngines() and box.getEngines() is not box.getEngines()
    sub = box[:]
    del sub[0]
    assert len(sub) == 2 and len(box) == 3
    assert srpy.EngBox()._engines is not srpy.EngBox()._engines  # SRPy shared one default list


def test_start_and_append_forms(three, tmp_path):
    box = srpy.EngBox()
    box.startAndAppend(three.uris[0])
    box.startAndAppendFromText("\n# a comment\n%s\n\n" % three.uris[1])
    path = tmp_path / "uris.txt"
    path.write_text(three.uris[2] + "\n")
    box.startAndAppendFromFile(str(path))
    box.append(three.uris[0])
    assert [e.uri for e in box] == three.uris + [three.uris[0]]
    with pytest.raises(srpy.SRPyServerNotFound):
        box.startAndAppend("PYRO:srpy.engine@127.0.0.1:1")
    box.close()


def test_search_for_engine(box):
    first = box[0]
    first.setGroup("special")
    try:
        found = box.searchForEngine(group="special")
        assert [e.uri for e in found] == [first.uri]
        assert len(box.searchForEngine(ip="127.0.0.1")) == 3
        assert len(box.searchForEngine(hostname=first.hostname, name=first.name)) == 1
        assert len(box.searchForEngine(name="nobody")) == 0
    finally:
        first.setGroup("trio")


def test_get_fastest(box):
    fastest = box.getFastest()
    assert fastest in box.getEngines()
    ranked = box.getFastest(single=False, basis="proc")
    assert len(ranked) == 3
    procs = [e.measured_proc for e in ranked]
    assert procs == sorted(procs) and all(p > 0.005 for p in procs)
    with pytest.raises(ValueError):
        box.getFastest(basis="speed")


def test_mrs_and_mrp(box):
    box.mrs.set(a=3)
    assert list(box.mrs.get("a").values()) == [3, 3, 3]
    missing = box.mrs.get("missing")
    assert all(isinstance(v, KeyError) for v in missing.values())
    pending = box.mrp.eval("a * 2")
    done = box.mrpwait(pending, timeout=30)
    assert done is pending and sorted(done.values()) == [6, 6, 6]
    assert set(done) == set(box.getEngines())


def test_mrpwait_timeout_and_no_sentinel(box):
    pending = box.mrp.exe("import time; time.sleep(1.5)")
    assert len(pending) < 3 and "__null__" not in pending.values()
    with pytest.raises(TimeoutError):
        box.mrpwait(pending, timeout=0.2)
    assert box.mrpwait(pending) == {e: None for e in box.getEngines()}


# -- executor ------------------------------------------------------------------------------------

def test_submit_and_map(box):
    assert box.submit(square, 12).result(timeout=30) == 144
    assert box.submit(add, 1, 2, c=3).result(timeout=30) == 6
    assert list(box.map(square, range(500))) == [x * x for x in range(500)]
    assert list(box.map(add, [1, 2, 3], [10, 20, 30])) == [11, 22, 33]
    assert list(box.map(square, range(10), chunksize=3)) == [x * x for x in range(10)]
    assert list(box.map(square, [])) == []
    done = list(concurrent.futures.as_completed([box.submit(square, i) for i in range(20)], timeout=30))
    assert sorted(f.result() for f in done) == [i * i for i in range(20)]


def test_map_raises_at_the_failing_item(box):
    results = box.map(math.sqrt, [4, 9, -1, 16])
    assert next(results) == 2.0 and next(results) == 3.0
    with pytest.raises(ValueError) as info:
        next(results)
    assert "math domain error" in str(info.value)


def test_task_exception_carries_remote_traceback(box):
    def failing(x):
        raise KeyError("no key %s" % x)
    future = box.submit(failing, 5)
    with pytest.raises(KeyError) as info:
        future.result(timeout=30)
    assert "raise KeyError" in info.value.remote_traceback


def test_progress_bar(box, capsys):
    assert list(box.map(square, range(300), progress=True)) == [x * x for x in range(300)]
    err = capsys.readouterr().err
    assert "srpy map" in err and "300/300" in err and "100%" in err


def test_context_manager_and_shutdown(three):
    with srpy.EngBox(three.uris) as box:
        future = box.submit(square, 3)
    assert future.result() == 9
    with pytest.raises(RuntimeError):
        box.submit(square, 1)


# -- shipping functions --------------------------------------------------------------------------

def test_functions_travel_with_what_they_use(box):
    assert box.submit(scaled, 1).result(timeout=30) == 20
    assert box.submit(uses_class, 3).result(timeout=30) == round(math.hypot(3, 3), 6)
    assert box.submit(lambda x: x + 100, 1).result(timeout=30) == 101
    assert box.submit(math.factorial, 5).result(timeout=30) == 120
    assert box.submit(abs, -3).result(timeout=30) == 3

    def nested(x):
        return math.sqrt(x)
    assert box.submit(nested, 16).result(timeout=30) == 4.0


def test_function_is_sent_once_per_engine(box, monkeypatch):
    scheduler = box._get_scheduler()  # made at the first work otherwise
    defined = []  # (engine, function hash) of every definition the box sends
    watched_call = scheduler._watched_call

    def noting(slot, method, *args, **kwargs):
        if method == "define":
            defined.append((slot.uri, args[0]))
        return watched_call(slot, method, *args, **kwargs)

    monkeypatch.setattr(scheduler, "_watched_call", noting)
    bundle = functions.pack(square)
    assert functions.pack(square) is bundle
    assert list(box.map(square, range(200))) == [x * x for x in range(200)]
    ran = {uri for uri, count in box.stats().items() if count}
    assert ran, "no engine ran the map"
    assert sorted(defined) == sorted((uri, bundle["hash"]) for uri in ran), "once to each engine that ran it"
    assert all(bundle["hash"] in slot.known for slot in scheduler._slots.values() if slot.uri in ran)
    assert list(box.map(square, range(200, 400))) == [x * x for x in range(200, 400)]
    assert box.submit(square, 7).result(timeout=30) == 49
    ran = {uri for uri, count in box.stats().items() if count}
    assert sorted(defined) == sorted((uri, bundle["hash"]) for uri in ran), "never again to an engine that knows it"


def test_functions_that_cannot_travel(box):
    local = 5

    def closure(x):
        return x + local
    with pytest.raises(srpy.FunctionShippingError) as info:
        box.submit(closure, 1)
    assert "'local'" in str(info.value) and "arguments" in str(info.value)
    with pytest.raises(srpy.FunctionShippingError, match="bound"):
        box.submit([].append, 1)
    with pytest.raises(srpy.FunctionShippingError, match="partial"):
        box.submit(functools.partial(add, 1), 2)
    sock = socket.socket()
    try:
        def uses_socket(x):
            return sock.fileno() + x
        with pytest.raises(srpy.FunctionShippingError, match="closure|local variable"):
            box.submit(uses_socket, 1)
    finally:
        sock.close()


def test_unsendable_argument_fails_its_future(box):
    future = box.submit(square, object())
    with pytest.raises(TypeError, match="object"):
        future.result(timeout=30)
    assert box.submit(square, 4).result(timeout=30) == 16


def test_local_module_is_shipped(box, tmp_path, monkeypatch):
    (tmp_path / "localhelpers_srpy.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import localhelpers_srpy
    assert functions.module_origin(localhelpers_srpy) == "local"
    assert list(box.map(localhelpers_srpy.triple, [1, 2, 3])) == [3, 6, 9]
    code = textwrap.dedent("""
        import localhelpers_srpy
        def via_module(x):
            return localhelpers_srpy.triple(x) + 1
    """)
    (tmp_path / "caller_srpy.py").write_text(code)
    import caller_srpy
    assert box.submit(caller_srpy.via_module, 2).result(timeout=30) == 7


def test_require_names_missing_packages(box):
    box.require("json", "math")
    with pytest.raises(srpy.MissingPackagesError) as info:
        box.require("json", "surely_not_a_package_srpy")
    message = str(info.value)
    assert "surely_not_a_package_srpy" in message and all(e.uri in message for e in box)
    assert len(info.value.missing) == 3


def test_upload_tree_then_tasks_read_it(box, tmp_path):
    data = tmp_path / "dataset"
    (data / "inner").mkdir(parents=True)
    (data / "numbers.txt").write_text("1 2 3\n")
    (data / "inner" / "more.txt").write_text("4 5\n")
    unpacked = box.upload(str(data))
    assert set(unpacked) == {e.uri for e in box}
    assert all(sorted(files) == ["dataset/inner/more.txt", "dataset/numbers.txt"] for files in unpacked.values())

    def total(name):
        with open(name) as handle:
            return sum(int(v) for v in handle.read().split())
    assert list(box.map(total, ["dataset/numbers.txt", "dataset/inner/more.txt"])) == [6, 9]


# -- discovery -----------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_discovery_through_name_server(start_launcher):
    port = _free_port()
    launcher = start_launcher(["-n", "2", "--start-ns", "--ns-port", str(port), "--group", "blue"], count=2)
    box = srpy.EngBox.discover(ns_port=port)
    assert sorted(e.uri for e in box) == sorted(launcher.uris)
    assert all(e.group == "blue" for e in box)
    assert len(srpy.EngBox.discover(group="blue", ns_port=port)) == 2
    assert len(srpy.EngBox.discover(group="red", ns_port=port)) == 0
    listing = subprocess.run([sys.executable, "-m", "Pyro5.nsc", "-p", str(port), "list"],
                             capture_output=True, text=True, timeout=30).stdout
    assert "srpy.engine.blue." in listing and "srpy:group=blue" in listing and "srpy:cores=" in listing
    victim = psutil.Process(box[0].info["PID"])
    victim.send_signal(signal.SIGKILL)
    assert wait_gone([victim.pid])
    box.close()
    again = srpy.EngBox.discover(ns_port=port, timeout=2)
    assert len(again) == 1 and again[0].uri != box[0].uri
    listing = subprocess.run([sys.executable, "-m", "Pyro5.nsc", "-p", str(port), "list"],
                             capture_output=True, text=True, timeout=30).stdout
    assert listing.count("srpy.engine.blue.") == 1, "the dead engine's entry must be removed"
    again.close()


def test_python_option(start_launcher, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    bare_python = str(bare / "bin" / "python")
    failed = subprocess.run([sys.executable, "srpyapp.py", "-n", "1", "--python", bare_python],
                            capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert failed.returncode != 0 and "has no srpy" in failed.stderr
    launcher = start_launcher(["-n", "1", "--python", sys.executable], count=1)
    engine = srpy.PythonEngine(launcher.uris[0])
    assert os.path.realpath(engine.info["Python Executable"]) == os.path.realpath(sys.executable)
    engine.close()


def test_closing_a_sibling_box_leaves_the_engines_of_its_parent_open(engine_uri):
    box = srpy.EngBox([engine_uri])
    part = box[0:1]
    part.close()
    assert box.submit(pow, 2, 4).result(60) == 16, "the parent's engine still works"
    given = srpy.PythonEngine(engine_uri)
    srpy.EngBox([given]).close()
    assert given.eval("1 + 1") == 2, "an engine given to a box is its giver's to close"
    given.close()
    box.close()
    with pytest.raises(srpy.ConnectionLost, match="closed"):
        box[0].eval("1 + 1")
