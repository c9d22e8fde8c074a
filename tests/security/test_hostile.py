"""
Issue 12: what a hostile or careless peer sends is contained.

Values that look like srpy's own framing come back as they went; data crafted to make a reader
reserve memory is refused at its size; every path into an engine (srpy's short path and Pyro5's
general one, every serializer) gets the same checks and limits; clients bound what engines send
them, also during the handshake. Everything runs against real engine processes on loopback.
"""

import decimal
import marshal
import os
import socket
import struct
import time
import zlib

import psutil
import pytest

import srpy
from srpy import codec, lite, wire

pytestmark = pytest.mark.timeout(120)


def header(msgtype, data_size, serializer_id=lite.JSON_SERIALIZER_ID, ann_size=0, flags=0, seq=0):
    return lite.HEADER.pack(b"PYRO", lite.PROTOCOL_VERSION, msgtype, serializer_id, flags, seq, data_size,
                            ann_size, b"\0" * 16, 0, lite.MAGIC)


def chunk(key, value):
    return struct.pack("!4sI", key, len(value)) + value


def engine_rss(eng):
    return psutil.Process(eng.whoami()["PID"]).memory_info().rss


# -- item 10: user data is never mistaken for framing ----------------------------------------------

NAN = float("nan")
LOOKALIKES = {
    "message-mark tuple": (codec._MARK, 5),
    "message-mark tuple in a list": [(codec._MARK, 5)],
    "tagged-item tuple": (codec._TAG, "bytearray", b"xyz"),
    "tagged-item tuple beside a tagged value": [(codec._TAG, "decimal", "1.5"), decimal.Decimal("2.5")],
    "mark and tag together": (codec._MARK, (codec._TAG, "uuid", "0" * 32)),
}


@pytest.mark.parametrize("value", list(LOOKALIKES.values()), ids=list(LOOKALIKES))
def test_values_shaped_like_srpy_framing_come_back_as_they_went(engine, value):
    engine.set(v=value)
    assert engine.get("v") == value
    assert engine.eval("repr(v)") == repr(value), "the engine holds the same value, not a decoded one"


def test_nan_keys_and_set_items_that_marshal_alike_all_arrive(engine):
    keys = {decimal.Decimal("NaN"): 1, decimal.Decimal("NaN"): 2}
    engine.set(keys=keys, complexes={complex(NAN, 0), complex(NAN, 0)}, decimals={decimal.Decimal("NaN"),
                                                                                  decimal.Decimal("NaN")})
    assert engine.eval("sorted(keys.values())") == [1, 2]
    assert engine.eval("len(complexes), len(decimals)") == (2, 2)
    back = engine.get("complexes")
    assert len(back) == 2 and all(c.real != c.real for c in back)
    assert sorted(engine.get("keys").values()) == [1, 2]


def test_dict_key_too_long_to_print_inside_a_tagged_value(engine):
    value = {10 ** 5000: decimal.Decimal("1.5"), 7: frozenset({decimal.Decimal(3)})}
    engine.set(v=value)
    assert engine.get("v") == value
    with pytest.raises(srpy.SerializationError, match="digits"):
        engine.set(v={10 ** 5000: object()})  # the error names where, without printing the key
    assert engine.ping() == "pong"


def test_crafted_tagged_values_reserve_nothing(engine_uri):
    """A tagged bytearray(N), array or timedelta naming a size: refused at the size of the data."""
    with srpy.PythonEngine(engine_uri) as eng:
        before = engine_rss(eng)
        conn = lite.Connection(engine_uri, serializer=srpy.client.WIRE_FORMAT)
        try:
            for payload in (("bytearray", 600 * 10 ** 6), ("array", ("d", 10 ** 8)), ("timedelta", 10 ** 9),
                            ("no-such-kind", b""), ("decimal", 12)):
                call = ("srpy.engine", "set", ({"v": (codec._TAG,) + payload},), {})
                conn._send(lite.MSG_INVOKE, codec.SERIALIZER_ID, marshal.dumps((codec._MARK, call)), 3)
                msgtype, _, flags, seq, data, _, _ = conn._receive()
                assert msgtype == lite.MSG_RESULT and flags & lite.FLAGS_EXCEPTION and seq == 3
                assert b"bad srpy data" in data
        finally:
            conn.close()
        assert eng.eval("6 * 7") == 42
        assert engine_rss(eng) - before < 20 * 2 ** 20


# -- item 3: before the handshake, only what a handshake needs -------------------------------------

def connect_refusal(uri, message):
    """Send one message on a fresh raw socket; return the engine's whole answer (it must hang up)."""
    _, host, port = lite.parse_uri(uri)
    with socket.create_connection((host, port), 10) as sock:
        sock.settimeout(10)
        sock.sendall(message)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_the_101_byte_connect_message_reserves_nothing(engine_uri):
    """A connect message in srpy's format holding a tagged bytearray(572 MB): refused at its size."""
    body = marshal.dumps((codec._MARK, {"handshake": (codec._TAG, "bytearray", 572 * 10 ** 6),
                                        "object": "srpy.engine"}))
    message = header(lite.MSG_CONNECT, len(body), codec.SERIALIZER_ID) + body
    assert len(message) < 120  # the was 101 bytes
    with srpy.PythonEngine(engine_uri) as eng:
        before = engine_rss(eng)
        for _ in range(3):
            answer = connect_refusal(engine_uri, message)
            assert answer[6] == lite.MSG_CONNECTFAIL and b"malformed connect message" in answer
        assert eng.eval("6 * 7") == 42
        assert engine_rss(eng) - before < 8 * 2 ** 20


@pytest.mark.parametrize("serializer_id, body", [
    (2, marshal.dumps({"handshake": "hello", "object": "srpy.engine", "extra": b"x" * 100})),
    (3, b'{"handshake": {"deep": [[[[["too deep"]]]]]}, "object": "srpy.engine"}'),
    (3, b'{"handshake": "hello", "object": ["srpy.engine"]}'),
    (1, b"{'handshake': 'x' * 10 ** 9, 'object': 'srpy.engine'}"),
    (1, b"{'handshake': __import__('os').getpid(), 'object': 'srpy.engine'}"),
    (codec.SERIALIZER_ID, b"(" + struct.pack("<i", 2 ** 30)),
], ids=["marshal-extra-key", "json-too-deep", "json-object-not-a-name", "serpent-expression", "serpent-call",
        "srpy-tuple-bomb"])
def test_connect_messages_beyond_what_a_handshake_needs_are_refused(engine_uri, serializer_id, body):
    answer = connect_refusal(engine_uri, header(lite.MSG_CONNECT, len(body), serializer_id) + body)
    assert answer[6] == lite.MSG_CONNECTFAIL and b"malformed connect message" in answer
    with srpy.PythonEngine(engine_uri) as eng:
        assert eng.ping() == "pong"


@pytest.mark.parametrize("serializer", ["serpent", "marshal", "json", "msgpack"])
def test_plain_pyro5_proxies_of_every_serializer_still_connect(engine_uri, serializer):
    if serializer == "msgpack":
        pytest.importorskip("msgpack")
    from Pyro5.api import Proxy
    with Proxy(engine_uri) as proxy:
        proxy._pyroSerializer = serializer
        assert proxy.ping() == "pong"
        assert proxy.eval("6 * 7", {}) == 42


# -- item 7: every path into an engine gets the same checks and limits ------------------------------

def test_keep_serialized_blob_arguments_are_refused_not_unmarshalled(engine_uri):
    """Pyro5's flag 0x20 path read the BLBI annotation with plain marshal.loads: 5 bytes took 512 MB."""
    with srpy.PythonEngine(engine_uri) as eng:
        before = engine_rss(eng)
        conn = lite.Connection(engine_uri)
        try:
            bomb = b"(" + struct.pack("<i", 2 ** 26)
            body = marshal.dumps(("srpy.engine", "ping", (), {}))
            conn._send(lite.MSG_INVOKE, 2, body, 9, {"BLBI": bomb}, flags=0x20)
            msgtype, _, flags, seq, data, _, _ = conn._receive()
            assert msgtype == lite.MSG_RESULT and flags & lite.FLAGS_EXCEPTION and seq == 9
            assert b"SerializedBlob" in data
        finally:
            conn.close()
        assert eng.eval("6 * 7") == 42
        assert engine_rss(eng) - before < 8 * 2 ** 20


@pytest.mark.parametrize("serializer", [None, srpy.client.WIRE_FORMAT], ids=["json", "srpy"])
def test_raw_trailing_bytes_are_held_to_the_message_limit_whatever_the_serializer(start_launcher, serializer):
    launcher = start_launcher(["-n", "1", "--max-message-size", "1"], count=1)
    uri = launcher.uris[0]
    conn = lite.Connection(uri, serializer=serializer)
    blob = os.urandom(5 * 1024 * 1024)
    try:
        # refused with the sizes named (srpy's MessageTooLargeError for srpy's format; Pyro5's, a
        # RemoteError to this client, for json): never stored
        with pytest.raises((srpy.MessageTooLargeError, srpy.RemoteError), match="too large"):
            conn.call("set", ({"stored": "\x00srpy-blob:0"},), trailing=(blob,), timeout=30)
    finally:
        conn.close()
    with srpy.PythonEngine(uri) as eng:
        assert eng.get() == [], "nothing beyond the limit was stored"
        assert eng.eval("6 * 7") == 42


def test_malformed_trailing_sizes_end_only_that_connection(engine_uri):
    conn = lite.Connection(engine_uri)
    try:
        conn._send(lite.MSG_INVOKE, lite.JSON_SERIALIZER_ID, b'{"object": "srpy.engine", "method": "ping", '
                   b'"params": [], "kwargs": {}}', 4, {lite.TRAILING: b"\x00" * 7})
        with pytest.raises(srpy.CommunicationError):
            conn._receive()
    finally:
        conn.close()
    with srpy.PythonEngine(engine_uri) as eng:
        assert eng.ping() == "pong"


# -- item 6: clients bound what they accept, also during the handshake ------------------------------

def zlib_bomb(megabytes):
    """A few hundred KB that inflate to C{megabytes} MB of zeros (built a megabyte at a time)."""
    deflater = zlib.compressobj(9)
    zeros = b"\0" * (1 << 20)
    return b"".join([deflater.compress(zeros) for _ in range(megabytes)] + [deflater.flush()])


class FakeEngine:
    """
    A listener on loopback that is not an engine: for each client it reads one message, then
    sends C{replies} one by one (one per message it reads), then hangs up.
    """

    def __init__(self, *replies):
        import threading
        self.replies = replies
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.uri = "PYRO:srpy.engine@127.0.0.1:%d" % self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        with sock:
            sock.settimeout(10)
            try:
                for reply in self.replies:
                    head = _recv_exactly(sock, lite.HEADER.size)
                    size = struct.unpack("!I", head[12:16])[0] + struct.unpack("!I", head[16:20])[0]
                    _recv_exactly(sock, size)
                    sock.sendall(reply)
                sock.recv(1)  # until the client hangs up
            except OSError:
                pass

    def close(self):
        self.listener.close()
        self.thread.join(10)


def _recv_exactly(sock, size):
    data = b""
    while len(data) < size:
        part = sock.recv(size - len(data))
        if not part:
            raise OSError("client went away")
        data += part
    return data


def reply(msgtype, body, flags=0, seq=0, announce=None):
    size = len(body) if announce is None else announce
    return header(msgtype, size, lite.JSON_SERIALIZER_ID, flags=flags, seq=seq) + body


CONNECT_OK = reply(lite.MSG_CONNECTOK, b'{"handshake": {"srpy": 1, "auth": false}, "meta": {}}')


def own_rss():
    return psutil.Process().memory_info().rss


@pytest.mark.parametrize("megabytes, refusal", [(388, "announced a message of"), (50, "inflates to more than")],
                         ids=["issue-398KB-to-388MB", "50KB-to-50MB"])
def test_a_fake_engine_cannot_inflate_a_client_during_the_handshake(megabytes, refusal):
    bomb = zlib_bomb(megabytes)
    fake = FakeEngine(reply(lite.MSG_CONNECTOK, bomb, flags=lite.FLAGS_COMPRESSED))
    before = own_rss()
    try:
        with pytest.raises(srpy.errors.ProtocolError, match=refusal):
            srpy.PythonEngine(fake.uri, connect_timeout=10)
    finally:
        fake.close()
    assert own_rss() - before < 16 * 2 ** 20


def test_a_fake_engine_cannot_announce_a_huge_handshake():
    fake = FakeEngine(reply(lite.MSG_CONNECTOK, b"{}", announce=2 ** 31))
    try:
        with pytest.raises(srpy.errors.ProtocolError, match="before the handshake is complete"):
            lite.Connection(fake.uri, connect_timeout=10)
    finally:
        fake.close()


def test_after_the_handshake_replies_inflate_to_the_message_limit_at_most():
    class SmallLimit(lite.Connection):
        max_message_size = 8 * 2 ** 20

    bomb = zlib_bomb(64)
    fake = FakeEngine(CONNECT_OK, reply(lite.MSG_RESULT, bomb, flags=lite.FLAGS_COMPRESSED, seq=1))
    before = own_rss()
    try:
        conn = SmallLimit(fake.uri, connect_timeout=10)
        with pytest.raises(srpy.errors.ProtocolError, match="inflates to more than the limit of 8388608"):
            conn.call("ping", timeout=10)
        assert conn.broken
    finally:
        fake.close()
    assert own_rss() - before < 16 * 2 ** 20


def test_a_fake_engine_cannot_make_a_client_reserve_memory_with_marshal(engine_uri):
    """A reply in srpy's format announcing a tuple of 2**28 items: refused at its size."""
    bomb = b"(" + struct.pack("<i", 2 ** 28)
    fake = FakeEngine(CONNECT_OK, header(lite.MSG_RESULT, len(bomb), codec.SERIALIZER_ID, seq=1) + bomb)
    before = own_rss()
    try:
        conn = lite.Connection(fake.uri, serializer=srpy.client.WIRE_FORMAT, connect_timeout=10)
        with pytest.raises(srpy.errors.ProtocolError, match="cannot be decoded"):
            conn.call("ping", timeout=10)
    finally:
        fake.close()
    assert own_rss() - before < 16 * 2 ** 20


# -- item 8: discovery: busy is not dead; an engine puts its entry back ------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def registered(port, **options):
    from srpy import discovery
    return sorted(uri for _, uri, _ in discovery.find(host="127.0.0.1", port=port, **options))


def wait_for(condition, timeout):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.slow
def test_discover_keeps_busy_engines_and_engines_put_their_entries_back(start_launcher):
    import signal

    from srpy import discovery
    port = free_port()
    launcher = start_launcher(["-n", "2", "--start-ns", "--ns-port", str(port)], count=2)
    assert wait_for(lambda: registered(port) == sorted(launcher.uris), 30)
    busy = srpy.PythonEngine(launcher.uris[0])
    pid = busy.whoami()["PID"]
    os.kill(pid, signal.SIGSTOP)  # as unresponsive as an engine inside a long C call
    try:
        box = srpy.EngBox.discover(ns_host="127.0.0.1", ns_port=port, timeout=1.0)
        assert [e.uri for e in box.getEngines()] == [launcher.uris[1]], "the busy engine is skipped ..."
        assert registered(port) == sorted(launcher.uris), "... but its entry stays"
        box.close()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert busy.ping() == "pong"
    with discovery.name_server("127.0.0.1", port) as ns:  # an entry gone for whatever reason
        ns.remove(discovery.find(host="127.0.0.1", port=port)[0][0])
    assert len(registered(port)) == 1
    assert wait_for(lambda: registered(port) == sorted(launcher.uris), discovery.REREGISTER_EVERY + 20)
    busy.close()


@pytest.mark.slow
def test_discover_still_removes_the_entries_of_dead_engines(start_launcher):
    import psutil

    from conftest import wait_gone
    port = free_port()
    launcher = start_launcher(["-n", "2", "--start-ns", "--ns-port", str(port)], count=2)
    assert wait_for(lambda: registered(port) == sorted(launcher.uris), 30)
    with srpy.PythonEngine(launcher.uris[0]) as eng:
        pid = eng.whoami()["PID"]
    psutil.Process(pid).kill()
    assert wait_gone([pid])
    box = srpy.EngBox.discover(ns_host="127.0.0.1", ns_port=port, timeout=2.0)
    assert [e.uri for e in box.getEngines()] == [launcher.uris[1]]
    box.close()
    assert registered(port) == [launcher.uris[1]]


# -- item 9: the name server over TLS too ---------------------------------------------------------------

@pytest.mark.slow
def test_tls_name_server_engines_register_and_clients_discover_over_tls(start_launcher, pki):
    from srpy import discovery
    port = free_port()
    context = srpy.security.client_tls(ca=pki["ca"])
    _, stop = discovery.start_name_server("127.0.0.1", port, tls={"cert": pki["cert"], "key": pki["key"],
                                                                  "ca": pki["ca"]})
    try:
        launcher = start_launcher(["-n", "2", "--tls-cert", pki["cert"], "--tls-key", pki["key"], "--tls-ca", pki["ca"],
                                   "--ns", "--ns-host", "127.0.0.1", "--ns-port", str(port)], count=2)
        assert wait_for(lambda: registered(port, ssl_context=context) == sorted(launcher.uris), 30)
        for _, uri, _ in discovery.find(host="127.0.0.1", port=port, ssl_context=context):
            with srpy.PythonEngine(uri, ssl_context=context) as eng:
                assert eng.eval("6 * 7") == 42
        with pytest.raises(discovery.NameServerNotFound, match="TLS"):
            discovery.find(host="127.0.0.1", port=port)  # a plain client is told the name server speaks TLS
        launcher.shutdown()
        assert wait_for(lambda: registered(port, ssl_context=context) == [], 30), "engines unregister over TLS"
    finally:
        stop()


@pytest.mark.slow
def test_launcher_with_tls_and_its_own_name_server(start_launcher, pki):
    port = free_port()
    launcher = start_launcher(["-n", "1", "--tls-cert", pki["cert"], "--tls-key", pki["key"], "--tls-ca", pki["ca"],
                               "--start-ns", "--ns-port", str(port)], count=1, timeout=30)
    context = srpy.security.client_tls(ca=pki["ca"])
    assert wait_for(lambda: registered(port, ssl_context=context) == launcher.uris, 30)


def test_a_connection_says_whether_its_engine_proved_the_secret(start_launcher, engine_uri):
    launcher = start_launcher(["-b", "--secret", "proved"])
    with_secret = lite.Connection(launcher.uris[0], secret="proved")
    without = lite.Connection(engine_uri)
    try:
        assert with_secret.verified and not without.verified
    finally:
        with_secret.close()
        without.close()


def test_a_string_shaped_like_the_old_blob_marker_is_only_a_string(engine_uri):
    """Large bytes travel raw after the call, named in an annotation: no value is ever read as framing."""
    big = os.urandom(200 * 1024)
    with srpy.PythonEngine(engine_uri) as eng:
        eng.set(marker="\x00srpy-blob:0", other="\x00srpy-blob:1", data=big)
        assert eng.get("marker") == "\x00srpy-blob:0" and eng.get("other") == "\x00srpy-blob:1"
        assert eng.get("data") == big
        assert eng.eval("len(data) + len(marker)", marker="\x00srpy-blob:0", data=big) == len(big) + 12
        eng.exe("del marker, other, data")


@pytest.mark.parametrize("value, trailing, match", [
    ((codec._TAG, "buffer", 1), (b"x" * 10,), "buffer 1 of the 1 beside"),
    ((codec._TAG, "buffer", -1), (b"x" * 10,), "buffer -1 of the 1 beside"),
    ((codec._TAG, "buffer", "0"), (b"x" * 10,), "buffer '0' of the 1 beside"),
    ((codec._TAG, "buffer", 0), (), "buffer 0 of the 0 beside"),
    ([(codec._TAG, "buffer", 0), (codec._TAG, "buffer", 0)], (b"x" * 10,), "buffer 0 used twice"),
    ((codec._TAG, "ndarray", ("<f8", (3,), "C", (codec._TAG, "buffer", 0))), (b"x" * 10,), "declares 24 bytes but holds 10"),
    ((codec._TAG, "ndarray", ("<f8", (1,), "C", (codec._TAG, "other", 0))), (b"x" * 8,), "neither bytes nor a buffer"),
], ids=["past-the-end", "negative", "not-an-int", "none-came", "used-twice", "array-size", "not-a-reference"])
def test_crafted_references_to_raw_buffers_are_refused(engine_uri, value, trailing, match):
    """A call whose message names raw buffers that did not come, or names one twice, or sizes an array wrongly."""
    conn = lite.Connection(engine_uri, serializer=srpy.client.WIRE_FORMAT)
    try:
        call = ("srpy.engine", "set", ({"stolen": value},), {})
        data = marshal.dumps((codec._MARK, call), 2)
        annotations = wire.buffer_annotations([(blob, "b") for blob in trailing]) if trailing else None
        conn._send(lite.MSG_INVOKE, codec.SERIALIZER_ID, data, 1, annotations, buffers=trailing)
        msgtype, _, flags, seq, answer, _, _ = conn._receive()
        assert flags & lite.FLAGS_EXCEPTION
        assert match in str(codec.loads(answer))
    finally:
        conn.close()
    with srpy.PythonEngine(engine_uri) as eng:
        assert "stolen" not in eng.get() and eng.eval("6 * 7") == 42


def test_a_large_buffer_announced_and_not_sent_commits_no_memory(engine_uri):
    """A client announcing a 512 MB bytearray buffer and sending 1 MB of it costs the engine about 1 MB."""
    with srpy.PythonEngine(engine_uri) as eng:
        before = engine_rss(eng)
        conn = lite.Connection(engine_uri, serializer=srpy.client.WIRE_FORMAT)
        try:
            call = ("srpy.engine", "set", ({"held": (codec._TAG, "buffer", 0)},), {})
            size = 512 * 2 ** 20
            conn._send(lite.MSG_INVOKE, codec.SERIALIZER_ID, marshal.dumps((codec._MARK, call), 2), 1,
                       {"SRAW": struct.pack("!Q", size), "SRBK": b"w"}, buffers=[b"x" * 2 ** 20])
            peak = before
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:  # the engine sits in its read; its memory must not grow
                peak = max(peak, engine_rss(eng))
            assert peak - before < 64 * 2 ** 20, "the engine committed %d MB" % ((peak - before) >> 20)
        finally:
            conn.close()
        assert "held" not in eng.get() and eng.eval("6 * 7") == 42
