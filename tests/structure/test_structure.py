"""
The shape of the package, checked like behaviour: no import cycles among srpy's modules (lazy,
function-level imports included), the frame format packed and parsed in srpy/wire.py only, Pyro5's
internals touched in srpy/_pyro5.py only, no server module that imports the clients, and a client
module that loads nothing beyond the standard library.
"""

import ast
import io
import os
import re
import subprocess
import sys
import tokenize

import pytest

from conftest import ROOT

PACKAGE = os.path.join(ROOT, "srpy")
#: the modules that make up an engine process (the server side)
SERVER_MODULES = {"engine", "daemon", "security", "listener", "cli", "supervisor", "subengine", "hosting",
                  "peers", "group", "mailbox", "tuplespace", "stealing", "peerservice", "calls", "lock", "watch",
                  "output", "discovery", "_pyro5", "environments", "asmain"}
#: what only srpy/wire.py may hold: packing or parsing a Pyro5 header or an annotation chunk
FRAMING = re.compile(r"""HEADER\.pack|HEADER\.unpack|CHUNK\.pack|CHUNK\.unpack|struct\.(?:pack|unpack)(?:_from)?\(\s*["']!4sI"""
                     r"""|b["']PYRO["']|["']!4sHBBHHII16sHH["']""")


#: what only srpy/_pyro5.py may touch: Pyro5's internals (its module text's table), in code (not in
#: strings or comments): the names, writing the fields of Pyro5's call context, the serializer table
PYRO5_INTERNALS = re.compile(
    r"\b(?:serializers_by_id|SerializerBase|MarshalSerializer|_convertToBytes|recreate_classes|dict_to_class"
    r"|ReceivingMessage|recv_stub|add_payload|svr_threads|SocketServer_Threadpool|SocketConnection|handleRequest"
    r"|_housekeeping|_clientDisconnect|_handshake|_sendExceptionResponse|objectsById|get_metadata"
    r"|_get_exposed_members|_pyroTraceback)\b"
    r"|serializers \. serializers\b"
    r"|\bcurrent_context \. (?:client|client_sock_addr|seq|msg_flags|serializer_id|annotations|correlation_id)"
    r" =(?!=)")
#: the exceptions, each with its reason: {module: the internal names it may use}
PYRO5_ALLOWED = {
    # EngineDaemon overrides the hook a transport server calls (srpy._pyro5.serve_message), and
    # hands what it does not serve itself to Pyro5's own (srpy._pyro5.handle_as_pyro5)
    "daemon": {"handleRequest"},
    # srpy's serializer class is a Pyro5 serializer (codec's redesign may move it; _pyro5.check()
    # verifies the base's shape meanwhile)
    "codec": {"SerializerBase", "_convertToBytes"},
    # wire's client side: its own handshake method, not Pyro5's
    "wire": {"_handshake"},
}


def code_lines(path):
    """{line: that line's code as its tokens joined by spaces, strings and comments left out}."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    lines = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER):
            lines.setdefault(token.start[0], []).append(token.string)
    return {number: " ".join(tokens) for number, tokens in lines.items()}


def pyro5_internals_used(path, name):
    """["path:line: code"] where module C{name} touches a Pyro5 internal it is not allowed."""
    allowed = PYRO5_ALLOWED.get(name, set())
    found = []
    for number, code in sorted(code_lines(path).items()):
        if any(match.group(0) not in allowed for match in PYRO5_INTERNALS.finditer(code)):
            found.append("%s:%d: %s" % (os.path.relpath(path, ROOT), number, code))
    return found


def modules():
    """{module name: path} of every srpy/*.py ('srpy' for the package's __init__)."""
    found = {}
    for filename in sorted(os.listdir(PACKAGE)):
        if filename.endswith(".py"):
            name = filename[:-3]
            found["srpy" if name == "__init__" else name] = os.path.join(PACKAGE, filename)
    return found


def _body(node):
    return {n for statement in node.body for n in ast.walk(statement)}


def imports(path, known):
    """
    [(imported srpy module, line, lazy?)] of one file: C{import srpy.x}, C{from srpy import x},
    C{from . import x}, C{from .x import y}, at module level or inside functions (lazy). An import
    under C{if TYPE_CHECKING:} never runs, so it is no edge. The lazy façade's table of homes
    (srpy/__init__.py's C{_HOMES}) counts as imports of the package.
    """
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    checking = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            checking |= _body(node)
    functions = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            functions |= {n for n in ast.walk(node) if n is not node}
    for node in ast.walk(tree):
        if node in checking:
            continue
        lazy = node in functions
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "srpy":
                    found.append((parts[1] if len(parts) > 1 else "srpy", node.lineno, lazy))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and not (node.module or "").startswith("srpy"):
                continue
            if node.level > 1:
                raise AssertionError("%s:%d: srpy has no subpackages to import from" % (path, node.lineno))
            dotted = (node.module or "") if node.level else node.module[len("srpy"):].lstrip(".")
            if dotted:  # from .x import y, from srpy.x import y
                found.append((dotted.split(".")[0], node.lineno, lazy))
            else:  # from . import x: module x, or a name of the package itself
                for alias in node.names:
                    found.append((alias.name if alias.name in known else "srpy", node.lineno, lazy))
    for statement in tree.body:  # the façade: _HOMES = {...}; _HOMES.update(...)
        if isinstance(statement, (ast.Assign, ast.AnnAssign, ast.Expr)) and "_HOMES" in ast.unparse(statement):
            for value in ast.walk(statement):
                if isinstance(value, ast.Constant) and value.value in known and value.value != "srpy":
                    found.append((value.value, statement.lineno, True))
    return found


def import_graph(lazy=True):
    known = modules()
    graph = {}
    for name, path in known.items():
        edges = {}
        for target, line, is_lazy in imports(path, known):
            assert target in known, "%s:%d imports srpy.%s, which does not exist" % (path, line, target)
            if target != name and (lazy or not is_lazy):
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One cycle of C{graph} as [a, b, ..., a], or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 2, "b": 3}}) is None


def test_the_import_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert "wire" in graph["client"], "from . import wire"
    assert "client" in graph["box"], "from .client import PythonEngine"
    assert "_pyro5" in graph["watch"], "a function-level from . import _pyro5"
    assert "tracebacks" in graph["engine"], "from .tracebacks import ..."
    assert {"client", "box", "subengine", "peers", "errors"} <= set(graph["srpy"]), "the lazy façade's homes"


def test_no_import_cycles_lazy_imports_included():
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = ["srpy.%s (line %d)" % (a, graph[a][b]) for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle: %s -> srpy.%s" % (" -> ".join(steps), cycle[-1]))


def test_only_wire_packs_or_parses_frames():
    offenders = []
    for name, path in modules().items():
        if name == "wire":
            continue
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                code = line.split("#", 1)[0]
                if FRAMING.search(code):
                    offenders.append("%s:%d: %s" % (os.path.relpath(path, ROOT), number, line.strip()))
    assert not offenders, "frame packing or parsing outside srpy/wire.py:\n" + "\n".join(offenders)


def test_the_framing_check_would_catch_a_header_packed_elsewhere():
    for line in ('header = lite.HEADER.pack(b"PYRO", 502, 5, 83, 0, 1, 0, 0, b"", 0, 0x4dc5)',
                 "struct.pack('!4sI', key, len(value))", 'fields = HEADER.unpack(data)', 'if tag != b"PYRO":'):
        assert FRAMING.search(line), line
    assert not FRAMING.search("wire.pack_header(wire.MSG_RESULT, 83, len(data), seq)")


def test_only_the_pyro5_module_touches_pyro5_internals():
    offenders = []
    for name, path in modules().items():
        if name != "_pyro5":
            offenders += pyro5_internals_used(path, name)
    assert not offenders, "Pyro5 internals touched outside srpy/_pyro5.py:\n" + "\n".join(offenders)


def test_the_pyro5_internals_check_would_catch_an_internal_used_elsewhere(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('''"""A docstring may name svr_threads.SocketServer_Threadpool and objectsById."""
import socket  # a comment may name _get_exposed_members
from Pyro5 import svr_threads
data = pyro_serializers.serializers_by_id[serializer_id].dumps(exc)
pyro_serializers.serializers["srpy"] = serializer
meta = daemon.objectsById[core.DAEMON_NAME].get_metadata(name)
current_context.seq = seq
exc._pyroTraceback = text
if current_context.seq == seq: pass
text = "exposed: %s" % _pyro5.exposed_methods(obj)
''', encoding="utf-8")
    found = [line.split(":")[1] for line in pyro5_internals_used(str(sample), "sample")]
    assert found == ["3", "4", "5", "6", "7", "8"], found
    # an exception holds for its own module only: daemon's override is found under another name
    elsewhere = pyro5_internals_used(os.path.join(PACKAGE, "daemon.py"), "not-daemon")
    assert any("def handleRequest" in line for line in elsewhere), elsewhere
    assert not pyro5_internals_used(os.path.join(PACKAGE, "daemon.py"), "daemon")


def test_no_server_module_imports_a_client_module():
    """Not directly, and not through other modules' module-level imports (peers may call engines lazily)."""
    graph = import_graph(lazy=False)
    present = SERVER_MODULES & set(graph)
    assert {"engine", "daemon", "security", "peers"} <= present
    for server in sorted(present):
        seen, todo, via = set(), [server], {server: [server]}
        while todo:
            node = todo.pop()
            for target in graph[node]:
                if target not in seen:
                    seen.add(target)
                    via[target] = via[node] + [target]
                    todo.append(target)
        for client in ("lite", "client", "box"):
            assert client not in seen, "server module srpy.%s imports srpy.%s: %s" % (
                server, client, " -> ".join(via[client]))


def test_importing_lite_loads_no_pyro5_psutil_or_serpent():
    probe = ("import sys, srpy.lite; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('Pyro5', 'psutil', 'serpent', 'msgpack')))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout
