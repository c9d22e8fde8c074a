"""
srpy.codec in-process: no engine, no socket.

The property tests generate values of every type srpy carries, nested, and check the codec's
contracts: L{codec.dumps} and L{codec.loads} round-trip them exactly (same type at every level,
same value, NaNs and signed zeros included) or refuse with L{srpy.SerializationError}; every fast
path (plain marshal, the two proofs that a value is plain) gives what the tagged encoding gives;
and whatever bytes arrive, L{codec.loads} returns plain data or raises ValueError, reserving no
more memory than the bytes' size.
"""

import array
import collections
import datetime
import decimal
import enum
import marshal
import math
import os
import struct
import sys
import tracemalloc
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import srpy
from srpy import codec

#: no example database in the worktree, no deadline on a loaded machine; SRPY_CODEC_EXAMPLES=5000 searches longer
PROPERTIES = settings(deadline=None, database=None, max_examples=int(os.environ.get("SRPY_CODEC_EXAMPLES", "100")),
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- what "exactly the same" means ------------------------------------------------------------------

def same(a, b):
    """True when C{a} and C{b} are the same value of the same type at every level (NaN is NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    kind = type(a)
    if kind is float:
        return struct.pack("<d", a) == struct.pack("<d", b) or (math.isnan(a) and math.isnan(b)
                                                                and math.copysign(1, a) == math.copysign(1, b))
    if kind is complex:
        return same(a.real, b.real) and same(a.imag, b.imag)
    if kind is decimal.Decimal:
        return str(a) == str(b)
    if kind in (list, tuple) or (isinstance(a, tuple) and hasattr(kind, "_fields")):  # named tuples too
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if kind is dict:
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    if kind in (set, frozenset):  # rebuilt sets may iterate in another order: match item for item
        rest = list(b)
        for item in a:
            match = next((i for i, other in enumerate(rest) if same(item, other)), None)
            if match is None:
                return False
            rest.pop(match)
        return not rest
    if kind is array.array:
        return a.typecode == b.typecode and a.tobytes() == b.tobytes()
    if kind in (datetime.datetime, datetime.time):
        return (a.isoformat() == b.isoformat() and a.fold == b.fold and type(a.tzinfo) is type(b.tzinfo)
                and a.utcoffset() == b.utcoffset())
    if isinstance(a, BaseException):
        return same(a.args, b.args)
    return a == b


def base_form(value):
    """
    What C{value} arrives as: subclasses of srpy's plain types as their base type (see L{codec}),
    but records (enum members, named tuples of classes found by name) as themselves (L{srpy.records}).
    """
    if isinstance(value, enum.Enum) or hasattr(type(value), "_fields"):
        return value
    if isinstance(value, bytearray):  # a tagged kind of its own, as its subclasses
        return bytearray(bytes(value))
    for base, copy in codec._BASE_COPIES:
        if isinstance(value, base) and type(value) is not base and not isinstance(value, bool):
            value = copy(value)
            break
    kind = type(value)
    if kind in (list, tuple):
        return kind(base_form(item) for item in value)
    if kind in (set, frozenset):
        return kind(base_form(item) for item in value)
    if kind is dict:
        return {base_form(k): base_form(v) for k, v in value.items()}
    return value


def test_same_tells_what_equality_does_not():
    assert not same(0.0, -0.0) and same(float("nan"), float("nan")) and not same(1, 1.0) and not same(True, 1)
    assert not same((1,), [1]) and not same({1: 2}, {1: 2.0}) and same({1.5, float("nan")}, {float("nan"), 1.5})
    assert not same(decimal.Decimal("1.0"), decimal.Decimal("1")) and not same(bytearray(b"a"), b"a")
    assert not same(datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 1, fold=1))


# -- values of every type srpy carries ----------------------------------------------------------------

texts = st.lists(st.integers(0, sys.maxunicode), max_size=12).map(lambda points: "".join(map(chr, points)))  # surrogates too
floats = st.floats() | st.sampled_from([float("nan"), -float("nan"), -0.0, float("inf"), -float("inf"), 5e-324])
# offsets in whole seconds: CPython's fromisoformat reads "+00:00:00.000001" as UTC (3.11)
offsets = st.integers(-86399, 86399).map(lambda seconds: datetime.timezone(datetime.timedelta(seconds=seconds)))
zones = st.none() | st.just(datetime.timezone.utc) | offsets
ARRAY_CODES = [code for code in array.typecodes if code != "u"]  # 'u' is deprecated
arrays = st.builds(lambda code, raw: array.array(code, raw[:len(raw) - len(raw) % array.array(code).itemsize]),
                   st.sampled_from(ARRAY_CODES), st.binary(max_size=64))
hashable_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2 ** 300, 2 ** 300), floats,
    st.complex_numbers(allow_nan=True, allow_infinity=True), texts, st.binary(max_size=20),
    st.datetimes(timezones=zones), st.dates(), st.times(timezones=zones), st.timedeltas(),
    st.decimals(allow_nan=True, allow_infinity=True).filter(lambda d: not d.is_snan()), st.uuids(),
)
scalars = hashable_scalars | arrays | st.binary(max_size=20).map(bytearray) | st.decimals(allow_nan=True) \
    | st.builds(ValueError, texts) | st.builds(KeyError, st.integers()) | st.builds(ZeroDivisionError)
#: tuples shaped like srpy's own framing: they must come back as they went
lookalikes = st.tuples(st.just(codec._MARK), hashable_scalars) | st.tuples(
    st.just(codec._TAG), st.sampled_from(sorted(codec._DECODERS) + ["tuple", "set", "dict", "nope"]), hashable_scalars)


def containers(children):
    keys = hashable_scalars | st.frozensets(hashable_scalars, max_size=4) | st.tuples(hashable_scalars, hashable_scalars)
    return st.one_of(
        st.lists(children, max_size=6), st.lists(children, max_size=6).map(tuple),
        st.dictionaries(keys, children, max_size=6), st.sets(keys, max_size=6), st.frozensets(keys, max_size=6),
        # wide and long enough for the C-speed level check (over 32 items) and the data proof (over 512 bytes)
        st.builds(lambda items, times: items * times, st.lists(scalars | lookalikes, min_size=1, max_size=4),
                  st.integers(9, 120)),
        st.lists(floats, min_size=33, max_size=200), st.lists(st.integers(-2 ** 40, 2 ** 40), min_size=33, max_size=200),
        st.lists(st.tuples(hashable_scalars, hashable_scalars), min_size=33, max_size=50),
        st.lists(st.dictionaries(texts, hashable_scalars, max_size=2), min_size=33, max_size=50),
    )


values = st.recursive(scalars | lookalikes, containers, max_leaves=40)


class Colour(enum.IntEnum):
    RED = 1


class Shouting(str):
    def __str__(self):
        return "SHOUT"


Pair = collections.namedtuple("Pair", "a b")
subclassed = st.one_of(st.just(Colour.RED), texts.map(Shouting), st.builds(Pair, hashable_scalars, hashable_scalars),
                       st.dictionaries(texts, hashable_scalars, max_size=4).map(collections.OrderedDict))


def tagged_encoding(value):
    """The general path: the tagged encoding, whatever the value holds."""
    return marshal.dumps((codec._MARK, codec._encode(value, "value")), codec._VERSION)


# -- the round trip and the fast paths ------------------------------------------------------------------

@PROPERTIES
@given(values)
def test_every_value_round_trips_exactly(value):
    assert same(codec.loads(codec.dumps(value)), value)


@PROPERTIES
@given(values)
def test_the_fast_paths_give_what_the_tagged_encoding_gives(value):
    sent = codec.dumps(value)
    assert same(codec.loads(sent), codec.loads(tagged_encoding(value)))
    try:
        data = marshal.dumps(value, codec._VERSION)
    except (ValueError, MemoryError):
        return  # only the tagged encoding can carry it
    exact = codec._exact_by_value(value)
    if exact:  # the definition: marshal reads the value back as itself
        assert same(marshal.loads(data), value) and sent == data
    if codec._exact_by_data(data, budget=10 ** 9):  # the data's proof never claims more than the value's
        assert exact
    if (type(value) is not tuple or len(value) != 2 or value[0] != codec._MARK) and not exact:
        assert sent != data, "marshal's output is not sent for a value it does not read back as itself"


@PROPERTIES
@given(st.recursive(subclassed | scalars, containers, max_leaves=20))
def test_subclasses_arrive_as_their_base_type_with_their_own_content(value):
    assert same(codec.loads(codec.dumps(value)), base_form(value))


def test_a_subclass_that_converts_itself_otherwise_still_travels_as_its_content():
    assert codec.loads(codec.dumps([Shouting("quiet")])) == ["quiet"]
    assert type(codec.loads(codec.dumps({"c": Colour.RED}))["c"]) is Colour  # a record: it keeps its type


class Touchy:
    """An object that fails the test if the codec asks it anything (its truth, equality or hash)."""

    def __bool__(self):
        raise AssertionError("the codec asked a user object for its truth value")

    def __eq__(self, other):
        raise AssertionError("the codec compared a user object")

    __hash__ = object.__hash__


class TouchyBuffer(Touchy, bytearray):
    """A buffer (marshal writes it, as bytes) that must not be asked anything either (a numpy array's truth raises)."""

    __hash__ = None


UNSENDABLE = [object(), Ellipsis, StopIteration, lambda: 1, compile("1", "", "eval"), int, sys,
              Touchy()]


def test_user_objects_are_never_asked_their_truth_or_equality():
    for value in ([TouchyBuffer(b"xy")], ("a", {"k": TouchyBuffer(b"z")}), [TouchyBuffer(b"q")] * 100):
        assert same(codec.loads(codec.dumps(value)), base_form(value))
    with pytest.raises(srpy.SerializationError):
        codec.dumps([Touchy(), (Touchy(),)])


@PROPERTIES
@given(values, st.sampled_from(UNSENDABLE), st.integers(0, 3))
def test_what_cannot_travel_is_refused_by_name_whichever_path_would_carry_it(value, bad, depth):
    for _ in range(depth):
        value = [value, bad] if depth % 2 else {"k": bad, "v": value}
    value = [bad] * 200 + [value] if depth == 3 else [value, bad]
    with pytest.raises(srpy.SerializationError, match="cannot send a value of type %r" % codec._type_name(type(bad))):
        codec.dumps(value)


def test_ellipsis_travels_no_more_in_a_long_list_than_in_a_short_one():
    """The old marshal-output walk let Ellipsis through in data over 512 bytes, not in less."""
    for value in ([0.5] * 100 + [...], [0.5, ...], [1] * 1000 + [StopIteration]):
        with pytest.raises(srpy.SerializationError):
            codec.dumps(value)


def test_fold_travels():
    for value in (datetime.datetime(2021, 11, 7, 1, 30, fold=1), datetime.time(1, 30, fold=1),
                  datetime.datetime(2021, 11, 7, 1, 30, tzinfo=datetime.timezone.utc, fold=1)):
        assert same(codec.loads(codec.dumps([value])), [value])


def test_too_deep_is_a_serialization_error():
    value = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(srpy.SerializationError, match="nested this deeply"):
        codec.dumps(value)


# -- what comes out of the wire --------------------------------------------------------------------------

@PROPERTIES
@given(values, st.sampled_from(range(marshal.version + 1)))
def test_marshal_data_of_plain_values_in_every_version_passes_the_check(value, version):
    """Pyro5's marshal clients write the default version (references, interned strings): all pass."""
    try:
        data = marshal.dumps(value, version)
    except (ValueError, MemoryError):
        return
    if codec._exact_by_value(value):
        codec.check_marshal(data)
        if not (type(value) is tuple and len(value) == 2 and value[0] == codec._MARK):  # a lookalike is decoded
            assert same(codec.loads(data), marshal.loads(data))


def plain(value):
    """True when C{value} is made of what L{codec.loads} may build: marshal's plain types and srpy's tagged ones."""
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        return all(plain(item) for item in value)
    if kind is dict:
        return all(plain(k) and plain(v) for k, v in value.items())
    return kind in codec._PLAIN or kind in (datetime.datetime, datetime.date, datetime.time, datetime.timedelta,
                                            decimal.Decimal, uuid.UUID, array.array, bytearray) \
        or isinstance(value, BaseException)


def mangle(data, cut, position, byte):
    """C{data} truncated at C{cut}, with one byte replaced at C{position}."""
    data = bytearray(data[:cut] if cut else data)
    if data:
        data[position % len(data)] = byte
    return bytes(data)


@PROPERTIES
@given(st.binary(max_size=64) | st.builds(mangle, values.map(codec.dumps), st.integers(0, 200), st.integers(0, 10 ** 6),
                                          st.integers(0, 255)))
def test_whatever_arrives_is_plain_data_or_one_value_error(data):
    try:
        value = codec.loads(data)
    except ValueError:
        return
    assert plain(value)


BOMBS = {
    "tuple of 2**31-1 items": b"(" + struct.pack("<i", 2 ** 31 - 1),
    "list of 2**28 items in a dict": b"{i\x01\x00\x00\x00[" + struct.pack("<i", 2 ** 28),  # skipped the check before
    "nested tuples": b"".join(b"(" + struct.pack("<i", 500) for _ in range(100)),
    "integer of 2**30 digits": b"l" + struct.pack("<i", 2 ** 30),
    "small tuples announcing 255 each": b")\xff" * 400,
}


@pytest.mark.parametrize("bomb", list(BOMBS.values()), ids=list(BOMBS))
def test_data_announcing_more_than_it_holds_is_refused_at_its_size(bomb):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="bad marshal data"):
            codec.loads(bomb)
        assert tracemalloc.get_traced_memory()[1] < 2 ** 20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("value", [compile("1", "", "eval"), Ellipsis, StopIteration], ids=["code", "Ellipsis", "StopIteration"])
def test_marshal_of_what_srpy_does_not_carry_is_refused(value):
    for version in range(marshal.version + 1):
        with pytest.raises(ValueError, match="is not plain data"):
            codec.loads(marshal.dumps([1, value], version))


@pytest.mark.parametrize("payload", [("decimal", "not a number"), ("timedelta", (10 ** 10, 0, 0)), ("set", ([1],)),
                                     ("dict", [([1], 2)]), ("datetime", ("2020-01-01", 2)), ("array", ("q", b"abc")),
                                     ("exception", {"__class__": "builtins.OSError", "args": 5})],
                         ids=lambda p: p[0])
def test_tagged_payloads_of_the_right_type_and_wrong_content_are_value_errors(payload):
    data = marshal.dumps((codec._MARK, [(codec._TAG,) + payload]))
    try:
        value = codec.loads(data)
    except ValueError as exc:
        assert "bad srpy data" in str(exc) or "bad marshal data" in str(exc) or payload[0] in ("datetime", "array")
    else:
        assert payload[0] == "exception" and isinstance(value[0], OSError)


@PROPERTIES
@given(st.dictionaries(st.sampled_from(["__class__", "args", "attributes", "x"]), values, max_size=4))
def test_any_exception_description_makes_an_exception(description):
    assert isinstance(codec.exception_from_dict(description), BaseException)


# -- marshal's layouts, learnt at import ----------------------------------------------------------------

def test_every_code_marshal_writes_for_plain_data_is_learnt():
    samples = [None, True, 1, 2 ** 70, -2 ** 70, 1.5, 2j, "ab", "ab" * 200, "\xe9", sys.intern("interned"), b"x",
               (), (1,), tuple(range(300)), [1], {1: 2}, {1}, frozenset({1})]
    known = {code for code, layout in enumerate(codec._LAYOUTS) if layout != codec._REFUSED}
    for version in range(marshal.version + 1):
        for sample in samples:
            data = marshal.dumps([sample, sample], version)  # twice: references too, where the version has them
            codec.check_marshal(data)
            assert data[0] in known
    assert codec._DIGIT_SIZE and codec._BYTE_STRINGS


def test_only_byte_strings_leave_the_data_proof_undecided():
    undecided = {code for code, (layout, exact) in enumerate(zip(codec._LAYOUTS, codec._EXACT_LAYOUTS))
                 if layout != exact}
    assert undecided == {code | flag for code in codec._BYTE_STRINGS for flag in (0, codec._REF_FLAG)}
    assert not codec._exact_by_data(marshal.dumps([1.5] * 1000 + [bytearray(b"x")], 2), budget=10 ** 6)
    assert codec._exact_by_data(marshal.dumps([1.5] * 100000 + ["x"], 2), budget=20)


# -- Pyro5 sees the same checks ---------------------------------------------------------------------------

def test_the_pyro5_serializer_reads_with_the_checks():
    codec.register()
    from Pyro5 import serializers
    serializer = serializers.serializers_by_id[codec.SERIALIZER_ID]
    call = ("obj", "method", (1, decimal.Decimal("2.5")), {"k": b"v"})
    assert serializer.loadsCall(serializer.dumpsCall(*call)) == call
    with pytest.raises(ValueError, match="containers announce"):
        serializer.loads(BOMBS["list of 2**28 items in a dict"])


def test_the_old_name_of_loads_is_loads():
    value = [(i, "x") for i in range(100)]
    assert codec.loads(codec.dumps(value)) == value


def test_the_wire_format_is_what_older_peers_read():
    """srpy writes marshal version 2, plain where it can, else the tagged form, as it always did (serializer 83)."""
    call = ("srpy.engine", "eval", ("1+1",), {"a": [1, 2.5, b"x"]})
    assert codec.dumps(call) == marshal.dumps(call, 2) and codec.SERIALIZER_ID == 83
    value = [datetime.date(2009, 5, 1), bytearray(b"ab"), {1, 2}]
    assert codec.dumps(value) == marshal.dumps((codec._MARK, [(codec._TAG, "date", "2009-05-01"),
                                                              (codec._TAG, "bytearray", b"ab"),
                                                              (codec._TAG, "set", (1, 2))]), 2)
    assert codec.dumps(datetime.datetime(2020, 1, 2, 3, 4)) == marshal.dumps(
        (codec._MARK, (codec._TAG, "datetime", "2020-01-02T03:04:00")), 2)
