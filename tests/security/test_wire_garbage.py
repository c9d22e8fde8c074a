"""
Bad input on an engine's port never kills the engine: garbage bytes, half-sent messages, calls
before the handshake, undecodable bodies, unknown serializers and methods.

Each test that feeds an engine something bad checks two things: the sender gets a clear error that
names the cause, and the engine still answers C{ping()} afterwards. Everything runs against real
engine processes on real loopback sockets.
"""

import os
import socket
import struct

import pytest

import srpy
from conftest import assert_serving, header, raw_socket
from srpy import errors, lite

pytestmark = pytest.mark.timeout(60)


def read_all(sock):
    """Everything the peer sends until it closes the connection (or goes quiet for the timeout)."""
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except socket.timeout:
        chunks.append(b"<still open>")
    except ConnectionResetError:
        pass
    return b"".join(chunks)


# -- garbage and half-sent messages on the engine's port ------------------------------------------

@pytest.mark.parametrize("payload", [
    b"hello, is anybody there?\r\n" * 4,
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    b"\x00" * 40,
    os.urandom(1 << 20),
], ids=["text", "http", "zeros", "1MiB-random"])
def test_garbage_bytes_get_a_refusal_and_the_engine_keeps_serving(engine_uri, payload):
    sock = raw_socket(engine_uri)
    try:
        sock.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the engine may hang up before it has read a whole megabyte of garbage
    answer = read_all(sock)
    sock.close()
    assert b"<still open>" not in answer, "the engine must hang up on garbage"
    if answer:
        assert answer.startswith(b"PYRO") and b"invalid data" in answer
    assert_serving(engine_uri)


def test_valid_header_with_truncated_body_then_close(engine_uri):
    for _ in range(5):
        sock = raw_socket(engine_uri)
        sock.sendall(header(lite.MSG_CONNECT, 1000) + b'{"handshake": {"sr')
        sock.close()
    assert_serving(engine_uri)


def test_valid_header_with_truncated_body_staying_open(engine_uri):
    held = []
    try:
        for _ in range(10):
            sock = raw_socket(engine_uri)
            sock.sendall(header(lite.MSG_CONNECT, 1000) + b'{"handshake"')
            held.append(sock)
        assert_serving(engine_uri)  # the half-sent messages hold server threads, not the engine
    finally:
        for sock in held:
            sock.close()
    assert_serving(engine_uri)


def test_header_announcing_a_huge_message_is_refused(engine_uri):
    sock = raw_socket(engine_uri)
    sock.sendall(header(lite.MSG_CONNECT, 2 ** 31) + b"{}")
    answer = read_all(sock)
    sock.close()
    assert b"message too large" in answer
    assert_serving(engine_uri)


def test_call_before_handshake_is_refused(engine_uri):
    sock = raw_socket(engine_uri)
    body = b'{"object": "srpy.engine", "method": "ping", "params": [], "kwargs": {}}'
    sock.sendall(header(lite.MSG_INVOKE, len(body)) + body)
    answer = read_all(sock)
    sock.close()
    assert b"invalid msg type" in answer
    assert_serving(engine_uri)


def test_garbage_after_a_valid_handshake(engine_uri):
    conn = lite.Connection(engine_uri)
    conn.transport.send([b"this is not a Pyro5 message at all, just noise" * 3])
    with pytest.raises(errors.CommunicationError):
        conn._receive()
    conn.close()
    assert_serving(engine_uri)


def test_half_sent_call_after_a_valid_handshake_then_close(engine_uri):
    conn = lite.Connection(engine_uri)
    body = b'{"object": "srpy.engine", "method": "exe", "params": ["x = 1"'
    conn.transport.send([header(lite.MSG_INVOKE, len(body) + 500, seq=1) + body])
    conn.close()
    assert_serving(engine_uri)


def test_call_promising_raw_bytes_it_never_sends(engine_uri):
    """A call whose SRAW annotation announces raw bytes that never come, then the caller leaves."""
    conn = lite.Connection(engine_uri, serializer=srpy.client.WIRE_FORMAT)
    data = srpy.client.WIRE_FORMAT.dumps_call(lite.ENGINE_OBJECT, "set", ({"a": "\x00srpy-blob:0"},), {})
    conn._send(lite.MSG_INVOKE, conn.serializer.serializer_id, data, 1,
               {lite.TRAILING: struct.pack("!Q", 1000)})
    conn.transport.send([b"only a few bytes"])
    conn.close()
    assert_serving(engine_uri)


def test_undecodable_call_bodies_get_error_replies(engine_uri):
    for serializer_id, body in ((lite.JSON_SERIALIZER_ID, b"{not json"),
                                (srpy.codec.SERIALIZER_ID, b"\xff\xfe not marshal")):
        conn = lite.Connection(engine_uri)
        conn._send(lite.MSG_INVOKE, serializer_id, body, 1)
        msgtype, _, flags, _, data, _, _ = conn._receive()
        conn.close()
        assert msgtype == lite.MSG_RESULT and flags & lite.FLAGS_EXCEPTION
        assert data
    assert_serving(engine_uri)


def test_unknown_serializer_id_loses_only_that_connection(engine_uri):
    conn = lite.Connection(engine_uri)
    conn._send(lite.MSG_INVOKE, 99, b"whatever", 1)
    with pytest.raises(errors.CommunicationError):
        conn._receive()
    conn.close()
    assert_serving(engine_uri)


# -- unknown methods and wrong arguments ----------------------------------------------------------

@pytest.mark.parametrize("serializer", [None, srpy.client.WIRE_FORMAT], ids=["json", "srpy"])
def test_unknown_method(engine_uri, serializer):
    conn = lite.Connection(engine_uri, serializer=serializer)
    with pytest.raises(AttributeError, match="no_such_method"):
        conn.call("no_such_method", (1, 2))
    with pytest.raises(AttributeError, match="_resolve"):
        conn.call("_resolve", ("x",))
    with pytest.raises(TypeError, match="argument"):
        conn.call("ping", (1, 2, 3))
    with pytest.raises(TypeError, match="identifiers"):
        conn.call("set", ({"1 not a name": 1},))
    with pytest.raises(TypeError, match="dict"):
        conn.call("set", ([1, 2],))
    assert conn.call("ping")[0] == "pong"  # the same connection is still good
    conn.close()
    assert_serving(engine_uri)


def test_plain_pyro5_proxy_can_call_an_open_engine(engine_uri):
    from Pyro5.api import Proxy
    with Proxy(engine_uri) as proxy:
        assert proxy.ping() == "pong"
        with pytest.raises(AttributeError):
            proxy.no_such_method()
