# -*- coding: utf-8 -*-
"""
Exercise srpy's one-file client (srpy/wire.py and srpy/lite.py, saved as one lite.py) against real engines. Runs unchanged under
Jython 2.7 and CPython 3 (tests/lite/test_lite.py runs it under both)::

    jython tests/lite/lite_script.py --uri URI1 --uri URI2 --secure-uri URI3 --secret S --dead-uri URI4
        [--doomed-uri URI5]

Options may also come from the environment: SRPY_LITE_URIS (space separated), SRPY_LITE_SECURE_URI,
SRPY_LITE_SECRET, SRPY_LITE_DEAD_URI, SRPY_LITE_DOOMED_URI. The doomed engine, if given, is killed
by the script (to see a call lose its engine). The one-file client is loaded as a plain module named
lite, the way a Jython user copies it, from the folder SRPY_LITE_DIR names (write it there with
C{python3 -m srpy.lite --save DIR}; tests/lite/test_lite.py does).

Prints one line per check and last C{N passed, M failed}; exits 1 if any check failed.
"""
from __future__ import print_function

import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PY2 = sys.version_info[0] == 2


def load_lite():
    """Import the one-file client SRPY_LITE_DIR/lite.py as the plain module C{lite}."""
    folder = os.environ.get("SRPY_LITE_DIR")
    if not folder:
        raise SystemExit("set SRPY_LITE_DIR to a folder holding the one-file client: python3 -m srpy.lite --save DIR")
    path = os.path.join(folder, "lite.py")
    sys.dont_write_bytecode = True
    if PY2:
        import imp
        return imp.load_source("lite", path)
    import importlib.util
    spec = importlib.util.spec_from_file_location("lite", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lite = load_lite()
CALL_TIMEOUT = 120.0  # no check may hang the script
CHECKS = []


def check(function):
    """Register a check: a function of the options that raises AssertionError on failure."""
    CHECKS.append(function)
    return function


def expect_raises(kinds, function, *args, **kwargs):
    """Call C{function}; return the exception of one of C{kinds} it raised, else fail."""
    try:
        function(*args, **kwargs)
    except kinds as exc:
        return exc
    raise AssertionError("%s did not raise %s" % (getattr(function, "__name__", function), kinds))


def parse_options(argv):
    """The engines to use, from argv (--uri may repeat) or else the environment."""
    options = {"uris": [], "secure_uri": None, "secret": None, "dead_uri": None, "doomed_uri": None}
    names = {"--uri": "uris", "--secure-uri": "secure_uri", "--secret": "secret",
             "--dead-uri": "dead_uri", "--doomed-uri": "doomed_uri"}
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag not in names or not args:
            raise SystemExit("usage: lite_script.py --uri URI [--uri URI ...] --secure-uri URI --secret S "
                             "--dead-uri URI [--doomed-uri URI]; unknown or incomplete option %r" % flag)
        value = args.pop(0)
        if names[flag] == "uris":
            options["uris"].append(value)
        else:
            options[names[flag]] = value
    env = os.environ.get
    options["uris"] = options["uris"] or (env("SRPY_LITE_URIS") or "").split()
    for key in ("secure_uri", "secret", "dead_uri", "doomed_uri"):
        options[key] = options[key] or env("SRPY_LITE_" + key.upper())
    if len(options["uris"]) < 2 or not options["secure_uri"] or not options["secret"] or not options["dead_uri"]:
        raise SystemExit("lite_script.py needs two --uri, --secure-uri, --secret and --dead-uri")
    return options


def engine(options, index=0, **kwargs):
    """A fresh client to engine C{index}, its namespace emptied."""
    kwargs.setdefault("timeout", CALL_TIMEOUT)
    eng = lite.Engine(options["uris"][index], **kwargs)
    eng.clear()
    return eng


# -- the call surface ------------------------------------------------------------------------------

@check
def ping_and_whoami(options):
    eng = engine(options)
    assert eng.ping() == "pong"
    info = eng.whoami()
    for key in ("OS System", "Hostname", "Python Version", "PythonEngine ID", "Cores"):
        assert key in info, key
    assert eng.getURI() == options["uris"][0]
    eng.setGroup("jvm")
    assert eng.whoami()["Group"] == "jvm"
    eng.close()


@check
def set_get_clear(options):
    eng = engine(options)
    eng.set(x=1, y="two", z=[1, 2.5, {"k": None}])
    assert eng.get() == ["x", "y", "z"], eng.get()
    assert eng.get("y") == "two"
    assert eng.get(["x", "y"]) == {"x": 1, "y": "two"}
    assert eng.get("z") == [1, 2.5, {"k": None}]
    exc = expect_raises(KeyError, eng.get, "missing")
    assert "missing" in str(exc)
    eng.clear()
    assert eng.get() == []
    eng.close()


@check
def eval_exe_vexe(options):
    eng = engine(options)
    assert eng.eval("a+b", a=2, b=3) == 5
    assert eng.exe("import math; n = math.sqrt(n)", n=2) is None
    assert eng.get("n") == 1.4142135623730951
    eng.clear()
    result = eng.vexe("import math; a=math.sqrt(n); b=a**2", get=["a", "b"], n=2)
    assert result == {"a": 1.4142135623730951, "b": 1.4142135623730951 ** 2}, result
    assert eng.get() == [], "vexe left the namespace untouched"
    eng.close()


@check
def values_that_survive_json(options):
    eng = engine(options)
    text = u"h\u00e9llo \u2603"
    assert eng.eval("t", t=text) == text
    assert eng.eval("2**70") == 2 ** 70
    assert eng.eval("x", x=-0.1) == -0.1
    assert eng.eval("[None, True, False]") == [None, True, False]
    assert eng.eval("(1, 2)") == [1, 2], "tuples come back as lists"
    assert eng.eval("{1: 'a'}") == {"1": "a"}, "int keys come back as str"
    assert sorted(eng.eval("{3, 1, 2}")) == [1, 2, 3], "sets come back as lists"
    assert eng.eval("t", t=(4, 5)) == [4, 5], "tuples travel as lists"
    assert eng.eval("float('inf')") == float("inf")
    if not PY2:  # on Python 2, bytes is str, which travels as text
        expect_raises(TypeError, eng.set, b=b"raw")
    eng.close()


@check
def non_json_result_is_a_clear_type_error(options):
    eng = engine(options)
    eng.imp("math")
    exc = expect_raises(TypeError, eng.get, "math")
    assert "module" in str(exc) and "json" in str(exc), str(exc)
    exc = expect_raises(TypeError, eng.eval, "{'f': [1, len]}")
    assert "builtin_function_or_method" in str(exc) and "['f'][1]" in str(exc), str(exc)
    exc = expect_raises(TypeError, eng.eval, "b'x'")
    assert "bytes" in str(exc), str(exc)
    assert eng.eval("math.sqrt(16)") == 4.0, "the engine keeps serving"
    eng.close()


@check
def imp_install_and_install_source(options):
    eng = engine(options)
    eng.install_source("lite_shipped", u"def hello(name):\n    return u'hello ' + name\n")
    eng.imp("lite_shipped", "os.path")
    assert eng.eval("lite_shipped.hello('jvm')") == "hello jvm"
    assert eng.eval("os.path.join('a', 'b')") == "a/b"
    folder = tempfile.mkdtemp(prefix="lite-shipping-")
    files = {"lite_shipped_file.py": "VALUE = 41 + 1\n",
             "lite_shipped_pkg/__init__.py": "from .inner import twice\n",
             "lite_shipped_pkg/inner.py": "def twice(x):\n    return 2 * x\n"}
    os.mkdir(os.path.join(folder, "lite_shipped_pkg"))
    for relpath, text in files.items():
        with open(os.path.join(folder, relpath), "w") as handle:
            handle.write(text)
    sys.path.insert(0, folder)
    try:
        written = eng.install("lite_shipped_file", "lite_shipped_pkg.inner")
    finally:
        sys.path.remove(folder)
        shutil.rmtree(folder)
    assert sorted(written) == sorted(files), written
    eng.imp("lite_shipped_file", "lite_shipped_pkg.inner")
    assert eng.eval("lite_shipped_file.VALUE") == 42
    assert eng.eval("lite_shipped_pkg.twice(21)") == 42
    eng.close()


@check
def associate_function(options):
    eng = engine(options)
    eng.exe("def double(x):\n    'Twice x.'\n    return 2 * x")
    double = eng.associateFunction("double")
    assert double(21) == 42
    assert double.__name__ == "double" and double.__doc__ == "Twice x."
    eng.set(notfunc=3)
    expect_raises(TypeError, eng.associateFunction, "notfunc")
    eng.close()


@check
def is_busy_and_wait(options):
    eng = engine(options)
    assert eng.isBusy() is False
    assert eng.wait(0) is True
    worker = threading.Thread(target=eng.exe, args=("import time; time.sleep(1.0)",))
    worker.start()
    deadline = time.time() + 10
    while not eng.isBusy():
        assert time.time() < deadline, "the engine never looked busy"
        time.sleep(0.01)
    assert eng.wait(0.05) is False, "wait(0.05) returned True while the engine was busy"
    assert eng.wait() is True
    assert eng.isBusy() is False
    worker.join(30)
    eng.close()


@check
def benchmark_shape(options):
    eng = engine(options)
    net, proc, busy = eng.benchmark(cycles=5000)
    assert 0 < net < 1.0, net
    assert proc > 0, proc
    assert busy is False
    eng.close()


# -- errors ----------------------------------------------------------------------------------------

@check
def remote_exceptions_come_back_as_builtins(options):
    eng = engine(options)
    exc = expect_raises(ZeroDivisionError, eng.eval, "1/0")
    assert "ZeroDivisionError" in exc.remote_traceback and "<srpy" in exc.remote_traceback, exc.remote_traceback
    exc = expect_raises(NameError, eng.eval, "no_such_name")
    assert "no_such_name" in str(exc)
    exc = expect_raises(SyntaxError, eng.exe, "def broken(:")
    assert exc.lineno == 1, exc.lineno
    exc = expect_raises(ImportError, eng.imp, "no_such_module_anywhere")  # ModuleNotFoundError on py3
    assert "no_such_module_anywhere" in str(exc)
    assert exc.remote_type == "builtins.ModuleNotFoundError", exc.remote_type
    eng.exe("class Custom(Exception):\n    pass")
    exc = expect_raises(lite.RemoteError, eng.exe, "raise Custom('mine')")
    assert "Custom" in exc.remote_type and "mine" in str(exc), str(exc)
    exc = expect_raises(SystemExit, eng.exe, "import sys; sys.exit(3)")
    assert exc.remote_code == 3
    assert eng.ping() == "pong", "the engine keeps serving after user errors"
    eng.close()


@check
def call_timeout(options):
    eng = engine(options, index=1, timeout=0.3)
    started = time.time()
    exc = expect_raises(lite.CallTimeout, eng.exe, "import time; time.sleep(1.5)")
    assert time.time() - started < 1.2, "the timeout did not cut the call short"
    assert isinstance(exc, lite.CommunicationError)
    assert eng.wait(timeout=10) is True, "a wait longer than the call timeout works"
    assert eng.ping() == "pong", "a fresh connection after the timeout works"
    eng.close()


@check
def secret_engines(options):
    uri, secret = options["secure_uri"], options["secret"]
    eng = lite.Engine(uri, secret=secret, timeout=CALL_TIMEOUT)
    assert eng.eval("6*7") == 42
    eng.close()
    exc = expect_raises(lite.AuthenticationError, lite.Engine, uri, secret=secret + "-wrong")
    assert "secret" in str(exc)
    exc = expect_raises(lite.AuthenticationError, lite.Engine, uri, secret="")
    assert "requires a secret" in str(exc), str(exc)
    assert lite.Engine(uri, secret=secret).ping() == "pong", "the engine keeps serving after a wrong secret"


@check
def dead_engine(options):
    exc = expect_raises(lite.SRPyServerNotFound, lite.Engine, options["dead_uri"], connect_timeout=5)
    assert exc.uri == options["dead_uri"]
    assert isinstance(exc, lite.SRPyError)


@check
def engine_dying_during_a_call(options):
    if not options["doomed_uri"]:
        return "skipped (no --doomed-uri)"
    eng = lite.Engine(options["doomed_uri"], timeout=CALL_TIMEOUT)
    assert eng.ping() == "pong"
    exc = expect_raises(lite.ConnectionLost, eng.exe, "import os; os._exit(0)")
    assert "lost the connection" in str(exc), str(exc)
    expect_raises((lite.SRPyServerNotFound, lite.ConnectionLost), eng.ping)


# -- the wire: a fake server that speaks badly -----------------------------------------------------

def fake_server(reply):
    """A one-connection server on loopback that sends C{reply} bytes and closes; returns its URI."""
    import socket
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        try:
            conn.recv(4096)
            conn.sendall(reply)
        finally:
            conn.close()
            server.close()

    thread = threading.Thread(target=serve)
    thread.daemon = True
    thread.start()
    return "PYRO:srpy.engine@127.0.0.1:%d" % port


def header(version=lite.PROTOCOL_VERSION, msgtype=lite.MSG_CONNECTOK, data=b"{}", tag=b"PYRO"):
    return lite.HEADER.pack(tag, version, msgtype, 3, 0, 0, len(data), 0, b"\0" * 16, 0, lite.MAGIC) + data


@check
def protocol_errors(options):
    exc = expect_raises(lite.ProtocolError, lite.Engine, fake_server(header(version=501)), connect_timeout=10)
    assert "version 501" in str(exc) and "502" in str(exc), str(exc)
    exc = expect_raises(lite.ProtocolError, lite.Engine, fake_server(b"HTTP/1.1 400 Bad Request\r\n" * 3),
                        connect_timeout=10)
    assert "not a Pyro5 message" in str(exc), str(exc)
    exc = expect_raises(lite.ProtocolError, lite.Engine, fake_server(header(data=b"{not json")), connect_timeout=10)
    assert "json" in str(exc), str(exc)
    exc = expect_raises(lite.SRPyServerNotFound, lite.Engine, fake_server(b""), connect_timeout=10)
    assert "handshake" in str(exc), str(exc)


# -- fan-out and threads ---------------------------------------------------------------------------

@check
def box_fan_out(options):
    box = lite.Box(options["uris"], timeout=CALL_TIMEOUT)
    assert len(box) == 2
    box.run("clear")
    assert box.run("set", a=21) == dict((uri, None) for uri in options["uris"])
    assert box.run("eval", "a*2") == dict((uri, 42) for uri in options["uris"])
    errors = box.run("get", "missing")
    assert all(isinstance(e, KeyError) for e in errors.values()), errors
    started = time.time()
    box.run("exe", "import time; time.sleep(0.6)")
    elapsed = time.time() - started
    assert elapsed < 1.1, "the engines ran one after the other (%.2f s)" % elapsed
    box.close()


@check
def threads_share_one_engine(options):
    eng = engine(options)
    failures = []

    def work(n):
        try:
            for i in range(40):
                got = eng.eval("x * 1000 + y", x=n, y=i)
                if got != n * 1000 + i:
                    failures.append((n, i, got))
                if i % 10 == 0:
                    assert eng.isBusy() in (True, False)
        except Exception:  # a thread's failure must reach the report
            failures.append(traceback.format_exc())

    workers = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not failures, failures[:3]
    eng.close()


def main(argv):
    options = parse_options(argv)
    print("lite_script on %s %s, transport %s" % (sys.platform, sys.version.split()[0],
                                                  lite.default_transport().__name__))
    passed = failed = 0
    for function in CHECKS:
        started = time.time()
        try:
            note = function(options)
        except BaseException:  # report every failure (SystemExit from a remote exit included), go on
            failed += 1
            print("FAIL %s\n%s" % (function.__name__, traceback.format_exc()))
        else:
            passed += 1
            print("ok   %s (%.2f s)%s" % (function.__name__, time.time() - started, " " + note if note else ""))
        sys.stdout.flush()
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
