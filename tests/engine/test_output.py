"""
What user code prints goes to the engine's log (and, unless a client says no, to that client as well:
tests/box/test_output.py); reading stdin does not hang an engine.
"""

import pytest

import srpy

pytestmark = pytest.mark.timeout(60)


def test_prints_go_to_the_engine_log_not_to_a_client_that_does_not_forward(start_launcher, capfd):
    launcher = start_launcher(["-b"])
    with srpy.PythonEngine(launcher.uris[0], forward_output=False) as eng:
        eng.exe("print('MARK-stdout-line')")
        eng.exe("import sys; print('MARK-stderr-line', file=sys.stderr)")
        assert eng.eval("print('MARK-in-eval') or 5") == 5
        eng.vexe("print('MARK-in-vexe')")
        eng.exe("import sys; sys.stdout.write('MARK-partial')")  # no newline, and the last output
        assert eng.ping() == "pong"
    out, err = capfd.readouterr()
    assert "MARK" not in out and "MARK" not in err, "nothing printed on an engine reaches this client"
    code, log = launcher.stop()
    assert code == 0, log
    for mark in ("MARK-stdout-line", "MARK-stderr-line", "MARK-partial", "MARK-in-eval", "MARK-in-vexe"):
        assert mark in log, mark
    assert "srpy.engine.output" in log


def test_prints_of_a_child_engine_go_to_its_log(start_launcher):
    launcher = start_launcher(["-n", "1"], count=1)
    with srpy.PythonEngine(launcher.uris[0]) as eng:  # forwarded here, and in the log all the same
        eng.exe("print('CHILD-MARK')")
        assert eng.ping() == "pong"
    code, log = launcher.stop()
    assert code == 0 and "CHILD-MARK" in log


def test_user_code_reading_stdin_does_not_hang_the_engine(start_launcher):
    launcher = start_launcher(["-n", "1"], count=1)
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        with pytest.raises(EOFError):
            eng.call("exe", "input()", {}, timeout=15)  # a hang fails the test, not the session
        with pytest.raises(EOFError):
            eng.exe("import sys; sys.stdin.readline() or (_ for _ in ()).throw(EOFError)")
        assert eng.ping() == "pong"
    assert launcher.stop()[0] == 0

