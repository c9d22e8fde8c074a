"""
srpy - Simple Remote Python: run Python on every core of every machine you have.

Every engine is a process holding one persistent Python namespace, served over Pyro5. This module
is the public face of the package; everything a user needs is named here.

 - L{PythonEngine}: a client for one engine (SRPy's API).
 - L{EngBox}: many engines as one container and one C{concurrent.futures.Executor}.
 - L{newSubEngine}, L{stopSubEngine}: start and stop a local engine process from Python.
 - L{detectNCPUs}: the number of usable cores.
 - L{this_engine}, L{spawn}: for code running on an engine, its peers, messages, shared data
   and work sharing (L{srpy.peers}).
 - L{lite}: a dependency-free client that also runs on Jython 2.7.
 - L{errors}: every exception srpy raises.

Each name is imported when it is first used (PEP 562): an engine process, the launcher and
C{import srpy.lite} load only the modules they use.
"""

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

__version__ = "0.3.0"
version = __version__
copyright = "Copyright (c) 2009, 2026 the srpy developers. BSD-3-Clause."

#: the module of each public name
_HOMES: Dict[str, str] = {
    "PythonEngine": "client", "Namespace": "client", "RemoteObject": "client",
    "EngBox": "box", "MultiRunResult": "box",
    "FunctionShippingError": "functions",
    "this_engine": "peers", "spawn": "peers",
    "newSubEngine": "subengine", "stopSubEngine": "subengine", "detectNCPUs": "subengine",
    **{name: "errors" for name in (
        "SRPyError", "SRPyServerNotFound", "AuthenticationError", "CommunicationError", "ConnectionLost",
        "CallTimeout", "SerializationError", "MessageTooLargeError", "RemoteError", "RemoteSystemExit",
        "TaskTimeout", "TaskAborted", "EngineDead", "NoEnginesError", "MissingPackagesError", "PeerUnavailable")},
}

__all__ = [
    "this_engine", "spawn", "PeerUnavailable",
    "EngBox", "MultiRunResult", "FunctionShippingError", "EngineDead", "NoEnginesError", "MissingPackagesError",
    "PythonEngine", "Namespace", "RemoteObject", "newSubEngine", "stopSubEngine", "detectNCPUs",
    "errors", "SRPyError", "SRPyServerNotFound", "AuthenticationError", "CommunicationError",
    "ConnectionLost", "CallTimeout", "SerializationError", "MessageTooLargeError", "RemoteError", "RemoteSystemExit",
    "TaskTimeout", "TaskAborted",
    "version", "copyright", "__version__",
]

if TYPE_CHECKING:  # what the names are, for type checkers and the API reference
    from . import errors  # noqa: F401
    from .box import EngBox, MultiRunResult  # noqa: F401
    from .client import Namespace, PythonEngine, RemoteObject  # noqa: F401
    from .errors import (AuthenticationError, CallTimeout, CommunicationError, ConnectionLost,  # noqa: F401
                         EngineDead, MessageTooLargeError, MissingPackagesError, NoEnginesError, PeerUnavailable,
                         RemoteError, RemoteSystemExit, SerializationError, SRPyError, SRPyServerNotFound,
                         TaskAborted, TaskTimeout)
    from .functions import FunctionShippingError  # noqa: F401
    from .peers import spawn, this_engine  # noqa: F401
    from .subengine import detectNCPUs, newSubEngine, stopSubEngine  # noqa: F401


def __getattr__(name: str) -> Any:
    """A public name, or a submodule (C{srpy.client}), imported on first use."""
    home = _HOMES.get(name)
    if name.startswith("__"):  # a protocol probe (__wrapped__, __path__ ...), not a name of srpy's
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    if home is not None:
        value = getattr(importlib.import_module("." + home, __name__), name)
    else:
        try:
            value = importlib.import_module("." + name, __name__)
        except ModuleNotFoundError as exc:
            if exc.name != "%s.%s" % (__name__, name):
                raise  # the submodule exists but something it imports does not
            raise AttributeError("module %r has no attribute %r" % (__name__, name)) from None
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
