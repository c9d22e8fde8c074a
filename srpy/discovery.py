"""
Finding engines through a Pyro5 name server.

An engine started with C{srpyapp --ns} registers as C{srpy.engine.<group>.<name>} with metadata
strings that Pyro5's C{yplookup} can filter on: C{srpy}, C{srpy:group=...}, C{srpy:name=...},
C{srpy:host=...}, C{srpy:cores=...}, C{srpy:python=...}, C{srpy:version=...}. So Pyro5's own
tools show them (C{python -m Pyro5.nsc list}, C{python -m Pyro5.nsc yplookup_all srpy}).
The name server itself is found the Pyro5 way: at a given host and port, else on this machine,
else by UDP broadcast on the local network.
"""

import logging
import threading
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from Pyro5 import errors as pyro_errors
from Pyro5.api import Proxy, locate_ns
from Pyro5.nameserver import start_ns

from .errors import SRPyError

log = logging.getLogger("srpy.discovery")

PREFIX = "srpy.engine."
TAG = "srpy"


class NameServerNotFound(SRPyError):
    """No Pyro5 name server could be found."""


def entry_name(group: str, name: str) -> str:
    """
    The name server name of an engine.

    >>> entry_name("", "engine-1@host")
    'srpy.engine.default.engine-1@host'
    """
    return PREFIX + (group or "default") + "." + name


def metadata(info: Dict[str, Any]) -> Set[str]:
    """The metadata strings registered for an engine, from its whoami() description."""
    return {TAG, "srpy:group=%s" % info.get("Group", ""), "srpy:name=%s" % info.get("Name", ""),
            "srpy:host=%s" % info.get("Hostname", ""), "srpy:cores=%s" % info.get("Cores", ""),
            "srpy:python=%s" % info.get("Python Version", ""), "srpy:version=%s" % info.get("srpy Version", "")}


def locate(host: Optional[str] = None, port: Optional[int] = None) -> Proxy:
    """A proxy for the name server (given address, this machine, or broadcast)."""
    try:
        ns = locate_ns(host or "", port)
        ns._pyroBind()
        return ns
    except (pyro_errors.PyroError, OSError) as exc:  # OSError: a broadcast with no route for it, say
        where = "%s:%s" % (host, port) if host else "on this machine or by broadcast"
        raise NameServerNotFound("no Pyro5 name server found %s: %s" % (where, exc)) from None


def register(uri: str, info: Dict[str, Any], host: Optional[str] = None, port: Optional[int] = None) -> str:
    """Register an engine; returns its entry name."""
    name = entry_name(info.get("Group", ""), info.get("Name", ""))
    with locate(host, port) as ns:
        ns.register(name, uri, metadata=metadata(info))
    log.info("registered %s in the name server as %s", uri, name)
    return name


def unregister(name: str, host: Optional[str] = None, port: Optional[int] = None) -> None:
    """Remove an engine's entry (quietly, if the name server is gone)."""
    try:
        with locate(host, port) as ns:
            ns.remove(name)
    except (SRPyError, pyro_errors.PyroError, OSError) as exc:
        log.debug("could not unregister %s: %s", name, exc)


def find(group: Optional[str] = None, host: Optional[str] = None,
         port: Optional[int] = None) -> List[Tuple[str, str, Set[str]]]:
    """Every registered engine (of C{group}, if given): C{[(name, uri, metadata)]}."""
    wanted = {TAG} if group is None else {TAG, "srpy:group=%s" % group}
    with locate(host, port) as ns:
        found = ns.yplookup(meta_all=wanted, return_metadata=True)
    return [(name, str(uri), set(meta)) for name, (uri, meta) in sorted(found.items())]


def remove_entries(names: List[str], host: Optional[str] = None, port: Optional[int] = None) -> None:
    """Remove stale entries (engines that no longer answer)."""
    if not names:
        return
    with locate(host, port) as ns:
        for name in names:
            ns.remove(name)


def start_name_server(host: str = "127.0.0.1", port: int = 9090) -> Tuple[str, Callable[[], None]]:
    """Serve a Pyro5 name server from a thread of this process; returns (uri, stop)."""
    try:
        uri, daemon, broadcast = start_ns(host=host, port=port)
    except OSError as exc:
        raise SRPyError("cannot start a name server on %s:%s: %s" % (host, port, exc.strerror or exc)) from None
    if broadcast is not None:  # its own thread: Pyro5 cannot combine it with a thread-pool daemon's loop
        broadcast.runInThread()
    stopping = threading.Event()
    thread = threading.Thread(target=daemon.requestLoop, args=(lambda: not stopping.is_set(),),
                              name="srpy-nameserver", daemon=True)
    thread.start()
    log.info("name server running at %s", uri)

    def stop() -> None:
        stopping.set()
        daemon.shutdown()
        thread.join(5)
        if broadcast is not None:
            broadcast.close()
        daemon.close()

    return str(uri), stop
