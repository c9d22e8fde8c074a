"""
No orphans: a process started by another ends when that other ends, whatever its own interpreter
is doing.

An engine child stops by itself when its stdin reaches its end (the launcher is gone), but only
if its interpreter gets to run: an engine inside a long C call that holds the interpreter (a
catastrophic regular expression, say), or one whose user code left a non-daemon thread behind,
never does, and would outlive its launcher. On Linux, L{die_with_parent} asks the kernel to
SIGKILL this process the moment its parent ends (C{prctl(PR_SET_PDEATHSIG)}), which needs nothing
from the interpreter.

Where to call it: first thing in a process another one started (it only sets a flag of the
calling process, inherited by no child): the launcher's engine child (C{supervisor.run_child}),
and, where that child forks the real engine, that grandchild too, right after the fork, so that
each level ends with the one above it.

Its limits, each of them reported by its return value (False: not armed):
 - Linux only; elsewhere the stdin watch is all there is.
 - Linux ties the signal to the I{thread} that forked this process: when that thread ends, the
   signal comes although its process lives on. So it is armed only when the forking thread is
   its process's main thread (which lives as long as its process): true of the launcher and of
   a child forking from its main thread, not of C{newSubEngine()} called from a worker thread,
   which keeps the stdin watch only.
 - SIGKILL leaves no time to clean up: an engine killed this way leaves its sandbox directory
   behind (its launcher, killed too, cannot remove it either).
"""

import ctypes
import logging
import os
import signal
import sys
from typing import Optional

log = logging.getLogger("srpy.orphans")

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """
    Have the kernel SIGKILL this process when its parent ends (see the module text). If the
    parent ended already (before this was armed), this process ends now. Safe to call in any
    process, more than once.

    @return: True if armed; False where it cannot be (not Linux, no libc, or forked by a thread
        other than its parent's main thread).
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    if not _forked_by_main_thread(parent):
        log.debug("not armed: this process was started by a thread of %d other than its main thread", parent)
        return False
    try:
        libc = _libc()
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
            return False
    except (OSError, AttributeError) as exc:
        log.debug("no prctl here: %s", exc)
        return False
    if os.getppid() != parent:  # the parent ended before the flag was set: nothing will signal us now
        os._exit(1)
    return True


def _forked_by_main_thread(parent: int) -> Optional[bool]:
    """
    Whether C{parent}'s main thread forked this process: it lists this process among its own
    children (C{/proc/PID/task/TID/children}); a kernel without that file says so by a parent
    with a single thread.
    """
    me = str(os.getpid())
    try:
        with open("/proc/%d/task/%d/children" % (parent, parent)) as handle:
            return me in handle.read().split()
    except OSError:
        pass
    try:
        return len(os.listdir("/proc/%d/task" % parent)) == 1
    except OSError:
        return False


def _libc() -> ctypes.CDLL:
    """
    The C library: the symbols this process already has (CPython links it), else the one the
    system names. (C{ctypes.util.find_library} runs C{ldconfig}: a process per engine start.)
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "prctl"):
        return libc
    from ctypes.util import find_library
    return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)
