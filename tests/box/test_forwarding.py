"""What engine code prints reaches the caller's stdout/stderr, as it happens, each line prefixed with the engine's name."""

import os
import time

import pytest

import srpy
from srpy import forwarding

pytestmark = pytest.mark.timeout(90)


def shout(x):
    print("task says", x)
    return x * 2


def shout_and_fail(x):
    import sys
    print("about to fail", x)
    print("on stderr", x, file=sys.stderr)
    raise ValueError("failed on %s" % x)


def wait_for_file(path):
    import os
    import time
    print("first line")
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return "the file never came"
        time.sleep(0.02)
    print("last line")
    return "done"


def wait_for(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "%s did not happen within %s s" % (what, timeout)
        time.sleep(0.02)


def test_exe_and_eval_output_is_forwarded_with_the_prefix(engine_uri, capsys):
    with srpy.PythonEngine(engine_uri) as eng:
        assert eng.forward_output, "on by default, as in Ray"
        eng.exe("import sys; print('MARK-out'); print('MARK-err', file=sys.stderr)")
        assert eng.eval("print('MARK-eval', end='') or 5") == 5
        out, err = capsys.readouterr()
        prefix = "(%s) " % eng.name
        assert out.splitlines() == [prefix + "MARK-out", prefix + "MARK-eval"], out
        assert err.splitlines() == [prefix + "MARK-err"], err
        with pytest.raises(ZeroDivisionError):
            eng.exe("print('MARK-before-raise'); 1/0")
        assert capsys.readouterr().out == prefix + "MARK-before-raise\n", "a call that raises forwards too"


def test_the_switch_keeps_output_in_the_engine_log(engine_uri, capsys):
    with srpy.PythonEngine(engine_uri, forward_output=False) as eng:
        eng.exe("print('MARK-kept')")
        assert capsys.readouterr() == ("", "")
        eng.forward_output = True
        eng.exe("print('MARK-now-forwarded')")
        assert capsys.readouterr().out == "(%s) MARK-now-forwarded\n" % eng.name
        view = eng.limited(30)  # views share their client's setting
        eng.forward_output = False
        view.exe("print('MARK-view')")
        assert capsys.readouterr() == ("", "")
    srpy.set_forward_output(False)
    try:
        with srpy.PythonEngine(engine_uri) as eng, srpy.EngBox([engine_uri]) as box:
            eng.exe("print('MARK-default-off')")
            box.submit(shout, 1).result()
            assert not eng.forward_output and not box[0].forward_output
    finally:
        srpy.set_forward_output(True)
    assert capsys.readouterr() == ("", "")
    assert forwarding.DEFAULT


def test_output_of_submit_and_map_tasks_is_forwarded(pair, capsys):
    with srpy.EngBox(pair) as box:
        names = {engine.name for engine in box}
        assert box.submit(shout, 21).result() == 42
        assert list(box.map(shout, range(20))) == [2 * x for x in range(20)]
        future = box.submit(shout_and_fail, 7)
        with pytest.raises(ValueError):
            future.result()
        out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1 + 20 + 1, out
    seen = {}
    for line in lines:
        name, _, text = line.partition(") ")
        assert name[1:] in names, line
        seen[text] = name
    assert set(seen) == {"task says %d" % x for x in list(range(20)) + [21]} | {"about to fail 7"}
    assert err.endswith(") on stderr 7\n") and err.startswith("(" + seen["about to fail 7"][1:]), err


def test_a_long_tasks_first_line_arrives_before_it_ends(pair, capsys, tmp_path):
    go = str(tmp_path / "go")
    with srpy.EngBox(pair[0]) as box:
        future = box.submit(wait_for_file, go)
        seen = []

        def first_line_seen():
            seen.append(capsys.readouterr().out)
            return "first line" in "".join(seen)

        wait_for(first_line_seen, "the first line")
        assert not future.done(), "the line came while the task ran"
        open(go, "w").close()
        assert future.result(timeout=60) == "done"
        seen.append(capsys.readouterr().out)
    assert "".join(seen).splitlines() == ["(%s) first line" % box[0].name, "(%s) last line" % box[0].name]


def test_a_flood_of_lines_all_arrives_in_order_with_the_reply(engine_uri, capfd):
    with srpy.PythonEngine(engine_uri) as eng:
        eng.exe("def flood(n):\n    for i in range(n):\n        print('line', i)\n    return n\n")
        assert eng.eval("flood(30000)") == 30000
        out = capfd.readouterr().out
    lines = out.splitlines()
    assert lines == ["(%s) line %d" % (eng.name, i) for i in range(30000)]


def test_output_of_a_call_stopped_by_its_limit_is_forwarded(engine_uri, capsys):
    with srpy.PythonEngine(engine_uri) as eng:
        with pytest.raises(srpy.TaskTimeout):
            eng.limited(1).exe("import time\nprint('MARK-started')\nwhile True:\n    time.sleep(0.01)\n")
        assert capsys.readouterr().out == "(%s) MARK-started\n" % eng.name
        assert eng.ping() == "pong"


def test_output_that_keeps_coming_does_not_stretch_the_clients_timeout(engine_uri, capsys):
    with srpy.PythonEngine(engine_uri) as eng:
        eng.timeout = 1.0
        with pytest.raises(srpy.CallTimeout):
            eng.exe("import time\nfor i in range(300):\n    print('tick', i)\n    time.sleep(0.01)\n")
        eng.timeout = None
        assert eng.wait(60), "the call ends on the engine"
        assert eng.ping() == "pong"
    assert capsys.readouterr().out.startswith("(%s) tick 0\n" % eng.name)


def test_a_broken_stdout_loses_lines_not_the_reply(engine_uri, monkeypatch):
    class Broken:
        def write(self, text):
            raise OSError("stdout is gone")

        def flush(self):
            raise OSError("stdout is gone")

    with srpy.PythonEngine(engine_uri) as eng:
        monkeypatch.setattr("sys.stdout", Broken())
        assert eng.eval("print('lost') or 'reply'") == "reply"
        assert eng.eval("print('lost again') or 'reply'") == "reply"


def test_run_output_is_forwarded_and_returned(engine_uri, capsys, tmp_path):
    script = tmp_path / "say.py"
    script.write_text("import sys\nprint('hello', sys.argv[1])\n")
    with srpy.PythonEngine(engine_uri) as eng:
        result = eng.run(str(script), "world")
    assert result == {"exit": 0, "stdout": "hello world\n", "stderr": ""}
    assert capsys.readouterr().out == "(%s) hello world\n" % eng.name



def test_the_environment_sets_the_default(engine_uri):
    import subprocess
    import sys

    from conftest import ROOT
    code = ("import srpy\neng = srpy.PythonEngine(%r)\neng.exe(\"print('MARK-env')\")\n"
            "print('forwarding', eng.forward_output)\neng.close()\n" % engine_uri)
    with srpy.PythonEngine(engine_uri) as eng:
        name = eng.name
    for value, expected in (("0", "forwarding False\n"), ("1", "(%s) MARK-env\nforwarding True\n" % name)):
        env = dict(os.environ, SRPY_FORWARD_OUTPUT=value, PYTHONPATH=ROOT)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout == expected, done.stdout


def test_a_connection_whose_first_call_was_refused_still_asks(engine_uri, capsys):
    with srpy.PythonEngine(engine_uri) as eng:
        conn = eng.pool.connect()  # a fresh connection: its first call carries the request for output
        try:
            with pytest.raises(AttributeError):
                conn.call("no_such_method")  # refused before any engine method runs
            conn.call("exe", ("print('MARK-after-refusal')", {}))
        finally:
            conn.close()
        assert capsys.readouterr().out == "(%s) MARK-after-refusal\n" % eng.name


@pytest.mark.slow
def test_a_call_that_holds_the_interpreter_still_gets_its_reply(start_launcher, capsys):
    launcher = start_launcher(["-b"])
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        with pytest.raises(srpy.TaskTimeout, match="held the interpreter"):
            eng.limited(1).exe("print('MARK-before-hold')\nx = 10**10**8\n")
        assert eng.eval("print('MARK-fresh') or 2 + 2") == 4, "the fresh engine serves, and forwards"
    out = capsys.readouterr().out
    assert out.endswith(") MARK-fresh\n"), out
    assert out.count("MARK-before-hold") == 1, "a line printed just before the code holds the interpreter arrives"


def test_a_sub_engine_does_not_log_what_it_forwarded_to_its_callers_terminal(capfd):
    """newSubEngine's log is this program's stderr: a forwarded line is shown once, not twice."""
    uri, process = srpy.newSubEngine()
    try:
        with srpy.PythonEngine(uri) as eng:
            eng.exe("print('shown-once')")
            eng.forward_output = False
            eng.exe("print('kept-in-the-log')")
            eng.ping()
        out, err = capfd.readouterr()
        assert out.count("shown-once") == 1 and "shown-once" not in err
        assert "kept-in-the-log" not in out and "kept-in-the-log" in err, "a line not forwarded stays in the log"
    finally:
        srpy.stopSubEngine(process)
