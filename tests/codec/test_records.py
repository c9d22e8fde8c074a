"""
Records keep their types (issue 13): dataclasses (frozen, nested, with slots), Enum, IntEnum,
Flag and IntFlag members, NamedTuples and user exceptions, in-process and through real engines.
Their classes travel by reference and resolve only from modules already imported on the receiving
side; crafted references (modules not imported, classes of the wrong kind, missing members or
fields) are a clear ValueError there, and no code of the class, or of any module, runs.
"""

import collections
import dataclasses
import enum
import importlib
import marshal
import os
import sys
import textwrap
import types
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import srpy
from srpy import codec, lite, records

PROPERTIES = settings(deadline=None, database=None, max_examples=int(os.environ.get("SRPY_CODEC_EXAMPLES", "100")))
RAN = []  # what a class's code ran, if it ever does during a rebuild


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float = 0.0


@dataclasses.dataclass
class Node:
    value: typing.Any
    children: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Slotted:
    a: int
    b: typing.Any = None


@dataclasses.dataclass
class Guarded:
    """A dataclass whose own code records every call: a rebuild must run none of it."""
    a: int
    derived: int = dataclasses.field(init=False, default=0)

    def __post_init__(self):
        RAN.append("__post_init__")
        self.derived = self.a * 2

    def __setattr__(self, name, value):
        RAN.append("__setattr__")
        object.__setattr__(self, name, value)


class Colour(enum.Enum):
    RED = "r"
    GREEN = (0, 255, 0)
    CRIMSON = "r"  # an alias of RED


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 4
    W = 2
    X = 1


class Mode(enum.IntFlag):
    A = 1
    B = 8


class Pair(typing.NamedTuple):
    left: typing.Any
    right: typing.Any = None


Legacy = collections.namedtuple("Legacy", "a b")


class Opaque:
    pass


class AppError(ValueError):
    def __init__(self, code, detail):
        RAN.append("AppError.__init__")
        super().__init__(code, detail)
        self.code = code


def same(a, b):
    """Equal, and of the very same type at every level."""
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (list, tuple)) and not isinstance(a, enum.Enum):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(ka, kb) and same(va, vb)
                                        for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    return a == b


def round_trip(value):
    return codec.loads(codec.dumps(value))


# -- round trips in-process ------------------------------------------------------------------------

ROUND_TRIPS = {
    "frozen dataclass": Point(1.5, -2.0),
    "nested dataclasses": Node(Point(1, 2), [Node(Colour.RED), Node(Pair(Level.HIGH, [Point(0)]))]),
    "slots dataclass": Slotted(3, {"k": Perm.R | Perm.X}),
    "enum member": Colour.GREEN,
    "enum alias": Colour.CRIMSON,
    "IntEnum keeps its type": Level.HIGH,
    "Flag member": Perm.W,
    "Flag combination": Perm.R | Perm.W,
    "Flag all": Perm.R | Perm.W | Perm.X,
    "Flag empty": Perm(0),
    "IntFlag combination": Mode.A | Mode.B,
    "NamedTuple": Pair(1, "two"),
    "NamedTuple default": Pair(Point(3)),
    "collections.namedtuple": Legacy(b"x", 2.5),
    "records as keys and in sets": {Point(1, 2): {Level.LOW, Colour.RED}, Level.HIGH: frozenset({Pair(1)})},
    "in plain containers": [(Level.LOW, 1), {"p": Point(0.5)}, (Pair(1, 2),)],
}


@pytest.mark.parametrize("value", list(ROUND_TRIPS.values()), ids=list(ROUND_TRIPS))
def test_records_round_trip_with_their_types(value):
    back = round_trip(value)
    assert same(back, value), (back, value)


def test_int_and_tuple_records_are_no_longer_their_base_types():
    assert type(round_trip(Level.LOW)) is Level and type(round_trip([Mode.B])[0]) is Mode
    assert type(round_trip(Pair(1, 2))) is Pair and type(round_trip(Legacy(1, 2))) is Legacy
    assert round_trip(Colour.RED) is Colour.RED and round_trip(Perm.R | Perm.X) is (Perm.R | Perm.X)


def test_rebuilding_runs_none_of_the_class_code():
    sent = [Guarded(4), AppError(7, "bad")]
    assert sent[0].derived == 8 and "AppError.__init__" in RAN
    RAN.clear()
    back = round_trip(sent)
    assert RAN == [], "a rebuild ran the class's own code"
    assert type(back[0]) is Guarded and (back[0].a, back[0].derived) == (4, 8)
    assert type(back[1]) is AppError and back[1].args == (7, "bad") and back[1].code == 7


def test_frozen_dataclasses_stay_frozen_and_hashable():
    back = round_trip(Point(1, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.x = 5
    assert hash(back) == hash(Point(1, 2))


def test_classes_not_found_by_name_keep_the_old_rules():
    @dataclasses.dataclass
    class Local:
        a: int

    class LocalLevel(enum.IntEnum):
        ONE = 1

    with pytest.raises(srpy.SerializationError, match="not importable by its module and name"):
        codec.dumps({"x": Local(1)})
    # int, str and tuple records of such classes travel as their base type, as they always did
    assert type(round_trip(LocalLevel.ONE)) is int
    assert type(round_trip(collections.namedtuple("P", "a")(1))) is tuple


def test_user_exception_classes_come_back_as_themselves():
    back = round_trip(AppError(3, "boom"))
    assert type(back) is AppError and back.args == (3, "boom")
    unknown = codec.exception_from_dict({"__class__": "no_such_module_here.Error", "args": ("x",), "attributes": {}})
    assert isinstance(unknown, srpy.RemoteError)


# -- the property: random nested records ----------------------------------------------------------

leaves = (st.integers() | st.text(max_size=5) | st.floats(allow_nan=False) | st.none()
          | st.sampled_from(list(Colour)) | st.sampled_from(list(Level)) | st.integers(0, 7).map(Perm)
          | st.sampled_from([Mode(0), Mode.A, Mode.B, Mode.A | Mode.B]))


def nest(children):
    return (st.builds(Node, children, st.lists(children, max_size=3))
            | st.builds(Point, st.floats(allow_nan=False), st.floats(allow_nan=False))
            | st.builds(Pair, children, children) | st.builds(Legacy, children, children)
            | st.builds(Slotted, st.integers(), children)
            | st.lists(children, max_size=3) | st.tuples(children, children)
            | st.dictionaries(st.text(max_size=3), children, max_size=3))


@PROPERTIES
@given(st.recursive(leaves, nest, max_leaves=25))
def test_random_nested_records_round_trip_exactly(value):
    assert same(round_trip(value), value)


# -- hostile input, in-process ---------------------------------------------------------------------

def crafted(kind, payload):
    return marshal.dumps((codec._MARK, [(codec._TAG, kind, payload)]), 2)


HERE = Point.__module__
HOSTILE = {
    "module not imported": ("dataclass", ("srpy_no_such_module:X", (), ()), "is not imported here"),
    "os.system": ("dataclass", ("os:system", (), ()), "no such class"),
    "subprocess.Popen": ("dataclass", ("subprocess:Popen", ("args",), ("id",)), "not a dataclass|not imported"),
    "a plain class": ("dataclass", (HERE + ":Opaque", (), ()), "not a dataclass"),
    "an enum as a dataclass": ("dataclass", (HERE + ":Colour", (), ()), "not a dataclass"),
    "a dataclass as an enum": ("enum", (HERE + ":Point", "x"), "not an Enum"),
    "a plain class as a named tuple": ("namedtuple", (HERE + ":Opaque", ()), "not a named tuple"),
    "tuple itself as a named tuple": ("namedtuple", ("builtins:tuple", ()), "not a named tuple"),
    "an Enum as a Flag": ("flag", (HERE + ":Colour", ("RED",)), "not a Flag"),
    "missing member": ("enum", (HERE + ":Colour", "BLUE"), "does not have"),
    "member named by a non-str": ("enum", (HERE + ":Colour", 1), "not a str"),
    "missing flag member": ("flag", (HERE + ":Perm", ("R", "Z")), "does not have"),
    "missing field": ("dataclass", (HERE + ":Point", ("x",), (1.0,)), "missing fields y"),
    "extra field": ("dataclass", (HERE + ":Point", ("x", "y", "z"), (1.0, 2.0, 3.0)), "extra fields z"),
    "repeated field": ("dataclass", (HERE + ":Point", ("x", "x"), (1.0, 2.0)), "missing fields y"),
    "fields and values disagree": ("dataclass", (HERE + ":Point", ("x", "y"), (1.0,)), "as many values"),
    "field names not str": ("dataclass", (HERE + ":Point", (1, 2), (1.0, 2.0)), "as many values"),
    "payload not a tuple": ("dataclass", [HERE + ":Point", ("x", "y"), (1.0, 2.0)], "not a tuple"),
    "named tuple of the wrong length": ("namedtuple", (HERE + ":Pair", (1, 2, 3)), "its 2 fields"),
    "reference not a str": ("enum", (b"os:system", "x"), "module:qualname"),
    "reference without a colon": ("enum", ("os.system", "x"), "module:qualname"),
    "__main__": ("dataclass", ("__main__:Point", (), ()), "cannot be resolved"),
    "a nested function's class": ("dataclass", (HERE + ":f.<locals>.C", (), ()), "cannot be resolved"),
    "an attribute of an instance": ("dataclass", ("sys:flags.X", (), ()), "no such class"),
}


@pytest.mark.parametrize("kind, payload, message", list(HOSTILE.values()), ids=list(HOSTILE))
def test_crafted_records_are_a_clear_value_error(kind, payload, message):
    modules = set(sys.modules)
    with pytest.raises(ValueError, match="bad srpy data.*(%s)" % message):
        codec.loads(crafted(kind, payload))
    assert set(sys.modules) <= modules, "a message made the receiver import a module"


def test_a_module_getattr_is_never_asked(monkeypatch):
    asked = []
    module = types.ModuleType("srpy_rec_lazy")
    module.__getattr__ = lambda name: asked.append(name) or Point  # PEP 562: would run for any missing name
    monkeypatch.setitem(sys.modules, "srpy_rec_lazy", module)
    with pytest.raises(ValueError, match="no such class"):
        codec.loads(crafted("dataclass", ("srpy_rec_lazy:Point", ("x", "y"), (1.0, 2.0))))
    assert asked == []


def test_crafted_exceptions_of_any_class_but_exceptions_stay_remote_errors():
    for name in ("os.system", "subprocess.Popen", "builtins.print", HERE + ".Opaque", "__main__.AppError"):
        exc = codec.exception_from_dict({"__class__": name, "args": ("rm -rf /",), "attributes": {}})
        assert type(exc) is srpy.RemoteError, name


# -- through real engines --------------------------------------------------------------------------

SHAPES = '''
import dataclasses, enum, typing

@dataclasses.dataclass(frozen=True)
class Vec:
    x: float
    y: float

@dataclasses.dataclass
class Shape:
    name: str
    corners: list
    colour: "Tint" = None

class Tint(enum.Enum):
    RED = 1
    BLUE = 2

class Size(enum.IntEnum):
    SMALL = 1
    LARGE = 3

class Opts(enum.Flag):
    FILL = 1
    EDGE = 2

class Span(typing.NamedTuple):
    lo: float
    hi: float

class ShapeError(Exception):
    pass

def grow(shape, by):
    return Shape(shape.name + "+", [Vec(v.x * by, v.y * by) for v in shape.corners], Tint.BLUE)

def classify(size):
    return {"size": size, "span": Span(0.0, float(size)), "opts": Opts.FILL | Opts.EDGE}

def fail(name):
    raise ShapeError("no shape named %s" % name, 42)
'''


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A user module of record classes, in a folder of its own, imported here (it ships to engines)."""
    folder = tmp_path_factory.mktemp("shapes")
    (folder / "srpy_rec_shapes.py").write_text(SHAPES)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("srpy_rec_shapes")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("srpy_rec_shapes", None)


def a_shape(m):
    return m.Shape("tri", [m.Vec(0, 0), m.Vec(1, 0), m.Vec(0, 1)], m.Tint.RED)


def test_set_get_eval_keep_record_types(engine, shapes):
    m = shapes
    engine.set(s=a_shape(m), size=m.Size.LARGE, span=m.Span(1, 2), opts=m.Opts.FILL | m.Opts.EDGE)
    # on the engine they are instances of the shipped module's classes, built from its sandbox
    assert engine.eval("type(s).__module__, type(s.corners[0]).__name__, s.colour.name") == \
        ("srpy_rec_shapes", "Vec", "RED")
    assert engine.eval("type(size).__name__, size + 1, type(span).__name__, bool(opts & type(opts).EDGE)") == \
        ("Size", 4, "Span", True)
    assert same(engine.get("s"), a_shape(m))
    assert same(engine.get(["size", "span", "opts"]), {"size": m.Size.LARGE, "span": m.Span(1, 2),
                                                       "opts": m.Opts.FILL | m.Opts.EDGE})
    made = engine.eval("type(s)('made', [type(s.corners[0])(5, 6)])")  # made on the engine
    assert same(made, m.Shape("made", [m.Vec(5, 6)]))


def test_submit_map_and_their_results_keep_record_types(engine_uri, shapes):
    m = shapes
    with srpy.EngBox([engine_uri]) as box:
        assert same(box.submit(m.grow, a_shape(m), 2).result(timeout=60),
                    m.Shape("tri+", [m.Vec(0, 0), m.Vec(2, 0), m.Vec(0, 2)], m.Tint.BLUE))
        got = list(box.map(m.classify, [m.Size.SMALL, m.Size.LARGE], timeout=60))
        assert same(got, [m.classify(m.Size.SMALL), m.classify(m.Size.LARGE)])
        # a lambda's arguments and results too (its function travels by source)
        assert same(box.submit(lambda v: [v, v.x], m.Vec(1, 2)).result(timeout=60), [m.Vec(1, 2), 1])


def test_associate_function_keeps_record_types(engine, shapes):
    m = shapes
    engine.set(start=m.Vec(0, 0))  # the first record ships its module; then the engine can import it by name
    engine.imp("srpy_rec_shapes")
    grow = engine.associateFunction("srpy_rec_shapes.grow")
    assert same(grow(a_shape(m), by=3), m.grow(a_shape(m), 3))


def test_user_exceptions_come_back_as_their_type_with_the_remote_traceback(engine, shapes):
    m = shapes
    engine.set(start=m.Vec(0, 0))
    engine.imp("srpy_rec_shapes")
    with pytest.raises(m.ShapeError) as info:
        engine.eval("srpy_rec_shapes.fail('hexagon')")
    assert info.value.args == ("no shape named hexagon", 42)
    assert "fail" in info.value.remote_traceback and "ShapeError" in info.value.remote_traceback
    with pytest.raises(srpy.RemoteError):  # a class the client has not imported stays a RemoteError
        engine.exe("class Unknown(Exception): pass\nraise Unknown('x')")


def test_a_fresh_engine_after_a_restart_is_given_the_module_again(start_launcher, shapes):
    uri = start_launcher(["-b"]).uris[0]
    with srpy.PythonEngine(uri) as eng:
        eng.set(v=shapes.Vec(1, 2))
        with pytest.raises(srpy.TaskTimeout, match="held the interpreter"):
            eng.limited(1).exe("x = 10**10**8")  # the engine ends its process; a fresh one has no modules
        assert same(eng.eval("v", v=shapes.Vec(3, 4)), shapes.Vec(3, 4))


SIDE_EFFECT = '''
import dataclasses
open({marker!r}, "w").close()

@dataclasses.dataclass
class Thing:
    a: int
'''


def send_crafted(conn, seq, kind, payload):
    call = ("srpy.engine", "set", ({"v": (codec._TAG, kind, payload)},), {})
    conn._send(lite.MSG_INVOKE, codec.SERIALIZER_ID, marshal.dumps((codec._MARK, call)), seq)
    msgtype, _, flags, answer_seq, data, _, _ = conn._receive()
    assert msgtype == lite.MSG_RESULT and flags & lite.FLAGS_EXCEPTION and answer_seq == seq
    return data


def test_crafted_records_against_a_real_engine(engine_uri, tmp_path, shapes):
    marker = tmp_path / "imported"
    with srpy.PythonEngine(engine_uri) as eng:
        eng.set(v=shapes.Vec(0, 0))  # the engine imports the user's module: crafted payloads of its classes
        eng.clear()
        # a module in the engine's sandbox that is not imported: its import would leave the marker
        eng.install_source("srpy_rec_sidefx", textwrap.dedent(SIDE_EFFECT.format(marker=str(marker))))
        conn = lite.Connection(engine_uri, serializer=srpy.client.WIRE_FORMAT)
        try:
            cases = [("dataclass", ("srpy_rec_sidefx:Thing", ("a",), (1,)), b"is not imported here"),
                     ("dataclass", ("os:system", (), ()), b"no such class"),
                     ("dataclass", ("threading:Thread", (), ()), b"not a dataclass"),
                     ("namedtuple", ("collections:OrderedDict", ()), b"not a named tuple"),
                     ("enum", ("enum:Enum", "x"), b"does not have"),
                     ("enum", ("signal:Signals", "SIGNOPE"), b"does not have"),
                     ("dataclass", ("srpy.errors:SRPyError", (), ()), b"not a dataclass"),
                     ("dataclass", ("subprocess:Popen", ("args",), ("id",)), (b"not imported here", b"not a dataclass")),
                     ("dataclass", ("srpy_rec_shapes:Vec", ("x",), (1.0,)), b"missing fields y"),
                     ("dataclass", ("srpy_rec_shapes:Vec", ("x", "y", "__class__"), (1.0, 2.0, 3)),
                      b"extra fields __class__"),
                     ("dataclass", ("srpy_rec_shapes:Vec", ["x", "y"], (1.0, 2.0)), b"not names"),
                     ("enum", ("srpy_rec_shapes:Tint", "GREEN"), b"does not have"),
                     ("enum", ("srpy_rec_shapes:Vec", "x"), b"not an Enum"),
                     ("flag", ("srpy_rec_shapes:Tint", ("RED",)), b"not a Flag"),
                     ("namedtuple", ("srpy_rec_shapes:Span", (1.0,)), b"its 2 fields"),
                     ("namedtuple", ("srpy_rec_shapes:Shape", ()), b"not a named tuple"),
                     ("namedtuple", "srpy_rec_shapes:Span", b"not a tuple")]
            for seq, (kind, payload, message) in enumerate(cases, 1):
                data = send_crafted(conn, seq, kind, payload)
                messages = message if isinstance(message, tuple) else (message,)
                assert b"bad srpy data" in data and any(m in data for m in messages), (kind, payload, data)
        finally:
            conn.close()
        assert not marker.exists(), "a message made the engine import a module"
        assert eng.get() == [] and eng.eval("6 * 7") == 42, "nothing was stored; the engine serves"
        eng.exe("import srpy_rec_sidefx")
        assert marker.exists(), "the module was importable: the test above could have failed"


def test_exception_arguments_of_tagged_types_travel_with_it():
    import decimal
    back = round_trip(AppError(decimal.Decimal("1.5"), Point(1, 2)))
    assert type(back) is AppError and back.args == (decimal.Decimal("1.5"), Point(1, 2)) and back.code == 1.5


def test_the_json_lite_client_gets_base_values_or_a_clear_refusal(engine, engine_uri, shapes):
    m = shapes
    engine.set(size=m.Size.LARGE, span=m.Span(1.0, 2.0), vec=m.Vec(1, 2))
    eng = lite.Engine(engine_uri)
    try:
        assert eng.eval("size") == 3 and eng.eval("span") == [1.0, 2.0]  # json has ints and lists only
        with pytest.raises(TypeError, match="Vec"):
            eng.eval("vec")
        assert eng.ping() == "pong"
    finally:
        eng.close()


def test_an_engine_that_restarted_unnoticed_is_given_the_module_again(start_launcher, shapes):
    """The engine process was killed and its keeper started a fresh one: the client learns it from the refusal."""
    import signal
    import time

    uri = start_launcher(["-n", "1", "--restart"], count=1).uris[0]
    with srpy.PythonEngine(uri) as eng:
        eng.set(v=shapes.Vec(1, 2))
        assert eng._shared.record_modules == {"srpy_rec_shapes"}
        old_pid = eng.whoami()["PID"]
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:  # the fresh engine, on the same URI
            try:
                with srpy.PythonEngine(uri, connect_timeout=2) as probe:
                    if probe.whoami()["PID"] != old_pid:
                        break
            except srpy.SRPyError:
                pass
            assert time.monotonic() < deadline, "no fresh engine answers at %s" % uri
            time.sleep(0.1)
        for attempt in range(3):  # the pool's idle connections reached the killed process
            try:
                back = eng.eval("w", w=shapes.Vec(3, 4))
                break
            except srpy.CommunicationError:
                assert attempt < 2
        assert same(back, shapes.Vec(3, 4)) and eng.eval("type(w).__module__") == "srpy_rec_shapes"


def test_a_record_of_a_module_the_client_has_not_imported_is_a_clear_error_and_the_connection_stays(engine):
    """The engine sends a record whose module exists only on the engine: one clear error, nothing lost."""
    engine.install_source("srpy_engine_only_colours", "import enum\n\nclass Colour(enum.Enum):\n    RED = 1\n")
    engine.imp("srpy_engine_only_colours")
    assert "srpy_engine_only_colours" not in sys.modules
    idle_before = engine.pool.idle
    with pytest.raises(srpy.errors.RecordModuleNotImported, match="srpy_engine_only_colours"):
        engine.eval("srpy_engine_only_colours.Colour.RED")
    assert engine.pool.idle == idle_before, "the connection was read whole: it goes back to the pool"
    assert engine.eval("srpy_engine_only_colours.Colour.RED.value") == 1
