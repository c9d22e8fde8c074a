"""
Every reliance of srpy on Pyro5's internals, in one place: the parts of Pyro5 that it does not
document as its API but srpy needs, each behind a small named function or class here, and
L{check}, which verifies that each one is still there with the shape srpy relies on and names
what changed if not. C{tests/test_pyro5_internals.py} runs it, and an engine runs it once as it
starts (L{check_once}: a warning in its log, naming what changed, before anything misbehaves).

Checked against Pyro5 5.15, 5.16 and 5.17 (L{CHECKED_VERSIONS}; C{setup.py} asks for
C{>=5.15,<6}): L{check} passes on each, and their wheels' sources, compared, differ in these
internals only where srpy does not depend on it (5.15 and 5.16 take the client-disconnect lock in
their thread server, 5.17 inside C{_clientDisconnect}: srpy's server calls it from one thread per
connection, and srpy serves no item streams, which that lock guards; 5.17 turns an C{assert} on
malformed annotations in C{add_payload} into an error, and srpy parses annotations itself before
Pyro5 sees them). No other srpy module touches these names (C{tests/structure/test_structure.py} checks)::

    Pyro5 internal                          why srpy needs it                                       checked
    serializers.serializers,                register srpy's serializer, id 83 (L{register_serializer});  5.15-5.17
    serializers.serializers_by_id           put the checked marshal at id 2 (L{guard_marshal}); find a
                                            serializer by id for a reply (L{serializer}). Pyro5 has no
                                            registration API: these dicts are its registry
    serializers.SerializerBase              base of L{srpy.codec}'s serializer class: its dumps,         5.15-5.17
      (its _convertToBytes too)             dumpsCall, loads, loadsCall are what Pyro5's client and
                                            daemon call
    serializers.MarshalSerializer           subclassed by L{_CheckedMarshal}: loads and loadsCall check  5.15-5.17
      (loads, loadsCall, recreate_classes,  the bytes first (L{srpy.codec.check_marshal}), and
      dict_to_class)                        recreate_classes walks each shared item once (Pyro5's walk
                                            takes 2**n steps on n nested pairs)
    protocol.ReceivingMessage               replaced, process-wide, by L{_GuardedMessage}                5.15-5.17
      (__init__(header, payload=None),      (L{guard_messages}): recv_stub builds it by name; it adds
      add_payload, type, flags, data_size,  the limits Pyro5 lacks (a connect message's size,
      annotations_size; recv_stub)          inflation within the size limit)
    svr_threads.SocketServer_Threadpool     Daemon.__init__ imports it by name when SERVERTYPE is        5.15-5.17
      (config.SERVERTYPE)                   "thread" and takes no server class: L{daemons_served_by}
                                            puts L{srpy.listener.GuardedServer} under that name while
                                            a daemon is created. Its members (L{TRANSPORT_INTERFACE})
                                            are what GuardedServer implements and Daemon calls
    socketutil.SocketConnection             the connection object a daemon takes from its transport     5.15-5.17
                                            server (L{connection})
    Daemon.handleRequest,                   what a transport server calls on its daemon                  5.15-5.17
    Daemon._housekeeping,                   (L{serve_message}, L{housekeeping}, L{client_gone});
    Daemon._clientDisconnect                EngineDaemon overrides handleRequest and hands what its
                                            short path does not serve to Pyro5's own
                                            (L{handle_as_pyro5}), which reads through recv_stub, so
                                            the guards apply
    Daemon._sendExceptionResponse           an error reply in the caller's serializer                    5.15-5.17
                                            (L{send_exception})
    Daemon.objectsById,                     the short path finds the object called                       5.15-5.17
    DaemonObject.get_metadata               (L{registered_object}); the handshake answers with the
                                            object's metadata (L{object_metadata})
    server._get_exposed_members             the short path serves exposed methods only, as Pyro5         5.15-5.17
                                            does (L{exposed_methods})
    callcontext.current_context, written    the short path sets what Pyro5's handleRequest sets          5.15-5.17
                                            (L{enter_call}), so engine code reads the same documented
                                            fields either way
    exception._pyroTraceback                where Pyro5 keeps a remote traceback's text                  5.15-5.17
                                            (L{attach_traceback}, L{copy_traceback})

What srpy uses of Pyro5's documented API stays where it is used: C{api.expose}, C{server.Daemon}
(subclassed, with C{validateHandshake}, Pyro5's hook for it), C{register}, C{requestLoop},
C{shutdown}, C{close}, C{transportServer}; C{Proxy(connected_socket=...)}, C{locate_ns},
C{start_ns}; C{config}; C{errors} (C{format_traceback} included); the documented fields of
C{callcontext.current_context}, read, and its C{response_annotations}; C{protocol}'s C{MSG_*} and
C{FLAGS_*}; C{core.DAEMON_NAME} and C{NAMESERVER_NAME}; C{socketutil.create_socket} and
C{get_ssl_context}.
"""

import contextlib
import inspect
import logging
import socket
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set

import Pyro5
from Pyro5 import callcontext as _callcontext
from Pyro5 import config as _config
from Pyro5 import core as _core
from Pyro5 import errors as _errors
from Pyro5 import protocol as _protocol
from Pyro5 import serializers as _serializers
from Pyro5 import server as _server
from Pyro5 import socketutil as _socketutil
from Pyro5 import svr_threads as _svr_threads
from Pyro5.server import expose as _expose

from . import wire
from .errors import IncompatiblePyro5Error

log = logging.getLogger("srpy.pyro5")

#: the Pyro5 versions whose internals srpy was checked against (L{check} passes on each)
CHECKED_VERSIONS = ("5.15", "5.16", "5.17")
#: what a Pyro5 transport server offers its daemon (Pyro5's thread server's members, all of
#: them): what L{srpy.listener.GuardedServer} implements
TRANSPORT_INTERFACE = ("init", "loop", "events", "combine_loop", "sockets", "selector", "wakeup", "shutdown",
                       "close")
#: ... and the attributes the daemon reads on it
TRANSPORT_ATTRIBUTES = ("locationStr", "sock")
#: what Pyro5's thread server calls on its daemon (srpy's server calls all but C{_handshake}:
#: it runs srpy's own, L{srpy.security.Handshake})
DAEMON_HOOKS = ("handleRequest", "_handshake", "_clientDisconnect", "_housekeeping")
#: the fields of C{current_context} that Pyro5's handleRequest sets for a call
CONTEXT_FIELDS = ("client", "client_sock_addr", "seq", "msg_flags", "serializer_id", "annotations",
                  "response_annotations", "correlation_id")

_MARSHAL_ID = 2
#: Pyro5's own classes, as they were before srpy put its own in their place
_THREAD_SERVER = _svr_threads.SocketServer_Threadpool
_RECEIVING_MESSAGE = _protocol.ReceivingMessage


# -- serializers -----------------------------------------------------------------------------------

def serializer(serializer_id: int) -> Optional[Any]:
    """The serializer this process's Pyro5 reads and writes under C{serializer_id}, or None."""
    return _serializers.serializers_by_id.get(serializer_id)


def register_serializer(instance: Any, name: str) -> None:
    """
    Make this process's Pyro5 (client and daemon side) read and write C{instance}'s format, under
    its C{serializer_id} and C{name}. Idempotent: an id already registered is left as it is.
    """
    if instance.serializer_id not in _serializers.serializers_by_id:
        _serializers.serializers[name] = instance
        _serializers.serializers_by_id[instance.serializer_id] = instance


class _CheckedMarshal(_serializers.MarshalSerializer):
    """Pyro5's marshal serializer, with a check on what it reads (L{guard_marshal})."""

    def __init__(self, check: Callable[[bytes], None]) -> None:
        super().__init__()
        self._check = check

    def loadsCall(self, data: Any) -> Any:
        data = self._convertToBytes(data)
        self._check(data)
        return super().loadsCall(data)

    def loads(self, data: Any) -> Any:
        data = self._convertToBytes(data)
        self._check(data)
        return super().loads(data)

    def recreate_classes(self, literal: Any) -> Any:
        """
        Pyro5's walk over what marshal read, done once for each shared item: marshal shares
        repeated items, and a few hundred bytes of tuples that each hold the previous one twice
        would otherwise take 2**n steps.
        """
        done: Dict[int, Any] = {}

        def walk(value: Any) -> Any:
            kind = type(value)
            if kind is not dict and kind is not list and kind is not tuple and kind is not set:
                return value
            key = id(value)
            if key not in done:
                if kind is dict:
                    done[key] = (self.dict_to_class(value) if "__class__" in value
                                 else {k: walk(v) for k, v in value.items()})
                else:
                    done[key] = kind(walk(v) for v in value)
            return done[key]

        return walk(literal)


def guard_marshal(check: Callable[[bytes], None]) -> None:
    """
    Make this process's Pyro5 read marshal (serializer id 2) only after C{check} passed on the
    bytes (C{check} raises on what it refuses). Idempotent: the first guard installed stays.
    """
    if not isinstance(_serializers.serializers_by_id.get(_MARSHAL_ID), _CheckedMarshal):
        checked = _CheckedMarshal(check)
        _serializers.serializers["marshal"] = _serializers.serializers_by_id[_MARSHAL_ID] = checked


# -- received messages -----------------------------------------------------------------------------

class _GuardedMessage(_RECEIVING_MESSAGE):  # type: ignore[misc,valid-type]
    """
    Pyro5's received message, with two limits Pyro5 lacks: a connect message holds at most
    C{connect_max} bytes (so a client that has not passed the handshake cannot make the engine
    hold more), and a compressed message inflates to at most Pyro5's C{MAX_MESSAGE_SIZE} (Pyro5
    inflates it whole: a megabyte of compressed zeros would take a gigabyte).
    """

    #: set by L{guard_messages}
    connect_max = 16 * 1024
    # what Pyro5's __init__ reads from the header (the fields srpy's limits read and change)
    type: int
    flags: int
    data_size: int
    annotations_size: int

    def __init__(self, header: bytes, payload: Optional[bytes] = None) -> None:
        super().__init__(header)
        size = self.data_size + self.annotations_size
        if self.type == _protocol.MSG_CONNECT and size > self.connect_max:
            raise _errors.ProtocolError("connect message too large (%d, max=%d)" % (size, self.connect_max))
        if payload is not None:
            self.add_payload(payload)

    def add_payload(self, payload: Any) -> None:
        ann_size = self.annotations_size
        if self.flags & _protocol.FLAGS_COMPRESSED and len(payload) == self.data_size + ann_size:
            limit = self.connect_max if self.type == _protocol.MSG_CONNECT else _config.MAX_MESSAGE_SIZE
            try:
                data = wire.inflate(bytes(payload[ann_size:]), max(0, limit - ann_size))
            except wire.ProtocolError as exc:
                raise _errors.ProtocolError("the client sent %s" % exc) from None
            payload = bytes(payload[:ann_size]) + data
            self.flags &= ~_protocol.FLAGS_COMPRESSED
            self.data_size = len(data)
        super().add_payload(payload)


def guard_messages(connect_max: int) -> None:
    """
    Make this process's Pyro5 read every message through L{_GuardedMessage}: connect messages of
    at most C{connect_max} bytes, compressed ones inflated within the size limit.
    """
    _GuardedMessage.connect_max = connect_max
    _protocol.ReceivingMessage = _GuardedMessage  # type: ignore[misc]


# -- the transport server --------------------------------------------------------------------------

_install_lock = threading.Lock()


@contextlib.contextmanager
def daemons_served_by(server_class: type) -> Iterator[None]:
    """
    Within this block (one thread at a time), a Pyro5 daemon being created serves through a
    C{server_class()} (which implements L{TRANSPORT_INTERFACE}), with Pyro5's thread server type.
    Pyro5 picks its transport server class by name inside C{Daemon.__init__} and takes no other:
    this puts C{server_class} under that name for the moment.
    """
    with _install_lock:
        saved, saved_type = _svr_threads.SocketServer_Threadpool, _config.SERVERTYPE
        _svr_threads.SocketServer_Threadpool = server_class  # type: ignore[misc]
        _config.SERVERTYPE = "thread"
        try:
            yield
        finally:
            _svr_threads.SocketServer_Threadpool = saved  # type: ignore[misc]
            _config.SERVERTYPE = saved_type


def connection(sock: socket.socket) -> Any:
    """The connection object a Pyro5 daemon serves, over an accepted socket C{sock}."""
    return _socketutil.SocketConnection(sock)


def serve_message(daemon: Any, conn: Any) -> None:
    """The daemon serves one message from C{conn} (what a transport server asks of it)."""
    daemon.handleRequest(conn)


def housekeeping(daemon: Any) -> None:
    """The daemon's periodic housekeeping (what a transport server asks of it every few seconds)."""
    daemon._housekeeping()


def client_gone(daemon: Any, conn: Any) -> None:
    """Tell the daemon that the client of C{conn} went away (before the connection is closed)."""
    daemon._clientDisconnect(conn)


# -- the daemon ------------------------------------------------------------------------------------

def handle_as_pyro5(daemon: Any, conn: Any) -> None:
    """Serve one message from C{conn} with Pyro5's own C{Daemon.handleRequest} (not an override's)."""
    _server.Daemon.handleRequest(daemon, conn)


def send_exception(daemon: Any, conn: Any, seq: int, serializer_id: int, exc: BaseException) -> None:
    """Reply to call C{seq} on C{conn} with C{exc}, in serializer C{serializer_id}, as Pyro5 does."""
    daemon._sendExceptionResponse(conn, seq, serializer_id, exc, None)


def registered_object(daemon: Any, object_id: str) -> Any:
    """The object C{daemon} serves under C{object_id}, or None."""
    return daemon.objectsById.get(object_id)


def object_metadata(daemon: Any, object_id: str) -> Dict[str, Any]:
    """
    What a Pyro5 handshake tells a client about object C{object_id} (its exposed methods,
    attributes, oneway methods).

    @raise Pyro5.errors.DaemonError: C{daemon} serves no such object.
    """
    return daemon.objectsById[_core.DAEMON_NAME].get_metadata(object_id)


def exposed_methods(obj: Any) -> Set[str]:
    """The names of the methods of C{obj} (or of a class) that a Pyro5 daemon lets clients call."""
    return set(_server._get_exposed_members(obj)["methods"])


def enter_call(conn: Any, seq: int, serializer_id: int, annotations: Dict[str, Any]) -> None:
    """
    Set this thread's C{current_context} for call C{seq} from C{conn}, as Pyro5's handleRequest
    does: no flags, no correlation id, no response annotations yet.
    """
    context = _callcontext.current_context
    context.client = conn
    context.seq = seq
    context.msg_flags = 0
    context.serializer_id = serializer_id
    context.correlation_id = None
    context.response_annotations = {}
    context.annotations = annotations


def attach_traceback(exc: BaseException) -> None:
    """Give C{exc} the text of the traceback being handled, where Pyro5 looks for a remote traceback."""
    exc._pyroTraceback = _errors.format_traceback(detailed=_config.DETAILED_TRACEBACK)  # type: ignore[attr-defined]


def copy_traceback(source: BaseException, target: BaseException) -> None:
    """Give C{target} the remote traceback text of C{source} (None if it has none)."""
    target._pyroTraceback = getattr(source, "_pyroTraceback", None)  # type: ignore[attr-defined]


# -- the check -------------------------------------------------------------------------------------

class _Changed(Exception):
    """One internal is not what srpy relies on: the text says how."""


def _require(condition: Any, text: str) -> None:
    if not condition:
        raise _Changed(text)


def _params(function: Any, expected: Sequence[str], what: str) -> None:
    """C{function} takes C{expected} first, in that order, and nothing else without a default."""
    _require(callable(function), "%s is not callable" % what)
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError) as exc:
        raise _Changed("%s: no signature (%s)" % (what, exc)) from None
    names = [p.name for p in params]
    _require(names[:len(expected)] == list(expected),
             "%s takes (%s), srpy calls it as (%s)" % (what, ", ".join(names), ", ".join(expected)))
    extra = [p.name for p in params[len(expected):]
             if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    _require(not extra, "%s requires %s, which srpy does not pass" % (what, ", ".join(extra)))


def _names_used(function: Any) -> Set[str]:
    """The global, attribute and imported names C{function}'s code uses (nested code included)."""
    names: Set[str] = set()
    todo = [getattr(function, "__code__", None)]
    while todo:
        code = todo.pop()
        if code is not None:
            names.update(code.co_names)
            todo.extend(c for c in code.co_consts if inspect.iscode(c))
    return names


def _check_serializer_tables() -> None:
    tables = (_serializers.serializers, _serializers.serializers_by_id)
    _require(all(isinstance(t, dict) for t in tables), "serializers.serializers or serializers_by_id is not a dict")
    marshal_by_id = _serializers.serializers_by_id.get(_MARSHAL_ID)
    _require(isinstance(marshal_by_id, _serializers.MarshalSerializer), "serializers_by_id[2] is not marshal's")
    _require(_serializers.serializers.get("marshal") is marshal_by_id,
             "serializers['marshal'] and serializers_by_id[2] are not the same serializer")
    _require(wire.JSON_SERIALIZER_ID in _serializers.serializers_by_id, "serializers_by_id has no json (3)")


def _check_serializer_base() -> None:
    base = _serializers.SerializerBase
    _require(inspect.isclass(base), "SerializerBase is not a class")
    for name, expected in (("dumps", ("self", "data")), ("dumpsCall", ("self", "obj", "method", "vargs", "kwargs")),
                           ("loads", ("self", "data")), ("loadsCall", ("self", "data")),
                           ("_convertToBytes", ("self", "data")),
                           ("register_type_replacement", ("object_type", "replacement_function"))):
        _params(getattr(base, name, None), expected, "SerializerBase.%s" % name)
    _require(base._convertToBytes(None, memoryview(b"ab")) == b"ab",  # type: ignore[arg-type]
             "SerializerBase._convertToBytes no longer turns a memoryview into bytes")


def _check_marshal_serializer() -> None:
    cls = _serializers.MarshalSerializer
    _require(inspect.isclass(cls) and issubclass(cls, _serializers.SerializerBase),
             "MarshalSerializer is not a SerializerBase")
    _require(cls.serializer_id == _MARSHAL_ID, "MarshalSerializer.serializer_id is %r, not 2" % (cls.serializer_id,))
    for name, expected in (("loads", ("self", "data")), ("loadsCall", ("self", "data")),
                           ("recreate_classes", ("self", "literal")), ("dict_to_class", ("data",))):
        _params(getattr(cls, name, None), expected, "MarshalSerializer.%s" % name)
    for name in ("loads", "loadsCall"):  # the walk srpy replaces is the one they take
        _require("recreate_classes" in _names_used(getattr(cls, name)),
                 "MarshalSerializer.%s no longer walks what it read with recreate_classes" % name)


def _check_receiving_message() -> None:
    current = _protocol.ReceivingMessage
    _require(current is _RECEIVING_MESSAGE or current is _GuardedMessage,
             "protocol.ReceivingMessage was replaced by %r, neither Pyro5's nor srpy's" % (current,))
    cls = _RECEIVING_MESSAGE
    _params(cls.__init__, ("self", "header", "payload"), "ReceivingMessage.__init__")
    _require(inspect.signature(cls.__init__).parameters["payload"].default is None,
             "ReceivingMessage.__init__'s payload is no longer optional")
    _params(cls.add_payload, ("self", "payload"), "ReceivingMessage.add_payload")
    _require("ReceivingMessage" in _names_used(_protocol.recv_stub),
             "protocol.recv_stub no longer builds its message as ReceivingMessage (by name)")
    message = cls(wire.pack_header(wire.MSG_INVOKE, _MARSHAL_ID, 3, seq=7, flags=wire.FLAGS_ONEWAY))
    fields = {name: getattr(message, name, None)
              for name in ("type", "serializer_id", "flags", "seq", "data_size", "annotations_size")}
    _require(fields == {"type": wire.MSG_INVOKE, "serializer_id": _MARSHAL_ID, "flags": wire.FLAGS_ONEWAY,
                        "seq": 7, "data_size": 3, "annotations_size": 0},
             "ReceivingMessage reads a header as %r" % (fields,))
    message.add_payload(b"abc")
    _require(bytes(message.data) == b"abc", "ReceivingMessage.add_payload no longer sets .data")


def _check_thread_server() -> None:
    cls = _THREAD_SERVER
    if _install_lock.acquire(blocking=False):  # else a daemon is being created: srpy's server is in its place
        try:
            current = _svr_threads.SocketServer_Threadpool
            _require(current is cls, "svr_threads.SocketServer_Threadpool was replaced by %r, not by srpy"
                     % (current,))
        finally:
            _install_lock.release()
    _require(inspect.isclass(cls), "svr_threads.SocketServer_Threadpool is not a class")
    used = _names_used(_server.Daemon.__init__)
    _require({"svr_threads", "SocketServer_Threadpool"} <= used,
             "Daemon.__init__ no longer takes its thread server as svr_threads.SocketServer_Threadpool")
    _require(isinstance(getattr(_config, "SERVERTYPE", None), str), "config.SERVERTYPE is gone")
    members = {name for name in vars(cls) if not name.startswith("_")}
    _require(members == set(TRANSPORT_INTERFACE),
             "Pyro5's transport server now has %s, srpy's implements %s"
             % (", ".join(sorted(members)), ", ".join(TRANSPORT_INTERFACE)))
    _params(cls.init, ("self", "daemon", "host", "port", "unixsocket"), "SocketServer_Threadpool.init")
    _params(cls.loop, ("self", "loopCondition"), "SocketServer_Threadpool.loop")


def _check_transport_calls() -> None:
    """What Daemon calls on its transport server, and its thread server on the daemon: what srpy's server offers."""
    read = _attributes_after({"transportServer"}, [_server.Daemon])
    known = set(TRANSPORT_INTERFACE) | set(TRANSPORT_ATTRIBUTES)
    _require(read <= known, "Daemon now uses transportServer.%s" % ", transportServer.".join(sorted(read - known)))
    classes = [c for c in vars(_svr_threads).values() if inspect.isclass(c) and c.__module__ == _svr_threads.__name__]
    called = _attributes_after({"daemon", "pyroDaemon"}, classes)
    _require(called <= set(DAEMON_HOOKS),
             "Pyro5's thread server now uses daemon.%s" % ", daemon.".join(sorted(called - set(DAEMON_HOOKS))))


def _attributes_after(owners: Set[str], classes: Sequence[type]) -> Set[str]:
    """The attributes the methods of C{classes} take of an attribute named in C{owners} (C{self.owner.X})."""
    import dis  # only for this scan (a few ms): not at an engine's start
    found: Set[str] = set()
    for cls in classes:
        for member in vars(cls).values():
            function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            todo = [getattr(function, "__code__", None)]
            while todo:
                code = todo.pop()
                if code is None:
                    continue
                todo.extend(c for c in code.co_consts if inspect.iscode(c))
                if owners.isdisjoint(code.co_names):
                    continue
                steps = list(dis.get_instructions(code))
                for first, then in zip(steps, steps[1:]):
                    if first.opname in _LOADS and first.argval in owners and then.opname in _LOADS:
                        found.add(then.argval)
    return found


_LOADS = ("LOAD_ATTR", "LOAD_METHOD")


def _check_socket_connection() -> None:
    cls = _socketutil.SocketConnection
    _params(cls.__init__, ("self", "sock"), "socketutil.SocketConnection.__init__")
    for name, expected in (("send", ("self", "data")), ("recv", ("self", "size")), ("close", ("self",))):
        _params(getattr(cls, name, None), expected, "SocketConnection.%s" % name)
    ours, theirs = socket.socketpair()
    try:
        conn = connection(ours)
        _require(conn.sock is ours, "SocketConnection no longer keeps its socket as .sock")
        conn.close()
    finally:
        ours.close()
        theirs.close()


def _check_daemon_hooks() -> None:
    daemon = _server.Daemon
    for name, expected in (("handleRequest", ("self", "conn")), ("_housekeeping", ("self",)),
                           ("_clientDisconnect", ("self", "conn")),
                           ("_sendExceptionResponse", ("self", "connection", "seq", "serializer_id", "exc_value",
                                                       "tbinfo"))):
        _params(getattr(daemon, name, None), expected, "Daemon.%s" % name)
    _require("recv_stub" in _names_used(daemon.handleRequest),
             "Daemon.handleRequest no longer reads its message with protocol.recv_stub")


def _check_object_registry() -> None:
    _require("objectsById" in _names_used(_server.Daemon.__init__), "Daemon.__init__ no longer sets objectsById")
    _require(isinstance(_core.DAEMON_NAME, str), "core.DAEMON_NAME is not a str")
    _params(_server.DaemonObject.get_metadata, ("self", "objectId"), "DaemonObject.get_metadata")
    default = inspect.signature(_server.Daemon.__init__).parameters.get("interface")
    _require(default is not None and default.default is _server.DaemonObject,
             "Daemon.__init__ no longer serves a DaemonObject by default")


def _check_exposed_members() -> None:
    _params(_server._get_exposed_members, ("obj",), "server._get_exposed_members")

    class Probe:
        @_expose
        def shown(self) -> None:
            """exposed"""

        def hidden(self) -> None:
            """not exposed"""

    methods = exposed_methods(Probe())
    _require(methods == {"shown"}, "server._get_exposed_members(...)['methods'] of a probe is %r" % (methods,))


def _check_call_context() -> None:
    fresh = type(_callcontext.current_context)()
    missing = [name for name in CONTEXT_FIELDS if not hasattr(fresh, name)]
    _require(not missing, "callcontext.current_context has no %s" % ", ".join(missing))
    _require(isinstance(_callcontext.current_context, threading.local), "current_context is no longer per thread")


def _check_traceback_attribute() -> None:
    _params(_errors.format_traceback, ("ex_type", "ex_value", "ex_tb", "detailed"), "errors.format_traceback")
    consts = getattr(_errors.get_pyro_traceback, "__code__", None)
    _require(consts is not None and "_pyroTraceback" in _strings_in(consts),
             "errors.get_pyro_traceback no longer reads an exception's _pyroTraceback")


def _strings_in(code: Any) -> Set[str]:
    found: Set[str] = set()
    todo = [code]
    while todo:
        current = todo.pop()
        for value in current.co_consts:
            if isinstance(value, str):
                found.add(value)
            elif inspect.iscode(value):
                todo.append(value)
    return found


#: (the internal, as in the module text's table, and its check)
CHECKS: List[Any] = [
    ("serializers.serializers, serializers_by_id", _check_serializer_tables),
    ("serializers.SerializerBase", _check_serializer_base),
    ("serializers.MarshalSerializer", _check_marshal_serializer),
    ("protocol.ReceivingMessage", _check_receiving_message),
    ("svr_threads.SocketServer_Threadpool", _check_thread_server),
    ("svr_threads.SocketServer_Threadpool, Daemon (what each calls on the other)", _check_transport_calls),
    ("socketutil.SocketConnection", _check_socket_connection),
    ("Daemon.handleRequest, _housekeeping, _clientDisconnect, _sendExceptionResponse", _check_daemon_hooks),
    ("Daemon.objectsById, DaemonObject.get_metadata", _check_object_registry),
    ("server._get_exposed_members", _check_exposed_members),
    ("callcontext.current_context", _check_call_context),
    ("exception._pyroTraceback", _check_traceback_attribute),
]


#: the checks that scan Pyro5's code (a few ms): run by L{check}, not by L{check_once}
_SCANS = (_check_transport_calls,)


def check(scan: bool = True) -> None:
    """
    Verify that every Pyro5 internal srpy relies on (the module text's table) is still there with
    the shape srpy relies on; with C{scan}, also scan Pyro5's code for what its daemon and thread
    server call on each other.

    @raise IncompatiblePyro5Error: one or more changed; the text names each, and how.
    """
    problems = []
    for name, checker in CHECKS:
        if not scan and checker in _SCANS:
            continue
        try:
            checker()
        except _Changed as exc:
            problems.append("%s: %s" % (name, exc))
        except Exception as exc:  # an internal gone altogether (AttributeError, KeyError ...) is a change too
            problems.append("%s: %s: %s" % (name, type(exc).__name__, exc))
    if problems:
        raise IncompatiblePyro5Error(
            "Pyro5 %s changed what srpy relies on (srpy was checked against Pyro5 %s; see srpy/_pyro5.py): %s"
            % (getattr(Pyro5, "__version__", "?"), ", ".join(CHECKED_VERSIONS), "; ".join(problems)))


_checked = threading.Event()


def check_once() -> None:
    """
    L{check} without its code scans, once per process (about a millisecond): what changed goes to
    the log as a warning, and the engine serves on (a change may be harmless; the warning says
    where to look if it is not).
    """
    if _checked.is_set():
        return
    _checked.set()
    try:
        check(scan=False)
    except IncompatiblePyro5Error as exc:
        log.warning("%s", exc)
