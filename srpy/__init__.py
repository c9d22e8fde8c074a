"""
srpy - Simple Remote Python: run Python on every core of every machine you have.

Every engine is a process holding one persistent Python namespace, served over Pyro5. This module
is the public face of the package; everything a user needs is named here.

 - L{PythonEngine<srpy.client.PythonEngine>}: a client for one engine (SRPy's API).
 - L{EngBox<srpy.box.EngBox>}: many engines as one container and one C{concurrent.futures.Executor}.
 - L{newSubEngine<srpy.subengine.newSubEngine>}, L{stopSubEngine<srpy.subengine.stopSubEngine>}: start and
   stop a local engine process from Python.
 - L{detectNCPUs<srpy.subengine.detectNCPUs>}: the number of usable cores.
 - L{set_forward_output<srpy.forwarding.set_forward_output>}: whether clients print what their
   engines print (on by default).
 - L{this_engine<srpy.peers.this_engine>}, L{spawn<srpy.peers.spawn>}: for code running on an engine, its
   peers, messages, shared data and work sharing (L{srpy.peers}).
 - C{%load_ext srpy} in IPython or Jupyter: magics that run cells on a box's engines (C{%%px}), push
   and pull variables (L{srpy.magics}; needs IPython: C{pip install srpy[notebook]}).
 - L{analyze<srpy.analysis.analyze>}: what a script, module or function imports, and what each import is here
   (standard library, an installed distribution and its version, your own module, missing).
 - L{SSHCluster<srpy.cluster.SSHCluster>}: engines on other hosts, started over SSH with nothing installed there.
 - L{srpy.lite}: a dependency-free client that also runs on Jython 2.7.
 - L{srpy.errors}: every exception srpy raises.

The names load lazily (PEP 562): C{import srpy.lite} or C{import srpy.errors} loads only what
they need, not Pyro5's server and the engine; C{srpy.EngBox} imports L{srpy.box} when first used.

The public modules are this one, L{srpy.errors}, L{srpy.client}, L{srpy.box}, L{srpy.peers},
L{srpy.cluster}, L{srpy.lite} and L{srpy.wire} (the protocol). Every other module is srpy's own machinery, free to
change (doc/architecture.md maps them); the API reference lists them as private.
"""

import importlib as _importlib
import sys as _sys
from typing import TYPE_CHECKING as _TYPE_CHECKING, Any as _Any, Dict as _Dict, List as _List

from ._version import __version__, copyright

if _TYPE_CHECKING:  # what type checkers and readers see; at run time, __getattr__ below imports on demand
    from . import errors
    from .analysis import analyze
    from .box import EngBox, MultiRunResult
    from .cluster import SSHCluster
    from .client import Namespace, PythonEngine, RemoteObject
    from .errors import (AnalysisError, AuthenticationError, CallTimeout, CellError, CellInterrupted,
                         ClusterHostError, CommunicationError, ConnectionLost, EngineDead, EnvironmentConflict,
                         InstallError, InvalidRequirement, MessageTooLargeError, MissingPackagesError,
                         NoEnginesError, PeerUnavailable, RemoteError, RemoteSystemExit, SerializationError,
                         SRPyError, SRPyServerNotFound, TaskAborted, TaskTimeout)
    from .functions import FunctionShippingError
    from .subengine import detectNCPUs, newSubEngine, stopSubEngine
    from .peers import spawn, this_engine
    from .forwarding import set_forward_output

version = __version__

#: every public name, and the module it lives in (imported at its first use)
_HOMES: _Dict[str, str] = {
    "PythonEngine": "client", "Namespace": "client", "RemoteObject": "client",
    "newSubEngine": "subengine", "stopSubEngine": "subengine", "detectNCPUs": "subengine",
    "EngBox": "box", "MultiRunResult": "box",
    "FunctionShippingError": "functions",
    "this_engine": "peers", "spawn": "peers",
    "analyze": "analysis",
    "set_forward_output": "forwarding",
    "SSHCluster": "cluster",
}
_HOMES.update(dict.fromkeys([
    "SRPyError", "SRPyServerNotFound", "AuthenticationError", "CommunicationError", "ConnectionLost", "CallTimeout",
    "SerializationError", "MessageTooLargeError", "RemoteError", "RemoteSystemExit", "TaskTimeout", "TaskAborted",
    "EngineDead", "NoEnginesError", "MissingPackagesError", "PeerUnavailable", "AnalysisError",
    "InvalidRequirement", "InstallError", "EnvironmentConflict", "ClusterHostError", "CellError",
    "CellInterrupted"], "errors"))

__all__ = [
    "this_engine", "spawn", "PeerUnavailable",
    "analyze", "AnalysisError",
    "SSHCluster", "ClusterHostError",
    "EngBox", "MultiRunResult", "FunctionShippingError", "EngineDead", "NoEnginesError", "MissingPackagesError",
    "InvalidRequirement", "InstallError", "EnvironmentConflict",
    "PythonEngine", "Namespace", "RemoteObject", "newSubEngine", "stopSubEngine", "detectNCPUs",
    "set_forward_output",
    "errors", "SRPyError", "SRPyServerNotFound", "AuthenticationError", "CommunicationError",
    "ConnectionLost", "CallTimeout", "SerializationError", "MessageTooLargeError", "RemoteError", "RemoteSystemExit",
    "TaskTimeout", "TaskAborted", "CellError", "CellInterrupted",
    "version", "copyright", "__version__",
]


def load_ipython_extension(ipython: _Any) -> None:
    """C{%load_ext srpy}: IPython calls this; the magics live in L{srpy.magics} (imported now, with IPython)."""
    from . import magics

    magics.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: _Any) -> None:
    """C{%unload_ext srpy}: IPython calls this (see L{srpy.magics})."""
    from . import magics

    magics.unload_ipython_extension(ipython)


def __getattr__(name: str) -> _Any:
    """A public name, or a submodule (C{srpy.errors}, C{srpy.lite}, ...), imported at its first use."""
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(_importlib.import_module("." + home, __name__), name)
    elif not name.startswith("__"):
        try:
            value = _importlib.import_module("." + name, __name__)
        except ModuleNotFoundError as exc:
            if exc.name != __name__ + "." + name:  # the submodule exists, but something it imports does not
                raise
            raise AttributeError("module %r has no attribute %r" % (__name__, name)) from None
    else:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    globals()[name] = value  # once loaded, a plain attribute: no second lookup
    return value


def __dir__() -> _List[str]:
    """The public names, the submodules loaded so far and the module's own dunders."""
    loaded = [name.rpartition(".")[2] for name in list(_sys.modules) if name.startswith(__name__ + ".")]
    return sorted(set(__all__) | set(loaded) | {name for name in globals() if name.startswith("__")})
