"""
The engine: one persistent Python namespace, served over Pyro5.

One process holds one L{Engine}, registered under the object id L{OBJECT_ID}; beside it the same
daemon serves the engine's peer object (L{srpy.peerservice}, object id C{srpy.peer}), which other
engines call. Calls that run user code or touch the namespace take the engine's lock
(L{srpy.lock.EngineLock}), so they run one at a time and L{Engine.is_busy} is true exactly while
one runs. Control calls (C{ping}, C{whoami}, C{is_busy}, C{wait}, C{benchmark}) do not take it,
and Pyro5's thread server answers them while user code runs.

User code never takes the engine down: an exception, a syntax error, C{sys.exit()} or
C{KeyboardInterrupt} goes back to the caller (same builtin type, with the engine-side traceback:
L{srpy.calls}), and what user code prints goes to the engine's log, not to any client
(L{srpy.output}). A call over its time limit, or aborted (L{Engine.abort}), is stopped by its
watchdog (L{srpy.watch.CallWatch}): interrupted where it runs, or, if its code cannot be
interrupted, by ending the process (which its keeper, L{srpy.supervisor.Keeper}, replaces at once
at the same URI).
"""

import builtins
import importlib
import io
import itertools
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


from . import asmain, benchmark, codec, errors, functions
from ._version import __version__
from .calls import engine_call
from .lock import EngineLock
from . import tracebacks
from .watch import CallWatch

log = logging.getLogger("srpy.engine")

#: the Pyro5 object id engines are registered under
OBJECT_ID = "srpy.engine"

__all__ = ["OBJECT_ID", "Engine"]


class Engine:
    """
    The object an engine process serves. Its exposed methods are the wire interface that
    L{srpy.client.PythonEngine} and L{srpy.lite.Engine} call.

    @ivar ns: the persistent namespace.
    @ivar sandbox: the private directory (first on C{sys.path}) that receives shipped files.
    """

    def __init__(self, name: str = "", group: str = "", debug: bool = False, timing: bool = False,
                 secret: Optional[str] = None, max_task_time: Optional[float] = None) -> None:
        self.name = name or "engine-%d@%s" % (os.getpid(), socket.gethostname())
        self.group = group
        self.debug = debug
        self.timing = timing
        self.uri = ""
        self.calls = 0
        #: tasks run by run_batch (each item of a map's chunk counts, a failed one too): what dashboards count
        self.tasks = 0
        self.ns: Dict[str, Any] = {}
        self.secret = secret
        self._watch = CallWatch(self, max_task_time)
        self.lock = self._lock = EngineLock()
        self._functions_lock = threading.Lock()
        self._codes: Dict[Any, Any] = {}
        self._functions: Dict[str, Any] = {}
        self.sandbox = tempfile.mkdtemp(prefix="srpy-sandbox-")
        self._set_peers: Optional[Callable[[List[str]], List[str]]] = None  # see serve_peers
        #: the SSL context of this engine's own connections to its peers (TLS engines: the launcher's)
        self.peer_ssl_context: Any = None
        #: closes the listening socket, before the process ends to stop a call (the launcher's)
        self.stop_listening: Callable[[], None] = _nothing
        sys.path.insert(0, self.sandbox)
        self._reset_namespace()

    def close(self) -> None:
        """Remove the sandbox directory (called when the engine process stops)."""
        self._watch.close()
        if self.sandbox in sys.path:
            sys.path.remove(self.sandbox)
        shutil.rmtree(self.sandbox, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------

    def _reset_namespace(self) -> None:
        self.ns.clear()
        self.ns.update({"__name__": "__srpy__", "__builtins__": builtins})

    def _compile(self, source: str, mode: str) -> Any:
        key = (source, mode)
        code = self._codes.get(key)
        if code is None:
            if len(self._codes) > 1024:
                self._codes.clear()
            code = self._codes[key] = compile(source, functions.source_filename(source, mode), mode)
        return code

    def _variables(self, variables: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """A call's variables, type-checked."""
        if variables is None:
            return {}
        if not isinstance(variables, dict):
            raise TypeError("variables must be a dict of name: value, not %s" % type(variables).__name__)
        for key in variables:
            if not isinstance(key, str) or not key.isidentifier():
                raise TypeError("variable names must be identifiers, not %r" % (key,))
        return variables

    def _resolve(self, path: str) -> Any:
        head, *rest = path.split(".")
        if head not in self.ns:
            raise NameError("name %r is not defined on this engine" % head)
        value = self.ns[head]
        for part in rest:
            value = getattr(value, part)
        return value

    # -- the namespace (locked) ------------------------------------------------------------------

    @engine_call(locked=True)
    def set(self, variables: Dict[str, Any]) -> None:
        """Create or overwrite variables."""
        self.ns.update(self._variables(variables))

    @engine_call(locked=True)
    def get(self, names: Any = None) -> Any:
        """None: the names; a name: its value (KeyError if missing); a list of names: {name: value}."""
        if names is None:
            return sorted(k for k in self.ns if not (k.startswith("__") and k.endswith("__")))
        if isinstance(names, str):
            if names not in self.ns:
                raise KeyError(names)
            return self.ns[names]
        if isinstance(names, (list, tuple)):
            missing = [n for n in names if n not in self.ns]
            if missing:
                raise KeyError(missing[0] if len(missing) == 1 else missing)
            return {n: self.ns[n] for n in names}
        raise TypeError("get() takes None, a name or a list of names, not %s" % type(names).__name__)

    @engine_call(locked=True)
    def delete(self, names: List[str]) -> None:
        """Remove the named variables (missing ones are ignored)."""
        for name in names:
            self.ns.pop(name, None)

    @engine_call(locked=True)
    def clear(self) -> None:
        """Empty the namespace."""
        self._reset_namespace()

    @engine_call(locked=True)
    def eval(self, expr: str, variables: Optional[Dict[str, Any]] = None) -> Any:
        """Set C{variables}, then evaluate C{expr} in the namespace."""
        _check_source(expr)
        self.ns.update(self._variables(variables))
        return eval(self._compile(expr, "eval"), self.ns)

    @engine_call(locked=True)
    def exe(self, code: str, variables: Optional[Dict[str, Any]] = None) -> None:
        """Set C{variables}, then execute C{code} in the namespace."""
        _check_source(code)
        self.ns.update(self._variables(variables))
        exec(self._compile(code, "exec"), self.ns)

    @engine_call(locked=True)
    def vexe(self, code: str, get: Sequence[str] = (), variables: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Run C{code} in a fresh namespace made of C{variables}; return the names in C{get}."""
        _check_source(code)
        scratch = {"__name__": "__srpy_vexe__", "__builtins__": builtins}
        scratch.update(self._variables(variables))
        exec(self._compile(code, "exec"), scratch)
        return {name: scratch[name] for name in get}

    @engine_call(locked=True)
    def call(self, path: str, args: Sequence[Any] = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        """Call the namespace's callable C{path} (dotted names allowed)."""
        return self._resolve(path)(*args, **(kwargs or {}))

    @engine_call(locked=True)
    def inspect(self, path: str) -> Any:
        """
        Describe C{path}: C{{'kind': 'value', 'value': v}} when it can travel (serialized here, to
        know: L{codec.Encoded<srpy.codec.Encoded>}), else C{{'kind': 'object', 'type',
        'callable', 'doc', 'name'}} (for L{srpy.client.Namespace}).
        """
        value = self._resolve(path)
        try:
            return codec.Encoded({"kind": "value", "value": value})
        except (TypeError, ValueError):
            return {"kind": "object", "type": type(value).__name__, "callable": callable(value),
                    "doc": getattr(value, "__doc__", None) or "", "name": getattr(value, "__name__", path)}

    @engine_call(locked=True)
    def install(self, files: Dict[str, str]) -> List[str]:
        """
        Write shipped source files (relative path: text) into the sandbox. Modules they replace are
        dropped from C{sys.modules}, so the next C{imp} loads the new code.
        """
        return self._write_files(files)

    def _write_files(self, files: Dict[str, str]) -> List[str]:
        """L{install}'s work, also for a shipped function's module files (under the lock already)."""
        written = []
        for relpath, text in files.items():
            target = self._sandbox_path(relpath)
            if _holds(target, text):
                # the same module again (each function or record class of a module brings it): the
                # imported one stays, so its classes stay the ones values already refer to
                written.append(relpath)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(text)
            written.append(relpath)
            module = relpath[:-3].replace("/", ".") if relpath.endswith(".py") else None
            if module and module.endswith(".__init__"):
                module = module[: -len(".__init__")]
            if module:
                self._forget_sandbox_modules(module)
        importlib.invalidate_caches()
        return written

    def _forget_sandbox_modules(self, module: str) -> None:
        """Drop C{module} (and its submodules) from C{sys.modules} if they were loaded from the sandbox,
        so the next import loads the new files; modules loaded from elsewhere are never evicted."""
        for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
            path = getattr(sys.modules[name], "__file__", None) or ""
            if os.path.realpath(path).startswith(os.path.realpath(self.sandbox) + os.sep):
                del sys.modules[name]
            elif name == module:
                log.warning("shipped module %s is already imported from %s; the engine keeps that one", name, path)

    def _sandbox_path(self, relpath: str) -> str:
        if not isinstance(relpath, str) or not relpath or os.path.isabs(relpath) or "\\" in relpath:
            raise ValueError("shipped file paths must be relative paths, not %r" % (relpath,))
        target = os.path.normpath(os.path.join(self.sandbox, relpath))
        if not target.startswith(self.sandbox + os.sep):
            raise ValueError("shipped file path %r leaves the sandbox" % (relpath,))
        return target

    @engine_call(locked=True)
    def imp(self, modules: Sequence[str]) -> None:
        """Import each module and bind it as C{import name} would."""
        for name in modules:
            importlib.import_module(name)
            top = name.partition(".")[0]
            self.ns[top] = sys.modules[top]

    # -- tasks (the executor's wire interface) ------------------------------------------------------

    @engine_call(locked=True)
    def define(self, fn_hash: str, bundle: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """
        Build a shipped function (see L{srpy.functions}) and keep it under C{fn_hash}. Returns None
        once it is defined; if building it failed, what failed and of which kind, so that the
        client never guesses from message text: C{{'kind': kind, 'error': exception, 'module':
        name or None}}, where kind is C{'missing'} (a module it imports is not installed here:
        C{module} names it), C{'transient'} (C{MemoryError} or C{OSError}: trying again may
        work) or C{'broken'} (anything else: the same bundle fails the same way everywhere).
        """
        if fn_hash in self._functions:
            return None
        try:
            self._functions[fn_hash] = functions.build(bundle, self._write_files)
            return None
        except errors.CallInterrupted:  # a limit or an abort stops the call itself
            raise
        except BaseException as exc:  # whatever building raised is the definition's outcome, not the call's
            tracebacks.attach(exc)
            if isinstance(exc, ModuleNotFoundError):
                return {"kind": "missing", "error": exc, "module": exc.name}
            kind = "transient" if isinstance(exc, (MemoryError, OSError)) else "broken"
            return {"kind": kind, "error": exc, "module": None}

    @engine_call(locked=True)
    def run_batch(self, tasks: List[Any]) -> Any:
        """
        Run C{tasks}, each C{[hash, 'call', [args, kwargs]]}, C{[hash, 'map', [args, args, ...]]} or
        C{[hash, 'map1', [arg, arg, ...]]} (a map over one iterable: items sent as they are),
        with functions sent earlier by L{define}. Returns, already serialized, C{(outcomes,
        seconds)}: one outcome per task, C{('ok', value)}, C{('err', exception)}, or for a map
        that failed part-way C{('part', values, exception)}; and the seconds the tasks ran here
        (what the client learns each function's speed from: the round trip is not the
        function's), serialized here (L{codec.Encoded<srpy.codec.Encoded>}: their large
        buffers travel from the results' memory). Whatever a task raises (C{SystemExit},
        C{KeyboardInterrupt}, any C{BaseException}) is its own outcome, except srpy's
        L{CallInterrupted<srpy.errors.CallInterrupted>}, which stops the whole call. A value that
        cannot travel fails only its own task (a map's chunk: from that value on).
        """
        start = time.perf_counter()
        outcomes = [self._run_task(task) for task in tasks]
        seconds = time.perf_counter() - start
        self.tasks += sum(len(task[2]) if task[1] != "call" and isinstance(task[2], (list, tuple)) else 1
                          for task in tasks)
        try:
            return codec.Encoded((outcomes, seconds))
        except (TypeError, ValueError):
            return codec.Encoded(([_travelling(outcome, task[1]) for outcome, task in zip(outcomes, tasks)], seconds))

    def _run_task(self, task: Sequence[Any]) -> tuple:
        fn_hash, kind, payload = task
        fn = self._functions.get(fn_hash)
        if fn is None:
            raise errors.UnknownFunction("this engine has no function %s: send its definition" % fn_hash)
        if kind == "call":
            try:
                return ("ok", fn(*payload[0], **(payload[1] or {})))
            except Exception as exc:
                tracebacks.attach(exc)
                return ("err", exc)
            except errors.CallInterrupted:  # the engine stops this call: never a task's outcome
                raise
            except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the task's own outcome
                tracebacks.attach(exc)
                return ("err", exc)
        results: List[Any] = []
        try:  # extend() keeps what was computed before a failure; map/starmap loop at C speed
            results.extend(map(fn, payload) if kind == "map1" else itertools.starmap(fn, payload))
        except Exception as exc:
            tracebacks.attach(exc)
            return ("part", results, exc)
        except errors.CallInterrupted:
            raise
        except BaseException as exc:
            tracebacks.attach(exc)
            return ("part", results, exc)
        return ("ok", results)

    @engine_call(locked=True)
    def run_script(self, path: str, source: str, argv: List[str], files: Dict[str, str]) -> Dict[str, Any]:
        """
        Run a script as C{__main__} (L{srpy.asmain}): C{sys.argv == [path, *argv]}, a namespace
        of its own, C{files} (its local modules) written into the sandbox first. Returns
        C{{'exit': int, 'stdout': str, 'stderr': str}}.
        """
        def install(shipped: Dict[str, str]) -> None:
            self._write_files(shipped)
            # imported afresh by each run, as by a new Python (not only the files that changed:
            # a module that imported a changed one holds its old values)
            for top in sorted({relpath.split("/")[0] for relpath in shipped}):
                self._forget_sandbox_modules(top[:-3] if top.endswith(".py") else top)

        return asmain.run(path, source, argv, files, install)

    @engine_call(locked=True)
    def check_modules(self, names: Sequence[str]) -> List[str]:
        """The names among C{names} that this engine cannot import."""
        missing = []
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)
        return missing

    @engine_call(locked=True)
    def unpack(self, variables: Dict[str, Any]) -> List[str]:
        """
        Unpack the tar archive C{variables['archive']} (sent by C{EngBox.upload}, large ones as raw
        bytes after the call) into the sandbox; return the files it held.
        """
        archive = self._variables(variables).get("archive")
        if not isinstance(archive, bytes):
            raise TypeError("unpack() needs the archive as bytes, not %s" % type(archive).__name__)
        import tarfile  # loaded on first use, as psutil below: an engine needs neither to start serving
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            members = tar.getmembers()
            for member in members:
                self._sandbox_path(member.name)
                if not (member.isfile() or member.isdir()):
                    raise ValueError("upload archives hold only files and folders, not %r" % member.name)
            safe: Dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(self.sandbox, members=members, **safe)
        importlib.invalidate_caches()
        return [m.name for m in members if m.isfile()]


    @engine_call(locked=True)
    def environment(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """
        Report, build or activate the environment of a requirement set on this engine's host (for
        C{EngBox.require(..., install=True)}): see L{srpy.environments.provide}.
        """
        from . import environments  # on first use: an engine that installs nothing never loads it
        return environments.provide(request, "%s (%s)" % (self.name, self.uri), self.sandbox)

    def function(self, bundle: Dict[str, Any]) -> Any:
        """The shipped function of C{bundle}, built once per engine and kept under its hash."""
        fn = self._functions.get(bundle["hash"])
        if fn is None:
            with self._functions_lock:
                fn = self._functions.get(bundle["hash"])
                if fn is None:
                    fn = self._functions[bundle["hash"]] = functions.build(bundle, self._write_files)
        return fn

    # -- peers: engine to engine (the peer object, srpy.peerservice, serves the rest) --------------

    def serve_peers(self, set_peers: Callable[[List[str]], List[str]]) -> None:
        """
        Let L{set_peers} reach this process's peer side (L{srpy.peerservice.register} calls this):
        the engine itself holds no peer state.
        """
        self._set_peers = set_peers

    @engine_call(locked=False)
    def set_peers(self, uris: List[str]) -> List[str]:
        """Make the engines at C{uris} this engine's peers (same group and secret only); returns those kept."""
        if self._set_peers is None:
            raise errors.SRPyError("engine %s serves no peer object: it cannot have peers" % self.name)
        if not isinstance(uris, (list, tuple)) or not all(isinstance(uri, str) for uri in uris):
            raise TypeError("set_peers() takes a list of engine URIs")
        return self._set_peers(list(uris))

    # -- control calls (not locked) ---------------------------------------------------------------

    @engine_call(locked=False)
    def ping(self) -> str:
        """'pong'."""
        return "pong"

    @engine_call(locked=False)
    def abort(self, call_id: Any) -> bool:
        """
        Stop the running call whose annotation C{SCID} is C{call_id} (8 bytes, or their 16 hex
        digits), as a time limit would: its caller gets L{errors.TaskAborted}. True if that call
        runs; False if not (an id that never ran or already ended; if its call begins later, it is
        refused with TaskAborted).
        """
        if isinstance(call_id, str):
            try:
                call_id = bytes.fromhex(call_id)
            except ValueError:
                raise ValueError("a call id is 8 bytes or 16 hex digits, not %r" % (call_id,)) from None
        if not isinstance(call_id, (bytes, bytearray)) or len(call_id) != 8:
            raise ValueError("a call id is 8 bytes or 16 hex digits, not %r" % (call_id,))
        return self._watch.abort(bytes(call_id))

    @engine_call(locked=False)
    def is_busy(self) -> bool:
        """True while a locked call runs."""
        return self._lock.locked()

    @engine_call(locked=False)
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until no locked call runs (True) or C{timeout} seconds pass (False). No polling."""
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, float(timeout))):
            self._lock.release()
            return True
        return False

    @engine_call(locked=False)
    def benchmark(self, limit: Optional[int] = None) -> Dict[str, Any]:
        """Time the fixed processor workload (not locked: a busy engine shows up as slower)."""
        busy = self._lock.locked()
        seconds, _ = benchmark.timed_workload(int(limit or benchmark.DEFAULT_LIMIT))
        return {"proc": seconds, "busy": busy}

    @engine_call(locked=False)
    def whoami(self) -> Dict[str, Any]:
        """SRPy's description keys, plus srpy's (name, group, cores, load, memory, ...)."""
        return self.describe()

    def describe(self) -> Dict[str, Any]:
        """What L{whoami} answers (also for the name server's entry and the peer object)."""
        total, available = machine_memory()
        return {
            "OS System": platform.system(),
            "Hostname": socket.gethostname(),
            "OS Release": platform.release(),
            "OS Version": platform.version(),
            "Machine Architecture": platform.machine(),
            "Processor Architecture": processor_name(),
            "Python Version": platform.python_version(),
            "Python Compiler": platform.python_compiler(),
            "PythonEngine ID": self.name,
            "Name": self.name,
            "Group": self.group,
            "URI": self.uri,
            "PID": os.getpid(),
            "Cores": os.cpu_count() or 1,
            "Load": machine_load(),
            "Memory Total": total,
            "Memory Available": available,
            "Busy": self._lock.locked(),
            "Current Call": self._watch.current or "",
            "Max Task Time": self._watch.max_task_time,
            "Calls": self.calls,
            "srpy Version": __version__,
            "Python Executable": sys.executable,
        }

    @engine_call(locked=False)
    def status(self) -> Dict[str, Any]:
        """
        What the engine is doing: busy or idle, the current call and how long it has run, a dump
        of the stack of the thread running it (as faulthandler would show it), the user function
        that call runs (C{task}) and its part of the stack (C{task_stack}), the tasks done
        (C{tasks}: each item of a map counts), and the machine's cores, load and memory.
        """
        watch = self._watch
        owner = self.lock.owner
        frame = sys._current_frames().get(owner) if owner is not None else None
        task, task_stack = tracebacks.running_task(frame)
        total, available = machine_memory()  # no psutil on Linux: a host bootstrapped over SSH may lack it
        return {
            "uri": self.uri, "name": self.name, "group": self.group, "pid": os.getpid(),
            "host": socket.gethostname(), "busy": self.lock.locked(), "current": watch.current or "",
            "running_for": watch.running_for(), "limit": watch.limit_now(), "calls": self.calls,
            "tasks": self.tasks, "task": task, "task_stack": task_stack,
            "stack": "".join(traceback.format_stack(frame)) if frame is not None else "",
            "cores": os.cpu_count() or 1, "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
            "memory_available": available, "memory_total": total, "rss": process_rss(),
        }

    @engine_call(locked=False)
    def set_group(self, group: str) -> None:
        """Change the engine's group label."""
        if not isinstance(group, str):
            raise TypeError("a group is a str, not %s" % type(group).__name__)
        self.group = group


def _travelling(outcome: tuple, kind: str = "call") -> tuple:
    """
    C{outcome}, or one that says why its value cannot travel: an error outcome for a call; for a
    map's chunk, the values before the first one that cannot travel, then a L{SerializationError}
    naming its type and position.
    """
    try:
        codec.dumps(outcome)
        return outcome
    except (TypeError, ValueError) as exc:
        if kind == "call" or outcome[0] == "err":
            return ("err", _serialization_error(exc))
    values = outcome[1]
    for index, value in enumerate(values):
        try:
            codec.dumps(value)
        except (TypeError, ValueError) as exc:
            error = errors.SerializationError("a result of the map cannot travel back: %s" % exc)
            return ("part", values[:index], error)
    return ("part", values, _serialization_error(ValueError("the chunk's error cannot travel")))


def _serialization_error(exc: BaseException) -> errors.SerializationError:
    return exc if isinstance(exc, errors.SerializationError) else errors.SerializationError(str(exc))


def _nothing() -> None:
    pass


def _check_source(source: Any) -> None:
    if not isinstance(source, str):
        raise TypeError("code must be given as a str, not %s" % type(source).__name__)


# -- the machine, for whoami: no psutil and no subprocess where the system tells it directly ----------

def machine_memory() -> Tuple[int, int]:
    """
    The machine's memory in bytes: (total, available). On Linux from C{/proc/meminfo} (what psutil
    reads there too), so that a client's first C{whoami} does not load psutil in the engine;
    elsewhere through psutil.
    """
    try:
        with open("/proc/meminfo", "rb") as handle:
            fields = dict(line.split(b":", 1) for line in handle.read().splitlines() if b":" in line)
        # the values are in kB (kibibytes)
        return (int(fields[b"MemTotal"].split()[0]) * 1024, int(fields[b"MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError, IndexError):
        import psutil  # where /proc is absent (or old): psutil knows the system's own way

        memory = psutil.virtual_memory()
        return int(memory.total), int(memory.available)


def process_rss() -> int:
    """This process's resident memory in bytes: from C{/proc/self/statm} on Linux, elsewhere through psutil."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return int(psutil.Process().memory_info().rss)


def machine_load() -> List[float]:
    """The load averages (1, 5, 15 minutes), or psutil's CPU percentage where the system has none."""
    if hasattr(os, "getloadavg"):
        try:
            return list(os.getloadavg())
        except OSError:
            pass
    import psutil

    return [psutil.cpu_percent()]


def processor_name() -> str:
    """
    The processor's name for C{whoami}. On Linux C{platform.processor()} runs C{uname -p} (a
    process, some 5 ms) which answers the machine's architecture or "unknown": the machine's
    architecture it is; elsewhere C{platform.processor()}, or the architecture when it has none.
    """
    if sys.platform.startswith("linux"):
        return platform.machine()
    return platform.processor() or platform.machine()


def _holds(path: str, text: str) -> bool:
    """True when the file at C{path} exists and holds exactly C{text}."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read() == text
    except (OSError, UnicodeDecodeError):
        return False
