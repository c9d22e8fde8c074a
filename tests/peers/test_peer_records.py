"""
Records between engines (issue 13): messages, the tuple space and work stealing carry records
whose class's module the receiving engine has not imported. The sending engine gives the class
with the call (C{peer_define}); a reader asks the engine that answered (C{peer_record_bundle});
what an engine gives is the bundle it was given (a local module's files, a client's C{__main__}
class's source). Real engines of a real group; the client gives the module to one engine only.
"""

import importlib
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import srpy
from srpy.group import peer_uri
from srpy.tuplespace import owner_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP = "import srpy\nme = srpy.this_engine()\n"

PLANETS = '''
import dataclasses
import enum
import time


class Kind(enum.Enum):
    ROCK = 1
    GAS = 2


@dataclasses.dataclass(frozen=True)
class Planet:
    name: str
    kind: Kind
    moons: tuple = ()


class PlanetError(Exception):
    pass


def heavier(planet):
    return Planet(planet.name.upper(), Kind.GAS, planet.moons + ("new",))


def slowly(seconds):
    time.sleep(seconds)
    return seconds
'''


@pytest.fixture
def pair(start_launcher):
    launcher = start_launcher(["-n", "2", "--group", "records"], count=2)
    box = srpy.EngBox(launcher.uris)
    kept = box.connectPeers()
    assert all(len(peers) == 1 for peers in kept.values())
    for engine in box:
        engine.exe(SETUP)
    yield box
    box.close()


@pytest.fixture
def planets(tmp_path):
    """A user module of record classes, imported here; the tests give it to the first engine only."""
    (tmp_path / "srpy_peer_planets.py").write_text(PLANETS)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("srpy_peer_planets")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("srpy_peer_planets", None)


def imported(engine, module="srpy_peer_planets"):
    return engine.eval("__import__('sys').modules.get(name) is not None", name=module)


def test_messages_give_the_receiver_the_class(pair, planets):
    a, b = pair[0], pair[1]
    earth = planets.Planet("earth", planets.Kind.ROCK, ("moon",))
    a.set(p=earth)  # the client gives the module to a only
    assert imported(a) and not imported(b)
    a.exe("me.send(to, 'planet', p)", to=b.uri)
    assert b.eval("type(me.receive('planet', timeout=30)[1]).__module__") == "srpy_peer_planets"
    assert imported(b)
    a.exe("me.send(to, 'planet', [p, p.kind])", to=b.uri)
    assert b.eval("me.receive('planet', timeout=30)[1]") == [earth, planets.Kind.ROCK]


def test_a_peer_that_forgot_the_module_is_given_it_again(pair, planets):
    """As after a restart: the peer refuses the message unread, the sender gives the class again and sends once more."""
    a, b = pair[0], pair[1]
    a.set(p=planets.Planet("io", planets.Kind.ROCK))
    a.exe("me.send(to, 'planet', p)", to=b.uri)
    assert b.eval("me.receive('planet', timeout=30)[1].name") == "io"
    b.exe("import sys\nfor name in [n for n in sys.modules if n == 'srpy_peer_planets']:\n    del sys.modules[name]")
    assert not imported(b)
    a.exe("me.send(to, 'planet', p)", to=b.uri)
    assert b.eval("me.receive('planet', timeout=30)[1].name") == "io" and imported(b)
    assert b.eval("len(me._mailbox)") == 0, "the message arrived once"


def test_the_tuple_space_gives_the_class_both_ways(pair, planets, other_module):
    a, b = pair[0], pair[1]
    members = sorted(e.uri for e in pair)
    on_b = next("b%d" % i for i in range(100) if owner_of("b%d" % i, members) == b.uri)
    on_a = next("a%d" % i for i in range(100) if owner_of("a%d" % i, members) == a.uri)
    mars = planets.Planet("mars", planets.Kind.ROCK, ("phobos", "deimos"))
    a.set(p=mars)
    # a puts an entry that b holds: the class goes with a's call
    a.exe("me.put(key, p)", key=on_b)
    assert imported(b)
    assert b.eval("me.take(key, timeout=30) == p", key=on_b, p=mars) is True
    # an entry a holds, of a module only a has: b's take reads it in a's reply, and asks a for the class
    a.exe("import srpy_peer_other")  # a module in a's sandbox, never given to b
    a.exe("me.put(key, srpy_peer_other.Ring(3))", key=on_a)
    assert not imported(b, "srpy_peer_other")
    assert b.eval("type(me.take(key, timeout=30)).__qualname__", key=on_a) == "Ring"
    assert imported(b, "srpy_peer_other")
    assert a.eval("len(me._space.share)") == 0, "the entry was taken once, and is gone"


@pytest.fixture
def other_module(pair):
    pair[0].install_source("srpy_peer_other", "import dataclasses\n\n@dataclasses.dataclass\nclass Ring:\n"
                                              "    size: int\n")


@pytest.mark.slow
def test_a_stolen_call_gives_the_thief_its_arguments_classes(pair, planets):
    a, b = pair[0], pair[1]
    a.set(p=planets.Planet("venus", planets.Kind.ROCK))
    a.exe("import srpy_peer_planets as m")
    # the first call runs inline (3 s); the second is queued, and b, idle, takes it
    ran = a.eval("[f.result(timeout=60) for f in [srpy.spawn(m.slowly, 3.0), srpy.spawn(m.heavier, p)]]")
    assert ran == [3.0, planets.Planet("VENUS", planets.Kind.GAS, ("new",))]
    assert imported(b), "the second call ran on b"


def test_a_record_whose_module_cannot_be_given_is_a_clear_error(pair):
    a, b = pair[0], pair[1]
    a.exe(textwrap.dedent('''
        import dataclasses, sys, types
        made = types.ModuleType("srpy_made_here")
        exec("import dataclasses\\n@dataclasses.dataclass\\nclass Thing:\\n    a: int\\n", vars(made))
        sys.modules["srpy_made_here"] = made
    '''))
    with pytest.raises(srpy.SerializationError, match="srpy_made_here"):
        a.exe("me.send(to, 't', sys.modules['srpy_made_here'].Thing(1))", to=b.uri)
    a.exe("me.send(to, 't', 1)", to=b.uri)  # the link serves on
    assert b.eval("me.receive('t', timeout=30)[1]") == 1


#: a program whose __main__ classes go from the client to engine a, then from a to b
MAIN = '''
import dataclasses, enum, sys
import srpy
from srpy.group import peer_uri
from srpy.tuplespace import owner_of


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float = 0.0


class Colour(enum.Enum):
    RED = 1


class Bad(ValueError):
    pass


def shift(p):
    if p.x < 0:
        raise Bad("negative", p.x)
    return Point(p.x + 1, p.y)


a_uri, b_uri = sys.argv[1:3]
a, b = srpy.PythonEngine(a_uri), srpy.PythonEngine(b_uri)
a.set(p=Point(1, 2), c=Colour.RED)
a.exe("me.send(to, 'p', [p, c])", to=b_uri)
got = b.eval("me.receive('p', timeout=30)[1]")
assert got == [Point(1, 2), Colour.RED] and type(got[0]) is Point, got
assert b.eval("type(q).__module__", q=Point(0)) == a.eval("type(p).__module__")

# an entry a holds, taken by b: b asks a for the class (b has Point already: Colour it has too;
# a second class only a has)
@dataclasses.dataclass
class Label:
    text: str

members = sorted([a_uri, b_uri])
on_a = next("k%d" % i for i in range(100) if owner_of("k%d" % i, members) == a_uri)
a.set(label=Label("hello"))
a.exe("me.put(key, label)", key=on_a)
back = b.eval("me.take(key, timeout=30)", key=on_a)
assert type(back) is Label and back == Label("hello"), back

# a function of __main__ that a spawns and b steals: its class and its exception travel with it
with srpy.EngBox([a_uri]) as box:
    def driver(n):
        import time
        calls = [srpy.spawn(time.sleep, 3.0), srpy.spawn(shift, Point(n))]
        return [f.result(timeout=60) for f in calls][1]
    assert box.submit(driver, 5).result(timeout=90) == Point(6, 0)
    try:
        box.submit(driver, -5).result(timeout=90)
    except Bad as exc:
        assert exc.args == ("negative", -5), exc
    else:
        raise AssertionError("no Bad")
assert b.eval("me.executed") >= 2, "b stole the spawned calls"
a.close()
b.close()
print("OK")
'''


@pytest.mark.slow
def test_records_of_a_client_main_travel_between_engines(pair, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = tmp_path / "program.py"
    script.write_text(MAIN)
    done = subprocess.run([sys.executable, str(script), pair[0].uri, pair[1].uri], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr


def test_the_peer_object_builds_only_module_bundles_and_only_for_peers(pair):
    a, b = pair[0], pair[1]
    marker = "srpy_peer_marker_%d" % os.getpid()
    function = {"kind": "def", "name": "f", "source": "def f():\n    pass\n", "imports": {},
                "values": {}, "helpers": ["import os\nos.environ[%r] = '1'\n" % marker], "files": {}}
    with srpy.PythonEngine(peer_uri(a.uri)) as a_peer:
        with pytest.raises(ValueError, match="a peer may give a record class's module"):
            a_peer.call("peer_define", b.uri, function)
        with pytest.raises(PermissionError, match="not a peer"):
            a_peer.call("peer_define", "PYRO:srpy.engine@127.0.0.1:1", {"kind": "module", "module": "json"})
        with pytest.raises(PermissionError, match="not a peer"):
            a_peer.call("peer_record_bundle", "PYRO:srpy.engine@127.0.0.1:1", "json:JSONDecoder")
        with pytest.raises(srpy.SerializationError, match="no_such_module_here"):
            a_peer.call("peer_record_bundle", b.uri, "no_such_module_here:Thing")
    assert a.eval("__import__('os').environ.get(name)", name=marker) is None, "no code of the bundle ran"
    assert a.eval("6 * 7") == 42
