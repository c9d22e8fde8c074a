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
"""

__version__ = "0.3.0"
version = __version__
copyright = "Copyright (c) 2009, 2026 the srpy developers. BSD-3-Clause."

from . import errors  # noqa: E402
from .client import PythonEngine, Namespace, RemoteObject  # noqa: E402
from .errors import (SRPyError, SRPyServerNotFound, AuthenticationError, CommunicationError,  # noqa: E402
                     ConnectionLost, CallTimeout, SerializationError, MessageTooLargeError, RemoteError,
                     RemoteSystemExit, TaskTimeout, TaskAborted, EngineDead, NoEnginesError, MissingPackagesError,
                     PeerUnavailable)
from .launcher import newSubEngine, stopSubEngine, detectNCPUs  # noqa: E402
from .box import EngBox, MultiRunResult  # noqa: E402
from .functions import FunctionShippingError  # noqa: E402
from .peers import this_engine, spawn  # noqa: E402

__all__ = [
    "this_engine", "spawn", "PeerUnavailable",
    "EngBox", "MultiRunResult", "FunctionShippingError", "EngineDead", "NoEnginesError", "MissingPackagesError",
    "PythonEngine", "Namespace", "RemoteObject", "newSubEngine", "stopSubEngine", "detectNCPUs",
    "errors", "SRPyError", "SRPyServerNotFound", "AuthenticationError", "CommunicationError",
    "ConnectionLost", "CallTimeout", "SerializationError", "MessageTooLargeError", "RemoteError", "RemoteSystemExit",
    "TaskTimeout", "TaskAborted",
    "version", "copyright", "__version__",
]
