"""
The wrapper of every method an engine process exposes (L{engine_call}): the engine's lock, call
logging, user exceptions with their user-code traceback, results a json caller cannot receive, and
the call's time limit and abort (L{srpy.watch.CallWatch}). (Large buffers in and out travel
beside the messages: L{srpy.daemon} reads and writes them.)

Both Pyro objects of an engine process use it: the namespace object (L{srpy.engine.Engine}) and
the peer object (L{srpy.peerservice.PeerService}).
"""

import functools
import logging
import time
from typing import Any, Callable, Sequence

from Pyro5.server import expose  # not Pyro5.api: it loads the name server (and sqlite3)
from Pyro5.callcontext import current_context

from . import codec, errors, wire
from . import output
from .output import flush_output
from . import tracebacks
from .tracebacks import user_traceback

call_log = logging.getLogger("srpy.engine.calls")

class _StandIn(Exception):
    """Carries a BaseException that is not an Exception (SystemExit, KeyboardInterrupt) over Pyro5."""


@functools.lru_cache(maxsize=None)
def _stand_in_type(name: str) -> type:
    kind = type(name, (_StandIn,), {"__module__": "builtins"})
    kind.__qualname__ = name
    return kind


def engine_call(locked: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Wrap an exposed method: the lock (if C{locked}), call logging, user exceptions, and the
    call's time limit and abort (L{srpy.watch.CallWatch}): a locked call stopped by either ends
    with L{errors.TaskTimeout} or L{errors.TaskAborted}, sent back as its ordinary reply.

    The object served has C{debug} and C{timing} (log each call, its duration); one with locked
    methods also has
    C{_lock} (an L{srpy.lock.EngineLock}), C{_watch} (its L{srpy.watch.CallWatch}) and C{calls}
    (how many locked calls ran).
    """

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            current_context.response_annotations = {}
            annotations = current_context.annotations
            if annotations and wire.OUTPUT in annotations:  # any call, a control call too, may ask
                current_context.client.srpy_output = bytes(annotations[wire.OUTPUT]) != b"0"
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
                    forwarding = _forwarding()
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
                            flush_output()
                            if forwarding is not None:
                                output.end_forward(forwarding)
                    finally:
                        lock.release()
                else:
                    result = method(self, *args, **kwargs)
                if call is not None and call.reason:  # user code swallowed the interrupt: still stopped
                    raise self._watch.stopped(call, None)
            except (errors.TaskTimeout, errors.TaskAborted) as exc:
                if call is None or not call.reason:  # user code raised one itself
                    tracebacks.attach(exc)
                raise
            except Exception as exc:
                if call is not None and call.reason:  # the interrupt, turned into something else by user code
                    raise self._watch.stopped(call, exc) from None
                tracebacks.attach(exc)
                raise
            except BaseException as exc:  # SystemExit, KeyboardInterrupt from user code: keep serving
                if call is not None and call.reason:
                    raise self._watch.stopped(call, exc) from None
                stand_in = _stand_in_type(type(exc).__name__)(*exc.args)
                tracebacks.attach(stand_in, user_traceback(exc))
                raise stand_in from None
            finally:
                if self.timing:
                    call_log.info("%s took %.6f s", name, time.perf_counter() - start)
            if current_context.serializer_id != codec.SERIALIZER_ID:
                if type(result) is codec.Encoded:  # serialized for srpy's format: another serializer takes the value
                    result = result.value
                if current_context.serializer_id == wire.JSON_SERIALIZER_ID:
                    _check_json(result)
            return result

        return expose(wrapper)

    return decorate


def _forwarding() -> Any:
    """
    If this call's caller takes what it prints as it happens (SOUT, asked once per connection
    and kept on it, as the daemon keeps C{srpy_plain}), start sending it (L{srpy.output}).
    """
    conn = current_context.client
    if not getattr(conn, "srpy_output", False):
        return None
    return output.forward_to(conn, current_context.seq, current_context.serializer_id)


def _check_json(result: Any) -> None:
    """
    Refuse, with a TypeError naming the type, a result json cannot carry: Pyro5's json serializer
    would otherwise send an object (a module, say) as a dict of its attributes.
    """
    found = codec.json_unfit(result)
    if found is not None:
        where, value = found
        exc = TypeError("cannot return a value of type %r (at result%s) to a json client: json carries "
                        "None, bool, numbers, str, lists and dicts. Return something made of those "
                        "(str(value), or the attributes you need), or use srpy.PythonEngine"
                        % (type(value).__name__, where))
        tracebacks.attach(exc, "TypeError: %s\n" % exc)
        raise exc


def _short(args: Sequence[Any]) -> Any:
    text = repr(tuple(args))
    return text if len(text) < 200 else text[:197] + "..."
