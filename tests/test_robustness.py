"""
Bad input never kills an engine, and every value srpy carries comes back as it went.

Each test that feeds an engine something bad checks two things: the sender gets a clear error that
names the cause, and the engine still answers C{ping()} afterwards. Everything runs against real
engine processes on real loopback sockets.
"""

import array
import datetime
import decimal
import math
import os
import socket
import struct
import time
import uuid

import pytest

import srpy
from srpy import errors, lite

pytestmark = pytest.mark.timeout(60)


def address(uri):
    _, host, port = lite.parse_uri(uri)
    return host, port


def raw_socket(uri, timeout=5.0):
    sock = socket.create_connection(address(uri), timeout)
    sock.settimeout(timeout)
    return sock


def read_all(sock):
    """Everything the peer sends until it closes the connection (or goes quiet for the timeout)."""
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except socket.timeout:
        chunks.append(b"<still open>")
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def header(msgtype, data_size, serializer_id=lite.JSON_SERIALIZER_ID, ann_size=0, seq=0):
    return lite.HEADER.pack(b"PYRO", lite.PROTOCOL_VERSION, msgtype, serializer_id, 0, seq, data_size,
                            ann_size, b"\0" * 16, 0, lite.MAGIC)


def assert_serving(uri, **options):
    with srpy.PythonEngine(uri, **options) as eng:
        assert eng.ping() == "pong"
        assert eng.eval("6*7") == 42


# -- garbage and half-sent messages on the engine's port ------------------------------------------

@pytest.mark.parametrize("payload", [
    b"hello, is anybody there?\r\n" * 4,
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\x00" * 40,
    os.urandom(1 << 20),
], ids=["text", "http", "zeros", "1MiB-random"])
def test_garbage_bytes_get_a_refusal_and_the_engine_keeps_serving(engine_uri, payload):
    sock = raw_socket(engine_uri)
    try:
        sock.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the engine may hang up before it has read a whole megabyte of garbage
    answer = read_all(sock)
    sock.close()
    assert b"<still open>" not in answer, "the engine must hang up on garbage"
    if answer:
        assert answer.startswith(b"PYRO") and b"invalid data" in answer
    assert_serving(engine_uri)


def test_valid_header_with_truncated_body_then_close(engine_uri):
    for _ in range(5):
        sock = raw_socket(engine_uri)
        sock.sendall(header(lite.MSG_CONNECT, 1000) + b'{"handshake": {"sr')
        sock.close()
    assert_serving(engine_uri)


def test_valid_header_with_truncated_body_staying_open(engine_uri):
    held = []
    try:
        for _ in range(10):
            sock = raw_socket(engine_uri)
            sock.sendall(header(lite.MSG_CONNECT, 1000) + b'{"handshake"')
            held.append(sock)
        assert_serving(engine_uri)  # the half-sent messages hold server threads, not the engine
    finally:
        for sock in held:
            sock.close()
    assert_serving(engine_uri)


def test_header_announcing_a_huge_message_is_refused(engine_uri):
    sock = raw_socket(engine_uri)
    sock.sendall(header(lite.MSG_CONNECT, 2 ** 31) + b"{}")
    answer = read_all(sock)
    sock.close()
    assert b"message too large" in answer
    assert_serving(engine_uri)


def test_call_before_handshake_is_refused(engine_uri):
    sock = raw_socket(engine_uri)
    body = b'{"object": "srpy.engine", "method": "ping", "params": [], "kwargs": {}}'
    sock.sendall(header(lite.MSG_INVOKE, len(body)) + body)
    answer = read_all(sock)
    sock.close()
    assert b"invalid msg type" in answer
    assert_serving(engine_uri)


def test_garbage_after_a_valid_handshake(engine_uri):
    conn = lite.Connection(engine_uri)
    conn.transport.send([b"this is not a Pyro5 message at all, just noise" * 3])
    with pytest.raises(errors.CommunicationError):
        conn._receive()
    conn.close()
    assert_serving(engine_uri)


def test_half_sent_call_after_a_valid_handshake_then_close(engine_uri):
    conn = lite.Connection(engine_uri)
    body = b'{"object": "srpy.engine", "method": "exe", "params": ["x = 1"'
    conn.transport.send([header(lite.MSG_INVOKE, len(body) + 500, seq=1) + body])
    conn.close()
    assert_serving(engine_uri)


def test_call_promising_raw_bytes_it_never_sends(engine_uri):
    """A call whose SRAW annotation announces raw bytes that never come, then the caller leaves."""
    conn = lite.Connection(engine_uri, serializer=srpy.client.WIRE_FORMAT)
    data = srpy.client.WIRE_FORMAT.dumps_call(lite.ENGINE_OBJECT, "set", ({"a": "\x00srpy-blob:0"},), {})
    conn._send(lite.MSG_INVOKE, conn.serializer.serializer_id, data, 1,
               {lite.TRAILING: struct.pack("!Q", 1000)})
    conn.transport.send([b"only a few bytes"])
    conn.close()
    assert_serving(engine_uri)


def test_undecodable_call_bodies_get_error_replies(engine_uri):
    for serializer_id, body in ((lite.JSON_SERIALIZER_ID, b"{not json"),
                                (srpy.codec.SERIALIZER_ID, b"\xff\xfe not marshal")):
        conn = lite.Connection(engine_uri)
        conn._send(lite.MSG_INVOKE, serializer_id, body, 1)
        msgtype, _, flags, _, data, _ = conn._receive()
        conn.close()
        assert msgtype == lite.MSG_RESULT and flags & lite.FLAGS_EXCEPTION
        assert data
    assert_serving(engine_uri)


def test_unknown_serializer_id_loses_only_that_connection(engine_uri):
    conn = lite.Connection(engine_uri)
    conn._send(lite.MSG_INVOKE, 99, b"whatever", 1)
    with pytest.raises(errors.CommunicationError):
        conn._receive()
    conn.close()
    assert_serving(engine_uri)


# -- unknown methods and wrong arguments ----------------------------------------------------------

@pytest.mark.parametrize("serializer", [None, srpy.client.WIRE_FORMAT], ids=["json", "srpy"])
def test_unknown_method(engine_uri, serializer):
    conn = lite.Connection(engine_uri, serializer=serializer)
    with pytest.raises(AttributeError, match="no_such_method"):
        conn.call("no_such_method", (1, 2))
    with pytest.raises(AttributeError, match="_resolve"):
        conn.call("_resolve", ("x",))
    with pytest.raises(TypeError, match="argument"):
        conn.call("ping", (1, 2, 3))
    with pytest.raises(TypeError, match="identifiers"):
        conn.call("set", ({"1 not a name": 1},))
    with pytest.raises(TypeError, match="dict"):
        conn.call("set", ([1, 2],))
    assert conn.call("ping")[0] == "pong"  # the same connection is still good
    conn.close()
    assert_serving(engine_uri)


def test_plain_pyro5_proxy_can_call_an_open_engine(engine_uri):
    from Pyro5.api import Proxy
    with Proxy(engine_uri) as proxy:
        assert proxy.ping() == "pong"
        with pytest.raises(AttributeError):
            proxy.no_such_method()


# -- values that cannot travel -------------------------------------------------------------------

class Opaque:
    pass


@pytest.mark.parametrize("value, name", [
    (object(), "object"),
    (Opaque(), "Opaque"),
    (lambda: 1, "function"),
    (math, "module"),
    ([1, {"deep": (2, object())}], "object"),
    (memoryview(b"abc"), "memoryview"),
])
def test_unserializable_value_from_the_client(engine, value, name):
    engine.set(before=1)
    with pytest.raises(TypeError, match=name) as info:
        engine.set(before=2, bad=value)
    assert isinstance(info.value, srpy.SerializationError)
    assert "Convert" in str(info.value)
    assert getattr(info.value, "remote_traceback", None) is None, "raised locally, before sending"
    assert engine.get("before") == 1, "nothing of the call reached the engine"
    with pytest.raises(TypeError, match=name):
        engine.eval("before", bad=value)
    assert engine.ping() == "pong"


@pytest.mark.parametrize("expr, name", [
    ("object()", "object"),
    ("lambda: 1", "function"),
    ("__import__('threading').Lock()", "lock"),
    ("[1, 2, {'x': open(__import__('os').devnull)}]", "TextIOWrapper"),
    ("iter([1])", "list_iterator"),
])
def test_unserializable_value_from_the_engine(engine, expr, name):
    with pytest.raises(TypeError, match=name) as info:
        engine.eval(expr)
    assert isinstance(info.value, srpy.SerializationError)
    assert "Convert" in str(info.value) or "keep it on the engine" in str(info.value)
    assert engine.ping() == "pong"
    engine.exe("value = " + expr)
    with pytest.raises(TypeError, match=name):
        engine.get("value")
    with pytest.raises(TypeError, match=name):
        engine.vexe("value = " + expr, get=["value"])
    assert engine.eval("1 + 1") == 2


def test_buffer_objects_are_never_silently_turned_into_bytes(engine):
    """marshal writes anything with the buffer protocol as bytes; srpy must not."""
    numpy = pytest.importorskip("numpy")
    assert engine.eval("x", x=numpy.float64(1.5)) == 1.5
    assert type(engine.eval("x", x=numpy.float64(1.5))) is float  # a float subclass travels as float
    for value, name in ((numpy.arange(3), "numpy.ndarray"), (numpy.int64(3), "numpy.int64"),
                        ([1, numpy.zeros(2)], "numpy.ndarray")):
        with pytest.raises(TypeError, match=name):
            engine.set(x=value)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        engine.eval("__import__('numpy').arange(3)")
    assert engine.eval("__import__('numpy').arange(3).tolist()") == [0, 1, 2]
    assert engine.ping() == "pong"


def test_values_that_contain_themselves_or_nest_too_deeply(engine):
    loop = [1]
    loop.append(loop)
    deep = []
    for _ in range(3000):
        deep = [deep]
    for value in (loop, deep):
        with pytest.raises(TypeError, match="nested|itself"):
            engine.set(x=value)
    engine.exe("x = []; x.append(x)")
    with pytest.raises(TypeError, match="nested|itself"):
        engine.get("x")
    assert engine.ping() == "pong"


# -- user code that fails, exits, or prints -------------------------------------------------------

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


def test_prints_go_to_the_engine_log_not_the_client(start_launcher, capfd):
    launcher = start_launcher(["-b"])
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        eng.exe("print('MARK-stdout-line')")
        eng.exe("import sys; print('MARK-stderr-line', file=sys.stderr)")
        assert eng.eval("print('MARK-in-eval') or 5") == 5
        eng.vexe("print('MARK-in-vexe')")
        eng.exe("import sys; sys.stdout.write('MARK-partial')")  # no newline, and the last output
        assert eng.ping() == "pong"
    out, err = capfd.readouterr()
    assert "MARK" not in out and "MARK" not in err, "nothing printed on an engine reaches the client"
    code, log = launcher.stop()
    assert code == 0, log
    for mark in ("MARK-stdout-line", "MARK-stderr-line", "MARK-partial", "MARK-in-eval", "MARK-in-vexe"):
        assert mark in log, mark
    assert "srpy.engine.output" in log


def test_prints_of_a_child_engine_go_to_its_log(start_launcher):
    launcher = start_launcher(["-n", "1"], count=1)
    with srpy.PythonEngine(launcher.uris[0]) as eng:
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


# -- every value srpy carries comes back as it went -----------------------------------------------

def same(a, b):
    """Equal, with the same types all the way down (and nan equal to nan)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a) and all(
            same(x, y) for x, y in zip(sorted(a, key=repr), sorted(b, key=repr)))
    if isinstance(a, array.array):
        return a.typecode == b.typecode and a == b
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


VALUES = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "negative": -12345,
    "huge-int": 2 ** 521 - 1,
    "huge-negative": -(10 ** 400),
    "float": 3.141592653589793,
    "tiny-float": 5e-324,
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "-0.0": -0.0,
    "complex": complex(1.5, -2),
    "complex-nan": complex(float("nan"), float("inf")),
    "str": "plain",
    "empty-str": "",
    "unicode": "h\u00e9llo w\u00f6rld \u4e16\u754c \U0001f600 \x00 \ud7ff",
    "bytes-empty": b"",
    "bytes-small": bytes(range(256)),
    "bytes-64KiB-1": b"\x01" * (64 * 1024 - 1),
    "bytes-64KiB": b"\x02" * (64 * 1024),
    "bytes-over-64KiB": os.urandom(64 * 1024 + 17),
    "bytes-several-MB": os.urandom(5 * 1024 * 1024 + 3),
    "bytearray": bytearray(b"mutable\x00bytes"),
    "bytearray-empty": bytearray(),
    "tuple": (1, "two", 3.0),
    "empty-tuple": (),
    "list": [1, [2, [3, []]]],
    "dict": {"a": 1, "b": [2]},
    "dict-non-str-keys": {1: "one", 2.5: "x", (1, 2): "tuple", None: 0, b"k": "bytes", -3: {}},
    "set": {1, "a", (2, 3)},
    "frozenset": frozenset({1, 2, frozenset({3})}),
    "empty-set": set(),
    "nested": {"list": [(1, {2: {b"x", 3}}), frozenset({"y"})], "more": ({"deep": [[[(None,)]]]},)},
    "datetime": datetime.datetime(2009, 5, 1, 12, 30, 45, 123456),
    "datetime-utc": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    "datetime-offset": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))),
    "date": datetime.date(1999, 12, 31),
    "time": datetime.time(23, 59, 59, 999999),
    "timedelta": datetime.timedelta(days=-3, seconds=7, microseconds=11),
    "decimal": decimal.Decimal("1.10"),
    "decimal-huge": decimal.Decimal("-1234567890.0987654321E+300"),
    "decimal-nan": decimal.Decimal("NaN"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "array-double": array.array("d", [1.0, -2.5, float("inf")]),
    "array-int": array.array("i", range(1000)),
    "array-bytes": array.array("B", b"abc"),
    "array-unicode": array.array("u", "h\u00e9"),
    "mixed": [None, True, 1, 1.5, 2j, "s", b"b", bytearray(b"ba"), (datetime.date(2000, 1, 1),
              decimal.Decimal("2.5"), uuid.UUID(int=7), array.array("h", [1, -1]))],
    "bytes-in-list-over-64KiB": [b"\x03" * (70 * 1024), b"small"],
    "list-wide-ints": list(range(5000)),
    "list-wide-bytearray-last": [0] * 100 + [bytearray(b"late")],
    "dict-wide-bytes-and-bytearrays": {i: b"b" if i % 2 else bytearray(b"ba") for i in range(64)},
    "tuple-wide-array-inside": tuple(range(40)) + ((array.array("b", [1]),),),
}


@pytest.mark.parametrize("value", list(VALUES.values()), ids=list(VALUES))
def test_value_round_trip(engine, value):
    engine.set(v=value)
    assert same(engine.get("v"), value)
    assert same(engine.eval("v"), value)
    assert same(engine.eval("w", w=value), value)
    assert same(engine.get(["v"])["v"], value)
    assert same(engine.vexe("out = v", get=["out"], v=value)["out"], value)
    assert engine.eval("type(v).__name__") == type(value).__name__, "it also arrives as itself"


def test_bytes_made_on_the_engine_come_back_as_bytes(engine):
    for size in (0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 3 * 1024 * 1024):
        data = engine.eval("bytes(range(256)) * (n // 256) + bytes(n % 256)", n=size)
        assert type(data) is bytes and len(data) == size
        assert data == bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert engine.eval("hashlib.sha256(bytes(100000)).hexdigest()".replace("hashlib", "__import__('hashlib')")) \
        == __import__("hashlib").sha256(bytes(100000)).hexdigest()


def test_several_large_bytes_in_one_call(engine):
    a, b = os.urandom(100 * 1024), os.urandom(2 * 1024 * 1024)
    assert engine.eval("(len(a), len(b), a[:3] + b[-3:])", a=a, b=b) == (len(a), len(b), a[:3] + b[-3:])
    assert engine.get("a") == a and engine.get("b") == b
    assert engine.get(["a", "b"]) == {"a": a, "b": b}


def test_subclasses_travel_as_their_base_type(engine):
    import collections
    import enum

    Point = collections.namedtuple("Point", "x y")

    class Color(enum.IntEnum):
        RED = 1

    assert engine.eval("p", p=Point(1, 2)) == (1, 2)
    assert engine.eval("c", c=Color.RED) == 1
    assert type(engine.eval("c", c=Color.RED)) is int


def test_json_lite_client_values(engine_uri):
    eng = lite.Engine(engine_uri)
    try:
        value = {"a": [1, 2.5, "\u00e9", None, True], "b": {"c": []}}
        assert eng.eval("v", v=value) == value
        assert eng.eval("2 ** 100") == 2 ** 100
        with pytest.raises(TypeError, match="object"):
            eng.eval("v", v=object())
        assert eng.ping() == "pong"
    finally:
        eng.close()


# -- secrets -------------------------------------------------------------------------------------

SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def secret_launcher():
    from conftest import Launcher
    launcher = Launcher(["-b", "--secret", SECRET])
    yield launcher
    code, err = launcher.stop()
    assert code == 0, err


def test_no_secret_is_refused_by_a_secret_engine(secret_launcher, monkeypatch):
    monkeypatch.delenv("SRPY_SECRET", raising=False)
    uri = secret_launcher.uris[0]
    with pytest.raises(srpy.AuthenticationError, match="requires a secret"):
        srpy.PythonEngine(uri)
    with pytest.raises(srpy.AuthenticationError, match="requires a secret"):
        lite.Engine(uri)
    assert_serving(uri, secret=SECRET)


def test_wrong_secret_is_refused(secret_launcher):
    uri = secret_launcher.uris[0]
    for wrong in ("wrong", SECRET + " ", SECRET.upper(), "x" * 1000):
        with pytest.raises(srpy.AuthenticationError, match="secret"):
            srpy.PythonEngine(uri, secret=wrong)
    assert_serving(uri, secret=SECRET)


def test_secret_on_both_sides(secret_launcher, monkeypatch):
    uri = secret_launcher.uris[0]
    with srpy.PythonEngine(uri, secret=SECRET) as eng:
        assert eng.eval("a+b", a=2, b=3) == 5
    monkeypatch.setenv("SRPY_SECRET", SECRET)
    assert_serving(uri)  # from the environment
    eng = lite.Engine(uri)
    try:
        assert eng.ping() == "pong"
    finally:
        eng.close()


def test_plain_pyro5_client_is_refused_by_a_secret_engine(secret_launcher):
    from Pyro5.api import Proxy
    from Pyro5.errors import CommunicationError
    with Proxy(secret_launcher.uris[0]) as proxy:
        with pytest.raises(CommunicationError, match="requires a secret"):
            proxy.ping()
    assert_serving(secret_launcher.uris[0], secret=SECRET)


def test_client_that_forges_the_secret_proof_is_refused(secret_launcher):
    """A client that answers the challenge with a made-up proof gets a refusal naming the secret."""
    uri = secret_launcher.uris[0]
    conn = lite.Connection.__new__(lite.Connection)
    conn.uri = uri
    conn.object_id, conn.host, conn.port = lite.parse_uri(uri)
    conn._json = lite.JsonSerializer()
    conn.transport = lite.SocketTransport(conn.host, conn.port, 5.0)
    conn.transport.settimeout(5.0)
    try:
        request = {"handshake": {"srpy": 1, "nonce": lite.new_nonce()}, "object": conn.object_id}
        conn._send(lite.MSG_CONNECT, lite.JSON_SERIALIZER_ID, conn._json.dumps(request))
        msgtype, _, _, _, data, _ = conn._receive()
        assert msgtype == lite.MSG_CONNECT and "nonce" in conn._json.loads(data)
        conn._send(lite.MSG_CONNECT, lite.JSON_SERIALIZER_ID, conn._json.dumps({"proof": "0" * 64}))
        msgtype, _, _, _, data, _ = conn._receive()
        assert msgtype == lite.MSG_CONNECTFAIL and "wrong secret" in conn._json.loads(data)
    finally:
        conn.transport.close()
    assert_serving(uri, secret=SECRET)


def test_client_that_never_answers_the_challenge(secret_launcher):
    uri = secret_launcher.uris[0]
    for answer in (b"", b"garbage instead of an answer" * 3):
        sock = raw_socket(uri)
        body = b'{"handshake": {"srpy": 1, "nonce": "%s"}, "object": "srpy.engine"}' % lite.new_nonce().encode()
        sock.sendall(header(lite.MSG_CONNECT, len(body)) + body)
        assert sock.recv(lite.HEADER.size)[:4] == b"PYRO"
        if answer:
            sock.sendall(answer)
        sock.close()
    assert_serving(uri, secret=SECRET)


def test_secret_engine_from_environment(start_launcher):
    launcher = start_launcher(["-b"], env={"SRPY_SECRET": "from-env"})
    uri = launcher.uris[0]
    with pytest.raises(srpy.AuthenticationError):
        srpy.PythonEngine(uri, secret="not-it")
    assert_serving(uri, secret="from-env")


# -- dead, silent and malformed URIs ---------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dead_uri_raises_server_not_found():
    uri = "PYRO:srpy.engine@127.0.0.1:%d" % free_port()
    with pytest.raises(srpy.SRPyServerNotFound) as info:
        srpy.PythonEngine(uri)
    assert info.value.uri == uri and uri in str(info.value)
    with pytest.raises(srpy.SRPyServerNotFound):
        lite.Engine(uri)


def test_silent_listener_raises_server_not_found_within_the_connect_timeout():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)  # accepts connections in the kernel, never answers
        uri = "PYRO:srpy.engine@127.0.0.1:%d" % listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(srpy.SRPyServerNotFound) as info:
            srpy.PythonEngine(uri, connect_timeout=1.0)
        assert time.monotonic() - start < 10
        assert info.value.uri == uri


def test_not_an_engine_at_the_uri(engine_uri):
    host, port = address(engine_uri)
    with pytest.raises(errors.SRPyServerNotFound, match="serves no object named 'not.the.engine'"):
        srpy.PythonEngine("PYRO:not.the.engine@%s:%d" % (host, port))
    assert_serving(engine_uri)


@pytest.mark.parametrize("uri", [
    "", "nonsense", "PYRO:srpy.engine@127.0.0.1", "PYRO:srpy.engine@127.0.0.1:port",
    "PYRO:@127.0.0.1:4000", "PYRONAME:srpy.engine", "http://127.0.0.1:4000/",
    "PYRO:srpy.engine@no-such-host.invalid:4000",
])
def test_malformed_or_unresolvable_uri(uri):
    with pytest.raises(srpy.SRPyServerNotFound) as info:
        srpy.PythonEngine(uri)
    assert info.value.uri == uri
    assert info.value.reason


def test_engine_that_dies_mid_call():
    uri, process = srpy.newSubEngine()
    try:
        eng = srpy.PythonEngine(uri)
        with pytest.raises(srpy.ConnectionLost):
            eng.exe("import os; os._exit(9)")
        assert process.wait(10) == 9
        with pytest.raises(srpy.SRPyServerNotFound):
            eng.ping()  # the next call needs a new connection, and nothing answers
        eng.close()
    finally:
        srpy.stopSubEngine(process)


def test_engine_connections_send_without_nagle_delay(engine):
    """
    The engine's connections have TCP_NODELAY: a result sent as bulk bytes and then its small
    reply would otherwise wait for the client's delayed ACK (40 ms on Linux) before the reply left.
    """
    code = ("__import__('Pyro5.callcontext').callcontext.current_context.client.sock"
            ".getsockopt(__import__('socket').IPPROTO_TCP, __import__('socket').TCP_NODELAY)")
    assert engine.eval(code) != 0
    blob = b"\x01" * (200 * 1024)  # larger than BLOB_MIN: travels as bulk bytes, then the reply
    engine.set(blob=blob)
    assert engine.get("blob") == blob
