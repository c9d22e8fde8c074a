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
import contextlib
import os
import statistics
import sys
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from . import codec, errors, forwarding, shipping, wire
from .wire import CALL_ID, CALL_TIMEOUT


#: srpy's serializer for connections (L{srpy.codec.WireFormat})
WIRE_FORMAT = codec.WIRE_FORMAT
#: seconds past a call's time limit that the client waits for the engine's own answer (the engine
#: answers within about 2 s, even when it must end its process)
LIMIT_GRACE = 8.0
#: seconds a client waits for a fresh engine after the old one ended its process to stop a call
RESTART_WAIT = 10.0
#: a call's timeout that means: as long as it takes, whatever the client's C{timeout} (for C{wait})
NO_TIMEOUT: Any = object()
#: engine calls that no limit applies to (they do not take the engine's lock)
_CONTROL_CALLS = frozenset(["ping", "is_busy", "wait", "benchmark", "whoami", "status", "set_group", "abort"])


class _Shared:
    """
    What a client and its views (L{PythonEngine.limited}, L{PythonEngine.tagged}) hold in common:
    one object, so that a view reads and sets the original's state.
    """

    def __init__(self) -> None:
        self.info: Dict[str, Any] = {}
        self.name = ""
        self.group = ""
        self.hostname = ""
        self.ip = ""
        self.port = 0
        self.timeout: Optional[float] = None
        #: the engine's own limit on every call (its whoami 'Max Task Time'); None: none
        self.max_task_time: Optional[float] = None
        #: ids of the calls asked to stop (the latest 1024)
        self.aborted: "collections.OrderedDict[bytes, None]" = collections.OrderedDict()
        #: the modules of record classes this engine has imported for this client (a restart forgets them)
        self.record_modules: Set[str] = set()
        #: what the engine prints, printed here (L{srpy.forwarding}); the pool's connections share it
        self.forwarder = forwarding.Forwarder(forwarding.DEFAULT)


class _RecordShippingFormat(codec.WireFormat):
    """
    srpy's serializer for one engine's connections. A record (dataclass, enum member, named
    tuple) travels by reference to its class, and an engine resolves that only from modules it
    has already imported: so the first call whose values hold a class of a module this engine
    has not been given sends that class first, as a function travels by reference
    (L{functions.pack<srpy.functions.pack>}, the engine's C{define}: local modules ship to its
    sandbox, and the engine imports the module), over another of the engine's connections.
    """

    def __init__(self) -> None:
        self.ship: Optional[Callable[[List[type]], None]] = None

    def dumps_call_with_buffers(self, obj: str, method: str, args: Any,  # type: ignore[override]
                                kwargs: Any) -> Tuple[bytes, List[Tuple[memoryview, str]]]:
        message = codec.dumps_with_buffers((obj, method, tuple(args), kwargs or {}))
        records = sys.modules.get("srpy.records")  # loaded by codec on the first record it meets
        if records is not None and self.ship is not None:
            met = records.take_met()
            if met:
                self.ship(met)
        return message


class _SharedAttribute:
    """An attribute of a L{PythonEngine} kept in its L{_Shared} state, the same for all its views."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, engine: Any, owner: Optional[type] = None) -> Any:
        if engine is None:
            return self
        return getattr(engine._shared, self.name)

    def __set__(self, engine: Any, value: Any) -> None:
        setattr(engine._shared, self.name, value)


class PythonEngine:
    """
    A client for one engine (see SRPy's API). Safe to share between threads: each call takes a
    connection from the client's L{pool<srpy.wire.Pool>}.

    @ivar uri: the engine's URI.
    @ivar info: the engine's L{whoami} description, read when connecting.
    @ivar ns: attribute-style view of the engine's namespace (L{Namespace}).
    @ivar timeout: seconds any call may take before L{srpy.errors.CallTimeout} (None: no limit).
    @ivar pool: the engine's connections (L{srpy.wire.Pool}), shared with every view.

    Besides SRPy's surface, a package-internal API, for srpy's own modules (box, scheduler,
    status, peers) and not meant for users: L{call}, L{connection},
    L{call_on}, L{call_annotations}, L{expect_restart} and the L{pool}.
    """

    #: time limit of calls that run code (see L{limited}); None: no limit
    call_timeout: Optional[float] = None
    #: the id every call carries (see L{tagged}); None: no id
    call_id: Optional[bytes] = None
    _view_closed = False

    info = _SharedAttribute()
    name = _SharedAttribute()
    group = _SharedAttribute()
    hostname = _SharedAttribute()
    ip = _SharedAttribute()
    port = _SharedAttribute()
    timeout = _SharedAttribute()

    def __init__(self, uri: Any, name: str = "", group: str = "", secret: Optional[str] = None,
                 connect_timeout: float = 5.0, ssl_context: Any = None, forward_output: Optional[bool] = None) -> None:
        """
        @param forward_output: print what code on the engine prints here, each line prefixed with
            the engine's name, as it happens (None: the default, on; see L{srpy.forwarding}).
        """
        uri = str(uri)
        try:
            _, ip, port = wire.parse_uri(uri)
        except ValueError as exc:
            raise errors.SRPyServerNotFound(uri, str(exc)) from None
        serializer = _RecordShippingFormat()
        self.pool = wire.Pool(uri, secret, serializer, ssl_context, connect_timeout, owner=type(self).__name__)
        forwarder = forwarding.Forwarder(forwarding.DEFAULT if forward_output is None else bool(forward_output))
        self.pool.output_sink = forwarder  # before the first connection: every one of them takes it
        self.pool.release(self.pool.connect())  # fail now, not at the first call, when nothing answers
        self._shared = _Shared()
        self._shared.forwarder = forwarder
        ship = weakref.WeakMethod(self._ship_record_classes)  # the pool must not keep its client alive
        serializer.ship = lambda classes: ship()(classes)  # type: ignore[misc]
        self.ip, self.port = ip, port
        self.ns = Namespace(self)
        self.whoami()
        self.name = name or self.info.get("Name", "")
        self.group = group or self.info.get("Group", "")
        self.hostname = self.info.get("Hostname", "")
        forwarder.name = self.name

    @property
    def uri(self) -> str:
        """The engine's URI."""
        return self.pool.uri

    @property
    def connect_timeout(self) -> float:
        """Seconds to connect and complete the handshake."""
        return self.pool.connect_timeout

    @property
    def forward_output(self) -> bool:
        """
        Whether what code on the engine prints is printed here too, as it happens, each line
        prefixed with the engine's name (settable; the engine's log has it either way).
        """
        return bool(self._shared.forwarder.on)

    @forward_output.setter
    def forward_output(self, on: bool) -> None:
        self._shared.forwarder.on = bool(on)

    # -- limits, call ids, abort -------------------------------------------------------------------

    def limited(self, seconds: Optional[float]) -> "PythonEngine":
        """
        A view of this engine whose calls that run code have a time limit of C{seconds} (None: no
        limit), also through its C{ns}, its L{associateFunction} results and the remote objects
        they return. A call that overruns it fails with L{srpy.errors.TaskTimeout}: the engine
        interrupts the code and keeps its namespace, or, if the code holds the interpreter (a long
        C call), ends and restarts its process at the same URI. The view shares this client's
        connections and state; closing it leaves this client open.

        >>> # eng.limited(5).exe("while True: pass")   -> TaskTimeout after 5 s
        """
        return _View(self, seconds, self.call_id)

    def tagged(self, call_id: Optional[bytes]) -> "PythonEngine":
        """
        A view of this engine whose calls carry C{call_id} (see L{new_call_id}), so that
        L{abort}C{(call_id)} stops the one running. Keeps this view's limit.
        """
        return _View(self, self.call_timeout, call_id)

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
        aborted = self._shared.aborted
        aborted[bytes(call_id)] = None
        while len(aborted) > 1024:
            aborted.popitem(last=False)
        if timeout is None:
            timeout = self.timeout
        with self.pool.connection() as conn:  # neither this view's limit nor its id: the abort must get through
            return bool(conn.call("abort", (bytes(call_id),), None, None, timeout)[0])

    # -- the package-internal API (for srpy's own modules) -----------------------------------------

    def call(self, method: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """
        For srpy's own modules: the engine's method C{method(*args)}, with this view's limit and
        call id.

        @param timeout: seconds to wait for the answer (default: the limit and a grace, or the
            client's C{timeout}; L{NO_TIMEOUT}: as long as it takes).
        """
        return self._invoke(method, args, timeout)[0]

    @contextlib.contextmanager
    def connection(self) -> Iterator[wire.Connection]:
        """For srpy's own modules: C{with engine.connection() as conn:} a pooled connection (for L{call_on})."""
        self._check_open()
        with self.pool.connection() as conn:
            yield conn

    def call_annotations(self, call_id: Optional[bytes] = None) -> Optional[Dict[str, bytes]]:
        """The annotations of a call through this view: its time limit and its id (None if neither)."""
        call_id = call_id if call_id is not None else self.call_id
        if self.call_timeout is None and call_id is None:
            return None
        annotations = {}
        if self.call_timeout is not None:
            annotations[CALL_TIMEOUT] = wire.pack_call_limit(self.call_timeout)
        if call_id is not None:
            if len(call_id) != 8:
                raise ValueError("a call id is 8 bytes, not %d" % len(call_id))
            annotations[CALL_ID] = bytes(call_id)
        return annotations

    def call_on(self, conn: Any, method: str, args: Tuple[Any, ...] = (), call_id: Optional[bytes] = None,
                timeout: Optional[float] = None) -> Tuple[Any, Any]:
        """
        For srpy's own modules: make the call C{method(*args)} on C{conn} (a connection of this
        engine's, see L{connection}), with this view's limit and C{call_id}; return C{(value,
        response annotations)}. A connection lost, or no answer, after the call's limit (this
        view's, or the engine's C{--max-task-time}) raises L{srpy.errors.TaskTimeout}; lost after
        L{abort}C{(call_id)}, L{srpy.errors.TaskAborted}.

        @param timeout: seconds to wait for the answer (default: the limit and a grace, or the
            client's C{timeout}; L{NO_TIMEOUT}: as long as it takes).
        """
        call_id = call_id if call_id is not None else self.call_id
        annotations = self.call_annotations(call_id)
        limit = self.call_timeout
        if timeout is None:
            timeout = limit + LIMIT_GRACE if limit is not None else self.timeout
        elif timeout is NO_TIMEOUT:  # wait(): as long as it takes, whatever the client's timeout
            timeout = None
        if limit is None and call_id is None and not self._shared.max_task_time:
            return self._call_records_known(conn, method, args, annotations, timeout)  # the common call
        started = time.monotonic()
        try:
            return self._call_records_known(conn, method, args, annotations, timeout)
        except (errors.TaskTimeout, errors.TaskAborted) as exc:
            if getattr(exc, "engine_ending", False):
                # the engine ends its process to stop the call, and a fresh one starts in
                # milliseconds, sooner than the pool's check of idle connections: reuse no
                # connection to it, and let new connections wait out the restart
                conn.close()
                self.expect_restart()
            raise
        except (errors.ConnectionLost, errors.CallTimeout) as exc:
            error = self._stopped_error(method, time.monotonic() - started, call_id, exc)
            if error is None:
                raise
            if isinstance(exc, errors.ConnectionLost):
                self.expect_restart()
                self.pool.await_restart(RESTART_WAIT)
            raise error from None

    def _ship_record_classes(self, classes: List[type]) -> None:
        """Make the engine import the modules of C{classes} it was not given yet (see L{_RecordShippingFormat})."""
        from . import functions, records

        shared = self._shared
        for module_name, kind in records.ship_order(classes):
            if module_name in shared.record_modules or module_name == "builtins":
                continue
            try:
                # a class of __main__ travels as its source, into the engine's module for this client
                bundle = functions.pack_main_class(kind) if kind.__module__ == "__main__" else functions.pack(kind)
            except functions.FunctionShippingError as exc:
                raise errors.SerializationError("cannot send a %s: its class cannot travel to the engine: %s"
                                                % (kind.__qualname__, exc)) from None
            if bundle["kind"] == "main_class":
                module_name += "@" + bundle["hash"]  # a class redefined under its name (a cell run again) ships anew
                if module_name in shared.record_modules:
                    continue
            shared.record_modules.add(module_name)  # before the call: a bundle holding a record of its own class
            try:
                with self.pool.connection() as conn:
                    failure = conn.call("define", (bundle["hash"], bundle), None, None, self._shared.timeout)[0]
            except BaseException:
                shared.record_modules.discard(module_name)
                raise
            if failure:
                shared.record_modules.discard(module_name)
                raise errors.SerializationError(
                    "cannot send a %s: the engine at %s cannot import its module %s: %s"
                    % (kind.__qualname__, self.uri, module_name, failure.get("error") or failure))

    def _call_records_known(self, conn: Any, method: str, args: Tuple[Any, ...], annotations: Any,
                            timeout: Optional[float]) -> Tuple[Any, Any]:
        """C{conn.call}, made once more if the engine had forgotten a record's module (see L{_forget_record_modules})."""
        try:
            return conn.call(method, args, None, annotations, timeout)
        except errors.RecordModuleNotImported:
            if not self._forget_record_modules():
                raise
            return conn.call(method, args, None, annotations, timeout)

    def _forget_record_modules(self) -> bool:
        """
        An engine did not know a record's module this client had given it (it restarted since):
        forget what it was given, so that the repeated call sends the classes again. False if it
        was given none (the call's failure is then the caller's). The call was not run: the
        engine refuses it while reading its arguments.
        """
        if not self._shared.record_modules:
            return False
        self._shared.record_modules.clear()
        return True

    def expect_restart(self) -> None:
        """
        For srpy's own modules: a call was stopped, and the engine may be ending its process for
        it: drop the idle connections (they may reach that process for a few more milliseconds),
        and let new ones wait out a restart, for up to L{RESTART_WAIT} s (L{srpy.wire.Pool.expect_restart}).
        """
        self._shared.record_modules.clear()  # a fresh engine has imported none of them
        self.pool.expect_restart(RESTART_WAIT)

    # -- the calls underneath -----------------------------------------------------------------------

    def _invoke(self, method: str, args: Tuple[Any, ...], timeout: Optional[float]) -> Tuple[Any, Any]:
        """A call over a pooled connection, with this view's limit and call id (through L{call_on})."""
        if self._view_closed:
            self._check_open()
        pool = self.pool
        conn = pool.acquire()  # acquire and release, not pool.connection(): a context manager costs 1 us a call
        try:
            if self.call_timeout is None and self.call_id is None and self._shared.max_task_time is None:
                # the common call, straight
                if timeout is None:
                    timeout = self._shared.timeout
                elif timeout is NO_TIMEOUT:
                    timeout = None
                return self._call_records_known(conn, method, args, None, timeout)
            return self.call_on(conn, method, args, timeout=timeout)
        finally:
            pool.release(conn)

    def _check_open(self) -> None:
        if self._view_closed:
            raise errors.SRPyError("this view of %s (limited or tagged) is closed" % self.uri)

    def _stopped_error(self, method: str, elapsed: float, call_id: Optional[bytes],
                       exc: BaseException) -> Optional[errors.SRPyError]:
        """What a call that lost its connection (or its answer) after C{elapsed} s really met, if a limit or an abort."""
        if method in _CONTROL_CALLS or method.startswith("peer_"):
            return None
        if call_id is not None and call_id in self._shared.aborted:
            return errors.TaskAborted("the call %s() was aborted: the engine at %s ended its process to stop it "
                                      "(the code held the interpreter); a fresh engine serves at the same URI"
                                      % (method, self.uri))
        limits = [(self.call_timeout, "its time limit"), (self._shared.max_task_time, "the engine's --max-task-time")]
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

    # -- SRPy's surface ------------------------------------------------------------------------------

    def set(self, **variables: Any) -> None:
        """Create or overwrite variables in the engine's namespace."""
        self.call("set", variables)

    def get(self, vars: Any = None) -> Any:
        """None: the namespace's names; a name: its value; a list of names: {name: value}."""
        return self.call("get", vars)

    def clear(self) -> None:
        """Empty the namespace."""
        self.call("clear")

    def eval(self, expr: str, **variables: Any) -> Any:
        """Set C{variables}, then evaluate C{expr} in the namespace and return its value."""
        return self.call("eval", expr, variables)

    def exe(self, code: str, **variables: Any) -> None:
        """Set C{variables}, then execute C{code} in the namespace."""
        self.call("exe", code, variables)

    def vexe(self, code: str, get: Any = (), **variables: Any) -> Dict[str, Any]:
        """Run C{code} in a throw-away namespace made of C{variables}; return {name: value} for C{get}."""
        return self.call("vexe", code, list(get), variables)

    def install(self, *modules: Any) -> List[str]:
        """
        Ship local modules or whole packages (names or module objects) to the engine's sandbox,
        so that L{imp} finds them there. Returns the relative paths written.
        """
        files: Dict[str, str] = {}
        for module in modules:
            files.update(shipping.module_files(module))
        return self.call("install", files)

    def install_source(self, module_name: str, source: str) -> List[str]:
        """Ship one module's source text to the engine's sandbox, so L{imp} finds it."""
        path = module_name.replace(".", "/") + ".py"
        return self.call("install", {path: source})

    def run(self, path: str, *argv: Any) -> Dict[str, Any]:
        """
        Run the script at C{path} (a file here; its text is sent) on the engine as C{__main__},
        with C{sys.argv == [path, *argv]}, in a namespace of its own (the engine's stays as it
        was), the modules of the script's folder that it imports shipped with it. Returns
        C{{'exit': code, 'stdout': text, 'stderr': text}}: the exit code as Python's (0; the
        C{sys.exit} code; 1 with the traceback in stderr when the script raises). What it
        prints is also forwarded as it happens (L{forward_output}). See L{srpy.scripts}.
        """
        from . import scripts

        script = scripts.pack(path)
        return self.call("run_script", script.path, script.source, scripts.arguments(argv), script.files)

    def imp(self, *modules: Any) -> None:
        """Import the named modules in the engine's namespace (as C{import name} binds them)."""
        self.call("imp", [m.__name__ if hasattr(m, "__name__") else m for m in modules])

    def associateFunction(self, name: str) -> Callable[..., Any]:
        """A local callable that calls the engine's function C{name} (dotted names allowed)."""
        description = self.call("inspect", name)
        if description["kind"] != "object" or not description["callable"]:
            raise TypeError("%r on %s is not a function" % (name, self))
        return _remote_callable(self, name, description)

    def ping(self) -> str:
        """'pong', if the engine answers."""
        return self.call("ping")

    def whoami(self) -> Dict[str, Any]:
        """The engine's description: SRPy's keys plus name, group, cores, load, memory and more."""
        self.info = self.call("whoami")
        self._shared.max_task_time = self.info.get("Max Task Time")
        return self.info

    def isBusy(self) -> bool:
        """True while the engine runs a call that holds its lock."""
        return self.call("is_busy")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the engine is idle (True), or C{timeout} seconds passed (False)."""
        if timeout is None or self.timeout is None:
            return self.call("wait", timeout, timeout=NO_TIMEOUT)
        return self.call("wait", timeout, timeout=self.timeout + timeout)

    def benchmark(self, cycles: Optional[int] = None, pings: int = 5) -> Tuple[float, float, bool]:
        """
        Measure the engine: C{(net_seconds, proc_seconds, is_busy)}, where net is the median of
        C{pings} round trips and proc the engine's time for its fixed workload of C{cycles}.
        """
        trips = []
        for _ in range(max(1, pings)):
            start = time.perf_counter()
            self.call("ping")
            trips.append(time.perf_counter() - start)
        result = self.call("benchmark", cycles)
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
        self.call("set_group", name)
        self.group = name

    def getGroup(self) -> str:
        """The engine's group label."""
        return self.group

    def close(self) -> None:
        """
        Close every pooled connection (the engine keeps running). Calls under way finish; any later
        call raises L{srpy.errors.ConnectionLost}. Closing again does nothing.
        """
        self.pool.close()

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
    L{PythonEngine.limited} and L{PythonEngine.tagged}: the same engine, pool and state (L{_Shared}),
    with a time limit, a call id and a C{ns} of its own. Closing a view only closes the view.
    """

    def __init__(self, original: PythonEngine, seconds: Optional[float], call_id: Optional[bytes]) -> None:
        # no PythonEngine.__init__: a view opens no connection and asks the engine nothing
        if seconds is not None and not seconds > 0:
            raise ValueError("a time limit is a number of seconds above 0, not %r" % (seconds,))
        if call_id is not None and len(call_id) != 8:
            raise ValueError("a call id is 8 bytes, not %d" % len(call_id))
        self.pool = original.pool
        self._shared = original._shared
        self.call_timeout = seconds
        self.call_id = call_id
        self.ns = Namespace(self)

    def close(self) -> None:
        """Close this view; the engine client it was made from stays open."""
        self._view_closed = True

    def __repr__(self) -> str:
        return "<PythonEngine %s on %s, limited to %s s>" % (
            self.info.get("PythonEngine ID", self.uri), self.hostname, self.call_timeout)


def _remote_callable(engine: PythonEngine, path: str, description: Dict[str, Any]) -> Callable[..., Any]:
    def remote(*args: Any, **kwargs: Any) -> Any:
        return engine.call("call", path, args, kwargs)

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
        self._engine.call("delete", [name])

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
        return self._engine.call("call", self._path, args, kwargs)

    def __repr__(self) -> str:
        return "<remote %s %s on %r>" % (self._type, self._path, self._engine)


def _lookup(engine: PythonEngine, path: str) -> Any:
    try:
        description = engine.call("inspect", path)
    except NameError as exc:
        raise AttributeError(str(exc)) from None
    if description["kind"] == "value":
        return description["value"]
    return RemoteObject(engine, path, description)

