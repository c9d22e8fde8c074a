# -*- coding: utf-8 -*-
"""
A dependency-free client for srpy engines that runs unchanged on CPython 3 and on Jython 2.7
(or CPython 2.7): L{Engine} (SRPy's call surface over json) and L{Box} (a simple fan-out).

It is built on L{srpy.wire}, which speaks Pyro5's wire protocol (version 502) itself: the
message header, the connect handshake (with srpy's secret proof when the engine wants one),
invoke/result and error replies. The full client (L{srpy.client.PythonEngine}) uses the same
L{Connection}, with srpy's faster serializer; this module speaks json, which every engine
accepts with no set-up. Importing it loads neither Pyro5 nor anything else outside the
standard library.

To call engines from anywhere Python runs, Jython included, write the one-file client (wire.py
and this module in one file) and copy it next to a script::

    python3 -m srpy.lite --save DIR      # writes DIR/lite.py (or: srpy.lite.save(DIR))

    from lite import Engine
    eng = Engine("PYRO:srpy.engine@127.0.0.1:4000")
    eng.eval("a+b", a=2, b=3)       # -> 5

Values that survive json: None, bool, int (long), float, str (unicode), list, and dict with str
keys. Tuples and sets come back as lists, int dict keys as str, and bytes cannot travel; on
Python 2 every str comes back as unicode. A value the engine cannot send as json (a module, a
function, an object) raises a TypeError that names its type.

On Jython the connection is a C{java.net.Socket} (several times faster there than Jython's
socket module, which is not even imported); elsewhere it is Python's socket module.
"""
# -- srpy package imports: begin (save() cuts from here to the matching end line: wire.py's text stands in)
from __future__ import absolute_import, division, print_function

if globals().get("__package__") != "srpy":  # srpy/lite.py copied on its own: it needs srpy/wire.py
    raise ImportError("this lite.py is srpy's package module and needs srpy/wire.py: for the one-file "
                      "client to copy, run `python3 -m srpy.lite --save DIR` and copy DIR/lite.py")
from .wire import (  # noqa: F401 (re-exported: lite's users import these names from lite)
    PROTOCOL_VERSION, MAGIC, HEADER, CHUNK, MSG_CONNECT, MSG_CONNECTOK, MSG_CONNECTFAIL, MSG_INVOKE, MSG_RESULT,
    MSG_PING, FLAGS_EXCEPTION, FLAGS_COMPRESSED, FLAGS_ONEWAY, FLAGS_BATCH, TRAILING, BUFFER_KINDS, CALL_TIMEOUT,
    CALL_ID, ENDING, JSON_SERIALIZER_ID, MAX_MESSAGE_SIZE, HANDSHAKE_REPLY_MAX, ENGINE_OBJECT,
    STALE_AFTER, Connection, Pool, JsonSerializer, SocketTransport, JavaSocketTransport, default_transport,
    parse_uri, proof, new_nonce, same_text, exception_from_dict, inflate, clock,
    SRPyError, SRPyServerNotFound, CommunicationError, ConnectionLost, ProtocolError, CallTimeout,
    AuthenticationError, RemoteError, RemoteSystemExit)
# -- srpy package imports: end

import os
import sys
import threading
import time

__all__ = ["Engine", "Box", "module_sources", "package_sources", "save",
           "Connection", "Pool", "JsonSerializer", "SocketTransport", "JavaSocketTransport", "default_transport",
           "parse_uri", "proof", "new_nonce", "same_text", "exception_from_dict", "PROTOCOL_VERSION",
           "SRPyError", "SRPyServerNotFound", "CommunicationError", "ConnectionLost", "ProtocolError",
           "CallTimeout", "AuthenticationError", "RemoteError", "RemoteSystemExit"]

_NO_TIMEOUT = object()  # a call that may take as long as it takes, whatever the engine's timeout
_text = unicode if sys.version_info[0] == 2 else str  # type: ignore[name-defined]  # noqa: F821 (Python 2 name)


# -- the call surface ------------------------------------------------------------------------------

class Engine(object):
    """
    One engine, with SRPy's call surface. Safe to share between threads: each call takes an idle
    connection from its L{Pool} (opening one if none is idle), so a control call such as
    L{isBusy} is answered while another thread's long L{exe} runs.

    @ivar uri: the engine's URI.
    @ivar timeout: seconds any call may take before L{CallTimeout} (None: no limit).
    @ivar pool: the engine's connections (L{Pool}).
    """

    timeout = None

    def __init__(self, uri, secret=None, serializer=None, ssl_context=None, connect_timeout=None,
                 transport_factory=None, timeout=None):
        """
        Connect to the engine at C{uri} now (so that a dead engine fails here).

        @param secret: the engine's shared secret (default: the environment's SRPY_SECRET).
        @param connect_timeout: seconds to connect and complete the handshake (default 5).
        @param timeout: seconds any call may take (default: no limit).
        @raise SRPyServerNotFound: nothing answers at C{uri}.
        @raise AuthenticationError: the secret is missing or wrong.
        """
        self.uri = str(uri)
        self.pool = Pool(self.uri, secret, serializer or JsonSerializer(), ssl_context,
                         5.0 if connect_timeout is None else connect_timeout, transport_factory,
                         owner=type(self).__name__)
        if timeout is not None:
            self.timeout = timeout
        self.pool.release(self.pool.connect())  # fail now, not at the first call, when nothing answers

    @property
    def connect_timeout(self):
        """Seconds to connect and complete the handshake."""
        return self.pool.connect_timeout

    def _invoke(self, method, args=(), kwargs=None, annotations=None, timeout=None, trailing=()):
        if timeout is None:
            timeout = self.timeout
        elif timeout is _NO_TIMEOUT:
            timeout = None
        conn = self.pool.acquire()  # not pool.connection(): a context manager costs more than a Jython call's set-up
        try:
            return conn.call(method, args, kwargs, annotations, timeout, trailing)
        finally:
            self.pool.release(conn)

    def _call(self, method, *args, **options):
        return self._invoke(method, args, timeout=options.get("timeout"))[0]

    def _call_with_vars(self, method, args, variables):
        return self._call(method, *(args + (variables,)))

    def close(self):
        """
        Close every pooled connection (the engine keeps running). Calls under way finish; any later
        call raises L{ConnectionLost}. Closing again does nothing.
        """
        self.pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # SRPy's surface
    def set(self, **variables):
        """Create or overwrite variables in the engine's namespace."""
        self._call_with_vars("set", (), variables)

    def get(self, vars=None):
        """None: the namespace's names; a name: its value; a list of names: {name: value}."""
        return self._call("get", vars)

    def clear(self):
        """Empty the namespace."""
        self._call("clear")

    def eval(self, expr, **variables):
        """Set C{variables}, then evaluate C{expr} in the namespace and return its value."""
        return self._call_with_vars("eval", (expr,), variables)

    def exe(self, code, **variables):
        """Set C{variables}, then execute C{code} in the namespace."""
        self._call_with_vars("exe", (code,), variables)

    def vexe(self, code, get=(), **variables):
        """Run C{code} in a throw-away namespace made of C{variables}; return {name: value} for C{get}."""
        return self._call_with_vars("vexe", (code, list(get)), variables)

    def imp(self, *modules):
        """Import the named modules in the engine's namespace (as C{import name} binds them)."""
        self._call("imp", [getattr(m, "__name__", m) for m in modules])

    def install(self, *modules):
        """
        Ship local modules (names or module objects) to the engine's sandbox, so that L{imp} finds
        them there. A module of a package ships its whole top-level package. Returns the paths written.
        """
        files = {}
        for module in modules:
            files.update(module_sources(module))
        return self._call("install", files)

    def install_source(self, module_name, source):
        """Ship one module's source text to the engine's sandbox, so L{imp} finds it."""
        path = module_name.replace(".", "/") + ".py"
        return self._call("install", {path: source})

    def associateFunction(self, name):
        """A local callable that calls the engine's function C{name} (dotted names allowed)."""
        description = self._call("inspect", name)
        if description.get("kind") != "object" or not description.get("callable"):
            raise TypeError("%r on %s is not a function" % (name, self.uri))

        def remote(*args, **kwargs):
            return self._call("call", name, list(args), kwargs)

        remote.__name__ = str(description.get("name") or name.rpartition(".")[2])
        remote.__doc__ = description.get("doc") or None
        return remote

    def ping(self):
        """'pong', if the engine answers."""
        return self._call("ping")

    def whoami(self):
        """The engine's description (SRPy's keys and more)."""
        return self._call("whoami")

    def isBusy(self):
        """True while the engine runs a call that holds its lock."""
        return self._call("is_busy")

    def wait(self, timeout=None):
        """Block until the engine is idle (True), or C{timeout} seconds passed (False)."""
        if timeout is None or self.timeout is None:
            return self._call("wait", timeout, timeout=_NO_TIMEOUT)
        return self._call("wait", timeout, timeout=self.timeout + timeout)

    def benchmark(self, cycles=None, pings=5):
        """
        Measure the engine: C{(net_seconds, proc_seconds, is_busy)}, where net is the median of
        C{pings} round trips and proc the engine's time for its fixed workload of C{cycles}.
        """
        trips = []
        for _ in range(max(1, pings)):
            start = clock()
            self._call("ping")
            trips.append(clock() - start)
        result = self._call("benchmark", cycles)
        return _median(trips), result["proc"], result["busy"]

    def getURI(self):
        """The engine's URI."""
        return self.uri

    def setGroup(self, name):
        """Label the engine with group C{name}."""
        self._call("set_group", name)

    def __repr__(self):
        return "<%s at %s>" % (type(self).__name__, self.uri)


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


# -- shipping source -------------------------------------------------------------------------------

def module_sources(module):
    """
    C{{relative path: source text}} to ship for C{module} (a name or a module object): its own
    file, or for a module in a package, the whole top-level package's C{.py} files.
    """
    name = str(module if isinstance(module, (str, _text)) else module.__name__)
    top = name.partition(".")[0]
    source = _source_path(_locate(top))
    if os.path.basename(source) != "__init__.py":
        if top != name:
            raise ValueError("%s is not a package, so it has no module %s" % (top, name))
        return {top + ".py": _read_text(source)}
    return package_sources(os.path.dirname(source), top)


def _locate(top):
    """The file of top-level module C{top} (a package's __init__), found without importing it."""
    loaded = sys.modules.get(top)
    path = getattr(loaded, "__file__", None)
    if path:
        return path
    try:
        import importlib.util
    except ImportError:  # Python 2
        import imp
        try:
            handle, path, _ = imp.find_module(top)
        except ImportError:
            raise ValueError("cannot find module %s here to ship it" % (top,))
        if handle is not None:
            handle.close()
        return os.path.join(path, "__init__.py") if os.path.isdir(path) else path
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise ValueError("cannot find a source file of module %s here to ship it" % (top,))
    return spec.origin


def _source_path(path):
    """The .py file behind a module's __file__ (which may name a .pyc or Jython's $py.class)."""
    for suffix in ("$py.class", ".pyc", ".pyo"):
        if path.endswith(suffix):
            path = path[:-len(suffix)] + ".py"
    if not path.endswith(".py") or not os.path.isfile(path):
        raise ValueError("%s is not a Python source file that can be shipped" % (path,))
    return path


def package_sources(location, top):
    """
    The .py files under a package folder C{location}, keyed C{top/relative/path.py} (the walk of
    L{srpy.shipping.package_sources}, in a copy that runs on Python 2).
    """
    files = {}
    for folder, subfolders, names in os.walk(location):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__" and not d.startswith("."))
        for filename in sorted(names):
            if filename.endswith(".py"):
                full = os.path.join(folder, filename)
                relative = os.path.relpath(full, location).replace(os.sep, "/")
                files[top + "/" + relative] = _read_text(full)
    return files


def _read_text(path):
    import io
    with io.open(path, encoding="utf-8") as handle:
        return handle.read()


# -- fan-out ---------------------------------------------------------------------------------------

class Box(object):
    """
    A simple fan-out over several engines: L{run} calls one method on all of them at once and
    returns C{{uri: result}}, where an engine's exception is its result (it is not raised).
    """

    def __init__(self, uris, **options):
        """Connect to every URI now (L{SRPyServerNotFound} for one that does not answer)."""
        self.engines = []
        try:
            for uri in uris:
                self.engines.append(uri if isinstance(uri, Engine) else Engine(uri, **options))
        except Exception:
            self.close()
            raise

    def __len__(self):
        return len(self.engines)

    def __iter__(self):
        return iter(self.engines)

    def __getitem__(self, index):
        return self.engines[index]

    def run(self, method, *args, **kwargs):
        """Call C{method} on every engine at once; return C{{uri: result or exception}}."""
        results = {}

        def one(engine):
            try:
                results[engine.uri] = getattr(engine, method)(*args, **kwargs)
            except Exception as exc:  # each engine's failure is its own result
                results[engine.uri] = exc

        threads = [threading.Thread(target=one, args=(e,)) for e in self.engines]
        for thread in threads:
            thread.daemon = True
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def close(self):
        """Close every engine's connections."""
        for engine in self.engines:
            engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# -- the one-file client ---------------------------------------------------------------------------

_CUT_BEGIN = "# -- srpy package imports: begin"
_CUT_END = "# -- srpy package imports: end"


def save(directory):
    """
    Write C{directory}/lite.py, the one-file client to copy next to a (Jython) script: srpy's
    wire.py followed by this module without its package imports. Returns the file's path.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if globals().get("__package__") == "srpy":
        text = _one_file(_read_text(os.path.join(here, "wire.py")), _read_text(_source_path(__file__)))
    else:  # this already is the one-file client: a copy of itself
        text = _read_text(_source_path(__file__))
    if not os.path.isdir(directory):
        os.makedirs(directory)
    path = os.path.join(directory, "lite.py")
    import io
    with io.open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _one_file(wire_source, lite_source):
    """wire.py's text, then lite.py's with the lines from the begin marker to the end marker cut."""
    lines = lite_source.splitlines(True)
    begins = [i for i, line in enumerate(lines) if line.startswith(_CUT_BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.startswith(_CUT_END)]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError("lite.py must hold one %r line and, after it, one %r line" % (_CUT_BEGIN, _CUT_END))
    kept = lines[:begins[0]] + lines[ends[0] + 1:]
    banner = ("# -*- coding: utf-8 -*-\n"
              "# srpy's one-file client for Jython 2.7 and Python 3, written by `python3 -m srpy.lite --save DIR`:\n"
              "# srpy/wire.py (the wire protocol), then srpy/lite.py (the client). Copy it next to your script.\n")
    text = banner + wire_source.rstrip("\n") + "\n\n\n# " + "=" * 98 + "\n# srpy/lite.py\n" + "".join(kept)
    compile(text, "lite.py", "exec")  # a cut in the wrong place fails here, not on the user's machine
    return text


def main(argv=None):
    """C{python3 -m srpy.lite --save DIR}: write DIR/lite.py and print its path."""
    import argparse
    parser = argparse.ArgumentParser(prog="python3 -m srpy.lite",
                                     description="Write srpy's one-file client (for Jython 2.7 and Python 3).")
    parser.add_argument("--save", metavar="DIR", required=True, help="the folder to write lite.py in")
    options = parser.parse_args(argv)
    sys.stdout.write(save(options.save) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
