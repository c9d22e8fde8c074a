"""
The tracebacks that engines send back to callers: user code's frames only.

User code is source sent as text (C{<srpy ...>} files, see L{srpy.functions}) and any module
outside srpy; srpy's own frames (the engine, its call wrapper, the peer side) are cut, so that a
caller reads where its code failed and nothing else.
"""

import os
import traceback
from typing import Any, Tuple

from . import functions

#: srpy's own source files: their frames are cut from the tracebacks sent back to callers
SRPY_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_traceback(exc: BaseException) -> str:
    """
    The traceback of C{exc} from the first frame of user code on (srpy's own frames cut). User
    code is source sent as text (C{<srpy ...>} files) and any module outside srpy: a function
    shipped by reference runs from its module file in the sandbox or from an installed package.
    """
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(SRPY_DIR) \
            and not tb.tb_frame.f_code.co_filename.startswith(functions.SOURCE_PREFIX):
        tb = tb.tb_next
    if tb is None:
        return "".join(traceback.format_exception_only(type(exc), exc))
    return "".join(traceback.format_exception(type(exc), exc, tb))


#: the attribute of an exception that carries its engine-side traceback text to the caller
#: (Pyro5 sends an exception's attributes along; L{srpy.codec} reads this one back)
ATTRIBUTE = "srpy_traceback"


def attach(exc: BaseException, text: "str | None" = None) -> BaseException:
    """Give C{exc} the traceback text its caller will see (default: L{user_traceback} of it); returns C{exc}."""
    setattr(exc, ATTRIBUTE, user_traceback(exc) if text is None else text)
    return exc


def running_task(frame: Any) -> Tuple[str, str]:
    """
    The task a thread of an engine runs: C{(name, stack)}, the name of the user function srpy's
    own frames called (the outermost frame of user code: the function of a map, the code of an
    C{exe}) and the stack from that frame inward, as C{traceback.format_stack} writes it.
    C{('', '')} for no frame, or where srpy runs no user code (a C function, say).
    """
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    inside_srpy = False
    for index in range(len(frames) - 1, -1, -1):  # outermost first: thread, server, srpy, then the task
        code = frames[index].f_code
        own = _own_file(code.co_filename)
        if own:
            inside_srpy = True
        elif inside_srpy:
            entries = traceback.StackSummary.extract(
                (f, f.f_lineno) for f in reversed(frames[:index + 1]))
            return getattr(code, "co_qualname", code.co_name), "".join(entries.format())
    return "", ""


def _own_file(filename: str) -> bool:
    """A file of srpy itself (source sent as text is user code, whatever its name says)."""
    return os.path.abspath(filename).startswith(SRPY_DIR) and not filename.startswith(functions.SOURCE_PREFIX)
