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

import collections
import os
import statistics
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import codec, errors, lite, shipping
from .engine import BLOB_MIN, RESULT_BLOB


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
#: seconds past a call's time limit that the client waits for the engine's own answer (the engine
#: answers within about 2 s, even when it must end its process)
LIMIT_GRACE = 8.0
#: seconds a client waits for a fresh engine after the old one ended its process to stop a call
RESTART_WAIT = 10.0
#: engine calls that no limit applies to (they do not take the engine's lock)
_CONTROL_CALLS = frozenset(["ping", "is_busy", "wait", "benchmark", "whoami", "status", "set_group", "abort"])


class PythonEngine(lite.Engine):
    """
    A client for one engine (see SRPy's API). Safe to share between threads.

    @ivar uri: the engine's URI.
    @ivar info: the engine's L{whoami} description, read when connecting.
    @ivar ns: attribute-style view of the engine's namespace (L{Namespace}).
    """

    #: until when (monotonic clock) a refused connection may be an engine restarting to stop a call
    _restart_until = 0.0
    #: time limit of calls that run code (see L{limited}); None: no limit
    call_timeout: Optional[float] = None
    #: the id every call carries (see L{tagged}); None: no id
    call_id: Optional[bytes] = None
    #: the engine's own limit on every call (its whoami 'Max Task Time'); None: none
    _max_task_time: Optional[float] = None

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
        self._aborted: "collections.OrderedDict[bytes, None]" = collections.OrderedDict()  # ids asked to stop

    # -- limits, call ids, abort -------------------------------------------------------------------

    def limited(self, seconds: Optional[float]) -> "PythonEngine":
        """
        A view of this engine whose calls that run code have a time limit of C{seconds} (None: no
        limit), also through its C{ns}, its L{associateFunction} results and the remote objects
        they return. A call that overruns it fails with L{srpy.errors.TaskTimeout}: the engine
        interrupts the code and keeps its namespace, or, if the code holds the interpreter (a long
        C call), ends and restarts its process at the same URI. The view shares this client's
        connections; closing it leaves this client open.

        >>> # eng.limited(5).exe("while True: pass")   -> TaskTimeout after 5 s
        """
        return _View(self._base(), seconds, self.call_id)

    def tagged(self, call_id: Optional[bytes]) -> "PythonEngine":
        """
        A view of this engine whose calls carry C{call_id} (see L{new_call_id}), so that
        L{abort}C{(call_id)} stops the one running. Keeps this view's limit.
        """
        return _View(self._base(), self.call_timeout, call_id)

    @staticmethod
    def new_call_id() -> bytes:
        """A fresh id for a call (8 random bytes), for L{tagged}, L{call_on} and L{abort}."""
        return os.urandom(8)

    def abort(self, call_id: bytes, timeout: Optional[float] = 5.0) -> bool:
        """
        Stop the engine's running call that carries C{call_id}, exactly as a time limit would: its
        caller gets L{srpy.errors.TaskAborted}. Returns True if that call was running, False if
        not (it already ended, or has not begun: a call with that id that begins later is refused
        with TaskAborted). Code that holds the interpreter (a long C call) cannot even read the
        request until it lets go, or until its own time limit ends it.

        @raise CallTimeout: the engine did not answer within C{timeout} seconds.
        """
        base = self._base()
        base._aborted[bytes(call_id)] = None
        while len(base._aborted) > 1024:
            base._aborted.popitem(last=False)
        return bool(base._invoke("abort", (bytes(call_id),), None, None, timeout)[0])

    def call_annotations(self, call_id: Optional[bytes] = None) -> Optional[Dict[str, bytes]]:
        """The annotations of a call through this view: its time limit and its id (None if neither)."""
        call_id = call_id if call_id is not None else self.call_id
        if self.call_timeout is None and call_id is None:
            return None
        annotations = {}
        if self.call_timeout is not None:
            annotations[lite.CALL_TIMEOUT] = struct.pack("!d", self.call_timeout)
        if call_id is not None:
            if len(call_id) != 8:
                raise ValueError("a call id is 8 bytes, not %d" % len(call_id))
            annotations[lite.CALL_ID] = bytes(call_id)
        return annotations

    def call_on(self, conn: Any, method: str, args: Tuple[Any, ...] = (), call_id: Optional[bytes] = None,
                timeout: Optional[float] = None, trailing: Any = (),
                extra: Optional[Dict[str, bytes]] = None) -> Tuple[Any, Any]:
        """
        Make the call C{method(*args)} on C{conn} (a connection of this engine's, see
        C{_acquire}), with this view's limit and C{call_id}; return C{(value, response
        annotations)}. A connection lost, or no answer, after the call's limit (this view's, or
        the engine's C{--max-task-time}) raises L{srpy.errors.TaskTimeout}; lost after
        L{abort}C{(call_id)}, L{srpy.errors.TaskAborted}.

        @param timeout: seconds to wait for the answer (default: the limit and a grace, or the
            client's C{timeout}).
        """
        call_id = call_id if call_id is not None else self.call_id
        annotations = self.call_annotations(call_id)
        if extra:
            annotations = dict(annotations or {}, **extra)
        limit = self.call_timeout
        if timeout is None:
            timeout = limit + LIMIT_GRACE if limit is not None else self.timeout
        elif timeout is lite._NO_TIMEOUT:  # wait(): as long as it takes, whatever the client's timeout
            timeout = None
        if limit is None and call_id is None and not self._engine_limit():
            return conn.call(method, args, None, annotations, timeout, trailing)  # the common call
        started = time.monotonic()
        try:
            return conn.call(method, args, None, annotations, timeout, trailing)
        except (errors.TaskTimeout, errors.TaskAborted) as exc:
            if getattr(exc, "engine_ending", False):
                # the engine ends its process to stop the call, and a fresh one starts in
                # milliseconds, sooner than the pool's check of idle connections: reuse no
                # connection to it, and let new connections wait out the restart (see _connect)
                conn.close()
                self._base()._expect_restart()
            raise
        except (errors.ConnectionLost, errors.CallTimeout) as exc:
            error = self._stopped_error(method, time.monotonic() - started, call_id, exc)
            if error is None:
                raise
            if isinstance(exc, errors.ConnectionLost):
                self._base()._expect_restart()
                self._await_restart()
            raise error from None

    def _expect_restart(self) -> None:
        """
        A call was stopped, and the engine may be ending its process for it: drop the idle
        connections (they may reach that process for a few more milliseconds), and let new ones
        wait out a restart (see L{_connect}).
        """
        self._restart_until = time.monotonic() + RESTART_WAIT
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self) -> Any:
        """
        A new connection. Right after a call was stopped (the engine may be ending its process
        for it), a refused or reset connection is tried again until the fresh engine answers, for
        up to L{RESTART_WAIT} s: the caller's next call must find the engine serving.
        """
        try:
            return super()._connect()
        except errors.SRPyServerNotFound:
            base = self._base()
            if time.monotonic() >= base._restart_until:
                raise
        self._await_restart()
        return super()._connect()

    def _await_restart(self) -> None:
        """
        The engine ended its process to stop a call: wait (up to L{RESTART_WAIT} s) until the
        fresh engine answers at the same URI, so that the caller's next call finds it serving
        rather than the old process's closing socket.
        """
        base = self._base()
        deadline, delay = time.monotonic() + RESTART_WAIT, 0.01
        while time.monotonic() < deadline:
            try:
                conn = lite.Engine._connect(base)
            except errors.SRPyError:
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
                continue
            base._release(conn)
            return

    def _stopped_error(self, method: str, elapsed: float, call_id: Optional[bytes],
                       exc: BaseException) -> Optional[errors.SRPyError]:
        """What a call that lost its connection (or its answer) after C{elapsed} s really met, if a limit or an abort."""
        if method in _CONTROL_CALLS or method.startswith("peer_"):
            return None
        if call_id is not None and call_id in self._base()._aborted:
            return errors.TaskAborted("the call %s() was aborted: the engine at %s ended its process to stop it "
                                      "(the code held the interpreter); a fresh engine serves at the same URI"
                                      % (method, self.uri))
        limits = [(self.call_timeout, "its time limit"), (self._engine_limit(), "the engine's --max-task-time")]
        hit = [(limit, which) for limit, which in limits if limit and elapsed >= limit]
        if not hit:
            return None
        limit, which = min(hit)
        if isinstance(exc, errors.CallTimeout):
            return errors.TaskTimeout("the call %s() ran longer than %s of %g s, and the engine at %s did not "
                                      "answer within %g s more" % (method, which, limit, self.uri, LIMIT_GRACE))
        return errors.TaskTimeout("the call %s() ran longer than %s of %g s and held the interpreter (a long C "
                                  "call, such as a huge integer power or a catastrophic regex): the engine at %s "
                                  "ended its process to stop it; a fresh engine serves at the same URI, with an "
                                  "empty namespace" % (method, which, limit, self.uri))

    def _engine_limit(self) -> Optional[float]:
        return self._max_task_time

    def _base(self) -> "PythonEngine":
        return self

    # -- transport with bulk bytes ------------------------------------------------------------------

    def _limited_invoke(self, method: str, args: Tuple[Any, ...], timeout: Optional[float],
                        trailing: Any = (), extra: Optional[Dict[str, bytes]] = None) -> Tuple[Any, Any]:
        """C{_invoke}, through L{call_on}: a pooled connection, this view's limit and call id."""
        if self.call_timeout is None and self.call_id is None and self._max_task_time is None:
            return self._invoke(method, args, None, extra, timeout, trailing)  # the common call, straight
        conn = self._acquire()
        try:
            return self.call_on(conn, method, args, timeout=timeout, trailing=trailing, extra=extra)
        finally:
            self._release(conn)

    def _call(self, method: str, *args: Any, timeout: Optional[float] = None) -> Any:
        value, annotations = self._limited_invoke(method, args, timeout)
        if annotations and RESULT_BLOB in annotations:
            return annotations[RESULT_BLOB]
        return value

    def _call_with_vars(self, method: str, args: Tuple[Any, ...], variables: Dict[str, Any]) -> Any:
        trailing, names = [], []
        for key, value in variables.items():
            if type(value) is bytes and len(value) >= BLOB_MIN:
                # the bytes travel raw after the message; the annotation, never the value, says where
                variables[key] = None
                names.append(key)
                trailing.append(value)
        extra = {lite.BLOB_NAMES: "\0".join(names).encode("utf-8")} if names else None
        value, response = self._limited_invoke(method, args + (variables,), None, trailing, extra)
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
        self._max_task_time = self.info.get("Max Task Time")
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


class _View(PythonEngine):
    """
    L{PythonEngine.limited} and L{PythonEngine.tagged}: the same engine and connections, with a
    time limit and a call id of its own. Everything but those (and C{ns}) is the original's: the
    view reads and sets the original's attributes, and calls go through the original's pool.
    Closing a view only closes the view.
    """

    _OWN = frozenset(["_original", "call_timeout", "call_id", "ns", "_view_closed"])

    def __init__(self, original: PythonEngine, seconds: Optional[float], call_id: Optional[bytes]) -> None:
        # no PythonEngine.__init__: a view opens no connection and asks the engine nothing
        if seconds is not None and not seconds > 0:
            raise ValueError("a time limit is a number of seconds above 0, not %r" % (seconds,))
        if call_id is not None and len(call_id) != 8:
            raise ValueError("a call id is 8 bytes, not %d" % len(call_id))
        object.__setattr__(self, "_original", original)
        object.__setattr__(self, "call_timeout", seconds)
        object.__setattr__(self, "call_id", call_id)
        object.__setattr__(self, "ns", Namespace(self))
        object.__setattr__(self, "_view_closed", False)

    def __getattr__(self, name: str) -> Any:  # only for what the view does not hold itself
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._original, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._original, name, value)

    def _base(self) -> PythonEngine:
        return self._original

    @property
    def _max_task_time(self) -> Optional[float]:  # type: ignore[override]
        return self._original._max_task_time

    def _acquire(self) -> Any:
        if self._view_closed:
            raise errors.SRPyError("this view of %s (limited or tagged) is closed" % self.uri)
        return self._original._acquire()

    def _release(self, conn: Any) -> None:
        self._original._release(conn)

    def _invoke(self, method: str, args: Any = (), kwargs: Any = None, annotations: Any = None,
                timeout: Any = None, trailing: Any = ()) -> Any:
        if self._view_closed:
            raise errors.SRPyError("this view of %s (limited or tagged) is closed" % self.uri)
        return self._original._invoke(method, args, kwargs, annotations, timeout, trailing)

    def close(self) -> None:
        """Close this view; the engine client it was made from stays open."""
        object.__setattr__(self, "_view_closed", True)

    def __repr__(self) -> str:
        return "<PythonEngine %s on %s, limited to %s s>" % (
            self.info.get("PythonEngine ID", self.uri), self.hostname, self.call_timeout)


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

