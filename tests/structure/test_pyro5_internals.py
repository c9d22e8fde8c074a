"""
srpy/_pyro5.py, the one module that relies on Pyro5's internals: its check passes on the installed
Pyro5 and fails loudly, naming the internal, when one changes; each of its functions does what
srpy needs, in process over real sockets (an in-process Pyro5 daemon, a socket pair); and an
engine process runs with its guards installed.

Monkeypatching Pyro5 here tests srpy's detector of a changed Pyro5, not srpy's use of the wire:
every patch is undone when its test ends.
"""

import marshal
import socket
import threading
import time
import zlib

import Pyro5
import pytest
from Pyro5 import callcontext, config, errors as pyro_errors, protocol, serializers, server, svr_threads
from Pyro5.api import Proxy, expose

from srpy import _pyro5, listener, wire
from srpy.errors import IncompatiblePyro5Error, SRPyError
from srpy.security import SecureDaemon


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "still not so after %s s" % timeout
        time.sleep(0.01)


@pytest.fixture
def own_tables(monkeypatch):
    """Pyro5's serializer tables as copies for this test (and its ReceivingMessage restored after)."""
    monkeypatch.setattr(serializers, "serializers", dict(serializers.serializers))
    monkeypatch.setattr(serializers, "serializers_by_id", dict(serializers.serializers_by_id))
    monkeypatch.setattr(protocol, "ReceivingMessage", protocol.ReceivingMessage)


@pytest.fixture
def pair():
    """(a Pyro5 connection over one end of a socket pair, the other end)."""
    ours, theirs = socket.socketpair()
    ours.settimeout(30)
    theirs.settimeout(30)
    conn = _pyro5.connection(ours)
    yield conn, theirs
    conn.close()  # (closes ours)
    theirs.close()


def in_a_thread(function, *args):
    """Run C{function(*args)} in a thread of its own, as a daemon's worker would (Pyro5's call context
    is per thread: what it keeps goes with the thread), and return its result or raise its error."""
    outcome = {}

    def run():
        try:
            outcome["result"] = function(*args)
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "still running after 30 s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def read_message(sock):
    """(msgtype, serializer_id, flags, seq, payload) of the next message on C{sock}."""
    header = _exactly(sock, wire.HEADER.size)
    msgtype, serializer_id, flags, seq, data_size, ann_size = wire.parse_header(header)
    payload = _exactly(sock, data_size + ann_size)
    return msgtype, serializer_id, flags, seq, payload[ann_size:]


def _exactly(sock, size):
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the other end closed"
        data += chunk
    return data


class Thing:
    @expose
    def shown(self, x):
        return x * 2

    def hidden(self):
        return "never"


# -- the check ---------------------------------------------------------------------------------------

def test_check_passes_on_the_installed_pyro5():
    _pyro5.check()
    _pyro5.check(scan=False)


def test_the_installed_pyro5_is_one_srpy_was_checked_against():
    """A new Pyro5: run check() (and the tests) against it, then add it to CHECKED_VERSIONS and the table."""
    assert Pyro5.__version__ in _pyro5.CHECKED_VERSIONS, (Pyro5.__version__, _pyro5.CHECKED_VERSIONS)
    for version in _pyro5.CHECKED_VERSIONS:
        assert version in _pyro5.__doc__, version


def test_the_table_names_every_internal_that_is_checked():
    table = _pyro5.__doc__
    for name, _ in _pyro5.CHECKS:
        for part in name.split(" (")[0].split(", "):
            assert part.split(".")[-1] in table, (name, part)


def _transport_server_calls_a_new_hook(monkeypatch):
    def handleConnection(self):  # a Pyro5 whose thread server asks its daemon for something new
        return self.daemon._on_connect(self.csock)
    monkeypatch.setattr(svr_threads.ClientConnectionJob, "handleConnection", handleConnection)


def _daemon_uses_a_new_transport_member(monkeypatch):
    def events(self, eventsockets):
        return self.transportServer.handle_events(eventsockets)
    monkeypatch.setattr(server.Daemon, "events", events)


def _recv_stub_builds_another_message(monkeypatch):
    def recv_stub(connection, accepted_msgtypes=None):
        return protocol.SendingMessage(0, 0, 0, 0, b"")
    monkeypatch.setattr(protocol, "recv_stub", recv_stub)


def _call_context_lost_a_field(monkeypatch):
    def __init__(self):
        self.client = None  # and nothing else
    monkeypatch.setattr(type(callcontext.current_context), "__init__", __init__)


#: (what changes in Pyro5, how to change it, what the error must name)
CHANGES = [
    ("the exposed-members helper is gone",
     lambda mp: mp.delattr(server, "_get_exposed_members"), "server._get_exposed_members"),
    ("the serializer table is renamed",
     lambda mp: mp.delattr(serializers, "serializers_by_id"), "serializers_by_id"),
    ("ReceivingMessage takes a new argument",
     lambda mp: mp.setattr(protocol.ReceivingMessage, "__init__", lambda self, header, payload, strict: None),
     "ReceivingMessage.__init__"),
    ("recv_stub no longer builds ReceivingMessage", _recv_stub_builds_another_message, "recv_stub"),
    ("marshal's walk is renamed",
     lambda mp: mp.delattr(serializers.SerializerBase, "recreate_classes"), "MarshalSerializer.recreate_classes"),
    ("_convertToBytes is gone",
     lambda mp: mp.delattr(serializers.SerializerBase, "_convertToBytes"), "SerializerBase._convertToBytes"),
    ("the thread server gains a member",
     lambda mp: mp.setattr(svr_threads.SocketServer_Threadpool, "serve_forever", lambda self: None, raising=False),
     "serve_forever"),
    ("the thread server loses a member",
     lambda mp: mp.delattr(svr_threads.SocketServer_Threadpool, "wakeup"), "SocketServer_Threadpool"),
    ("the thread server calls a new daemon hook", _transport_server_calls_a_new_hook, "daemon._on_connect"),
    ("the daemon uses a new transport member", _daemon_uses_a_new_transport_member, "transportServer.handle_events"),
    ("the error reply takes other arguments",
     lambda mp: mp.setattr(server.Daemon, "_sendExceptionResponse", lambda self, conn, exc: None),
     "Daemon._sendExceptionResponse"),
    ("the housekeeping hook is gone", lambda mp: mp.delattr(server.Daemon, "_housekeeping"), "Daemon._housekeeping"),
    ("the connection class takes other arguments",
     lambda mp: mp.setattr(Pyro5.socketutil.SocketConnection, "__init__", lambda self, transport, sock: None),
     "SocketConnection.__init__"),
    ("get_metadata is renamed", lambda mp: mp.delattr(server.DaemonObject, "get_metadata"), "get_metadata"),
    ("the call context lost a field", _call_context_lost_a_field, "current_context has no client_sock_addr"),
    ("the remote traceback moves",
     lambda mp: mp.setattr(pyro_errors, "get_pyro_traceback", lambda *args: []), "_pyroTraceback"),
    ("someone else replaced ReceivingMessage",
     lambda mp: mp.setattr(protocol, "ReceivingMessage", type("Other", (), {})), "replaced by"),
]


@pytest.mark.parametrize("change, apply, named", CHANGES, ids=[c[0] for c in CHANGES])
def test_check_fails_loudly_naming_what_changed(monkeypatch, change, apply, named):
    apply(monkeypatch)
    with pytest.raises(IncompatiblePyro5Error) as caught:
        _pyro5.check()
    text = str(caught.value)
    assert named in text, text
    assert "Pyro5 %s changed what srpy relies on" % Pyro5.__version__ in text and "5.15" in text, text
    assert "\n" not in text, text
    monkeypatch.undo()
    _pyro5.check()  # the detector, not Pyro5, was changed: all is back


def test_check_names_every_change_at_once(monkeypatch):
    monkeypatch.delattr(server, "_get_exposed_members")
    monkeypatch.delattr(server.Daemon, "_clientDisconnect")
    with pytest.raises(IncompatiblePyro5Error) as caught:
        _pyro5.check()
    assert "_get_exposed_members" in str(caught.value) and "Daemon._clientDisconnect" in str(caught.value)


def test_check_once_warns_in_the_log_and_lets_the_engine_serve_on(monkeypatch, caplog):
    monkeypatch.setattr(_pyro5, "_checked", threading.Event())
    monkeypatch.delattr(server, "_get_exposed_members")
    with caplog.at_level("WARNING", logger="srpy.pyro5"):
        _pyro5.check_once()
        _pyro5.check_once()  # once per process
    warnings = [r.getMessage() for r in caplog.records if r.name == "srpy.pyro5"]
    assert len(warnings) == 1 and "_get_exposed_members" in warnings[0], warnings


def test_the_quick_check_leaves_out_the_code_scans(monkeypatch):
    _transport_server_calls_a_new_hook(monkeypatch)
    _pyro5.check(scan=False)  # what an engine runs as it starts: no scan of Pyro5's code
    with pytest.raises(IncompatiblePyro5Error):
        _pyro5.check()


# -- serializers ---------------------------------------------------------------------------------------

class Plain(serializers.JsonSerializer):
    """Pyro5's json under another id: a serializer that Pyro5 knows only once it is registered."""

    serializer_id = 250


def test_serializer_finds_one_by_id():
    assert isinstance(_pyro5.serializer(3), serializers.JsonSerializer)
    assert _pyro5.serializer(249) is None


def test_register_serializer_fills_both_tables_once(own_tables):
    first, second = Plain(), Plain()
    _pyro5.register_serializer(first, "plain")
    _pyro5.register_serializer(second, "plain")
    assert serializers.serializers["plain"] is first and serializers.serializers_by_id[250] is first
    assert _pyro5.serializer(250) is first


def test_a_pyro5_daemon_serves_a_registered_serializer(own_tables, pair):
    """The registry is what Pyro5's daemon reads: a call in serializer 250 is answered in it."""
    daemon = server.Daemon(host="127.0.0.1", port=0)
    conn, theirs = pair
    try:
        daemon.register(Thing(), "thing")
        _pyro5.register_serializer(Plain(), "plain")
        theirs.sendall(wire.pack_message(wire.MSG_INVOKE, 250, Plain().dumpsCall("thing", "shown", (21,), {}), 3))
        in_a_thread(_pyro5.handle_as_pyro5, daemon, conn)
        msgtype, serializer_id, flags, seq, body = read_message(theirs)
        assert (msgtype, serializer_id, seq, body) == (wire.MSG_RESULT, 250, 3, b"42")
    finally:
        daemon.close()


def test_guard_marshal_checks_what_marshal_reads(own_tables):
    seen = []

    def check(data):
        seen.append(type(data))
        if data == marshal.dumps("refused"):
            raise ValueError("refused by the check")

    _pyro5.guard_marshal(check)
    _pyro5.guard_marshal(lambda data: None)  # idempotent: the first guard stays
    guarded = _pyro5.serializer(2)
    assert guarded is serializers.serializers["marshal"]
    assert guarded.loads(memoryview(marshal.dumps([1, {"a": 2}]))) == [1, {"a": 2}]
    assert guarded.loadsCall(marshal.dumps(("obj", "m", (1,), {}))) == ("obj", "m", (1,), {})
    assert seen == [bytes, bytes]
    with pytest.raises(ValueError, match="refused by the check"):
        guarded.loads(marshal.dumps("refused"))


def test_the_guarded_marshal_walks_each_shared_item_once(own_tables):
    """Pyro5's walk would take 2**64 steps on these few hundred bytes (the test would time out)."""
    _pyro5.guard_marshal(lambda data: None)
    value = ()
    for _ in range(64):
        value = (value, value)
    data = marshal.dumps(value)
    assert len(data) < 1000
    assert _pyro5.serializer(2).loads(data)[0][0][0] is not None


# -- received messages --------------------------------------------------------------------------------

def test_guard_messages_limits_connect_messages_through_recv_stub(own_tables, pair):
    _pyro5.guard_messages(100)
    conn, theirs = pair
    theirs.sendall(wire.pack_header(wire.MSG_CONNECT, 3, 200))
    with pytest.raises(pyro_errors.ProtocolError, match=r"connect message too large \(200, max=100\)"):
        protocol.recv_stub(conn)


def test_guard_messages_inflates_within_the_size_limit(own_tables, pair, monkeypatch):
    _pyro5.guard_messages(100)
    monkeypatch.setattr(config, "MAX_MESSAGE_SIZE", 1 << 20)
    conn, theirs = pair
    small = zlib.compress(b"x" * 1000)
    theirs.sendall(wire.pack_message(wire.MSG_INVOKE, 2, small, 4, wire.FLAGS_COMPRESSED))
    message = protocol.recv_stub(conn)
    assert bytes(message.data) == b"x" * 1000 and not message.flags & wire.FLAGS_COMPRESSED
    assert message.data_size == 1000
    bomb = zlib.compress(b"\0" * (2 << 20))  # 2 MB of zeros in a few KB
    theirs.sendall(wire.pack_message(wire.MSG_INVOKE, 2, bomb, 5, wire.FLAGS_COMPRESSED))
    with pytest.raises(pyro_errors.ProtocolError, match="the client sent compressed data that inflates to more"):
        protocol.recv_stub(conn)


# -- the transport server and the daemon ------------------------------------------------------------

class Recording(server.Daemon):
    """A plain Pyro5 daemon that notes the clients that went away (Pyro5's documented hook)."""

    def __init__(self, *args, **kwargs):
        self.gone = []
        super().__init__(*args, **kwargs)

    def clientDisconnect(self, conn):
        self.gone.append(conn)


def test_daemons_served_by_puts_a_server_class_in_place_for_the_moment():
    original, servertype = svr_threads.SocketServer_Threadpool, config.SERVERTYPE
    with _pyro5.daemons_served_by(listener.GuardedServer):
        daemon = server.Daemon(host="127.0.0.1", port=0)
        assert config.SERVERTYPE == "thread"
    try:
        assert isinstance(daemon.transportServer, listener.GuardedServer)
        assert svr_threads.SocketServer_Threadpool is original and config.SERVERTYPE == servertype
    finally:
        daemon.close()
    plain = server.Daemon(host="127.0.0.1", port=0)
    try:
        assert isinstance(plain.transportServer, original)
    finally:
        plain.close()


def test_srpys_server_implements_pyro5s_transport_interface():
    for name in _pyro5.TRANSPORT_INTERFACE:
        assert hasattr(listener.GuardedServer, name), name
    assert listener.GuardedServer.runs_srpy_handshake


def test_a_pyro5_proxy_is_served_through_srpys_server():
    """handshake (object_metadata), connection, serve_message, housekeeping and client_gone, for real."""
    with listener.serving_daemons():
        daemon = Recording(host="127.0.0.1", port=0)
    uri = daemon.register(Thing(), "thing")
    thread = threading.Thread(target=daemon.requestLoop, daemon=True)
    thread.start()
    try:
        with Proxy(uri) as proxy:
            assert proxy.shown(21) == 42
            assert proxy._pyroMethods == {"shown"}  # the handshake's metadata
            with pytest.raises(AttributeError):
                proxy.hidden()
        wait_for(lambda: len(daemon.gone) == 1)
        _pyro5.housekeeping(daemon)
    finally:
        daemon.shutdown()
        thread.join(30)
        daemon.close()


def test_the_registry_functions():
    daemon = server.Daemon(host="127.0.0.1", port=0)
    try:
        thing = Thing()
        daemon.register(thing, "thing")
        assert _pyro5.registered_object(daemon, "thing") is thing
        assert _pyro5.registered_object(daemon, "nothing") is None
        assert _pyro5.object_metadata(daemon, "thing")["methods"] == {"shown"}
        with pytest.raises(pyro_errors.DaemonError, match="unknown object"):
            _pyro5.object_metadata(daemon, "nothing")
        assert _pyro5.exposed_methods(thing) == _pyro5.exposed_methods(Thing) == {"shown"}
    finally:
        daemon.close()


def test_handle_as_pyro5_and_send_exception_answer_on_the_connection(pair):
    daemon = server.Daemon(host="127.0.0.1", port=0)
    conn, theirs = pair
    try:
        theirs.sendall(wire.pack_message(wire.MSG_PING, 2, b"ping", 9))
        in_a_thread(_pyro5.handle_as_pyro5, daemon, conn)
        msgtype, serializer_id, _, seq, _ = read_message(theirs)
        assert (msgtype, serializer_id, seq) == (wire.MSG_PING, 2, 9)
        in_a_thread(_pyro5.send_exception, daemon, conn, 5, wire.JSON_SERIALIZER_ID, ValueError("no such thing"))
        msgtype, serializer_id, flags, seq, body = read_message(theirs)
        assert (msgtype, serializer_id, seq) == (wire.MSG_RESULT, wire.JSON_SERIALIZER_ID, 5)
        assert flags & wire.FLAGS_EXCEPTION and b"no such thing" in body and b"ValueError" in body
    finally:
        daemon.close()


def test_client_gone_tells_the_daemon(pair):
    daemon = Recording(host="127.0.0.1", port=0)
    conn, _ = pair
    try:
        _pyro5.client_gone(daemon, conn)
        assert daemon.gone == [conn]
    finally:
        daemon.close()


def test_enter_call_sets_what_pyro5s_handle_request_sets():
    def call():
        _pyro5.enter_call("conn", 7, 83, {"SRAW": b""})
        context = callcontext.current_context
        return {name: getattr(context, name) for name in _pyro5.CONTEXT_FIELDS}

    seen = in_a_thread(call)  # current_context is per thread: this one's is fresh
    assert seen == {"client": "conn", "client_sock_addr": None, "seq": 7, "msg_flags": 0, "serializer_id": 83,
                    "annotations": {"SRAW": b""}, "response_annotations": {}, "correlation_id": None}


def test_attach_and_copy_traceback_where_pyro5_looks():
    try:
        1 / 0
    except ZeroDivisionError as exc:
        _pyro5.attach_traceback(exc)
        caught = exc
    assert "ZeroDivisionError" in "".join(caught._pyroTraceback)
    stand_in = RuntimeError("stand-in")
    _pyro5.copy_traceback(caught, stand_in)
    assert stand_in._pyroTraceback == caught._pyroTraceback
    assert "Remote traceback" in "".join(pyro_errors.get_pyro_traceback(RuntimeError, stand_in, None))


# -- the secure daemon, now that Pyro5's handshake hook is no longer overridden ----------------------

def test_a_secure_daemon_refuses_to_exist_outside_srpys_server():
    """Pyro5's own server would run Pyro5's handshake, which knows no secret: refused, loudly."""
    with pytest.raises(SRPyError, match="serves only through srpy.listener.serving_daemons"):
        SecureDaemon(host="127.0.0.1", port=0, secret="s3cret")
    with listener.serving_daemons():
        daemon = SecureDaemon(host="127.0.0.1", port=0, secret="s3cret")
    daemon.close()


# -- an engine process -------------------------------------------------------------------------------

def test_an_engine_runs_with_the_guards_installed(engine):
    probe = ("(type(__import__('Pyro5.serializers', fromlist=['x']).serializers_by_id[2]).__name__, "
             "type(__import__('Pyro5.serializers', fromlist=['x']).serializers_by_id[83]).__name__, "
             "__import__('Pyro5.protocol', fromlist=['x']).ReceivingMessage.__name__, "
             "__import__('srpy._pyro5', fromlist=['x'])._checked.is_set())")
    assert list(engine.eval(probe)) == ["_CheckedMarshal", "SrpySerializer", "_GuardedMessage", True]
