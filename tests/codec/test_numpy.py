"""
Issue 13: numpy arrays and numpy scalars travel exactly (dtype with its byte order, shape, order,
values, the scalar's own numpy type), in-process and through real engines on every kind of path;
what a hostile peer crafts as an array is refused at its size, as one clear error, and the engine
keeps serving; srpy loads numpy only when one travels.
"""

import marshal
import os
import subprocess
import sys

import psutil
import pytest

numpy = pytest.importorskip("numpy")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import srpy  # noqa: E402
from conftest import ROOT, refuse_crafted_values  # noqa: E402
from srpy import arrays, codec, lite  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PROPERTIES = settings(deadline=None, database=None, max_examples=int(os.environ.get("SRPY_CODEC_EXAMPLES", "100")),
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def same(a, b):
    """C{a} and C{b} are the same numpy value: type, dtype (byte order included), shape, order and bytes."""
    assert type(a) is type(b), (type(a), type(b))
    assert a.dtype == b.dtype and a.dtype.str == b.dtype.str, (a.dtype, b.dtype)
    if a.dtype.names is not None:
        assert a.dtype.fields == b.dtype.fields and a.dtype.isalignedstruct == b.dtype.isalignedstruct
    if isinstance(a, numpy.ndarray):
        assert a.shape == b.shape
        fortran = a.flags.f_contiguous and not a.flags.c_contiguous
        assert b.flags.f_contiguous if fortran else b.flags.c_contiguous, "Fortran order is kept, views arrive compact"
        assert b.flags.writeable, "a received array is writable"
        assert b.base is None or b.base.base is None, "and holds its own copy of the bytes"
    # the bytes, not ==: NaN is NaN, -0.0 is not 0.0, NaT is NaT
    assert value_bytes(a) == value_bytes(b)
    return True


def value_bytes(value):
    """The bytes of C{value}'s values: a record's field by field (its padding holds no value)."""
    if value.dtype.names is None:
        return value.tobytes()
    return tuple(value_bytes(value[name]) for name in value.dtype.names)


def round_trip(value):
    return codec.loads(codec.dumps(value))


NESTED = numpy.dtype([("id", "<i4"), ("pos", [("x", ">f8"), ("y", "<f2", (2, 3))]), ("tag", "S3")], align=True)
PACKED = numpy.dtype({"names": ["b", "a"], "formats": ["u1", "<c16"], "offsets": [16, 0], "itemsize": 24})
ARRAYS = {
    "bool": numpy.array([True, False, True]),
    "int8": numpy.arange(-5, 5, dtype=numpy.int8),
    "uint64 max": numpy.array([0, 2 ** 64 - 1], dtype=numpy.uint64),
    "int16 big-endian": numpy.arange(6, dtype=">i2").reshape(2, 3),
    "float16": numpy.array([1.5, -0.0, numpy.inf, numpy.nan], dtype=numpy.float16),
    "float32 big-endian": numpy.array([1.25, numpy.nan], dtype=">f4"),
    "float64": numpy.linspace(0, 1, 7),
    "longdouble": numpy.array([1.0, 1 / 3], dtype=numpy.longdouble),
    "complex64": numpy.array([1 + 2j, numpy.nan * 1j], dtype=numpy.complex64),
    "complex128 big-endian": numpy.array([3 - 4j], dtype=">c16"),
    "clongdouble": numpy.array([1j], dtype=numpy.clongdouble),
    "datetime64[D]": numpy.array(["2009-05-01", "NaT"], dtype="datetime64[D]"),
    "datetime64[ns] big-endian": numpy.array(["2026-12-02T00:15:00.123456789"], dtype=">M8[ns]"),
    "datetime64 generic": numpy.array(["NaT"], dtype="M8"),
    "timedelta64[25s]": numpy.array([1, -2], dtype="m8[25s]"),
    "unicode": numpy.array(["", "h\u00e9", "\U0001f600x"]),
    "unicode big-endian": numpy.array(["ab"], dtype=">U4"),
    "bytes": numpy.array([b"", b"ab\x00", b"xyz"]),
    "raw void": numpy.array([b"ab"], dtype="V2"),
    "structured nested aligned": numpy.zeros(3, dtype=NESTED),
    "structured out-of-order offsets": numpy.ones(2, dtype=PACKED),
    "structured of no fields": numpy.zeros(4, dtype=numpy.dtype([])),
    "structured with titles": numpy.ones(3, dtype={"names": ["a", "b"], "formats": ["<i2", ">i2"],
                                                     "titles": ["Alpha", None]}),
    "0-d": numpy.array(7.5),
    "0-d structured": numpy.zeros((), dtype=NESTED),
    "empty": numpy.empty((0,)),
    "empty 2-d": numpy.empty((3, 0, 2), dtype=numpy.int32),
    "5-d": numpy.arange(2 * 3 * 1 * 2 * 2).reshape(2, 3, 1, 2, 2),
    "Fortran order": numpy.asfortranarray(numpy.arange(12.0).reshape(3, 4)),
    "Fortran order 3-d big-endian": numpy.asfortranarray(numpy.arange(24, dtype=">i8").reshape(2, 3, 4)),
    "strided view": numpy.arange(30)[::3],
    "transposed view (Fortran)": numpy.arange(12).reshape(3, 4).T,
    "view with gaps": numpy.arange(60.0).reshape(3, 4, 5)[::2, 1:3, ::-2],
    "field view": numpy.zeros(4, dtype=NESTED)["pos"],
}
ARRAYS["structured nested aligned"]["pos"]["y"] = numpy.arange(6).reshape(2, 3)
ARRAYS["structured nested aligned"]["tag"] = [b"a", b"bc", b"def"]

SCALARS = {
    "float64": numpy.float64(1.5), "float64 nan": numpy.float64("nan"), "float16": numpy.float16(-0.0),
    "float32": numpy.float32(2.5), "longdouble": numpy.longdouble(1) / 3, "int8": numpy.int8(-3),
    "uint64": numpy.uint64(2 ** 64 - 1), "int64": numpy.int64(-2 ** 63), "bool": numpy.bool_(True),
    "complex64": numpy.complex64(1 - 1j), "datetime64": numpy.datetime64("2009-05-01T12:30", "m"),
    "datetime64 NaT": numpy.datetime64("NaT", "ns"), "timedelta64": numpy.timedelta64(90, "s"),
    "str_": numpy.str_("h\u00e9"), "empty str_": numpy.str_(""), "bytes_": numpy.bytes_(b"ab"),
    "void record": numpy.zeros((), dtype=NESTED)[()], "void raw": numpy.void(b"xyz"),
}


@pytest.mark.parametrize("value", list(ARRAYS.values()), ids=list(ARRAYS))
def test_arrays_round_trip_exactly(value):
    assert same(value, round_trip(value))
    assert same(value, round_trip([1, {"a": (value, value)}])[1]["a"][1]), "nested, and sent twice"
    if value.flags.c_contiguous or value.flags.f_contiguous:
        assert round_trip(value).tobytes(order="A") == value.tobytes(order="A"), "records' padding too"


@pytest.mark.parametrize("value", list(SCALARS.values()), ids=list(SCALARS))
def test_scalars_keep_their_numpy_type(value):
    assert same(value, round_trip(value))
    assert same(value, round_trip({"k": [value]})["k"][0])


def test_numpy_scalars_as_keys_and_set_items():
    value = {numpy.int64(1): "one", 1: "int", (numpy.float32(2), numpy.str_("x")): {numpy.int8(3)}}
    back = round_trip(value)
    assert back == value and [type(key) for key in back] == [type(key) for key in value]
    assert type(next(iter(back[(numpy.float32(2), numpy.str_("x"))]))) is numpy.int8


def test_the_module_doctest():
    import doctest
    assert doctest.testmod(arrays, optionflags=doctest.ELLIPSIS).failed == 0


@PROPERTIES
@given(st.data())
def test_random_arrays_round_trip_exactly(data):
    dtypes = (hnp.boolean_dtypes() | hnp.integer_dtypes(endianness="?") | hnp.unsigned_integer_dtypes(endianness="?")
              | hnp.floating_dtypes(endianness="?", sizes=(16, 32, 64)) | hnp.complex_number_dtypes(endianness="?")
              | hnp.datetime64_dtypes(endianness="?") | hnp.timedelta64_dtypes(endianness="?")
              | hnp.unicode_string_dtypes(endianness="?") | hnp.byte_string_dtypes())
    dtype = data.draw(dtypes | hnp.array_dtypes(dtypes, max_size=4) | hnp.nested_dtypes(dtypes, max_itemsize=64))
    value = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
    view = data.draw(st.sampled_from(["as is", "fortran", "strided", "transposed"]))
    if view == "fortran":
        value = numpy.asfortranarray(value)
    elif view == "strided" and value.ndim:
        value = value[::2]
    elif view == "transposed":
        value = value.T
    assert same(value, round_trip(value))
    if value.ndim and value.size:
        assert same(value[0], round_trip(value[0]))  # a scalar, or a sub-array


# -- what does not travel ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [
    (numpy.array([1, "a"], dtype=object),
     "'numpy.ndarray' with dtype object (at value[]['v'][]): its items are Python objects"),
    (numpy.zeros(2, dtype=[("a", "<i4"), ("b", "O")]), "'numpy.ndarray' with dtype [('a', '<i4'), ('b', 'O')]"),
    (numpy.zeros(2, dtype=[("a", [("deep", "O")])]), "Python objects"),
    (numpy.array(["ab"], dtype=numpy.dtypes.StringDType()) if hasattr(numpy, "dtypes") and hasattr(
        numpy.dtypes, "StringDType") else numpy.array([None]), "dtype"),
    (numpy.zeros(1, dtype={"names": ["a"], "formats": ["i4"], "titles": [3]}), "a field whose title is a int"),
    (numpy.asmatrix([[1, 2]]),
     "'numpy.matrix' with dtype int64 (at value[]['v'][]): srpy carries numpy.ndarray itself"),
    (numpy.add, "'numpy.ufunc' (at value[]['v'][])"),
])
def test_what_cannot_travel_is_refused_naming_type_and_place(value, words):
    with pytest.raises(srpy.SerializationError) as info:
        codec.dumps([0, {"v": [value]}])
    assert words.replace("int64", str(numpy.dtype(int))) in str(info.value)


# -- hostile payloads ------------------------------------------------------------------------------

def crafted(tag, payload):
    """A message holding one tagged numpy item, as a hostile peer would write it (no srpy encoder)."""
    return marshal.dumps((codec._MARK, [1, (codec._TAG, tag, payload)]), 2)


def deep_sub(levels):
    description = "<f8"
    for _ in range(levels):
        description = ("sub", description, (1,))
    return description


HOSTILE = {
    "huge shape, no bytes": ("ndarray", ("<f8", (10 ** 12,), "C", b"")),
    "huge shape, few bytes": ("ndarray", ("|u1", (2 ** 40, 2 ** 20), "C", b"x" * 100)),
    "shape product beyond 64 bits": ("ndarray", ("<f8", (2 ** 61, 2 ** 61, 0), "C", b"")),
    "shape and bytes disagree": ("ndarray", ("<f8", (3,), "C", b"\0" * 16)),
    "negative size": ("ndarray", ("<f8", (-1,), "C", b"\0" * 8)),
    "shape as a list": ("ndarray", ("<f8", [1], "C", b"\0" * 8)),
    "shape of bools": ("ndarray", ("<f8", (True,), "C", b"\0" * 8)),
    "too many dimensions": ("ndarray", ("|u1", (1,) * 65, "C", b"x")),
    "order K": ("ndarray", ("<f8", (1,), "K", b"\0" * 8)),
    "data as text": ("ndarray", ("<U1", (1,), "C", "abcd")),
    "three parts": ("ndarray", ("<f8", (1,), b"\0" * 8)),
    "object dtype": ("ndarray", ("|O", (1,), "C", b"\0" * 8)),
    "object dtype, sized": ("ndarray", ("|O8", (1,), "C", b"\0" * 8)),
    "object field": ("ndarray", (("rec", ("a",), ("|O",), (0,), (None,), 8, False), (1,), "C", b"\0" * 8)),
    "object deep in a sub-array": ("ndarray", (("rec", ("a",), (("sub", "|O", (2,)),), (0,), (None,), 16, False),
                                               (1,), "C", b"\0" * 16)),
    "code as a dtype": ("ndarray", ("__import__('os').system('false')", (1,), "C", b"\0" * 8)),
    "numpy's comma form": ("ndarray", ("f8,i4", (1,), "C", b"\0" * 12)),
    "numpy's name form": ("ndarray", ("float64", (1,), "C", b"\0" * 8)),
    "native byte order mark": ("ndarray", ("=f8", (1,), "C", b"\0" * 8)),
    "a dict as a dtype": ("ndarray", ({"names": ["a"], "formats": ["<f8"]}, (1,), "C", b"\0" * 8)),
    "a list as a dtype": ("ndarray", ([("a", "<f8")], (1,), "C", b"\0" * 8)),
    "unknown datetime unit": ("ndarray", ("<M8[zz]", (1,), "C", b"\0" * 8)),
    "absurd str size": ("ndarray", ("<U9999999999", (1,), "C", b"\0" * 8)),
    "sub-array as the array's dtype": ("ndarray", (("sub", "<f8", (2,)), (1,), "C", b"\0" * 16)),
    "huge sub-array field": ("ndarray", (("rec", ("a",), (("sub", "<f8", (2 ** 40,)),), (0,), (None,), 8, False),
                                         (0,), "C", b"")),
    "field beyond the item": ("ndarray", (("rec", ("a",), ("<f8",), (4,), (None,), 8, False), (1,), "C", b"\0" * 8)),
    "names not str": ("ndarray", (("rec", (1,), ("<f8",), (0,), (None,), 8, False), (1,), "C", b"\0" * 8)),
    "duplicate names": ("ndarray", (("rec", ("a", "a"), ("<f4", "<f4"), (0, 4), (None, None), 8, False), (1,), "C",
                                    b"\0" * 8)),
    "title not str": ("ndarray", (("rec", ("a",), ("<f8",), (0,), (b"t",), 8, False), (1,), "C", b"\0" * 8)),
    "title same as a name": ("ndarray", (("rec", ("a", "b"), ("<f4", "<f4"), (0, 4), ("b", None), 8, False), (1,), "C",
                                         b"\0" * 8)),
    "alignment as an int": ("ndarray", (("rec", ("a",), ("<f8",), (0,), (None,), 8, 1), (1,), "C", b"\0" * 8)),
    "nested too deeply": ("ndarray", (("rec", ("a",), (deep_sub(40),), (0,), (None,), 8, False), (1,), "C", b"\0" * 8)),
    "too many fields": ("ndarray", (("rec", tuple("f%d" % i for i in range(5000)), ("|u1",) * 5000,
                                     tuple(range(5000)), (None,) * 5000, 5000, False), (0,), "C", b"")),
    "many items of no bytes": ("ndarray", (("rec", (), (), (), (), 0, False), (2 ** 40,), "C", b"")),
    "scalar, short data": ("npscalar", ("<f8", b"\0" * 4)),
    "scalar of object dtype": ("npscalar", ("|O", b"\0" * 8)),
    "scalar of a sub-array": ("npscalar", (("sub", "<f8", (2,)), b"\0" * 16)),
    "scalar, data as a list": ("npscalar", ("<f8", [0.0])),
}


@pytest.mark.parametrize("tag, payload", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_payloads_are_bad_data_in_process(tag, payload):
    with pytest.raises(ValueError, match=r"^bad srpy data \("):
        codec.loads(crafted(tag, payload))


def test_a_forged_dtype_text_is_never_evaluated(tmp_path):
    flag = tmp_path / "ran"
    code = "open(%r, 'w').close()" % str(flag)
    for description in (code, "(%s, 'f8')" % code, "[('a', %r)]" % code):
        with pytest.raises(ValueError, match="bad srpy data"):
            codec.loads(crafted("ndarray", (description, (1,), "C", b"\0" * 8)))
    assert not flag.exists()


def engine_rss(eng):
    return psutil.Process(eng.whoami()["PID"]).memory_info().rss


def test_hostile_payloads_against_a_real_engine(engine_uri):
    """Each crafted array is one clear error naming bad data; the engine reserves nothing and keeps serving."""
    with srpy.PythonEngine(engine_uri) as eng:
        eng.set(warm=numpy.arange(3))  # numpy loaded before the baseline
        before = engine_rss(eng)
        refuse_crafted_values(engine_uri, HOSTILE)
        assert eng.eval("6 * 7") == 42
        assert "v" not in eng.eval("dir()")
        assert engine_rss(eng) - before < 20 * 2 ** 20


# -- through real engines ------------------------------------------------------------------------------

def test_set_get_eval_exe_vexe_and_ns(engine):
    values = {"v%d" % index: value for index, value in enumerate(ARRAYS.values())}
    engine.set(**values)
    back = engine.get(list(values))
    for name, value in values.items():
        assert same(value, back[name])
        assert same(value, engine.get(name))
    engine.set(s=numpy.float32(1.5), t=numpy.datetime64("2009-05-01"))
    assert engine.eval("(type(s).__name__, str(t.dtype), v1.dtype.byteorder)") == ("float32", "datetime64[D]", "|")
    made = engine.eval("__import__('numpy').arange(6, dtype='>u2').reshape(2, 3).T")
    assert same(numpy.arange(6, dtype=">u2").reshape(2, 3).T, made)
    assert type(engine.eval("__import__('numpy').int16(7)")) is numpy.int16
    engine.exe("doubled = a * 2", a=numpy.arange(4.0))
    assert same(numpy.arange(4.0) * 2, engine.get("doubled"))
    out = engine.vexe("m = a.mean(); b = a[::-1]", get=["m", "b"], a=numpy.arange(5, dtype=numpy.int8))
    assert same(numpy.float64(2.0), out["m"]) and same(numpy.arange(5, dtype=numpy.int8)[::-1], out["b"])
    engine.ns.grid = numpy.zeros((2, 2), order="F")
    assert same(numpy.zeros((2, 2), order="F"), engine.ns.grid)


def test_associate_function(engine):
    engine.exe("import numpy\ndef scale(a, k):\n    return a * k, k, a.dtype.str")
    scale = engine.associateFunction("scale")
    result, k, text = scale(numpy.arange(3, dtype=">f4"), numpy.float32(2))
    assert same(numpy.arange(3, dtype=">f4") * numpy.float32(2), result)
    assert type(k) is numpy.float32 and text == ">f4"


def stats(a):
    import numpy as np
    return np.float64(a.sum()), a.T, np.int32(a.ndim)


def double(a):
    return a * 2


def test_submit_map_and_multirun(pair):
    box = srpy.EngBox(pair)
    try:
        value = numpy.arange(12.0).reshape(3, 4)
        total, transposed, ndim = box.submit(stats, value).result(timeout=60)
        assert same(numpy.float64(66.0), total) and same(value.T, transposed) and same(numpy.int32(2), ndim)
        inputs = [numpy.full(5, i, dtype=">i8") for i in range(40)]
        for got, sent in zip(box.map(double, inputs, timeout=60), inputs):
            assert same(sent * 2, got)
        for results in (box.mrs.eval("a + 1", a=numpy.ones(3)), box.mrpwait(box.mrp.eval("a + 1", a=numpy.ones(3)),
                                                                             60)):
            assert len(results) == 2
            for got in results.values():
                assert same(numpy.ones(3) + 1, got)
    finally:
        box.close()


def test_engines_pass_arrays_to_each_other(start_launcher):
    launcher = start_launcher(["-n", "2", "--group", "arrays"], count=2)
    box = srpy.EngBox(launcher.uris)
    try:
        assert all(len(peers) == 1 for peers in box.connectPeers().values())
        a, b = box[0], box[1]
        a.exe("import srpy, numpy\nme = srpy.this_engine()\n"
              "me.put('grid', numpy.arange(6, dtype='>i2').reshape(2, 3).T)\n"
              "me.send(me.peers()[0], 'x', numpy.float16(0.5))")
        b.exe("import srpy\nme = srpy.this_engine()")
        assert same(numpy.arange(6, dtype=">i2").reshape(2, 3).T, b.eval("me.read('grid', timeout=30)"))
        assert same(numpy.float16(0.5), b.eval("me.receive('x', timeout=30)[1]"))
    finally:
        box.close()


def test_an_object_array_on_the_engine_is_refused_and_the_engine_serves(engine):
    engine.exe("import numpy\nobjs = numpy.array([1, 'a'], dtype=object)")
    with pytest.raises(srpy.SerializationError, match="'numpy.ndarray' with dtype object"):
        engine.get("objs")
    with pytest.raises(srpy.SerializationError, match="with dtype object"):
        engine.set(objs=numpy.array([None]))
    assert engine.eval("len(objs)") == 2


# -- numpy stays optional --------------------------------------------------------------------------

NO_NUMPY = "import sys\nsys.modules['numpy'] = None  # import numpy now raises ImportError\n"


def run(code, env=None):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, **(env or {})))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_srpy_loads_numpy_only_when_one_travels():
    out = run("import sys, srpy, srpy.codec as c\n"
              "c.loads(c.dumps([1, 2.5, {'a': (b'x', {3})}]))\n"
              "import datetime, decimal\nc.loads(c.dumps([datetime.date.today(), decimal.Decimal(1)]))\n"
              "print('numpy' in sys.modules, 'srpy.arrays' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_a_receiver_without_numpy_says_so():
    data = codec.dumps({"a": numpy.arange(3)})
    out = run(NO_NUMPY + "import srpy.codec as c\n"
              "try:\n    c.loads(%r)\nexcept ValueError as exc:\n    print(exc)\n"
              "print(c.loads(c.dumps([1, 2])))" % data)
    assert "numpy is not installed here" in out and "[1, 2]" in out


def test_an_engine_without_numpy_refuses_arrays_clearly_and_serves(start_launcher, tmp_path):
    stub = tmp_path / "numpy"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ImportError('numpy is absent on this engine')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", ROOT)])
    launcher = start_launcher(["-b"], env={"PYTHONPATH": path})
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        assert eng.eval("1 + 1") == 2
        with pytest.raises(Exception, match="numpy is not installed here"):
            eng.set(a=numpy.arange(3))
        assert eng.eval("2 + 2") == 4


# -- the json (Jython) client ----------------------------------------------------------------------

def test_json_client_gets_a_clear_refusal_for_arrays(engine_uri):
    eng = lite.Engine(engine_uri)
    try:
        eng.eval("0")
        for expr, name in (("__import__('numpy').arange(3)", "ndarray"), ("__import__('numpy').int64(3)", "int64")):
            with pytest.raises(TypeError, match="cannot return a value of type '%s' .*json" % name):
                eng.eval(expr)
        assert eng.eval("__import__('numpy').arange(3).tolist()") == [0, 1, 2]
        assert eng.eval("__import__('numpy').float64(1.5)") == 1.5  # a float subclass: json writes the number
        assert eng.ping() == "pong"
    finally:
        eng.close()
