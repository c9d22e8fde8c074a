"""
Every value srpy carries comes back as it went, and a value that cannot travel fails loudly, on
either side, before anything of the call is lost (real engine processes; the codec in use).
"""

import array
import datetime
import decimal
import math
import os
import uuid

import pytest

import srpy
from srpy import lite

pytestmark = pytest.mark.timeout(60)


# -- values that cannot travel -------------------------------------------------------------------

class Opaque:
    pass


@pytest.mark.parametrize("value, name", [
    (object(), "object"),
    (Opaque(), "Opaque"),
    (lambda: 1, "function"),
    (math, "module"),
    ([1, {"deep": (2, object())}], "object"),
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
    """marshal writes anything with the buffer protocol as bytes; srpy must not (numpy: tests/codec/test_numpy.py)."""
    numpy = pytest.importorskip("numpy")
    assert type(engine.eval("x", x=numpy.float64(1.5))) is numpy.float64  # a float subclass keeps its type
    for value in (numpy.arange(3), numpy.int64(3), [1, numpy.zeros(2)]):
        back = engine.eval("x", x=value)
        assert type(back) is type(value) and repr(back) == repr(value)
    for value in (numpy.array([None]), [1, numpy.array([1, "a"], dtype=object)], numpy.asmatrix([[1]])):
        with pytest.raises(TypeError, match="numpy"):
            engine.set(x=value)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        engine.eval("__import__('numpy').array([object()])")
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

