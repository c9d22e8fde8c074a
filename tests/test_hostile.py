"""
Issue 12: what a hostile or careless peer sends is contained.

Values that look like srpy's own framing come back as they went; data crafted to make a reader
reserve memory is refused at its size; every path into an engine (srpy's short path and Pyro5's
general one, every serializer) gets the same checks and limits; clients bound what engines send
them, also during the handshake. Everything runs against real engine processes on loopback.
"""

import decimal
import marshal
import os
import socket
import struct
import zlib

import psutil
import pytest

import srpy
from srpy import codec, lite

pytestmark = pytest.mark.timeout(120)


def header(msgtype, data_size, serializer_id=lite.JSON_SERIALIZER_ID, ann_size=0, flags=0, seq=0):
    return lite.HEADER.pack(b"PYRO", lite.PROTOCOL_VERSION, msgtype, serializer_id, flags, seq, data_size,
                            ann_size, b"\0" * 16, 0, lite.MAGIC)


def chunk(key, value):
    return struct.pack("!4sI", key, len(value)) + value


def engine_rss(eng):
    return psutil.Process(eng.whoami()["PID"]).memory_info().rss


# -- item 10: user data is never mistaken for framing ----------------------------------------------

NAN = float("nan")
LOOKALIKES = {
    "message-mark tuple": (codec._MARK, 5),
    "message-mark tuple in a list": [(codec._MARK, 5)],
    "tagged-item tuple": (codec._TAG, "bytearray", b"xyz"),
    "tagged-item tuple beside a tagged value": [(codec._TAG, "decimal", "1.5"), decimal.Decimal("2.5")],
    "mark and tag together": (codec._MARK, (codec._TAG, "uuid", "0" * 32)),
}


@pytest.mark.parametrize("value", list(LOOKALIKES.values()), ids=list(LOOKALIKES))
def test_values_shaped_like_srpy_framing_come_back_as_they_went(engine, value):
    engine.set(v=value)
    assert engine.get("v") == value
    assert engine.eval("repr(v)") == repr(value), "the engine holds the same value, not a decoded one"


def test_nan_keys_and_set_items_that_marshal_alike_all_arrive(engine):
    keys = {decimal.Decimal("NaN"): 1, decimal.Decimal("NaN"): 2}
    engine.set(keys=keys, complexes={complex(NAN, 0), complex(NAN, 0)}, decimals={decimal.Decimal("NaN"),
                                                                                  decimal.Decimal("NaN")})
    assert engine.eval("sorted(keys.values())") == [1, 2]
    assert engine.eval("len(complexes), len(decimals)") == (2, 2)
    back = engine.get("complexes")
    assert len(back) == 2 and all(c.real != c.real for c in back)
    assert sorted(engine.get("keys").values()) == [1, 2]


def test_dict_key_too_long_to_print_inside_a_tagged_value(engine):
    value = {10 ** 5000: decimal.Decimal("1.5"), 7: frozenset({decimal.Decimal(3)})}
    engine.set(v=value)
    assert engine.get("v") == value
    with pytest.raises(srpy.SerializationError, match="digits"):
        engine.set(v={10 ** 5000: object()})  # the error names where, without printing the key
    assert engine.ping() == "pong"


def test_crafted_tagged_values_reserve_nothing(engine_uri):
    """A tagged bytearray(N), array or timedelta naming a size: refused at the size of the data."""
    with srpy.PythonEngine(engine_uri) as eng:
        before = engine_rss(eng)
        conn = lite.Connection(engine_uri, serializer=srpy.client.WIRE_FORMAT)
        try:
            for payload in (("bytearray", 600 * 10 ** 6), ("array", ("d", 10 ** 8)), ("timedelta", 10 ** 9),
                            ("no-such-kind", b""), ("decimal", 12)):
                call = ("srpy.engine", "set", ({"v": (codec._TAG,) + payload},), {})
                conn._send(lite.MSG_INVOKE, codec.SERIALIZER_ID, marshal.dumps((codec._MARK, call)), 3)
                msgtype, _, flags, seq, data, _ = conn._receive()
                assert msgtype == lite.MSG_RESULT and flags & lite.FLAGS_EXCEPTION and seq == 3
                assert b"bad srpy data" in data
        finally:
            conn.close()
        assert eng.eval("6 * 7") == 42
        assert engine_rss(eng) - before < 20 * 2 ** 20
