"""
Issue 10: time limits stop the code, never the service; abort stops a running call the same way.

In every way engines are hosted (basic srpyapp, C{-n 1}, C{-n 1 --restart}, C{newSubEngine()}):
Python code that overruns its limit is interrupted and the engine keeps its namespace; code that
holds the interpreter makes the engine end and a fresh one serve at the same URI, with one log
line instead of faulthandler's dump; the caller gets TaskTimeout either way.
"""

import os
import re
import signal
import threading
import time

import psutil
import pytest

import srpy
from srpy.errors import SRPyError, TaskAborted, TaskTimeout

from conftest import Launcher, wait_gone

pytestmark = pytest.mark.timeout(120)

#: C code that holds the interpreter for minutes (a huge integer power never lets go of the GIL)
HOLDS_THE_GIL = "x = 10**10**8"
SPINS = "while True:\n    pass"
MODES = {"basic": [], "multi": ["-n", "1"], "multi-restart": ["-n", "1", "--restart"], "sub-engine": None}
#: every mode; the quick loop (-m "not slow") keeps the basic one
MODE_PARAMS = [pytest.param(mode, marks=() if mode == "basic" else pytest.mark.slow) for mode in MODES]


class Hosted:
    """One engine hosted in one of the L{MODES}; L{finish} stops it and returns its log (stderr)."""

    def __init__(self, mode, capfd, extra=()):
        self.mode, self.capfd = mode, capfd
        self.launcher = self.process = None
        if MODES[mode] is None:
            options = {"max_task_time": float(extra[1])} if list(extra[:1]) == ["--max-task-time"] else {}
            self.uri, self.process = srpy.newSubEngine(timeout=60, **options)
        else:
            self.launcher = Launcher(MODES[mode] + list(extra))
            self.uri = self.launcher.uris[0]

    def finish(self):
        if self.launcher is not None:
            code, err = self.launcher.shutdown()
            assert code == 0, err
            return err
        assert srpy.stopSubEngine(self.process) == 0
        return self.capfd.readouterr().err

    def processes(self):
        root = self.launcher.process.pid if self.launcher else self.process.pid
        return [root] + [p.pid for p in psutil.Process(root).children(recursive=True)]


@pytest.fixture(params=MODE_PARAMS)
def hosted(request, capfd):
    """Factory: hosted(extra launcher options) -> Hosted, in each mode; stopped after the test."""
    made = []

    def make(extra=()):
        made.append(Hosted(request.param, capfd, extra))
        return made[-1]

    yield make
    for item in made:
        if item.launcher is not None and item.launcher.process.poll() is None:
            item.launcher.shutdown()
        elif item.process is not None and item.process.poll() is None:
            srpy.stopSubEngine(item.process)


def serving_again(uri, old_pid, within=30.0):
    """The pid of the engine at C{uri} once it is a different process from C{old_pid} and answers."""
    deadline = time.monotonic() + within
    while True:
        try:
            with srpy.PythonEngine(uri, connect_timeout=2) as probe:
                pid = probe.whoami()["PID"]
                if pid != old_pid and probe.eval("6 * 7") == 42:
                    return pid
        except SRPyError:
            pass
        assert time.monotonic() < deadline, "no fresh engine answers at %s" % uri
        time.sleep(0.05)


def assert_one_line_about_the_backstop(log):
    """Faulthandler's dump never reaches the log: one line tells where the code was."""
    for dump in ("Timeout (", "Thread 0x", "Fatal Python error", "most recent call first", "Current thread"):
        assert dump not in log, log
    lines = [line for line in log.splitlines() if "held the interpreter" in line]
    assert len(lines) == 1, log
    assert re.search(r'at File "<srpy exec [0-9a-f]+>", line 1, in <module>', lines[0]), lines[0]


def run_in_thread(function, *args):
    """Start C{function(*args)} in a thread; returns a dict that gets 'error' or 'value', and the thread."""
    outcome = {}

    def body():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # noqa: B902 - the test looks at whatever it was
            outcome["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return outcome, thread


def wait_busy(engine, within=20.0):
    deadline = time.monotonic() + within
    while not engine.isBusy():
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.01)


# -- in every hosting mode ------------------------------------------------------------------------------

def test_python_code_over_its_limit_is_interrupted_and_the_namespace_kept(hosted):
    item = hosted()
    with srpy.PythonEngine(item.uri) as eng:
        eng.set(kept=[1, 2, 3])
        pid = eng.whoami()["PID"]
        with pytest.raises(TaskTimeout, match=r"exe\(\) ran longer than its time limit of 1 s") as info:
            eng.limited(1).exe(SPINS)
        assert "while True" in info.value.remote_traceback, "the traceback shows where the code was stopped"
        assert eng.get("kept") == [1, 2, 3] and eng.whoami()["PID"] == pid, "no restart"
        assert eng.limited(1).eval("sum(range(10))") == 45, "short calls under a limit are untouched"
    log = item.finish()
    assert "Traceback" not in log


def test_code_holding_the_interpreter_ends_the_engine_and_a_fresh_one_serves_at_the_same_uri(hosted):
    item = hosted()
    with srpy.PythonEngine(item.uri) as eng:
        eng.set(lost=1)
        pid = eng.whoami()["PID"]
        sandbox = eng.eval("__import__('os').getcwd()")
        with pytest.raises(TaskTimeout, match="held the interpreter"):
            eng.limited(1).exe(HOLDS_THE_GIL)
        assert eng.eval("2 + 2") == 4, "the very next call finds the fresh engine serving"
        assert wait_gone([pid])
        new_pid = serving_again(item.uri, pid)
        assert eng.eval("1 + 1") == 2 and eng.get() == [], "the same client goes on, with a fresh namespace"
        assert eng.whoami()["PID"] == new_pid and new_pid in item.processes()
        assert not os.path.exists(sandbox), "the dead engine's sandbox (and the stacks in it) are removed"
    log = item.finish()
    assert_one_line_about_the_backstop(log)
    assert "died" not in log and "restarting engine" not in log, "a limit's restart is no crash"


def test_code_that_does_not_stop_when_interrupted_ends_the_engine(hosted):
    """time.sleep in C, and code that swallows BaseException: the engine answers TaskTimeout, then ends."""
    item = hosted()
    swallows = "while True:\n    try:\n        n = 0\n        while True:\n            n += 1\n    except BaseException:\n        pass"
    with srpy.PythonEngine(item.uri) as eng:
        for code in ("import time\ntime.sleep(60)", swallows):
            pid = eng.whoami()["PID"]
            with pytest.raises(TaskTimeout, match="did not stop when interrupted") as info:
                eng.limited(1).exe(code)
            assert "<srpy exec" in info.value.remote_traceback
            assert eng.eval("2 + 2") == 4, "the very next call finds the fresh engine serving"
            serving_again(item.uri, pid)
            assert eng.eval("3 * 3") == 9
    log = item.finish()
    assert "died" not in log and "Traceback" not in log


def test_max_task_time_of_the_engine(hosted):
    item = hosted(["--max-task-time", "1"])
    with srpy.PythonEngine(item.uri) as eng:
        assert eng.info["Max Task Time"] == 1.0, "the client learns the engine's limit"
        eng.set(kept=1)
        with pytest.raises(TaskTimeout, match="the engine's --max-task-time of 1 s"):
            eng.exe(SPINS)
        assert eng.get("kept") == 1
        with pytest.raises(TaskTimeout, match="its time limit of 0.5 s"):
            eng.limited(0.5).exe(SPINS)  # the shorter limit holds
        with pytest.raises(TaskTimeout, match="the engine's --max-task-time of 1 s"):
            eng.limited(30).exe(SPINS)  # a longer one does not lift the engine's
        pid = eng.whoami()["PID"]
        with pytest.raises(TaskTimeout, match="--max-task-time of 1 s and held the interpreter"):
            eng.exe(HOLDS_THE_GIL)  # no limit from the client: its connection is lost, it still says why
        serving_again(item.uri, pid)
        assert eng.eval("sum(range(10))") == 45, "short calls are untouched"
    assert_one_line_about_the_backstop(item.finish())


# -- where a limit applies ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def basic_uri():
    launcher = Launcher([])
    yield launcher.uris[0]
    code, err = launcher.shutdown()
    assert code == 0, err


def test_a_limited_view_limits_its_namespace_functions_and_remote_objects(basic_uri):
    with srpy.PythonEngine(basic_uri) as eng:
        eng.exe("def spin():\n    while True:\n        pass\n"
                "class Spinner:\n    def spin(self):\n        spin()\nspinner = Spinner()")
        view = eng.limited(1)
        with pytest.raises(TaskTimeout):
            view.ns.spin()
        with pytest.raises(TaskTimeout):
            view.associateFunction("spin")()
        with pytest.raises(TaskTimeout):
            view.ns.spinner.spin()
        with pytest.raises(TaskTimeout):
            eng.limited(1).ns.spinner.spin()
        assert eng.eval("1") == 1 and "spinner" in eng.get()
        assert view.uri == eng.uri and view.info is eng.info
        view.setGroup("through-the-view")
        assert eng.group == "through-the-view", "a view sets the original's state"
        assert eng.limited(None).call_timeout is None and eng.call_timeout is None


def test_closing_a_view_leaves_the_original_open(basic_uri):
    with srpy.PythonEngine(basic_uri) as eng:
        with eng.limited(5) as view:
            assert view.eval("2 + 2") == 4
        with pytest.raises(SRPyError, match="closed"):
            view.eval("1")
        assert eng.eval("3 + 3") == 6
        other = eng.limited(5)
        other.close()
        assert eng.limited(5).eval("4") == 4 and eng.ns.__class__ is srpy.Namespace


def test_a_limit_must_be_a_positive_number(basic_uri):
    with srpy.PythonEngine(basic_uri) as eng:
        for bad in (0, -1, float("nan")):
            with pytest.raises(ValueError, match="above 0"):
                eng.limited(bad)


# -- abort ----------------------------------------------------------------------------------------------

def test_abort_stops_the_running_call_with_that_id(basic_uri):
    with srpy.PythonEngine(basic_uri) as eng:
        eng.set(kept=5)
        call_id = eng.new_call_id()
        outcome, thread = run_in_thread(eng.tagged(call_id).exe, SPINS)
        wait_busy(eng)
        assert eng.abort(eng.new_call_id()) is False, "another id stops nothing"
        assert eng.isBusy()
        assert eng.abort(call_id) is True
        thread.join(30)
        assert isinstance(outcome.get("error"), TaskAborted), outcome
        assert "while True" in outcome["error"].remote_traceback
        assert eng.get("kept") == 5, "interrupted: the namespace is kept"
        assert eng.abort(call_id) is False, "a call that ended: abort does nothing"
        assert eng.tagged(eng.new_call_id()).eval("2 + 3") == 5


def test_abort_before_the_call_begins_refuses_it(basic_uri):
    with srpy.PythonEngine(basic_uri) as eng:
        call_id = eng.new_call_id()
        assert eng.abort(call_id) is False
        with pytest.raises(TaskAborted, match="aborted before it began"):
            eng.tagged(call_id).exe("import time\ntime.sleep(30)")
        assert eng.ping() == "pong"


def test_abort_of_a_call_blocked_in_c_ends_the_engine_and_a_fresh_one_serves(basic_uri):
    with srpy.PythonEngine(basic_uri) as eng:
        pid = eng.whoami()["PID"]
        call_id = eng.new_call_id()
        outcome, thread = run_in_thread(eng.tagged(call_id).limited(None).exe, "import time\ntime.sleep(60)")
        wait_busy(eng)
        assert eng.abort(call_id) is True
        thread.join(30)
        assert isinstance(outcome.get("error"), TaskAborted), outcome
        assert "ended its process" in str(outcome["error"])
        serving_again(basic_uri, pid)
        assert eng.eval("7") == 7


def test_abort_takes_an_id_of_8_bytes(basic_uri):
    with srpy.PythonEngine(basic_uri) as eng:
        with pytest.raises(ValueError, match="8 bytes"):
            eng.call("abort", b"short")
        assert eng.call("abort", "00" * 8) is False, "16 hex digits (what a json client can send)"
        with pytest.raises(ValueError, match="8 bytes"):
            eng.tagged(b"short")


# -- the launcher around a limit ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [pytest.param([], id="basic"), pytest.param(["-n", "1"], id="multi", marks=pytest.mark.slow)])
def test_the_uri_file_is_never_left_behind(tmp_path, args):
    path = tmp_path / "uris.txt"
    launcher = Launcher(args + ["-u", str(path), "--max-task-time", "1"])
    try:
        with srpy.PythonEngine(launcher.uris[0]) as eng:
            pid = eng.whoami()["PID"]
            with pytest.raises(TaskTimeout):
                eng.exe(HOLDS_THE_GIL)
            serving_again(launcher.uris[0], pid)
            assert path.read_text().split() == launcher.uris, "same URI, same file"
            with pytest.raises(srpy.ConnectionLost):
                eng.exe("import os; os._exit(7)")  # a crash, not a limit
        if not args:  # basic mode ends with its engine, and says why
            assert launcher.process.wait(30) == 7
    finally:
        code, err = launcher.shutdown()
    assert code == (7 if not args else 0), err
    assert "died with exit code 7" in err
    assert not path.exists()


@pytest.mark.slow
def test_restarts_for_limits_are_not_crashes(tmp_path):
    """Under --restart, a limit's restart has no back-off; a crash still has."""
    launcher = Launcher(["-n", "1", "--restart"])
    try:
        with srpy.PythonEngine(launcher.uris[0]) as eng:
            for _ in range(3):
                pid = eng.whoami()["PID"]
                with pytest.raises(TaskTimeout):
                    eng.limited(0.5).exe(HOLDS_THE_GIL)
                serving_again(launcher.uris[0], pid)
            pid = eng.whoami()["PID"]
            os.kill(pid, signal.SIGKILL)
            serving_again(launcher.uris[0], pid)
    finally:
        code, err = launcher.shutdown()
    assert code == 0, err
    assert err.count("held the interpreter") == 3
    assert err.count("died with exit code -9") == 1 and err.count("restarting engine") == 1, err


def test_a_killed_keeper_takes_its_engine_with_it():
    launcher = Launcher(["-n", "1"])
    try:
        with srpy.PythonEngine(launcher.uris[0]) as eng:
            engine_pid = eng.whoami()["PID"]
        keeper = psutil.Process(engine_pid).ppid()
        assert keeper in [p.pid for p in psutil.Process(launcher.process.pid).children()]
        os.kill(keeper, signal.SIGKILL)
        assert wait_gone([engine_pid], timeout=20), "an engine outlived its keeper"
    finally:
        launcher.shutdown()
