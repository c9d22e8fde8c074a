"""
What engine code prints, on the caller's side: each line an engine sends while a call runs (the
SOUT messages ahead of the reply, see L{srpy.wire} and L{srpy.output}) is written to this
process's C{sys.stdout} or C{sys.stderr} of the moment, prefixed with the engine's name, as Ray
prefixes its workers' lines::

    (engine-4242@host) loading part 3

It is on by default, as in Ray: C{PythonEngine(uri, forward_output=False)} or C{EngBox(...,
forward_output=False)} keep one client's lines in the engine's log only, L{set_forward_output}
changes the default for the clients made afterwards, and so does the environment variable
C{SRPY_FORWARD_OUTPUT=0}. The engine's log has every line either way.

A line arrives while its call runs: the engine sends what its code printed within some 20 ms
(L{srpy.output.FLUSH_DELAY}), and the client reads it while it waits for the reply, in the
thread that made the call. Forwarding never loses a reply: a line this process cannot write is
dropped (and logged once), the reply is read as ever.

L{redirected} hands, in one thread, the lines of the calls that thread makes to a function of
the caller's instead, whether the client forwards or not: the notebook magics (L{srpy.magics})
show each engine's lines under its name so.
"""

import contextlib
import logging
import os
import sys
import threading
from typing import Any, Callable, Iterator, Optional

from . import wire

log = logging.getLogger("srpy.forwarding")
_writing = threading.Lock()

#: whether clients made from now on forward what engines print (see L{set_forward_output})
DEFAULT = os.environ.get("SRPY_FORWARD_OUTPUT", "1").strip().lower() not in ("0", "false", "no", "off")


def set_forward_output(on: bool) -> None:
    """
    Whether the L{PythonEngine<srpy.client.PythonEngine>}s and L{EngBox<srpy.box.EngBox>}es made
    from now on forward what their engines print to this process (default: yes, or the
    environment's C{SRPY_FORWARD_OUTPUT}). Clients made earlier keep theirs; each client's
    C{forward_output} attribute switches its own.
    """
    global DEFAULT
    DEFAULT = bool(on)


#: what L{redirected} set, per thread
_redirect = threading.local()


@contextlib.contextmanager
def redirected(target: Callable[[int, str], None]) -> Iterator[None]:
    """
    While in this block, in this thread: the calls made ask their engines for what they print,
    whether their client forwards or not, and each line they send goes to C{target(fd, line)}
    (fd 1 for stdout, 2 for stderr; the line without its newline) instead of sys.stdout or
    sys.stderr. Other threads' calls are not touched. Blocks nest (the inner one wins).
    """
    previous = getattr(_redirect, "target", None)
    _redirect.target = target
    try:
        yield
    finally:
        _redirect.target = previous


def _redirect_target() -> Optional[Callable[[int, str], None]]:
    return getattr(_redirect, "target", None)


class Forwarder:
    """
    The output sink of one client's connections (L{srpy.wire.Connection.output_sink}).

    @ivar name: the prefix of each line (the engine's name).
    """

    def __init__(self, on: bool, name: str = "") -> None:
        self._on = on
        self.name = name
        self._failed = False

    @property
    def on(self) -> bool:
        """
        Whether calls ask the engine for their output: the client's setting, or, in a
        L{redirected} block, yes (for that thread's calls).
        """
        return self._on or _redirect_target() is not None

    @on.setter
    def on(self, on: bool) -> None:
        self._on = on

    def __call__(self, value: Any) -> None:
        """
        Write the lines of one SOUT annotation to sys.stdout / sys.stderr (as they are now), or
        hand them to the target of this thread's L{redirected} block.
        """
        target = _redirect_target()
        if target is not None:
            for fd, line in wire.parse_output(value):
                target(fd, line)
            return
        if not self._on:
            return
        lines = wire.parse_output(value)
        prefix = "(%s) " % (self.name or "engine")
        for fd in (1, 2):
            text = "".join(prefix + line + "\n" for where, line in lines if where == fd)
            if not text:
                continue
            stream = sys.stderr if fd == 2 else sys.stdout
            try:
                with _writing:  # one block at a time: the lines of two engines do not cut into each other
                    stream.write(text)
                    stream.flush()
            except Exception as exc:  # a closed or broken stdout: the call's reply matters more
                if not self._failed:
                    self._failed = True
                    log.warning("cannot write the output of engine %s here: %s", self.name, exc)
