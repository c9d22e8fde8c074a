"""
Exceptions raised by user code come back to the client as the same type, with the engine's own
frames cut from the remote traceback; syntax errors, sys.exit and KeyboardInterrupt never stop
the engine.
"""

import pytest

import srpy
from srpy import lite

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("code, kind, text", [
    ("1/0", ZeroDivisionError, "division by zero"),
    ("undefined_name + 1", NameError, "undefined_name"),
    ("raise ValueError('bad value', 7)", ValueError, "bad value"),
    ("[][3]", IndexError, "out of range"),
    ("{}['k']", KeyError, "k"),
    ("import no_such_module_here", ModuleNotFoundError, "no_such_module_here"),
    ("raise OSError(2, 'gone')", FileNotFoundError, "gone"),
])
def test_user_exception_comes_back_as_the_same_type(engine, code, kind, text):
    engine.set(keep=1)
    with pytest.raises(kind, match=text) as info:
        engine.exe(code)
    assert type(info.value) is kind
    tb = info.value.remote_traceback
    assert "Traceback" in tb and "<srpy" in tb and kind.__name__ in tb
    assert "Pyro5" not in tb and "srpy/engine.py" not in tb and "srpy/calls.py" not in tb, \
        "the engine's own frames are cut"
    assert engine.get("keep") == 1
    assert engine.ping() == "pong"


def test_user_exception_inside_a_function_keeps_its_frames(engine):
    engine.exe("def inner(x):\n    return 1 / x\n\ndef outer(x):\n    return inner(x)\n")
    with pytest.raises(ZeroDivisionError) as info:
        engine.eval("outer(0)")
    assert "in outer" in info.value.remote_traceback and "in inner" in info.value.remote_traceback
    outer = engine.associateFunction("outer")
    with pytest.raises(ZeroDivisionError):
        outer(0)
    assert outer(4) == 0.25


def test_user_defined_exception_type_becomes_remote_error(engine):
    with pytest.raises(srpy.RemoteError, match="MyError") as info:
        engine.exe("class MyError(Exception):\n    pass\nraise MyError('custom', object())")
    assert "MyError" in info.value.remote_type
    assert "custom" in str(info.value) and "MyError" in info.value.remote_traceback
    assert engine.ping() == "pong"


@pytest.mark.parametrize("code", ["def broken(:\n    pass", "x = = 1", "if True:\nprint(1)", "return 5"])
def test_syntax_errors(engine, code):
    with pytest.raises(SyntaxError) as info:
        engine.exe(code)
    assert info.value.remote_traceback
    with pytest.raises(SyntaxError):
        engine.eval("1 +")
    with pytest.raises(SyntaxError):
        engine.vexe(code)
    assert engine.ping() == "pong"


@pytest.mark.parametrize("code, remote_code", [
    ("import sys; sys.exit(3)", 3),
    ("import sys; sys.exit()", None),
    ("import sys; sys.exit('bye')", "bye"),
    ("raise SystemExit(0)", 0),
])
def test_sys_exit_does_not_stop_the_engine(engine, code, remote_code):
    with pytest.raises(SystemExit) as info:
        engine.exe(code)
    exc = info.value
    assert isinstance(exc, srpy.RemoteSystemExit)
    assert exc.remote_code == remote_code
    assert "engine" in str(exc) and "sys.exit" in str(exc)
    assert "SystemExit" in exc.remote_traceback
    assert exc.code != 0 and exc.code is not None, "an uncaught one must not look like a clean exit"
    assert engine.ping() == "pong" and engine.eval("2 + 2") == 4


def test_keyboard_interrupt_from_user_code(engine):
    with pytest.raises(KeyboardInterrupt) as info:
        engine.exe("raise KeyboardInterrupt('stop it')")
    assert type(info.value) is KeyboardInterrupt and "stop it" in str(info.value)
    assert "KeyboardInterrupt" in info.value.remote_traceback
    with pytest.raises(KeyboardInterrupt):
        engine.vexe("raise KeyboardInterrupt")
    assert engine.ping() == "pong"


def test_exception_through_json_lite_client(engine_uri):
    eng = lite.Engine(engine_uri)
    try:
        with pytest.raises(ZeroDivisionError) as info:
            eng.eval("1/0")
        assert "<srpy" in info.value.remote_traceback
        with pytest.raises(SystemExit) as info:
            eng.exe("import sys; sys.exit(4)")
        assert info.value.remote_code == 4
        assert eng.ping() == "pong"
    finally:
        eng.close()

