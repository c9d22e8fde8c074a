"""
The watchdog of an engine's calls: time limits, aborts, and the backstop.

A locked call (one that runs user code) may carry a time limit (annotation L{CALL_TIMEOUT}, or the
engine's C{--max-task-time}) and an id (annotation L{CALL_ID}, for L{srpy.engine.Engine.abort}).
L{CallWatch} keeps the record of each such call while it runs and stops one that overruns its
limit or is aborted, escalating in three steps (see L{CallWatch}): an interrupt where the code
runs; the reply sent by the watchdog itself and the process ended (exit L{EXIT_RUNAWAY}); and,
for code that holds the interpreter, faulthandler's C thread (the I{backstop}). The keeper
(L{srpy.supervisor.Keeper}) replaces an engine that ended at once, at the same URI.
"""

import collections
import faulthandler
import logging
import os
import sys
import threading
import time
from typing import Any, List, Optional, Sequence, Tuple

from Pyro5.callcontext import current_context

from . import errors, functions, output, wire
from . import tracebacks
from .tracebacks import SRPY_DIR, user_traceback

log = logging.getLogger("srpy.engine")

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
CALL_TIMEOUT = wire.CALL_TIMEOUT
#: annotation naming a call so that L{srpy.engine.Engine.abort} can stop it
CALL_ID = wire.CALL_ID
#: how many ids of calls aborted before they began an engine remembers
_EARLY_ABORTS = 256



def _raise_in(thread: int, exception: Any) -> int:
    """
    PyThreadState_SetAsyncExc(thread id, exception): raise an exception in another thread at its
    next bytecode; with None (NULL through a void pointer), take back one not yet raised. ctypes
    is loaded on the first use: an engine that never stops a call does not need it to start.
    """
    import ctypes

    argument = ctypes.py_object if exception is not None else ctypes.c_void_p
    function = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, argument)(("PyThreadState_SetAsyncExc", ctypes.pythonapi))
    return int(function(thread, exception))


class _Call:
    """One locked call that has a time limit or an id: what the watchdog needs to stop it."""

    __slots__ = ("name", "limit", "source", "call_id", "thread", "started", "reply", "reason", "stopped_at",
                 "active")

    def __init__(self, name: str, limit: Optional[float], source: str, call_id: Optional[bytes]) -> None:
        self.name, self.limit, self.source, self.call_id = name, limit, source, call_id
        self.thread = 0
        self.started = 0.0
        self.reply: Optional[Tuple[Any, int, int]] = None  # (connection, seq, serializer id)
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
    client's, or the engine's C{max_task_time}, whichever is shorter) or is aborted (L{srpy.engine.Engine.abort}):

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

    def __init__(self, engine: Any, max_task_time: Optional[float]) -> None:
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
        limit = wire.parse_call_limit(annotations.get(CALL_TIMEOUT) if annotations else None)
        source = "its time limit"
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
                _raise_in(call.thread, None)
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
        failure: Any = self._error(call, "refused it (it was aborted before it began)" if early
                              else "stopped it by interrupting its code (the namespace is kept)")
        if exc is not None:
            tracebacks.attach(failure, user_traceback(exc).replace(
                "srpy.errors.CallInterrupted", type(failure).__name__ + " (stopped here)"))
        else:
            tracebacks.attach(failure, "%s: %s\n" % (type(failure).__name__, failure))
        return failure

    def running_for(self) -> float:
        return time.monotonic() - self._started if self.current else 0.0

    def limit_now(self) -> Optional[float]:
        with self._cond:  # read by status() from another thread while calls begin and end
            return self._calls[-1].limit if self._calls else None

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
        failure: Any = self._error(call, "ended its process to stop it (the code did not stop when interrupted: a "
                                         "long call into C, such as time.sleep, or code catching BaseException); a "
                                         "fresh engine serves at the same URI, with an empty namespace")
        tracebacks.attach(failure, "Stopped at (most recent call last):\n  %s\n" % where)
        try:  # first: no client may connect to this process now that it is going away
            self.engine.stop_listening()
        except (AttributeError, OSError) as exc:
            log.debug("could not close the listening socket before ending: %s", exc)
        if call.reply is not None:
            output.stop_forwarding()  # the stuck call's lines must not cut into this reply
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


_STDLIB = os.path.dirname(os.path.abspath(os.__file__)) + os.sep  # sysconfig's "stdlib", without loading sysconfig
_THREADING = os.path.abspath(threading.__file__)  # every thread's first frames: never where code ran


def user_frame(entries: Sequence[Tuple[str, Any, str]]) -> str:
    """
    The innermost frame of user code among C{entries} (C{(file, line, function)}, innermost first),
    as C{File "...", line N, in name}: code sent as text or outside srpy and the standard library;
    else the innermost frame outside srpy; else the innermost frame.
    """
    def own(filename: str) -> bool:
        return os.path.abspath(filename).startswith(SRPY_DIR) and not filename.startswith(functions.SOURCE_PREFIX)

    choice = next((e for e in entries if e[0].startswith(functions.SOURCE_PREFIX)
                   or not (own(e[0]) or os.path.abspath(e[0]).startswith(_STDLIB))), None)
    choice = choice or next((e for e in entries if not own(e[0]) and os.path.abspath(e[0]) != _THREADING), None)
    if choice is None and entries:  # only srpy's frames and the thread's start: the code is a C function
        return "a call into C (no Python frame of its own), under %s() of srpy" % entries[0][2]
    return 'File "%s", line %s, in %s' % choice if choice else "(no stack)"


def _reply_now(conn: Any, seq: int, serializer_id: int, exc: BaseException) -> None:
    """Send C{exc} as the reply to call C{seq} on C{conn} (the call itself is stuck)."""
    try:
        from . import _pyro5
        # (an unknown serializer id raises here: the caller hears nothing, as it would not understand)
        data = _pyro5.serializer(serializer_id).dumps(exc)  # type: ignore[union-attr]
        ending = {wire.ENDING: b""}  # this process ends right after
        conn.send(wire.pack_message(wire.MSG_RESULT, serializer_id, data, seq, wire.FLAGS_EXCEPTION, ending))
    except Exception as failure:  # the caller may be gone too; the engine stops either way
        log.warning("could not tell the caller about the runaway call: %s", failure)
