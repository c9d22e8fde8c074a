"""
Records whose classes are defined in C{__main__} (a script, a notebook) travel (issue 13): the
client ships each class's source, and what it uses, into the engine's module for this client
(C{srpy_main_...}, named by L{srpy.records.main_alias}); replies naming that module come back as
the client's own C{__main__} classes, and exceptions raised on the engine from them are caught
with C{except MyError}. Each test runs a real program as C{__main__} in a fresh interpreter,
against a real engine; the program asserts, and prints OK at its end.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: the program: records of four kinds from its __main__, through every path values take
SCRIPT = '''
import dataclasses, enum, sys, typing
import srpy
from srpy import records

SCALE = 2


class BaseError(Exception):
    pass


class MyError(BaseError):
    def __init__(self, what, code):
        super().__init__(what, code)
        self.code = code


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float = 0.0

    def scaled(self):
        return Point(self.x * SCALE, self.y * SCALE)

    def check(self):
        if self.x < 0:
            raise MyError("x below 0: %s" % self.x, 7)
        return self

    def twin(self):
        return P(self.x, self.y)  # the class under another name


P = Point


@dataclasses.dataclass
class Path:
    points: list
    colour: "Colour" = None


class Colour(enum.Enum):
    RED = 1
    BLUE = 2


class Perm(enum.Flag):
    R = 4
    W = 2


class Span(typing.NamedTuple):
    lo: float
    hi: float


def grow(p):
    return p.scaled()


def paint(path):
    return Path([q.scaled() for q in path.points], Colour.BLUE)


def fail(n):
    raise MyError("no %s" % n, n)


def make(x):
    return P(x)


def build(x, y):
    return Point(x, y)


uri = sys.argv[1]
alias = records.main_alias()
eng = srpy.PythonEngine(uri)
eng.clear()

# set / get / eval: the engine holds them as classes of its module for this client
path = Path([Point(1, 2), Point(3)], Colour.RED)
eng.set(path=path, c=Colour.BLUE, s=Span(1.0, 2.0), perm=Perm.R | Perm.W)
assert eng.eval("type(path).__module__, type(path.points[0]).__module__") == (alias, alias)
assert eng.eval("type(c).__name__, type(s).__name__, bool(perm & type(perm).W)") == ("Colour", "Span", True)
back = eng.get(["path", "c", "s", "perm"])
assert back == {"path": path, "c": Colour.BLUE, "s": Span(1.0, 2.0), "perm": Perm.R | Perm.W}, back
assert type(back["path"]) is Path and isinstance(back["path"].points[0], Point) and type(back["s"]) is Span
assert back["c"] is Colour.BLUE and back["path"].colour is Colour.RED
assert eng.eval("path.points[0].scaled()") == Point(2, 4)  # its methods, with the globals they use
assert isinstance(eng.eval("p", p=Point(5)), Point)
# an exception raised on the engine by a method of a shipped class
try:
    eng.eval("p.check()", p=Point(-1))
except MyError as exc:
    assert type(exc) is MyError and exc.args == ("x below 0: -1", 7) and exc.code == 7, exc
    assert "check" in exc.remote_traceback
else:
    raise AssertionError("no MyError")
try:
    eng.eval("p.check()", p=Point(-1))
except BaseError:  # its base class too: the same classes
    pass

# submit / map: functions of __main__ that use the classes import them from that module
with srpy.EngBox([uri]) as box:
    assert box.submit(grow, Point(3, 4)).result(timeout=60) == Point(6, 8)
    got = list(box.map(grow, [Point(1), Point(2)], timeout=60))
    assert got == [Point(2), Point(4)] and all(type(p) is Point for p in got)
    assert box.submit(paint, path).result(timeout=60) == Path([Point(2, 4), Point(6)], Colour.BLUE)
    assert box.submit(lambda s: Span(s.hi, s.lo), Span(1.0, 2.0)).result(timeout=60) == Span(2.0, 1.0)
    try:
        box.submit(fail, 3).result(timeout=60)
    except MyError as exc:
        assert exc.args == ("no 3", 3) and exc.code == 3
    else:
        raise AssertionError("no MyError from submit")
    try:
        list(box.map(fail, [4], timeout=60))
    except MyError as exc:
        assert exc.args == ("no 4", 4)
    else:
        raise AssertionError("no MyError from map")
    assert box.submit(make, 2).result(timeout=60) == Point(2)
    assert type(box.submit(build, 1, 2).result(timeout=60)) is Point
    assert box.submit(lambda p: p.twin(), Point(3, 1)).result(timeout=60) == Point(3, 1)
    # the engine keeps one class per definition: the function's Point is the values' Point
    assert box.submit(lambda p: type(p) is Point, Point(1)).result(timeout=60) is True

# a class redefined under its name (a notebook cell run again) is shipped anew
@dataclasses.dataclass
class Point:
    x: float
    y: float
    z: float = 0.0

p3 = eng.eval("p", p=Point(1, 2, 3))
assert type(p3) is Point and p3 == Point(1, 2, 3)
# a function sent before uses the class its name holds now, as it would here
with srpy.EngBox([uri]) as box:
    made = box.submit(build, 4, 5).result(timeout=60)
    assert type(made) is Point and made == Point(4, 5, 0.0), made
assert eng.eval("sorted(type(p).__dataclass_fields__)", p=Point(1, 2, 3)) == ["x", "y", "z"]

# a class whose source cannot be found (made by exec): a clear SerializationError
exec("@dataclasses.dataclass\\nclass Lost:\\n    a: int\\n", globals())
try:
    eng.set(v=Lost(1))
except srpy.SerializationError as exc:
    assert "__main__.Lost" in str(exc) and "source" in str(exc), exc
else:
    raise AssertionError("Lost travelled")
assert eng.eval("6 * 7") == 42  # the engine and the connection serve on
eng.close()
print("OK")
'''

#: a notebook, as IPython runs one: each cell's text in linecache, __main__ without a file
NOTEBOOK = '''
import linecache, sys
import __main__

CELLS = [
    "import dataclasses, enum\\nimport srpy\\n",
    "@dataclasses.dataclass\\nclass Reading:\\n    value: float\\n    unit: str = 'm'\\n",
    "class Unit(enum.Enum):\\n    M = 'm'\\n    KM = 'km'\\n",
    "class Bad(ValueError):\\n    pass\\n\\ndef check(r):\\n    if r.value < 0:\\n        raise Bad('negative')\\n"
    "    return Reading(r.value * 2, r.unit)\\n",
]
assert not hasattr(__main__, "__file__")
for number, cell in enumerate(CELLS, 1):
    name = "<ipython-input-%d-0123456789ab>" % number
    linecache.cache[name] = (len(cell), None, cell.splitlines(True), name)
    exec(compile(cell, name, "exec"), vars(__main__))

eng = srpy.PythonEngine(sys.argv[1])
assert eng.eval("r", r=Reading(1.5)) == Reading(1.5) and type(eng.get("r")) is Reading
assert eng.eval("u", u=Unit.KM) is Unit.KM
with srpy.EngBox([sys.argv[1]]) as box:
    assert box.submit(check, Reading(2.0)).result(timeout=60) == Reading(4.0)
    try:
        box.submit(check, Reading(-1.0)).result(timeout=60)
    except Bad as exc:
        assert exc.args == ("negative",)
    else:
        raise AssertionError("no Bad")
eng.close()
print("OK")
'''


def run_main(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable] + args, cwd=str(tmp_path), env=env, capture_output=True, text=True,
                          timeout=100)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr


@pytest.mark.slow
def test_records_of_a_script_main_travel_everywhere(engine_uri, tmp_path):
    script = tmp_path / "analysis.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run_main([str(script), engine_uri], tmp_path)


@pytest.mark.slow
def test_records_of_a_notebook_main_travel(engine_uri, tmp_path):
    run_main(["-c", textwrap.dedent(NOTEBOOK), engine_uri], tmp_path)


# -- crafted references and bundles: in this process and against a real engine ---------------------

def test_a_reference_to_this_process_main_resolves_only_a_class_defined_there(monkeypatch):
    import dataclasses
    import __main__
    from srpy import errors, records

    @dataclasses.dataclass
    class Defined:
        a: int

    Defined.__module__, Defined.__qualname__ = "__main__", "SrpyTestDefined"
    monkeypatch.setattr(__main__, "SrpyTestDefined", Defined, raising=False)
    monkeypatch.setattr(__main__, "SrpyTestImported", errors.RemoteError, raising=False)  # defined elsewhere
    alias = records.main_alias()
    from srpy import functions
    assert functions.MAIN_PREFIX == records.MAIN_PREFIX  # functions keeps its copy: it loads records only when needed
    assert alias.startswith("srpy_main_") and len(alias) == len("srpy_main_") + 12
    assert records.resolve(alias + ":SrpyTestDefined", "dataclass") is Defined
    for name in ("SrpyTestImported", "NoSuchName"):
        with pytest.raises(ValueError, match="__main__ holds no such class"):
            records.resolve(alias + ":" + name, "dataclass")
    # another program's __main__ module is not imported here: the clear, retryable error
    with pytest.raises(errors.RecordModuleNotImported, match="srpy_main_000000000000") as info:
        records.resolve("srpy_main_000000000000:Point", "dataclass")
    assert info.value.reference == "srpy_main_000000000000:Point"


def test_a_main_class_bundle_builds_only_into_a_main_module():
    from srpy import functions

    bundle = {"kind": "main_class", "module": "os", "qualname": "path", "definitions": [("path", "path = 1\n")]}
    with pytest.raises(ValueError, match="not srpy's for a client's __main__"):
        functions.build(bundle, None)
    import os as os_module
    assert not isinstance(os_module.path, int)


def test_an_engine_refuses_a_main_class_bundle_for_another_module(engine):
    bundle = {"kind": "main_class", "module": "sys", "qualname": "x", "definitions": [("x", "x = 1\n")]}
    failure = engine.call("define", "crafted-main-class", bundle)
    assert failure["kind"] == "broken" and "not srpy's" in str(failure["error"])
    assert engine.eval("hasattr(__import__('sys'), 'x')") is False and engine.eval("6 * 7") == 42


REDEFINED = '''
import dataclasses, sys
import srpy

@dataclasses.dataclass
class Reading:
    value: float

eng = srpy.PythonEngine(sys.argv[1])
eng.set(old=Reading(1.0))

first = Reading(0.5)


@dataclasses.dataclass
class Reading:  # the cell run again, with a field more
    value: float
    unit: str = "m"

try:
    eng.set(v=first)  # here too: a value of the old class
except srpy.SerializationError as exc:
    assert "defined again" in str(exc), exc
else:
    raise AssertionError("a value of the old class was sent")

assert eng.eval("r", r=Reading(2.0)) == Reading(2.0)
try:
    eng.get("old")  # of the class the engine no longer holds under that name
except srpy.SerializationError as exc:
    assert "defined again" in str(exc), exc
else:
    raise AssertionError("the old record came back as the new class")
assert eng.eval("old.value") == 1.0 and eng.get("r") == Reading(2.0)  # the engine and the connection serve on
eng.close()
print("OK")
'''


def test_a_record_of_a_class_defined_again_since_is_refused_by_the_engine(engine_uri, tmp_path):
    script = tmp_path / "cells.py"
    script.write_text(REDEFINED)
    run_main([str(script), engine_uri], tmp_path)
