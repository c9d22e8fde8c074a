"""
The engine: one persistent Python namespace, served over Pyro5.

One process holds one L{Engine}. Calls that run user code or touch the namespace take the engine's
lock, so they run one at a time and L{Engine.is_busy} is true exactly while one runs. Control calls
(C{ping}, C{whoami}, C{is_busy}, C{wait}, C{benchmark}) do not take it, and Pyro5's thread server
answers them while user code runs.

User code never takes the engine down: an exception, a syntax error, C{sys.exit()} or
C{KeyboardInterrupt} goes back to the caller (same builtin type, with the engine-side traceback),
and what user code prints goes to the engine's log, not to any client. A call over its time limit,
or aborted (L{Engine.abort}), is stopped by L{CallWatch}: interrupted where it runs, or, if its
code cannot be interrupted, by ending the process (which its keeper, L{srpy.supervisor.Keeper},
replaces at once at the same URI).
"""

import builtins
import collections
import contextlib
import ctypes
import faulthandler
import functools
import importlib
import io
import itertools
import logging
import os
import platform
import struct
import shutil
import socket
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from Pyro5.server import expose
from Pyro5.callcontext import current_context

from . import benchmark, codec, errors, functions, lite, peers, __version__

log = logging.getLogger("srpy.engine")
call_log = logging.getLogger("srpy.engine.calls")
output_log = logging.getLogger("srpy.engine.output")

#: the Pyro5 object id engines are registered under
OBJECT_ID = "srpy.engine"
#: bytes values at least this large travel as raw Pyro5 annotations, outside the serializer
BLOB_MIN = 64 * 1024
#: annotation that carries a call's result as raw bytes
RESULT_BLOB = lite.RESULT_BLOB
#: annotation listing the sizes of the raw byte strings that follow a call message
TRAILING = lite.TRAILING
#: srpy's own source files: their frames are cut from the tracebacks sent back to callers
_SRPY_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _read_trailing() -> List[bytes]:
    """Read the raw byte strings that trail this call's message (straight into bytes, no copy)."""
    sizes = current_context.annotations.get(TRAILING)
    if not sizes:
        return []
    count = len(sizes) // 8
    return [current_context.client.recv(n) for n in struct.unpack("!%dQ" % count, bytes(sizes))]


class _StandIn(Exception):
    """Carries a BaseException that is not an Exception (SystemExit, KeyboardInterrupt) over Pyro5."""


@functools.lru_cache(maxsize=None)
def _stand_in_type(name: str) -> type:
    kind = type(name, (_StandIn,), {"__module__": "builtins"})
    kind.__qualname__ = name
    return kind


def _user_traceback(exc: BaseException) -> str:
    """
    The traceback of C{exc} from the first frame of user code on (srpy's own frames cut). User
    code is source sent as text (C{<srpy ...>} files) and any module outside srpy: a function
    shipped by reference runs from its module file in the sandbox or from an installed package.
    """
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_SRPY_DIR) \
            and not tb.tb_frame.f_code.co_filename.startswith(functions.SOURCE_PREFIX):
        tb = tb.tb_next
    if tb is None:
        return "".join(traceback.format_exception_only(type(exc), exc))
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _engine_call(locked: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Wrap an exposed method: the lock (if C{locked}), call logging, blobs, user exceptions, and the
    call's time limit and abort (L{CallWatch}): a locked call stopped by either ends with
    L{errors.TaskTimeout} or L{errors.TaskAborted}, sent back as its ordinary reply.
    """

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self: "Engine", *args: Any, **kwargs: Any) -> Any:
            current_context.response_annotations = {}
            annotations = current_context.annotations
            # first: nothing may fail with the trailing bytes unread
            self._trailing.blobs = _read_trailing() if annotations and TRAILING in annotations else ()
            self._trailing.names = annotations.get(lite.BLOB_NAMES) if annotations else None
            if self.debug:
                call_log.info("call %s%s", name, _short(args))
            start = time.perf_counter() if self.timing else 0.0
            call = None
            try:
                if locked:
                    watch = self._watch
                    # a record only for a call with a limit or an id: the common call stays cheap
                    call = watch.record(name, annotations) if annotations or watch.max_task_time else None
                    lock = self._lock
                    lock.acquire()
                    try:
                        try:
                            try:
                                watch.begin(name, call)
                                result = method(self, *args, **kwargs)
                            finally:
                                watch.end(call)
                        except errors.CallInterrupted as exc:
                            # the watchdog stopped this call (CallWatch only ever interrupts a call
                            # it has a record of); it may have landed inside end() itself: end again
                            watch.end(call)
                            raise watch.stopped(call, exc) from None
                        finally:
                            self.calls += 1
                            _flush_output()
                    finally:
                        lock.release()
                else:
                    result = method(self, *args, **kwargs)
                if call is not None and call.reason:  # user code swallowed the interrupt: still stopped
                    raise self._watch.stopped(call, None)
            except (errors.TaskTimeout, errors.TaskAborted) as exc:
                if call is None or not call.reason:  # user code raised one itself
                    exc.srpy_traceback = _user_traceback(exc)
                raise
            except Exception as exc:
                if call is not None and call.reason:  # the interrupt, turned into something else by user code
                    raise self._watch.stopped(call, exc) from None
                exc.srpy_traceback = _user_traceback(exc)
                raise
            except BaseException as exc:  # SystemExit, KeyboardInterrupt from user code: keep serving
                if call is not None and call.reason:
                    raise self._watch.stopped(call, exc) from None
                stand_in = _stand_in_type(type(exc).__name__)(*exc.args)
                stand_in.srpy_traceback = _user_traceback(exc)
                raise stand_in from None
            finally:
                if self.timing:
                    call_log.info("%s took %.6f s", name, time.perf_counter() - start)
            return _result_as_blob(result)

        return expose(wrapper)

    return decorate


def _result_as_blob(result: Any) -> Any:
    """
    Large bytes results go ahead of the reply, as a Pyro5 result message holding only the
    annotation C{SBLB}, written with no copy; the reply itself then carries None. Only callers
    using srpy's serializer get this (json callers cannot carry bytes anyway).
    """
    if type(result) is bytes and len(result) >= BLOB_MIN and current_context.serializer_id == codec.SERIALIZER_ID:
        header = lite.HEADER.pack(b"PYRO", lite.PROTOCOL_VERSION, lite.MSG_RESULT, codec.SERIALIZER_ID, 0,
                                  current_context.seq, 0, 8 + len(result), b"\0" * 16, 0, lite.MAGIC)
        conn = current_context.client
        conn.send(header + struct.pack("!4sI", RESULT_BLOB.encode("ascii"), len(result)))
        conn.send(result)
        return None
    if current_context.serializer_id == lite.JSON_SERIALIZER_ID:
        _check_json(result)
    return result


#: types json carries as they are, and types Pyro5's json serializer sends as text or a list
_JSON_SCALARS = (type(None), bool, int, float, str)
_JSON_AS_TEXT = {"datetime.datetime", "datetime.date", "decimal.Decimal", "uuid.UUID", "array.array"}


def _check_json(result: Any) -> None:
    """
    Refuse, with a TypeError naming the type, a result json cannot carry: Pyro5's json serializer
    would otherwise send an object (a module, say) as a dict of its attributes.
    """
    found = _non_json(result)
    if found is not None:
        where, value = found
        exc = TypeError("cannot return a value of type %r (at result%s) to a json client: json carries "
                        "None, bool, numbers, str, lists and dicts. Return something made of those "
                        "(str(value), or the attributes you need), or use srpy.PythonEngine"
                        % (type(value).__name__, where))
        exc.srpy_traceback = "TypeError: %s\n" % exc
        raise exc


def _non_json(value: Any, depth: int = 0) -> Optional[tuple]:
    """C{(where, part)} for the first part of C{value} that json cannot carry; None if all can."""
    if isinstance(value, _JSON_SCALARS) or depth > 64:  # deeper: left to the serializer
        return None
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, _JSON_SCALARS):
                return "[%r] (a key)" % (key,), key
        items: Any = value.items()
    elif isinstance(value, (list, tuple, set)):
        items = enumerate(value)
    else:
        kind = type(value)
        return None if "%s.%s" % (kind.__module__, kind.__qualname__) in _JSON_AS_TEXT else ("", value)
    for key, item in items:
        if not isinstance(item, _JSON_SCALARS):
            found = _non_json(item, depth + 1)
            if found is not None:
                return "[%r]%s" % (key, found[0]), found[1]
    return None


def _short(args: Sequence[Any]) -> Any:
    text = repr(tuple(args))
    return text if len(text) < 200 else text[:197] + "..."


class _OutputToLog:
    """A stand-in for sys.stdout/sys.stderr that sends whole lines to the engine's log."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._partial = threading.local()

    def write(self, text: str) -> int:
        buffered = getattr(self._partial, "text", "") + str(text)
        *lines, rest = buffered.split("\n")
        for line in lines:
            output_log.log(self.level, "%s", line)
        self._partial.text = rest
        return len(text)

    def flush(self) -> None:
        rest = getattr(self._partial, "text", "")
        if rest:
            self._partial.text = ""
            output_log.log(self.level, "%s", rest)

    def isatty(self) -> bool:
        return False


def _flush_output() -> None:
    """Log what this thread printed without a final newline: a call's output ends with the call."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _OutputToLog) and getattr(stream._partial, "text", ""):
            stream.flush()


def capture_output() -> None:
    """
    Send everything user code prints to the engine's log (call once, in the engine process), and
    give user code an empty stdin: C{input()} raises EOFError instead of blocking the engine on
    the launcher's pipe or console (the launcher itself reads C{sys.__stdin__}).
    """
    if not isinstance(sys.stdout, _OutputToLog):
        sys.stdout = _OutputToLog(logging.INFO)  # type: ignore[assignment]
        sys.stderr = _OutputToLog(logging.WARNING)  # type: ignore[assignment]
        sys.stdin = io.StringIO()


#: exit code of an engine that ended itself to stop a call it could not interrupt
EXIT_RUNAWAY = 75
#: seconds an interrupted call has to end before the engine ends its process to stop it
INTERRUPT_GRACE = 1.0
#: seconds past a call's limit (or its abort) after which faulthandler's own C thread ends an
#: engine whose code holds the interpreter (so that not even the watchdog thread can run)
BACKSTOP_GRACE = 2.0
#: the file, in an engine's sandbox, that faulthandler's backstop writes the stacks to
BACKSTOP_FILE = ".srpy-backstop.txt"
#: annotation carrying a call's time limit (seconds, as a big-endian double)
CALL_TIMEOUT = lite.CALL_TIMEOUT
#: annotation naming a call so that L{Engine.abort} can stop it
CALL_ID = lite.CALL_ID
#: how many ids of calls aborted before they began an engine remembers
_EARLY_ABORTS = 256

# PyThreadState_SetAsyncExc(thread id, exception): raise an exception in another thread at its next
# bytecode; with NULL (here None through a void pointer), take back one not yet raised
_raise_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_unraise_in = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))


class _Call:
    """One locked call that has a time limit or an id: what the watchdog needs to stop it."""

    __slots__ = ("name", "limit", "source", "call_id", "thread", "started", "reply", "reason", "stopped_at",
                 "active")

    def __init__(self, name: str, limit: Optional[float], source: str, call_id: Optional[bytes]) -> None:
        self.name, self.limit, self.source, self.call_id = name, limit, source, call_id
        self.thread = 0
        self.started = 0.0
        self.reply: Optional[tuple] = None
        self.reason: Optional[str] = None  # why it is being stopped: "limit" or "abort"
        self.stopped_at = 0.0
        self.active = False

    def due(self) -> Optional[float]:
        """When the watchdog must act next: interrupt at the limit, end the process a grace later."""
        if self.reason:
            return self.stopped_at + INTERRUPT_GRACE
        return self.started + self.limit if self.limit is not None else None

    def backstop(self) -> Optional[float]:
        if self.reason:
            return self.stopped_at + BACKSTOP_GRACE
        return self.started + self.limit + BACKSTOP_GRACE if self.limit is not None else None


class CallWatch:
    """
    Which locked call runs, since when, and how it is stopped when it overruns its time limit (the
    client's, or the engine's C{max_task_time}, whichever is shorter) or is aborted (L{Engine.abort}):

     1. the watchdog raises L{errors.CallInterrupted} in the call's thread: Python code stops at
        once, the call's wrapper turns it into L{errors.TaskTimeout} (or L{errors.TaskAborted}),
        the caller gets it as its reply, and the engine serves on with its namespace intact;
     2. a call still running L{INTERRUPT_GRACE} later (blocked in C, as in C{time.sleep}, or
        code that swallows the interrupt) gets that reply from the watchdog on its connection,
        and the engine process ends (exit L{EXIT_RUNAWAY}); its supervisor starts a fresh one at
        the same URI;
     3. code that holds the interpreter (a long C call: C{10**10**7}, a catastrophic regex) lets
        no Python thread run, not even the watchdog: faulthandler's C thread ends the process
        L{BACKSTOP_GRACE} after the limit, writing the stacks to L{BACKSTOP_FILE} in the sandbox
        (never to the terminal); the supervisor logs one line of it and restarts the engine. The
        caller sees its connection lost after the limit, which the client reports as TaskTimeout.

    An interrupt is only ever raised while its call runs (set and cleared under one lock), and
    cleared, if not yet delivered, when the call ends.
    """

    def __init__(self, engine: "Engine", max_task_time: Optional[float]) -> None:
        self.engine = engine
        self.max_task_time = max_task_time or None
        self.current: Optional[str] = None
        self._started = 0.0
        self._calls: List[_Call] = []  # the running calls that have a record (nested: see released_if_mine)
        self._early: "collections.OrderedDict[bytes, None]" = collections.OrderedDict()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._backstop: Any = None
        self._backstop_at: Optional[float] = None

    def record(self, name: str, annotations: Any) -> Optional[_Call]:
        """A record for the call about to run, if it has a limit or an id; None if it has neither."""
        sent = annotations.get(CALL_TIMEOUT) if annotations else None
        limit = struct.unpack("!d", bytes(sent))[0] if sent and len(sent) == 8 else None
        source = "its time limit"
        if limit is not None and not limit > 0:  # NaN, zero or negative: no limit of the caller's
            limit = None
        if self.max_task_time and (limit is None or limit >= self.max_task_time):
            limit, source = self.max_task_time, "the engine's --max-task-time"
        call_id = annotations.get(CALL_ID) if annotations else None
        if limit is None and call_id is None:
            return None
        return _Call(name, limit, source, bytes(call_id) if call_id is not None else None)

    def begin(self, name: str, call: Optional[_Call]) -> None:
        self.current, self._started = name, time.monotonic()
        if call is None:  # the common case: nothing for the watchdog to do, no lock to take
            return
        with self._cond:
            call.thread = threading.get_ident()
            call.started = self._started
            call.reply = (current_context.client, current_context.seq, current_context.serializer_id)
            call.active = True
            self._calls.append(call)
            if call.call_id is not None and call.call_id in self._early:  # aborted before it began
                del self._early[call.call_id]
                call.reason, call.stopped_at = "abort", call.started
                raise errors.CallInterrupted()
            if call.limit is not None:
                self._wake()

    def end(self, call: Optional[_Call]) -> None:
        """The call ended (safe to call twice): no interrupt for it may arrive after this returns."""
        if call is None:
            self.current = None
            return
        with self._cond:
            if not call.active:
                return
            call.active = False
            if call.reason:  # an interrupt not yet delivered must not hit whatever this thread runs next
                _unraise_in(call.thread, None)
            self._calls.remove(call)
            self.current = self._calls[-1].name if self._calls else None
            if self._backstop_at is not None:
                self._arm_backstop()

    def abort(self, call_id: bytes) -> bool:
        """Stop the running call named C{call_id}; True if one runs. An id that comes later is refused."""
        with self._cond:
            for call in self._calls:
                if call.call_id == call_id:
                    if not call.reason:
                        self._stop(call, "abort", time.monotonic())
                        self._wake()
                    return True
            self._early[call_id] = None  # its call may still be on its way, or waiting for the lock
            while len(self._early) > _EARLY_ABORTS:
                self._early.popitem(last=False)
            return False

    def stopped(self, call: _Call, exc: Optional[BaseException]) -> errors.SRPyError:
        """The error a stopped call ends with, its traceback showing where the code was stopped."""
        early = call.reason == "abort" and call.stopped_at == call.started
        failure = self._error(call, "refused it (it was aborted before it began)" if early
                              else "stopped it by interrupting its code (the namespace is kept)")
        if exc is not None:
            failure.srpy_traceback = _user_traceback(exc).replace(
                "srpy.errors.CallInterrupted", type(failure).__name__ + " (stopped here)")
        else:
            failure.srpy_traceback = "%s: %s\n" % (type(failure).__name__, failure)
        return failure

    def running_for(self) -> float:
        return time.monotonic() - self._started if self.current else 0.0

    def limit_now(self) -> Optional[float]:
        calls = self._calls
        return calls[-1].limit if calls else None

    # -- the watchdog ---------------------------------------------------------------------------------

    def _error(self, call: _Call, how: str) -> errors.SRPyError:
        if call.reason == "abort":
            return errors.TaskAborted("the call %s() was aborted: engine %s %s" % (call.name, self.engine.name, how))
        return errors.TaskTimeout("the call %s() ran longer than %s of %s s: engine %s %s"
                                  % (call.name, call.source, _seconds(call.limit), self.engine.name, how))

    def _wake(self) -> None:
        """(Under the lock.) Start the watchdog thread, or make it look again; arm the backstop."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="srpy-call-watch", daemon=True)
            self._thread.start()
        self._cond.notify_all()
        self._arm_backstop()

    def _arm_backstop(self) -> None:
        """(Under the lock.) faulthandler's timer at the earliest backstop of the running calls."""
        due = min((at for at in (call.backstop() for call in self._calls) if at is not None), default=None)
        if due == self._backstop_at:
            return
        if due is None:
            faulthandler.cancel_dump_traceback_later()
        else:
            if self._backstop is None:
                try:
                    self._backstop = open(os.path.join(self.engine.sandbox, BACKSTOP_FILE), "w")
                except OSError as exc:  # the sandbox gone (user code removed it): no backstop, never the terminal
                    log.warning("no backstop for calls that hold the interpreter: %s", exc)
                    return
            faulthandler.dump_traceback_later(max(0.001, due - time.monotonic()), exit=True, file=self._backstop)
        self._backstop_at = due

    def close(self) -> None:
        """Disarm the backstop and close its file (the engine is stopping)."""
        with self._cond:
            faulthandler.cancel_dump_traceback_later()
            self._backstop_at = None
            if self._backstop is not None:
                self._backstop.close()
                self._backstop = None

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for call in list(self._calls):
                    due = call.due()
                    if due is not None and now >= due:
                        if call.reason:
                            self._end_process(call)  # never returns
                        self._stop(call, "limit", now)
                dues = [d for d in (call.due() for call in self._calls) if d is not None]
                self._cond.wait(max(0.0, min(dues) - time.monotonic()) if dues else None)

    def _stop(self, call: _Call, reason: str, now: float) -> None:
        """(Under the lock.) Interrupt C{call}'s code; the escalation follows at C{call.due()}."""
        call.reason, call.stopped_at = reason, now
        # an abort is the client's own request (a map it stopped reading, say): not worth a warning
        # on a console that the engine may share with that client
        log.log(logging.DEBUG if reason == "abort" else logging.WARNING, "call %s() %s: interrupting it", call.name,
                "was aborted" if reason == "abort" else "ran past %s of %s s" % (call.source, _seconds(call.limit)))
        _raise_in(call.thread, errors.CallInterrupted)
        self._arm_backstop()

    def _end_process(self, call: _Call) -> None:
        """The interrupted call is still running: answer its caller, then end this process."""
        where = _innermost_user_frame(sys._current_frames().get(call.thread))
        log.warning("call %s() did not stop when interrupted (at %s); the engine process ends (exit %d) so "
                     "that a fresh one serves at %s", call.name, where, EXIT_RUNAWAY, self.engine.uri)
        failure = self._error(call, "ended its process to stop it (the code did not stop when interrupted: a long "
                                    "call into C, such as time.sleep, or code catching BaseException); a fresh "
                                    "engine serves at the same URI, with an empty namespace")
        failure.srpy_traceback = "Stopped at (most recent call last):\n  %s\n" % where
        try:  # first: no client may connect to this process now that it is going away
            self.engine.stop_listening()
        except (AttributeError, OSError) as exc:
            log.debug("could not close the listening socket before ending: %s", exc)
        if call.reply is not None:
            _reply_now(*call.reply, failure)
        faulthandler.cancel_dump_traceback_later()  # ending cleanly: the log's last lines may take a moment
        logging.shutdown()
        os._exit(EXIT_RUNAWAY)


def _seconds(value: Optional[float]) -> str:
    return "%g" % value if value is not None else "?"


def _innermost_user_frame(frame: Any) -> str:
    """C{File "...", line N, in name} of the innermost frame of user code in a thread's stack."""
    entries = []
    while frame is not None:
        entries.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return user_frame(entries)


_STDLIB = os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep
_THREADING = os.path.abspath(threading.__file__)  # every thread's first frames: never where code ran


def user_frame(entries: Sequence[Tuple[str, Any, str]]) -> str:
    """
    The innermost frame of user code among C{entries} (C{(file, line, function)}, innermost first),
    as C{File "...", line N, in name}: code sent as text or outside srpy and the standard library;
    else the innermost frame outside srpy; else the innermost frame.
    """
    def own(filename: str) -> bool:
        return os.path.abspath(filename).startswith(_SRPY_DIR) and not filename.startswith(functions.SOURCE_PREFIX)

    choice = next((e for e in entries if e[0].startswith(functions.SOURCE_PREFIX)
                   or not (own(e[0]) or os.path.abspath(e[0]).startswith(_STDLIB))), None)
    choice = choice or next((e for e in entries if not own(e[0]) and os.path.abspath(e[0]) != _THREADING), None)
    if choice is None and entries:  # only srpy's frames and the thread's start: the code is a C function
        return "a call into C (no Python frame of its own), under %s() of srpy" % entries[0][2]
    return 'File "%s", line %s, in %s' % choice if choice else "(no stack)"


def _reply_now(conn: Any, seq: int, serializer_id: int, exc: BaseException) -> None:
    """Send C{exc} as the reply to call C{seq} on C{conn} (the call itself is stuck)."""
    try:
        from Pyro5 import serializers as pyro_serializers
        data = pyro_serializers.serializers_by_id[serializer_id].dumps(exc)
        ending = struct.pack("!4sI", lite.ENDING.encode("ascii"), 0)  # this process ends right after
        header = lite.HEADER.pack(b"PYRO", lite.PROTOCOL_VERSION, lite.MSG_RESULT, serializer_id,
                                  lite.FLAGS_EXCEPTION, seq, len(data), len(ending), b"\0" * 16, 0, lite.MAGIC)
        conn.send(header + ending + data)
    except Exception as failure:  # the caller may be gone too; the engine stops either way
        log.warning("could not tell the caller about the runaway call: %s", failure)


class EngineLock:
    """
    The engine's lock: a plain lock that knows which thread holds it, so that a task waiting for
    spawned work (L{srpy.peers}) can let the engine run other work meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: Optional[int] = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking, timeout):
            self.owner = threading.get_ident()
            return True
        return False

    def release(self) -> None:
        self.owner = None
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> "EngineLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @contextlib.contextmanager
    def released_if_mine(self) -> Iterator[None]:
        """Release the lock for the block's duration if this thread holds it, then take it back."""
        if self.owner != threading.get_ident():
            yield
            return
        self.release()
        try:
            yield
        finally:
            self.acquire()


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
        self.ns: Dict[str, Any] = {}
        self.secret = secret
        self._watch = CallWatch(self, max_task_time)
        self.lock = self._lock = EngineLock()
        self._functions_lock = threading.Lock()
        self._codes: Dict[Any, Any] = {}
        self._functions: Dict[str, Any] = {}
        self._trailing = threading.local()
        self.sandbox = tempfile.mkdtemp(prefix="srpy-sandbox-")
        self.social = peers.Social(self)
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

    def _with_blobs(self, variables: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """Type-check a call's variables and put back the bytes that came as annotations."""
        if variables is None:
            return {}
        if not isinstance(variables, dict):
            raise TypeError("variables must be a dict of name: value, not %s" % type(variables).__name__)
        for key in variables:
            if not isinstance(key, str) or not key.isidentifier():
                raise TypeError("variable names must be identifiers, not %r" % (key,))
        names = self._trailing.names
        if names is not None:  # the call names the variables its raw trailing bytes stand for
            names = bytes(names).decode("utf-8").split("\0")
            blobs = self._trailing.blobs
            if len(names) != len(blobs) or not set(names) <= set(variables):
                raise TypeError("the call's raw bytes do not match its variables (%d names, %d byte strings)"
                                % (len(names), len(blobs)))
            variables.update(zip(names, blobs))
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

    @_engine_call(locked=True)
    def set(self, variables: Dict[str, Any]) -> None:
        """Create or overwrite variables."""
        self.ns.update(self._with_blobs(variables))

    @_engine_call(locked=True)
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

    @_engine_call(locked=True)
    def delete(self, names: List[str]) -> None:
        """Remove the named variables (missing ones are ignored)."""
        for name in names:
            self.ns.pop(name, None)

    @_engine_call(locked=True)
    def clear(self) -> None:
        """Empty the namespace."""
        self._reset_namespace()

    @_engine_call(locked=True)
    def eval(self, expr: str, variables: Optional[Dict[str, Any]] = None) -> Any:
        """Set C{variables}, then evaluate C{expr} in the namespace."""
        _check_source(expr)
        self.ns.update(self._with_blobs(variables))
        return eval(self._compile(expr, "eval"), self.ns)

    @_engine_call(locked=True)
    def exe(self, code: str, variables: Optional[Dict[str, Any]] = None) -> None:
        """Set C{variables}, then execute C{code} in the namespace."""
        _check_source(code)
        self.ns.update(self._with_blobs(variables))
        exec(self._compile(code, "exec"), self.ns)

    @_engine_call(locked=True)
    def vexe(self, code: str, get: Sequence[str] = (), variables: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Run C{code} in a fresh namespace made of C{variables}; return the names in C{get}."""
        _check_source(code)
        scratch = {"__name__": "__srpy_vexe__", "__builtins__": builtins}
        scratch.update(self._with_blobs(variables))
        exec(self._compile(code, "exec"), scratch)
        return {name: scratch[name] for name in get}

    @_engine_call(locked=True)
    def call(self, path: str, args: Sequence[Any] = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        """Call the namespace's callable C{path} (dotted names allowed)."""
        return self._resolve(path)(*args, **(kwargs or {}))

    @_engine_call(locked=True)
    def inspect(self, path: str) -> Dict[str, Any]:
        """
        Describe C{path}: C{{'kind': 'value', 'value': v}} when it can travel, else
        C{{'kind': 'object', 'type', 'callable', 'doc', 'name'}} (for L{srpy.client.Namespace}).
        """
        value = self._resolve(path)
        try:
            codec.dumps(value)
            return {"kind": "value", "value": value}
        except (TypeError, ValueError):
            return {"kind": "object", "type": type(value).__name__, "callable": callable(value),
                    "doc": getattr(value, "__doc__", None) or "", "name": getattr(value, "__name__", path)}

    @_engine_call(locked=True)
    def install(self, files: Dict[str, str]) -> List[str]:
        """
        Write shipped source files (relative path: text) into the sandbox. Modules they replace are
        dropped from C{sys.modules}, so the next C{imp} loads the new code.
        """
        written = []
        for relpath, text in files.items():
            target = self._sandbox_path(relpath)
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

    @_engine_call(locked=True)
    def imp(self, modules: Sequence[str]) -> None:
        """Import each module and bind it as C{import name} would."""
        for name in modules:
            importlib.import_module(name)
            top = name.partition(".")[0]
            self.ns[top] = sys.modules[top]

    # -- tasks (the executor's wire interface) ------------------------------------------------------

    @_engine_call(locked=True)
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
            self._functions[fn_hash] = functions.build(bundle, self._install_files)
            return None
        except errors.CallInterrupted:  # a limit or an abort stops the call itself
            raise
        except BaseException as exc:  # whatever building raised is the definition's outcome, not the call's
            exc.srpy_traceback = _user_traceback(exc)
            if isinstance(exc, ModuleNotFoundError):
                return {"kind": "missing", "error": exc, "module": exc.name}
            kind = "transient" if isinstance(exc, (MemoryError, OSError)) else "broken"
            return {"kind": kind, "error": exc, "module": None}

    @_engine_call(locked=True)
    def run_batch(self, tasks: List[Any]) -> bytes:
        """
        Run C{tasks}, each C{[hash, 'call', [args, kwargs]]}, C{[hash, 'map', [args, args, ...]]} or
        C{[hash, 'map1', [arg, arg, ...]]} (a map over one iterable: items sent as they are),
        with functions sent earlier by L{define}. Returns, already serialized, C{(outcomes,
        seconds)}: one outcome per task, C{('ok', value)}, C{('err', exception)}, or for a map
        that failed part-way C{('part', values, exception)}; and the seconds the tasks ran here
        (what the client learns each function's speed from: the round trip is not the
        function's). Whatever a task raises (C{SystemExit},
        C{KeyboardInterrupt}, any C{BaseException}) is its own outcome, except srpy's
        L{CallInterrupted<srpy.errors.CallInterrupted>}, which stops the whole call. A value that
        cannot travel fails only its own task (a map's chunk: from that value on).
        """
        start = time.perf_counter()
        outcomes = [self._run_task(task) for task in tasks]
        seconds = time.perf_counter() - start
        try:
            return codec.dumps((outcomes, seconds))
        except (TypeError, ValueError):
            return codec.dumps(([_travelling(outcome, task[1]) for outcome, task in zip(outcomes, tasks)], seconds))

    def _run_task(self, task: Sequence[Any]) -> tuple:
        fn_hash, kind, payload = task
        fn = self._functions.get(fn_hash)
        if fn is None:
            raise errors.UnknownFunction("this engine has no function %s: send its definition" % fn_hash)
        if kind == "call":
            try:
                return ("ok", fn(*payload[0], **(payload[1] or {})))
            except Exception as exc:
                exc.srpy_traceback = _user_traceback(exc)
                return ("err", exc)
            except errors.CallInterrupted:  # the engine stops this call: never a task's outcome
                raise
            except BaseException as exc:  # SystemExit, KeyboardInterrupt...: the task's own outcome
                exc.srpy_traceback = _user_traceback(exc)
                return ("err", exc)
        results: List[Any] = []
        try:  # extend() keeps what was computed before a failure; map/starmap loop at C speed
            results.extend(map(fn, payload) if kind == "map1" else itertools.starmap(fn, payload))
        except Exception as exc:
            exc.srpy_traceback = _user_traceback(exc)
            return ("part", results, exc)
        except errors.CallInterrupted:
            raise
        except BaseException as exc:
            exc.srpy_traceback = _user_traceback(exc)
            return ("part", results, exc)
        return ("ok", results)

    @_engine_call(locked=True)
    def check_modules(self, names: Sequence[str]) -> List[str]:
        """The names among C{names} that this engine cannot import."""
        missing = []
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                missing.append(name)
        return missing

    @_engine_call(locked=True)
    def unpack(self, variables: Dict[str, Any]) -> List[str]:
        """
        Unpack the tar archive C{variables['archive']} (sent by C{EngBox.upload}, large ones as raw
        bytes after the call) into the sandbox; return the files it held.
        """
        archive = self._with_blobs(variables).get("archive")
        if not isinstance(archive, bytes):
            raise TypeError("unpack() needs the archive as bytes, not %s" % type(archive).__name__)
        import tarfile  # loaded on first use, as psutil below: an engine needs neither to start serving
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            members = tar.getmembers()
            for member in members:
                self._sandbox_path(member.name)
                if not (member.isfile() or member.isdir()):
                    raise ValueError("upload archives hold only files and folders, not %r" % member.name)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(self.sandbox, members=members, **safe)
        importlib.invalidate_caches()
        return [m.name for m in members if m.isfile()]

    def _install_files(self, files: Dict[str, str]) -> None:
        Engine.install.__wrapped__(self, files)

    def function(self, bundle: Dict[str, Any]) -> Any:
        """The shipped function of C{bundle}, built once per engine and kept under its hash."""
        fn = self._functions.get(bundle["hash"])
        if fn is None:
            with self._functions_lock:
                fn = self._functions.get(bundle["hash"])
                if fn is None:
                    fn = self._functions[bundle["hash"]] = functions.build(bundle, self._install_files)
        return fn

    # -- peers: engine to engine (see srpy.peers; not locked, so they reach busy engines) -----------

    @_engine_call(locked=False)
    def set_peers(self, uris: List[str]) -> List[str]:
        """Make the engines at C{uris} this engine's peers (same group and secret only); returns those kept."""
        return self.social.set_peers(list(uris))

    @_engine_call(locked=False)
    def peer_list(self) -> List[str]:
        """The URIs of this engine's peers."""
        return [peer.uri for peer in self.social.peers()]

    @_engine_call(locked=False)
    def peer_deliver(self, sender: str, tag: Any, value: Any) -> None:
        """A message from peer C{sender}; waits while the mailbox is full (back-pressure)."""
        if not self.social.is_peer(sender):
            raise PermissionError("%s is not a peer of this engine: message refused" % sender)
        self.social.mailbox.put(sender, tag, value)

    @_engine_call(locked=False)
    def peer_hint(self, sender: str) -> bool:
        """Peer C{sender} has queued work to take; True if this engine is busy (or now taking some)."""
        return self.social.hint(sender)

    @_engine_call(locked=False)
    def peer_steal(self, thief: str, count: int) -> List[Any]:
        """Hand up to C{count} queued spawned calls to peer C{thief}."""
        return self.social.steal(thief, int(count))

    @_engine_call(locked=False)
    def peer_complete(self, call_id: str, outcome: Any) -> None:
        """The outcome of a call this engine spawned and a peer ran."""
        self.social.complete(call_id, outcome)

    @_engine_call(locked=False)
    def peer_space_put(self, key: Any, value: Any) -> None:
        """Hold C{value} under C{key} (this engine's share of the tuple space)."""
        self.social.space.put(key, value)

    @_engine_call(locked=False)
    def peer_space_read(self, key: Any, timeout: Optional[float], remove: bool) -> Any:
        """The value under C{key}, waiting up to C{timeout}; removed if C{remove}."""
        return self.social.space.read(key, timeout, bool(remove))

    @_engine_call(locked=False)
    def peer_space_match(self, pattern: str, timeout: Optional[float]) -> Optional[str]:
        """A key of this share matching the glob C{pattern}, waiting up to C{timeout}; None if none."""
        return self.social.space.match(str(pattern), timeout)

    @_engine_call(locked=False)
    def peer_space_fetch(self, key: Any, remove: bool) -> Tuple[bool, Any]:
        """(True, value) for C{key} if held here (removed if C{remove}), else (False, None); no waiting."""
        return self.social.space.fetch(key, bool(remove))

    @_engine_call(locked=False)
    def peer_stats(self) -> Dict[str, Any]:
        """Spawned calls run here and queued here, messages waiting, entries held, peers."""
        return self.social.stats()

    # -- control calls (not locked) ---------------------------------------------------------------

    @_engine_call(locked=False)
    def ping(self) -> str:
        """'pong'."""
        return "pong"

    @_engine_call(locked=False)
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

    @_engine_call(locked=False)
    def is_busy(self) -> bool:
        """True while a locked call runs."""
        return self._lock.locked()

    @_engine_call(locked=False)
    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until no locked call runs (True) or C{timeout} seconds pass (False). No polling."""
        if self._lock.acquire(timeout=-1 if timeout is None else max(0.0, float(timeout))):
            self._lock.release()
            return True
        return False

    @_engine_call(locked=False)
    def benchmark(self, limit: Optional[int] = None) -> Dict[str, Any]:
        """Time the fixed processor workload (not locked: a busy engine shows up as slower)."""
        busy = self._lock.locked()
        seconds, _ = benchmark.timed_workload(int(limit or benchmark.DEFAULT_LIMIT))
        return {"proc": seconds, "busy": busy}

    @_engine_call(locked=False)
    def whoami(self) -> Dict[str, Any]:
        """SRPy's description keys, plus srpy's (name, group, cores, load, memory, ...)."""
        import psutil
        memory = psutil.virtual_memory()
        load = os.getloadavg() if hasattr(os, "getloadavg") else (psutil.cpu_percent(),)
        return {
            "OS System": platform.system(),
            "Hostname": socket.gethostname(),
            "OS Release": platform.release(),
            "OS Version": platform.version(),
            "Machine Architecture": platform.machine(),
            "Processor Architecture": platform.processor() or platform.machine(),
            "Python Version": platform.python_version(),
            "Python Compiler": platform.python_compiler(),
            "PythonEngine ID": self.name,
            "Name": self.name,
            "Group": self.group,
            "URI": self.uri,
            "PID": os.getpid(),
            "Cores": psutil.cpu_count() or 1,
            "Load": list(load),
            "Memory Total": memory.total,
            "Memory Available": memory.available,
            "Busy": self._lock.locked(),
            "Current Call": self._watch.current or "",
            "Max Task Time": self._watch.max_task_time,
            "Calls": self.calls,
            "srpy Version": __version__,
            "Python Executable": sys.executable,
        }

    @_engine_call(locked=False)
    def status(self) -> Dict[str, Any]:
        """
        What the engine is doing: busy or idle, the current call and how long it has run, a dump
        of the stack of the thread running it (as faulthandler would show it), and the machine's
        cores, load and memory.
        """
        watch = self._watch
        owner = self.lock.owner
        frame = sys._current_frames().get(owner) if owner is not None else None
        import psutil
        memory = psutil.virtual_memory()
        return {
            "uri": self.uri, "name": self.name, "group": self.group, "pid": os.getpid(),
            "host": socket.gethostname(), "busy": self.lock.locked(), "current": watch.current or "",
            "running_for": watch.running_for(), "limit": watch.limit_now(), "calls": self.calls,
            "stack": "".join(traceback.format_stack(frame)) if frame is not None else "",
            "cores": psutil.cpu_count() or 1, "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
            "memory_available": memory.available, "memory_total": memory.total,
            "rss": psutil.Process().memory_info().rss,
        }

    @_engine_call(locked=False)
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


def _check_source(source: Any) -> None:
    if not isinstance(source, str):
        raise TypeError("code must be given as a str, not %s" % type(source).__name__)
