"""
Issue 13: pandas DataFrame, Series and Index travel exactly (every dtype family srpy carries, named
and MultiIndex indexes, frequencies), in-process and through real engines; what does not travel is
refused naming the column and type; hostile frame payloads are one clear error; srpy loads pandas
only when one travels.
"""

import datetime
import marshal
import os
import zoneinfo

import pytest

pandas = pytest.importorskip("pandas")
import numpy  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pandas import testing as pdt  # noqa: E402

import srpy  # noqa: E402
from conftest import refuse_crafted_values  # noqa: E402
from srpy import codec  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PROPERTIES = settings(deadline=None, database=None, max_examples=int(os.environ.get("SRPY_CODEC_EXAMPLES", "60")),
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def round_trip(value):
    return codec.loads(codec.dumps(value))


def same(a, b):
    """C{a} and C{b} are the same pandas value, exactly (dtypes, index types, names, frequencies)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, pandas.DataFrame):
        pdt.assert_frame_equal(a, b, check_exact=True, check_index_type=True, check_column_type=True, check_freq=True)
    elif isinstance(a, pandas.Series):
        pdt.assert_series_equal(a, b, check_exact=True, check_index_type=True, check_freq=True)
    else:
        pdt.assert_index_equal(a, b, exact=True, check_exact=True)
    return True


PARIS = zoneinfo.ZoneInfo("Europe/Paris")
PLUS3 = datetime.timezone(datetime.timedelta(hours=3), "Moscow-ish")
COLUMNS = {
    "int64": numpy.array([1, -2, 2 ** 62]),
    "uint8": numpy.array([0, 255, 7], dtype=numpy.uint8),
    "float64 nan -0": numpy.array([1.5, numpy.nan, -0.0]),
    "float32": numpy.array([1.25, numpy.inf, 3], dtype=numpy.float32),
    "complex": numpy.array([1j, 2, 3 - 1j]),
    "bool": numpy.array([True, False, True]),
    "datetime ns": numpy.array(["2009-05-01", "NaT", "2026-12-02T00:15:00.123456789"], dtype="M8[ns]"),
    "datetime s": numpy.array(["2009-05-01", "NaT", "1970-01-01"], dtype="M8[s]"),
    "datetime tz": pandas.date_range("2026-03-29", periods=3, freq="h", tz=PARIS),
    "datetime utc": pandas.date_range("2020", periods=3, tz="UTC"),
    "datetime fixed offset": pandas.date_range("2020", periods=3, tz=PLUS3),
    "timedelta": pandas.to_timedelta([1, None, -3], unit="s"),
    "category": pandas.Categorical(["x", "y", None]),
    "category ordered ints": pandas.Categorical([3, 1, 3], categories=[3, 2, 1], ordered=True),
    "Int64": pandas.array([1, None, 3], dtype="Int64"),
    "Int8": pandas.array([None, -128, 127], dtype="Int8"),
    "UInt64": pandas.array([2 ** 64 - 1, None, 0], dtype="UInt64"),
    "Float32": pandas.array([1.5, None, 0.0], dtype="Float32"),
    "boolean": pandas.array([True, None, False], dtype="boolean"),
    "string": pandas.array(["a", None, "h\u00e9"], dtype="string"),
    "str (default)": pandas.array(["", None, "\U0001f600"], dtype="str"),
    "object of str": numpy.array(["a", None, "c"], dtype=object),
}
# the zones pandas also takes: dateutil's (it comes with pandas) and pytz's (if installed)
try:
    from dateutil import tz as dateutil_tz
except ImportError:  # pragma: no cover - pandas depends on it
    dateutil_tz = None
else:
    COLUMNS.update({
        "datetime dateutil zone": pandas.date_range("2026-10-25", periods=3, freq="h", tz=dateutil_tz.gettz("Europe/Paris")),
        "datetime dateutil utc": pandas.date_range("2020", periods=3, tz=dateutil_tz.tzutc()),
        "datetime dateutil offset": pandas.date_range("2020", periods=3, tz=dateutil_tz.tzoffset("X", -5400)),
        "datetime dateutil unnamed offset": pandas.date_range("2020", periods=3, tz=dateutil_tz.tzoffset(None, 3600)),
    })
try:
    import pytz
except ImportError:
    pytz = None
else:
    COLUMNS.update({
        "datetime pytz zone": pandas.date_range("2026-03-29", periods=3, freq="h", tz=pytz.timezone("Europe/Paris")),
        "datetime pytz utc": pandas.date_range("2020", periods=3, tz=pytz.utc),
        "datetime pytz fixed offset": pandas.date_range("2020", periods=3, tz=pytz.FixedOffset(-150)),
    })
#: the zones the property test draws from
ZONES = [None, PARIS, PLUS3] + ([dateutil_tz.gettz("America/New_York"), dateutil_tz.tzoffset(None, 7200)]
                               if dateutil_tz is not None else []) + ([pytz.timezone("Asia/Tokyo")] if pytz else [])
INDEXES = {
    "range": pandas.RangeIndex(2, 8, 2, name="r"),
    "int named": pandas.Index([10, 20, 30], name="k"),
    "str": pandas.Index(["a", "b", "c"]),
    "object": pandas.Index(["a", None, "c"], dtype=object, name=("tuple", 1)),
    "dates with freq": pandas.date_range("2020-01-01", periods=3, freq="D", name="day"),
    "dates tz": pandas.DatetimeIndex(["2020-01-01", "2021-06-01", None], tz=PARIS),
    "timedelta with freq": pandas.timedelta_range("1s", periods=3, freq="2s"),
    "float": pandas.Index([0.5, numpy.nan, -0.0]),
    "categorical": pandas.CategoricalIndex(["b", "a", "b"], categories=["b", "a", "z"], name="c"),
    "Int64": pandas.Index(pandas.array([1, None, 2], dtype="Int64")),
    "multi": pandas.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["l", None]),
    "multi with unused levels": pandas.MultiIndex.from_product([["a", "b"], [1, 2]], names=["x", "y"])[:3],
}


def as_series(column, **options):
    """pandas takes an object array of str for str unless told object."""
    return pandas.Series(COLUMNS[column], dtype=object if column.startswith("object") else None, **options)


@pytest.mark.parametrize("name", list(COLUMNS))
def test_each_dtype_family_round_trips_as_series_frame_and_index(name):
    series = as_series(name, name="v", index=pandas.Index([7, 8, 9], name="i"))
    assert same(series, round_trip(series))
    frame = pandas.DataFrame({"v": series, "n": [1, 2, 3]})
    assert same(frame, round_trip(frame))
    if not isinstance(series.dtype, numpy.dtype) or series.dtype.kind != "c":
        index = pandas.Index(series.array, name="as index", dtype=series.dtype)
        assert same(index, round_trip(index))


@pytest.mark.parametrize("index", list(INDEXES.values()), ids=list(INDEXES))
def test_each_index_kind_round_trips_alone_and_under_values(index):
    assert same(index, round_trip(index))
    series = pandas.Series(numpy.arange(len(index)), index=index, name=None)
    assert same(series, round_trip(series))
    frame = pandas.DataFrame({"a": numpy.arange(len(index)), 5: ["x"] * len(index)}, index=index)
    assert same(frame, round_trip(frame))
    wide = pandas.DataFrame(numpy.arange(2 * len(index)).reshape(2, -1), columns=index)
    assert same(wide, round_trip(wide))


def test_a_frame_of_every_family_duplicated_labels_empty_frames_and_nesting():
    frame = pandas.DataFrame({name: as_series(name) for name in COLUMNS})
    assert same(frame, round_trip(frame))
    duplicated = pandas.DataFrame([[1, "a"], [2, "b"]], columns=["x", "x"])
    assert same(duplicated, round_trip(duplicated))
    for empty in (pandas.DataFrame(), pandas.DataFrame(columns=["a", "b"]), pandas.DataFrame(index=[1, 2]),
                  pandas.Series([], dtype="Int64"), pandas.Index([], dtype=object)):
        assert same(empty, round_trip(empty))
    got = round_trip({"frames": [frame.head(1)], "s": frame["int64"], "ts": pandas.Timestamp("2020-01-01")})
    assert same(frame.head(1), got["frames"][0]) and same(frame["int64"], got["s"])
    assert got["ts"] == datetime.datetime(2020, 1, 1)  # a Timestamp travels as the datetime it is, as before


def test_a_received_frame_is_its_own_writable_copy():
    frame = pandas.DataFrame({"a": [1.0, 2.0], "b": pandas.array([1, None], dtype="Int64")})
    got = round_trip(frame)
    got.loc[0, "a"] = 9.0
    got.loc[1, "b"] = 5
    assert frame.loc[0, "a"] == 1.0 and got.loc[1, "b"] == 5


@st.composite
def small_frames(draw):
    rows = draw(st.integers(0, 5))
    names = draw(st.lists(st.sampled_from(list(COLUMNS)), max_size=4))
    picks = {}
    for n, name in enumerate(names):
        values = as_series(name)
        picks["%d %s" % (n, name)] = values.iloc[[draw(st.integers(0, 2)) for _ in range(rows)]].reset_index(drop=True)
    index = draw(st.sampled_from(["range", "int", "str", "multi", "dates"]))
    frame = pandas.DataFrame(picks, index=pandas.RangeIndex(rows))
    if index == "int":
        frame.index = pandas.Index(draw(st.lists(st.integers(-5, 5), min_size=rows, max_size=rows)), dtype="int64")
    elif index == "str":
        frame.index = pandas.Index(draw(st.lists(st.text(max_size=3), min_size=rows, max_size=rows)), dtype=object)
    elif index == "multi":
        frame.index = pandas.MultiIndex.from_arrays(
            [draw(st.lists(st.sampled_from("ab"), min_size=rows, max_size=rows)),
             draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows))], names=["l", draw(st.none() | st.text())])
    elif index == "dates":
        frame.index = pandas.date_range("2026-03-29", periods=rows, freq=draw(st.sampled_from(["h", "D", "15min"])),
                                        tz=draw(st.sampled_from(ZONES)))
    if draw(st.booleans()):  # columns as a MultiIndex
        frame.columns = pandas.MultiIndex.from_arrays([list(frame.columns), list(range(frame.shape[1]))])
    return frame


@PROPERTIES
@given(small_frames())
def test_random_small_frames_round_trip_exactly(frame):
    assert same(frame, round_trip(frame))


@pytest.mark.parametrize("value, words", [
    (pandas.DataFrame({"ok": [1], "bad": [object()]}), ["column 1 ('bad')", "dtype object", "object"]),
    (pandas.Series([1, "a"], dtype=object), ["the values", "int"]),
    (pandas.DataFrame({"nan": pandas.Series(["a", numpy.nan], dtype=object)}), ["column 0 ('nan')", "float"]),
    (pandas.Series(pandas.period_range("2020", periods=2, freq="M")), ["period"]),
    (pandas.Series(pandas.arrays.IntervalArray.from_breaks([0, 1, 2])), ["interval"]),
    (pandas.Index([object()]), ["object"]),
] + ([(pandas.Series(pandas.date_range("2020", periods=2, tz=dateutil_tz.tzlocal())), ["tzlocal", "time zone"])]
     if dateutil_tz is not None else []),
    ids=["object column", "mixed series", "nan in object", "period", "interval", "object index"]
    + (["dateutil tzlocal"] if dateutil_tz is not None else []))
def test_what_does_not_travel_is_refused_naming_column_and_type(value, words):
    with pytest.raises(srpy.SerializationError) as caught:
        codec.dumps({"x": value})
    message = str(caught.value)
    assert "value['x']" in message, message
    for word in words:
        assert word in message, (word, message)


# -- hostile payloads ----------------------------------------------------------------------------------

def item(value):
    """One honest part, encoded as srpy would (a tagged numpy array, say)."""
    return codec._encode(value, "part")


def crafted(tag, payload):
    """A message holding one tagged pandas item, as a hostile peer would write it."""
    return marshal.dumps((codec._MARK, [1, (codec._TAG, tag, payload)]), 2)


INT3 = ("numpy", item(numpy.arange(3)))
RANGE3 = ("range", None, 0, 3, 1)
HOSTILE = {
    "frame not a tuple": ("pdframe", [1, 2, 3]),
    "column shorter than the index": ("pdframe", (("range", None, 0, 1, 1), ("range", None, 0, 4, 1), [INT3])),
    "more columns than labels": ("pdframe", (("range", None, 0, 1, 1), RANGE3, [INT3, INT3])),
    "series longer than its index": ("pdseries", (None, ("range", None, 0, 2, 1), INT3)),
    "unknown column kind": ("pdseries", (None, RANGE3, ("pickle", b"cos\nsystem\n"))),
    "unknown index form": ("pdindex", ("eval", "__import__('os')")),
    "range step 0": ("pdindex", ("range", None, 0, 3, 0)),
    "numpy column of object text": ("pdseries", (None, RANGE3, ("numpy", "abc"))),
    "2-d numpy column": ("pdseries", (None, RANGE3, ("numpy", item(numpy.zeros((3, 1)))))),
    "bad tz name": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")), ("zone", "../../etc/passwd")))),
    "unknown tz": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")), ("zone", "Mars/Olympus")))),
    "tz as text": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")), "Europe/Paris"))),
    "offset of two days": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")),
                                                       ("offset", 2 * 86400, "x")))),
    "dateutil zone by path": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")),
                                                          ("dateutil", "/etc/passwd")))),
    "dateutil TZ string": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")),
                                                       ("dateutil", "EST5EDT4")))),
    "dateutil unknown zone": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")),
                                                          ("dateutil", "Mars/Olympus")))),
    "dateutil offset of two days": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")),
                                                                ("dateutil-offset", 2 * 86400, None)))),
    "pytz path": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")), ("pytz", "../etc/passwd")))),
    "pytz offset of a day": ("pdseries", (None, RANGE3, ("tz", item(numpy.zeros(3, "M8[ns]")),
                                                         ("pytz-offset", 1440)))),
    "category code out of range": ("pdseries", (None, RANGE3, ("category", item(numpy.array([0, 5, 0], "i1")),
                                                                ("index", None, ("object", ["a"]), None), False))),
    "category of floats codes": ("pdseries", (None, RANGE3, ("category", item(numpy.zeros(3)),
                                                              ("index", None, ("object", ["a"]), None), False))),
    "mask shorter": ("pdseries", (None, RANGE3, ("masked", item(numpy.arange(3)), item(numpy.zeros(2, bool))))),
    "mask of ints": ("pdseries", (None, RANGE3, ("masked", item(numpy.arange(3)), item(numpy.zeros(3))))),
    "masked big-endian": ("pdseries", (None, RANGE3, ("masked", item(numpy.arange(3, dtype=">i8")),
                                                       item(numpy.zeros(3, bool))))),
    "object column of ints": ("pdseries", (None, RANGE3, ("object", [1, 2, 3]))),
    "string of bytes": ("pdseries", (None, RANGE3, ("string", "python", "NA", [b"a", b"b", b"c"]))),
    "string storage unknown": ("pdseries", (None, RANGE3, ("string", "pickle", "NA", ["a", "b", "c"]))),
    "bad freq text": ("pdindex", ("index", None, ("numpy", item(numpy.zeros(3, "M8[ns]"))), "__import__('os')")),
    "freq the dates break": ("pdindex", ("index", None, ("numpy", item(numpy.array([0, 5, 6], "M8[D]"))), "D")),
    "freq on ints": ("pdindex", ("index", None, INT3, "D")),
    "multi codes disagree": ("pdindex", ("multi", ("a", "b"), (RANGE3, RANGE3),
                                         (item(numpy.arange(3)), item(numpy.arange(2))))),
    "multi code out of range": ("pdindex", ("multi", ("a",), (RANGE3,), (item(numpy.array([0, 9])),))),
    "multi of no levels": ("pdindex", ("multi", (), (), ())),
    "unhashable name": ("pdindex", ("range", [1], 0, 3, 1)),
    "float16 index": ("pdindex", ("index", None, ("numpy", item(numpy.zeros(3, numpy.float16))), None)),
    "huge range as a level": ("pdindex", ("multi", ("a",), (("range", None, 0, 10 ** 18, 1),),
                                          (item(numpy.zeros(3, "i8")),))),
    "huge range as categories": ("pdseries", (None, RANGE3, ("category", item(numpy.zeros(3, "i8")),
                                                              ("range", None, 0, 10 ** 18, 1), False))),
    "duplicate categories": ("pdseries", (None, RANGE3, ("category", item(numpy.zeros(3, "i1")),
                                                          ("index", None, ("object", ["a", "a"]), None), False))),
    "names and levels disagree": ("pdindex", ("multi", ("a", "b"), (RANGE3,), (item(numpy.zeros(3, "i8")),))),
    "huge columns, no column": ("pdframe", (("range", None, 0, 10 ** 18, 1), ("range", None, 0, 0, 1), [])),
    "categories nested too deep": ("pdindex", ("index", None, ("category", item(numpy.zeros(0, "i1")),
                                                               RANGE3, False), None)),
}


def deep_categories(levels):
    index = RANGE3
    for _ in range(levels):
        index = ("index", None, ("category", item(numpy.zeros(0, "i1")), index, False), None)
    return index


HOSTILE["categories nested too deep"] = ("pdindex", deep_categories(40))


@pytest.mark.parametrize("tag, payload", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_payloads_are_bad_data_in_process(tag, payload):
    with pytest.raises(ValueError, match=r"^bad srpy data \("):
        codec.loads(crafted(tag, payload))


def test_hostile_payloads_against_a_real_engine(engine_uri):
    """Each crafted frame is one clear error naming bad data; the engine keeps serving."""
    with srpy.PythonEngine(engine_uri) as eng:
        refuse_crafted_values(engine_uri, HOSTILE)
        assert eng.eval("6 * 7") == 42
        assert "v" not in eng.eval("dir()")


# -- through real engines ------------------------------------------------------------------------------

def test_set_get_and_eval_through_an_engine(engine):
    frame = pandas.DataFrame({name: as_series(name) for name in COLUMNS})
    frame.index = pandas.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["l", "n"])
    engine.set(df=frame, idx=INDEXES["dates with freq"])
    assert same(frame, engine.get("df"))
    assert same(INDEXES["dates with freq"], engine.get("idx"))
    assert engine.eval("(type(df).__name__, str(df['datetime tz'].dtype), str(df['Int64'].dtype))") == (
        "DataFrame", str(frame["datetime tz"].dtype), "Int64")
    assert same(frame["Int64"] * 2, engine.eval("df['Int64'] * 2"))
    engine.exe("import pandas")
    made = engine.eval("pandas.DataFrame({'a': [1, 2]}, index=pandas.Index(['x', 'y'], name='n'))")
    assert same(pandas.DataFrame({"a": [1, 2]}, index=pandas.Index(["x", "y"], name="n")), made)


def test_a_frame_the_engine_cannot_send_is_refused_and_the_engine_serves(engine):
    engine.exe("import pandas\nbad = pandas.DataFrame({'o': [object()]})")
    with pytest.raises(srpy.SerializationError, match="column 0"):
        engine.get("bad")
    assert engine.eval("len(bad)") == 1


def describe(frame):
    return frame.dtypes.astype(str).tolist(), frame.sum(numeric_only=True), frame


def test_submit_and_map(pair):
    box = srpy.EngBox(pair)
    try:
        frame = pandas.DataFrame({"i": COLUMNS["Int64"], "t": COLUMNS["datetime tz"], "c": COLUMNS["category"]})
        dtypes, sums, back = box.submit(describe, frame).result(timeout=60)
        assert dtypes == frame.dtypes.astype(str).tolist() and dtypes[0] == "Int64"
        assert same(frame.sum(numeric_only=True), sums) and same(frame, back)
        series = [pandas.Series(pandas.array([i, None], dtype="Int32"), name=i) for i in range(8)]
        for got, sent in zip(box.map(abs, series, timeout=60), series):
            assert same(abs(sent), got)
    finally:
        box.close()


def test_srpy_loads_pandas_only_when_one_travels():
    import subprocess
    import sys
    from conftest import ROOT
    code = ("import sys, srpy, srpy.codec as c, numpy\n"
            "c.loads(c.dumps([1, numpy.arange(3), {'a': (b'x', {3})}]))\n"
            "print('pandas' in sys.modules, 'srpy.frames' in sys.modules)\n"
            "import pandas\nc.loads(c.dumps(pandas.Series([1])))\n"
            "print('srpy.frames' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]
