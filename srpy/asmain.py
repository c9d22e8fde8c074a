"""
Running a script as C{__main__} on an engine (L{srpy.engine.Engine.run_script}), as
C{python script.py args} would: a fresh module C{__main__} (its C{__file__} the script's path),
C{sys.argv == [path, *args]}, and the exit code by Python's rules (0 when it ends; C{sys.exit(n)}:
n; C{sys.exit(None)}: 0; C{sys.exit("text")}: 1, with the text on stderr; an exception: 1, with
its traceback on stderr, user code's frames only). What it prints is kept for the result
(L{srpy.output.capture}), and still logged and forwarded as it happens.

The engine serves on afterwards as it was: its namespace is not the script's, and C{sys.argv},
C{sys.modules['__main__']}, the working directory and C{sys.stdin}/C{stdout}/C{stderr} are put
back. The modules the script imported stay imported (as any call's do), except its local
modules (those shipped with it, L{srpy.scripts}): each run imports them afresh, as a new Python
would.
"""

import builtins
import linecache
import os
import sys
import types
from typing import Any, Callable, Dict, List

from . import errors, output
from .tracebacks import user_traceback


def run(path: str, source: str, argv: List[str], files: Dict[str, str],
        install: Callable[[Dict[str, str]], Any]) -> Dict[str, Any]:
    """
    Run C{source} (the script at C{path} on the caller's side) with C{files} (its local modules,
    written by C{install}); returns C{{'exit': int, 'stdout': str, 'stderr': str}}.
    """
    _check(path, source, argv, files)
    if files:
        install(files)
    main = types.ModuleType("__main__")
    filename = path
    main.__dict__.update({"__file__": filename, "__builtins__": builtins, "__spec__": None, "__loader__": None,
                          "__package__": None, "__cached__": None})
    # tracebacks show the script's lines, also where its file does not exist (another machine)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    saved = (sys.argv, sys.modules.get("__main__"), sys.stdin, sys.stdout, sys.stderr)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = None
    with output.capture() as captured:
        exit_code, message = 0, ""
        try:
            try:
                sys.argv = [path] + list(argv)
                sys.modules["__main__"] = main
                exec(compile(source, filename, "exec", dont_inherit=True), main.__dict__)
            finally:
                _restore(saved, cwd)
        except SystemExit as exc:
            exit_code, message = exit_status(exc.code)
        except errors.CallInterrupted:  # a time limit or an abort stops the call, not just the script
            raise
        except BaseException as exc:  # whatever the script raised ends it, as it would end Python
            exit_code, message = 1, user_traceback(exc)
        if message:
            sys.stderr.write(message)
        output.flush_output()
    return {"exit": exit_code, "stdout": captured.text(1), "stderr": captured.text(2)}


def exit_status(code: Any) -> "tuple[int, str]":
    """
    The exit code of C{SystemExit(code)}, and what Python prints for it on stderr.

    >>> exit_status(None), exit_status(3), exit_status("bad input"), exit_status(True)
    ((0, ''), (3, ''), (1, 'bad input\\n'), (1, ''))
    """
    if code is None:
        return 0, ""
    if isinstance(code, int):
        return int(code), ""
    return 1, "%s\n" % (code,)


def _restore(saved: Any, cwd: Any) -> None:
    sys.argv, main, sys.stdin, sys.stdout, sys.stderr = saved
    if main is not None:
        sys.modules["__main__"] = main
    else:
        sys.modules.pop("__main__", None)
    if cwd is not None:
        try:
            os.chdir(cwd)
        except OSError:  # the folder went away while the script ran: the engine keeps the one it is in
            pass


def _check(path: Any, source: Any, argv: Any, files: Any) -> None:
    if not isinstance(path, str) or not isinstance(source, str):
        raise TypeError("run_script() takes the script's path and its source as str")
    if not isinstance(argv, (list, tuple)) or not all(isinstance(arg, str) for arg in argv):
        raise TypeError("a script's arguments are a list of str")
    if not isinstance(files, dict):
        raise TypeError("a script's module files are a dict of relative path: text")
