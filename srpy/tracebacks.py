"""
The tracebacks that engines send back to callers: user code's frames only.

User code is source sent as text (C{<srpy ...>} files, see L{srpy.functions}) and any module
outside srpy; srpy's own frames (the engine, its call wrapper, the peer side) are cut, so that a
caller reads where its code failed and nothing else.
"""

import os
import traceback

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
