"""
The client side of one engine: L{PythonEngine}, with SRPy's whole surface.

>>> import srpy
>>> uri, process = srpy.newSubEngine()
>>> eng = srpy.PythonEngine(uri)
>>> eng.eval('a+b', a=2, b=3)
5
>>> eng.exe('import math; n = math.sqrt(n)', n=2)
>>> eng.get('n')
1.4142135623730951
>>> eng.ns.a = 3
>>> eng.ns.a
3
>>> eng.imp('math')
>>> eng.ns.math.sqrt(3)
1.7320508075688772
>>> eng.close(); srpy.stopSubEngine(process)
0
"""

import copy
import statistics
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import codec, errors, lite, shipping
from .engine import BLOB_MARK, BLOB_MIN, RESULT_BLOB


class WireFormat:
    """srpy's serializer (L{srpy.codec}) in the shape L{srpy.lite.Connection} wants."""

    serializer_id = codec.SERIALIZER_ID

    @staticmethod
    def dumps_call(obj: str, method: str, args: Any, kwargs: Any) -> bytes:
        return codec.dumps((obj, method, tuple(args), kwargs or {}))

    loads = staticmethod(codec.loads)

    @staticmethod
    def exception(value: Any) -> BaseException:
        if isinstance(value, BaseException):
            return value
        if isinstance(value, dict):
            return codec.exception_from_dict(value)
        return errors.RemoteError("unknown", repr(value))


WIRE_FORMAT = WireFormat()
#: seconds past a call's time limit that the client waits for the engine's own answer
LIMIT_GRACE = 5.0


class PythonEngine(lite.Engine):
    """
    A client for one engine (see SRPy's API). Safe to share between threads.

    @ivar uri: the engine's URI.
    @ivar info: the engine's L{whoami} description, read when connecting.
    @ivar ns: attribute-style view of the engine's namespace (L{Namespace}).
    """

    #: time limit of calls that run code (see L{limited}); None: no limit
    call_timeout: Optional[float] = None

    def __init__(self, uri: Any, name: str = "", group: str = "", secret: Optional[str] = None,
                 connect_timeout: float = 5.0, ssl_context: Any = None) -> None:
        uri = str(uri)
        try:
            lite.parse_uri(uri)
        except ValueError as exc:
            raise errors.SRPyServerNotFound(uri, str(exc)) from None
        super().__init__(uri, secret=secret, serializer=WIRE_FORMAT, ssl_context=ssl_context,
                         connect_timeout=connect_timeout)
        self.info: Dict[str, Any] = self.whoami()
        self.name = name or self.info.get("Name", "")
        self.group = group or self.info.get("Group", "")
        _, self.ip, self.port = lite.parse_uri(uri)
        self.hostname = self.info.get("Hostname", "")
        self.ns = Namespace(self)

    # -- transport with bulk bytes ------------------------------------------------------------------

    def limited(self, seconds: Optional[float]) -> "PythonEngine":
        """
        This engine, with a time limit on every call that runs code: a call that overruns it fails
        with L{srpy.errors.TaskTimeout}, and the engine stops the code by restarting (under a
        launcher given C{--restart}). Shares this client's connections.

        >>> # eng.limited(5).exe("while True: pass")   -> TaskTimeout after 5 s
        """
        view = copy.copy(self)
        view.call_timeout = seconds
        return view

    def _limits(self, timeout: Optional[float]) -> Tuple[Optional[Dict[str, bytes]], Optional[float]]:
        if self.call_timeout is None:
            return None, timeout
        annotations = {lite.CALL_TIMEOUT: struct.pack("!d", self.call_timeout)}
        return annotations, timeout if timeout is not None else self.call_timeout + LIMIT_GRACE

    def _limited_invoke(self, method: str, args: Tuple[Any, ...], annotations: Any, timeout: Optional[float],
                        trailing: Any = ()) -> Tuple[Any, Any]:
        """C{_invoke}; a connection lost after the call's limit means the engine stopped it by ending."""
        if self.call_timeout is None:
            return self._invoke(method, args, None, annotations, timeout, trailing)
        started = time.monotonic()
        try:
            return self._invoke(method, args, None, annotations, timeout, trailing)
        except errors.ConnectionLost:
            if self.call_timeout is None or time.monotonic() - started < self.call_timeout:
                raise
            raise errors.TaskTimeout("the call %s() ran longer than its limit of %s s: the engine at %s ended "
                                     "itself to stop it (its code held the interpreter, e.g. a long C call)"
                                     % (method, self.call_timeout, self.uri)) from None

    def _call(self, method: str, *args: Any, timeout: Optional[float] = None) -> Any:
        annotations, timeout = self._limits(timeout)
        value, annotations = self._limited_invoke(method, args, annotations, timeout)
        if annotations and RESULT_BLOB in annotations:
            return annotations[RESULT_BLOB]
        return value

    def _call_with_vars(self, method: str, args: Tuple[Any, ...], variables: Dict[str, Any]) -> Any:
        trailing = []
        for key, value in variables.items():
            if type(value) is bytes and len(value) >= BLOB_MIN:
                variables[key] = BLOB_MARK + str(len(trailing))
                trailing.append(value)
        annotations, timeout = self._limits(None)
        value, response = self._limited_invoke(method, args + (variables,), annotations, timeout, trailing)
        if response and RESULT_BLOB in response:
            return response[RESULT_BLOB]
        return value

    # -- SRPy's surface ------------------------------------------------------------------------------

    def install(self, *modules: Any) -> List[str]:
        """
        Ship local modules or whole packages (names or module objects) to the engine's sandbox,
        so that L{imp} finds them there. Returns the relative paths written.
        """
        files: Dict[str, str] = {}
        for module in modules:
            files.update(shipping.module_files(module))
        return self._call("install", files)

    def imp(self, *modules: str) -> None:
        """Import the named modules in the engine's namespace (as C{import name} binds them)."""
        self._call("imp", [m.__name__ if hasattr(m, "__name__") else m for m in modules])

    def associateFunction(self, name: str) -> Callable[..., Any]:
        """A local callable that calls the engine's function C{name} (dotted names allowed)."""
        description = self._call("inspect", name)
        if description["kind"] != "object" or not description["callable"]:
            raise TypeError("%r on %s is not a function" % (name, self))
        return _remote_callable(self, name, description)

    def whoami(self) -> Dict[str, Any]:
        """The engine's description: SRPy's keys plus name, group, cores, load, memory and more."""
        self.info = self._call("whoami")
        return self.info

    def benchmark(self, cycles: Optional[int] = None, pings: int = 5) -> Tuple[float, float, bool]:
        """
        Measure the engine: C{(net_seconds, proc_seconds, is_busy)}, where net is the median of
        C{pings} round trips and proc the engine's time for its fixed workload of C{cycles}.
        """
        trips = []
        for _ in range(max(1, pings)):
            start = time.perf_counter()
            self._call("ping")
            trips.append(time.perf_counter() - start)
        result = self._call("benchmark", cycles)
        return statistics.median(trips), result["proc"], result["busy"]

    def getURI(self) -> str:
        """The engine's URI."""
        return self.uri

    def getHostname(self) -> str:
        """The engine's host name."""
        return self.hostname

    def getSystem(self) -> str:
        """The engine's operating system."""
        return self.info.get("OS System", "")

    def getInfoString(self) -> str:
        """The engine's description, one C{key: value} per line."""
        return "\n".join("%s: %s" % (key, value) for key, value in sorted(self.info.items()))

    def setGroup(self, name: str) -> None:
        """Label this engine (on the engine too) with group C{name}."""
        self._call("set_group", name)
        self.group = name

    def getGroup(self) -> str:
        """The engine's group label."""
        return self.group

    def __repr__(self) -> str:
        return "<PythonEngine %s on %s>" % (self.info.get("PythonEngine ID", self.uri), self.hostname)

    def __str__(self) -> str:
        return repr(self) + "\n" + self.getInfoString()

    def __enter__(self) -> "PythonEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _remote_callable(engine: PythonEngine, path: str, description: Dict[str, Any]) -> Callable[..., Any]:
    def remote(*args: Any, **kwargs: Any) -> Any:
        return engine._call("call", path, args, kwargs)

    remote.__name__ = remote.__qualname__ = description.get("name") or path.rpartition(".")[2]
    remote.__doc__ = description.get("doc") or None
    return remote


class Namespace:
    """
    Attribute-style view of an engine's namespace: C{ns.a = 3}; C{ns.a}; C{ns.math.sqrt(3)};
    C{ns.dir()}. Values that can travel come back as values; anything else (modules, functions,
    objects) as a L{RemoteObject} whose attributes and calls go to the engine.
    """

    def __init__(self, engine: PythonEngine) -> None:
        object.__setattr__(self, "_engine", engine)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _lookup(self._engine, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._engine.set(**{name: value})

    def __delattr__(self, name: str) -> None:
        self._engine._call("delete", [name])

    def dir(self) -> List[str]:
        """The names defined in the engine's namespace."""
        return self._engine.get()

    def __dir__(self) -> List[str]:
        return self.dir()


class RemoteObject:
    """Something on the engine that cannot travel (a module, a function, an object), by name."""

    def __init__(self, engine: PythonEngine, path: str, description: Dict[str, Any]) -> None:
        object.__setattr__(self, "_engine", engine)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "__doc__", description.get("doc") or None)
        object.__setattr__(self, "_type", description.get("type", "object"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _lookup(self._engine, self._path + "." + name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._engine._call("call", self._path, args, kwargs)

    def __repr__(self) -> str:
        return "<remote %s %s on %r>" % (self._type, self._path, self._engine)


def _lookup(engine: PythonEngine, path: str) -> Any:
    try:
        description = engine._call("inspect", path)
    except NameError as exc:
        raise AttributeError(str(exc)) from None
    if description["kind"] == "value":
        return description["value"]
    return RemoteObject(engine, path, description)

