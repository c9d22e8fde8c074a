"""
Large buffers travel beside the messages (codec.dumps_with_buffers, wire's SRAW/SRBK): from the
value's memory to the socket, and from the socket into the memory of the value built, on every
path; lists of arrays alike travel as one block (arrays.encode_many).
"""
import array
import os

import pytest
from hypothesis import given, settings, strategies as st

import srpy
from srpy import codec, wire

from conftest import refuse_crafted_values

numpy = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(120)

BIG = codec.BUFFER_MIN


def _arrived(buffers):
    """The buffers as a receiver reads them: bytes, a bytearray, or new memory (SRBK's b, w, m)."""
    arrived = []
    for view, kind in buffers:
        if kind == "m":
            memory = wire.new_memory(len(view))
            memoryview(memory)[:] = view
            arrived.append(memory)
        else:
            arrived.append(bytes(view) if kind == "b" else bytearray(view))
    return arrived


def same(a, b):
    if isinstance(a, numpy.ndarray):
        return (type(b) is numpy.ndarray and a.dtype == b.dtype and a.shape == b.shape
                and a.tobytes() == b.tobytes()
                and (not a.flags.f_contiguous or a.flags.c_contiguous or b.flags.f_contiguous))  # Fortran order kept
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, memoryview):
        return b == a.tobytes()
    return type(a) is type(b) and a == b


def large_values():
    """One large value of every kind that travels beside the message, and a few more."""
    structured = numpy.zeros(BIG // 8, dtype=[("x", "<f4"), ("n", ">i2"), ("s", "S2")])
    structured["x"] = numpy.arange(len(structured))
    return {
        "bytes": os.urandom(BIG + 1),
        "bytearray": bytearray(os.urandom(BIG)),
        "memoryview": memoryview(os.urandom(BIG * 2)),
        "strided memoryview": memoryview(os.urandom(BIG * 2))[::2],
        "array.array": array.array("d", range(BIG // 8)),
        "float64": numpy.random.default_rng(1).random(200_000),
        "fortran": numpy.asfortranarray(numpy.arange(300 * 500, dtype=">i4").reshape(300, 500)),
        "view with gaps": numpy.arange(400_000.0)[::3],
        "structured": structured,
        "datetime64": numpy.arange(BIG).astype("datetime64[ms]"),
    }


# -- in process -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(large_values()))
def test_each_large_buffer_goes_beside_the_message_and_comes_back_exactly(name):
    value = large_values()[name]
    message, buffers = codec.dumps_with_buffers({"v": value, "small": b"x" * 10})
    assert len(buffers) == 1 and len(message) < 1024, "the buffer is not in the message"
    back = codec.loads(message, _arrived(buffers))
    assert same(value, back["v"]) and back["small"] == b"x" * 10
    assert same(value, codec.loads(codec.dumps({"v": value}))["v"]), "the same value inside the message"


def test_buffers_are_views_of_the_value_s_own_memory_and_received_arrays_of_what_was_read():
    a = numpy.arange(100_000.0)
    data = bytearray(BIG)
    message, buffers = codec.dumps_with_buffers([a, data, b"b" * BIG])
    assert [kind for _, kind in buffers] == ["m", "w", "b"]
    assert numpy.shares_memory(numpy.asarray(buffers[0][0]), a), "sent from the array's memory, not a copy"
    assert buffers[1][0].obj is data
    arrived = _arrived(buffers)
    back = codec.loads(message, arrived)
    assert back[0].base.base.obj is arrived[0], "the array is a view of the memory it was read into"
    assert back[0].flags.writeable
    back[0][0] = 7.0
    assert arrived[0][:8] == numpy.float64(7.0).tobytes()
    assert back[1] is arrived[1] and back[2] is arrived[2]


def test_small_values_and_plain_data_stay_in_the_message():
    for value in (b"x" * (BIG - 1), list(range(100_000)), [b"x" * 100] * 1000, {"a": numpy.arange(10)}, "text" * BIG):
        message, buffers = codec.dumps_with_buffers(value)
        assert buffers == []
        assert same(value, codec.loads(message))


def test_a_buffer_in_an_exception_goes_beside_the_message_once():
    """An exception's arguments are checked with a dumps inside the collecting one: nothing twice."""
    for value in (ValueError(bytearray(BIG)), ("err", KeyError(numpy.ones(BIG // 8)))):
        message, buffers = codec.dumps_with_buffers(value)
        assert len(buffers) == 1
        back = codec.loads(message, _arrived(buffers))
        assert type(back) is type(value)


def test_encoded_is_what_dumps_with_buffers_makes_once():
    value = {"a": numpy.arange(50_000.0)}
    encoded = codec.Encoded(value)
    message, buffers = codec.dumps_with_buffers(encoded)
    assert message is encoded.message and buffers is encoded.buffers
    assert same(value, codec.loads(message, _arrived(buffers)))
    assert same(value, codec.loads(codec.dumps(encoded))), "in the message for a caller that takes no buffers"
    with pytest.raises(srpy.SerializationError, match="object"):
        codec.Encoded([object()])


@pytest.mark.parametrize("build", [
    lambda: [numpy.full(100, i, dtype=">f8") for i in range(1000)],
    lambda: [numpy.arange(60, dtype="<i2").reshape(2, 30) + i for i in range(20)],
    lambda: [numpy.zeros(8, dtype=[("a", "<u1"), ("b", "<f8")]) for _ in range(10)],
    lambda: [numpy.arange(1000.0) + i for i in range(100)],  # 800 KB: the block goes beside
], ids=["many-small", "2-d", "structured", "block-beside"])
def test_lists_of_arrays_alike_travel_as_one_block(build):
    values = build()
    message, buffers = codec.dumps_with_buffers(values)
    assert message.count(b"ndarray") == 1, "one block (one tagged item), not one item per array"
    back = codec.loads(message, _arrived(buffers))
    assert type(back) is list and len(back) == len(values) and all(same(a, b) for a, b in zip(values, back))
    assert all(b.flags.writeable for b in back)
    back_inband = codec.loads(codec.dumps(values))
    assert all(same(a, b) for a, b in zip(values, back_inband)) and back_inband[0].flags.writeable


@pytest.mark.parametrize("values", [
    [numpy.arange(3)] * 5 + [numpy.arange(4)] * 5,  # shapes differ
    [numpy.arange(3)] * 5 + [numpy.arange(3.0)] * 5,  # dtypes differ
    [numpy.asfortranarray(numpy.ones((2, 3)))] * 10,  # Fortran order is kept item by item
    [numpy.float64(1.0)] * 10,  # scalars
    [numpy.array(1.0)] * 10,  # 0-d arrays
    [numpy.zeros(0)] * 10,  # empty arrays
    [numpy.arange(3)] * 9 + [(1, 2)],
    [numpy.arange(7, dtype="u1")] * 100,  # under 64 bytes each: one by one, never a block
], ids=["shapes", "dtypes", "fortran", "scalars", "0-d", "empty", "mixed", "tiny"])
def test_other_lists_of_numpy_values_travel_item_by_item_exactly(values):
    back = codec.loads(codec.dumps(values))
    assert same(values, back)


MANY_HOSTILE = {
    "count zero": ("ndarrays", ("<f8", (2,), 0, b"")),
    "count negative": ("ndarrays", ("<f8", (2,), -1, b"")),
    "count a float": ("ndarrays", ("<f8", (2,), 1.0, b"\0" * 16)),
    "count too large": ("ndarrays", ("<f8", (2,), 10 ** 9, b"\0" * 16)),
    "items of no size": ("ndarrays", ("<f8", (0,), 10 ** 9, b"")),
    "items of a byte": ("ndarrays", ("|u1", (1,), 100_000, b"\0" * 100_000)),  # 155 bytes of objects a byte
    "0-d items": ("ndarrays", ("<f8", (), 2, b"\0" * 16)),
    "object dtype": ("ndarrays", ("|O", (1,), 1, b"\0" * 8)),
    "not a tuple": ("ndarrays", ["<f8", (1,), 1, b"\0" * 8]),
    "data not bytes": ("ndarrays", ("<f8", (1,), 1, "x" * 8)),
}


@pytest.mark.parametrize("tag, payload", list(MANY_HOSTILE.values()), ids=list(MANY_HOSTILE))
def test_hostile_blocks_of_arrays_are_bad_data_in_process(tag, payload):
    with pytest.raises(ValueError, match="bad srpy data"):
        codec._decode_item(tag, payload, {})


def test_hostile_blocks_of_arrays_against_a_real_engine(engine_uri):
    refuse_crafted_values(engine_uri, MANY_HOSTILE)
    with srpy.PythonEngine(engine_uri) as eng:
        assert eng.eval("6 * 7") == 42


buffer_values = st.one_of(
    st.binary(max_size=16).map(lambda b: b * (BIG // 16 + 1) if b else b""),
    st.integers(0, 3 * BIG).map(lambda n: bytearray(n)),
    st.integers(0, 3 * BIG // 8).map(lambda n: numpy.arange(n, dtype="<f8")),
    st.integers(1, 40).map(lambda n: [numpy.arange(n, dtype=">i4")] * n),
    st.integers(0, BIG).map(lambda n: array.array("b", bytes(n))),
    st.text(max_size=5), st.integers(), st.none(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(buffer_values, st.dictionaries(st.text(max_size=3), buffer_values, max_size=3)),
                max_size=6))
def test_any_mix_of_buffers_round_trips_beside_and_inside_the_message(values):
    message, buffers = codec.dumps_with_buffers(values)
    assert all(len(view) >= BIG for view, _ in buffers)
    assert same(values, codec.loads(message, _arrived(buffers)))
    assert same(values, codec.loads(codec.dumps(values)))


# -- through real engines -------------------------------------------------------------------------

def test_set_get_eval_exe_vexe_ns_and_functions_carry_large_buffers(engine):
    values = large_values()
    names = {"v%d" % i: name for i, name in enumerate(values)}
    engine.set(**{key: values[name] for key, name in names.items()})
    for key, name in names.items():
        assert same(values[name], engine.get(key)), name
    back = engine.get(list(names))
    assert all(same(values[name], back[key]) for key, name in names.items())
    a = values["float64"]
    assert engine.eval("type(a.base.base.obj).__name__, a.flags.writeable", a=a) == ("mmap", True), \
        "the engine's array is a view of the memory its data was read into"
    got = engine.eval("a * 2", a=a)
    assert same(a * 2, got) and type(got.base.base.obj).__name__ == "mmap", "and so is the client's"
    engine.exe("b = bytes(reversed(data))", data=values["bytes"])
    assert engine.get("b") == bytes(reversed(values["bytes"]))
    out = engine.vexe("m = a[::-1].copy()", get=["m"], a=a)
    assert same(a[::-1].copy(), out["m"])
    engine.ns.grid = values["fortran"]
    assert same(values["fortran"], engine.ns.grid)
    engine.exe("def scale(x, k):\n    return x * k\nclass K:\n    def twice(self, x):\n        return x + x\nk = K()")
    scale = engine.associateFunction("scale")
    assert same(a * 3, scale(a, 3))
    assert same(a + a, engine.ns.k.twice(a)), "a remote object's method"
    assert engine.ping() == "pong"


def echo(value):
    return value


def test_submit_map_imap_mrs_and_mrp_carry_large_buffers(pair):
    values = large_values()
    box = srpy.EngBox(pair)
    try:
        for name, value in values.items():
            assert same(value, box.submit(echo, value).result(timeout=60)), name
        small = [numpy.full(100, i, dtype="<f8") for i in range(2000)]
        assert all(same(a, b) for a, b in zip(small, box.map(echo, small, timeout=60)))
        big = [numpy.full(20_000, i, dtype="<f8") for i in range(8)]
        assert all(same(a, b) for a, b in zip(big, box.imap(echo, big, timeout=60)))
        a = values["float64"]
        for results in (box.mrs.eval("a + 1", a=a), box.mrpwait(box.mrp.eval("a + 1", a=a), 60)):
            assert len(results) == 2 and all(same(a + 1, got) for got in results.values())
    finally:
        box.close()


def test_engines_pass_large_buffers_to_each_other(start_launcher):
    launcher = start_launcher(["-n", "2", "--group", "buffers"], count=2)
    box = srpy.EngBox(launcher.uris)
    try:
        assert all(len(peers) == 1 for peers in box.connectPeers().values())
        first, second = box[0], box[1]
        first.exe("import srpy, numpy\nme = srpy.this_engine()\n"
                  "grid = numpy.arange(300 * 500, dtype='>i4').reshape(300, 500).T\n"
                  "me.put('grid', grid)\n"
                  "me.send(me.peers()[0], 'x', (bytes(range(256)) * 1024, [numpy.ones(100) * i for i in range(50)]))")
        second.exe("import srpy\nme = srpy.this_engine()")
        grid = numpy.arange(300 * 500, dtype=">i4").reshape(300, 500).T
        assert same(grid, second.eval("me.read('grid', timeout=30)"))
        assert second.eval("type(me.read('grid', timeout=30).base.base.obj).__name__") == "mmap"
        data, arrays = second.eval("me.receive('x', timeout=30)[1]")
        assert data == bytes(range(256)) * 1024 and all(same(numpy.ones(100) * i, b) for i, b in enumerate(arrays))
    finally:
        box.close()


def test_a_json_client_never_gets_buffers_beside_the_message(engine_uri):
    """The Jython client (json) reads no SRAW: an engine sends its results inside the message."""
    from srpy import lite
    with srpy.PythonEngine(engine_uri) as eng:
        eng.set(text="x" * (4 * BIG))
    conn = lite.Connection(engine_uri)
    try:
        value, annotations = conn.call("eval", ("text",), timeout=30)
        assert value == "x" * (4 * BIG) and wire.TRAILING not in annotations
    finally:
        conn.close()
