"""
srpy/wire.py on its own: the frame helpers in process (no engine needed), and the connection
pool against a real engine and a server that starts late.
"""

import socket
import os
import struct
import threading
import time
import zlib

import pytest

from srpy import errors, wire


# -- frames ---------------------------------------------------------------------------------------

def test_a_header_is_pyro5_s_40_bytes_and_parses_back():
    header = wire.pack_header(wire.MSG_RESULT, 83, 1234, seq=7, flags=wire.FLAGS_EXCEPTION, ann_size=16)
    assert len(header) == 40 == wire.HEADER.size
    assert header[:4] == b"PYRO" and header[4:6] == (502).to_bytes(2, "big") and header[-2:] == b"\x4d\xc5"
    assert wire.parse_header(header) == (wire.MSG_RESULT, 83, wire.FLAGS_EXCEPTION, 7, 1234, 16)


@pytest.mark.parametrize("field, header", [
    ("tag", b"HTTP" + wire.pack_header(1, 3, 0)[4:]),
    ("version", wire.HEADER.pack(b"PYRO", 501, 1, 3, 0, 0, 0, 0, b"\0" * 16, 0, wire.MAGIC)),
    ("magic", wire.HEADER.pack(b"PYRO", 502, 1, 3, 0, 0, 0, 0, b"\0" * 16, 0, 0x1234)),
])
def test_a_header_that_is_not_pyro5_502_names_the_wrong_field(field, header):
    with pytest.raises(wire.HeaderError) as refused:
        wire.parse_header(header)
    assert refused.value.field == field and isinstance(refused.value, errors.ProtocolError)


def test_a_message_holds_its_annotations_between_header_and_payload():
    message = wire.pack_message(wire.MSG_INVOKE, 3, b"{}", seq=2, annotations={"SCID": b"12345678", "SRND": b""})
    msgtype, serializer_id, flags, seq, data_size, ann_size = wire.parse_header(message[:40])
    assert (msgtype, serializer_id, flags, seq, data_size, ann_size) == (wire.MSG_INVOKE, 3, 0, 2, 2, 16 + 8)
    body = message[40:]
    found = wire.parse_annotations(body, ann_size)
    assert {k: v.tobytes() for k, v in found.items()} == {"SCID": b"12345678", "SRND": b""}
    assert body[ann_size:] == b"{}"


@pytest.mark.parametrize("block, size, match", [
    (wire.CHUNK.pack(b"SRAW", 100) + b"x" * 10, 18, "exceeds remaining data"),
    (b"SRAW\0\0", 6, "malformed annotations"),
    (wire.CHUNK.pack(b"\xff\xfe\xfd\xfc", 0), 8, "not ASCII"),
])
def test_malformed_annotations_are_refused(block, size, match):
    with pytest.raises(errors.ProtocolError, match=match):
        wire.parse_annotations(block, size)


def test_srpy_s_extensions_pack_and_parse_back():
    assert wire.parse_trailing(wire.pack_trailing([b"ab", b"", b"x" * 70000])) == [2, 0, 70000]
    with pytest.raises(errors.ProtocolError, match="8-byte sizes"):
        wire.parse_trailing(b"\0" * 7)
    assert wire.parse_call_limit(wire.pack_call_limit(2.5)) == 2.5
    for no_limit in (None, b"short", struct.pack("!d", 0.0), struct.pack("!d", -1.0), struct.pack("!d", float("nan"))):
        assert wire.parse_call_limit(no_limit) is None
    big = wire.BLOB_MIN
    announced = wire.buffer_annotations([(b"ab", "b"), (memoryview(bytearray(big)), "w"), (b"", "b"), (b"x" * big, "m")])
    assert announced == {"SRAW": wire.pack_trailing([b"ab", b"x" * big, b"", b"x" * big]), "SRBK": b"bwbm"}
    assert wire.parse_buffers(announced) == [(2, "b"), (big, "w"), (0, "b"), (big, "m")]
    assert wire.buffer_annotations([(b"ab", "b")]) == {"SRAW": wire.pack_trailing([b"ab"])}, "all bytes: no SRBK"
    assert wire.parse_buffers({"SRAW": wire.pack_trailing([b"ab"])}) == [(2, "b")]
    memory = wire.new_memory(3)
    memoryview(memory)[:] = b"abc"
    assert bytes(memory) == b"abc" and len(wire.new_memory(0)) == 0


def test_new_memory_is_the_process_s_own_even_after_a_fork():
    """A received array must not be shared with a child forked later (multiprocessing's fork)."""
    memory = wire.new_memory(wire.BLOB_MIN)
    assert type(memory).__name__ == "mmap"
    pid = os.fork()
    if pid == 0:  # the child writes its copy, and ends at once
        memory[0] = 7
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and memory[0] == 0, "the child's write reached the parent"
    assert wire.parse_buffers({}) == []


@pytest.mark.parametrize("annotations, match", [
    ({"SRAW": b"\0" * 16, "SRBK": b"b"}, "1 letters for 2 buffers"),
    ({"SRAW": b"\0" * 8, "SRBK": b"x"}, "each b, w or m"),
    ({"SRAW": b"\0" * 8 * (wire.MAX_BUFFERS + 1)}, "at most 65536"),
    ({"SRAW": wire.pack_trailing([b"x" * 10]), "SRBK": b"m"}, "m buffer of 10 bytes"),
    ({"SRAW": wire.pack_trailing([b"x" * 10]), "SRBK": b"w"}, "w buffer of 10 bytes"),
])
def test_malformed_buffer_announcements_are_refused(annotations, match):
    with pytest.raises(errors.ProtocolError, match=match):
        wire.parse_buffers(annotations)


def test_inflate_never_holds_more_than_its_limit():
    assert wire.inflate(zlib.compress(b"a" * 1000), 1000) == b"a" * 1000
    with pytest.raises(errors.ProtocolError, match="inflates to more than the limit of 999 bytes"):
        wire.inflate(zlib.compress(b"a" * 1000), 999)
    with pytest.raises(errors.ProtocolError, match="incomplete"):
        wire.inflate(zlib.compress(b"a" * 1000)[:-4], 2000)
    with pytest.raises(errors.ProtocolError, match="corrupt"):
        wire.inflate(b"not zlib at all", 2000)


def test_sniff_tells_pyro5_from_anything_else():
    message = wire.pack_message(wire.MSG_CONNECT, 2, b"")
    assert wire.sniff(message[:8]) == ("pyro", 2)
    assert wire.sniff(message[:5]) == ("maybe", None) and wire.sniff(b"PY") == ("maybe", None)
    assert wire.sniff(b"\x16\x03\x01\x02\x00\x01\x00\x01") == ("other", None)  # a TLS client hello


def test_the_proof_is_bound_to_role_and_nonces():
    first, second = wire.new_nonce(), wire.new_nonce()
    assert first != second and len(first) == 32
    assert wire.proof("s", "server", first, second) != wire.proof("s", "client", first, second)
    assert wire.proof("s", "server", first, second) != wire.proof("s", "server", second, first)
    assert wire.same_text(wire.proof("s", "client", first, second), wire.proof(u"s", "client", first, second))


# -- the pool ---------------------------------------------------------------------------------------

def test_the_pool_reuses_gives_back_and_closes(engine_uri):
    pool = wire.Pool(engine_uri, owner="TestClient")
    with pool.connection() as conn:
        assert conn.call("ping")[0] == "pong"
        assert pool.idle == 0
    assert pool.idle == 1
    with pool.connection() as again:
        assert again is conn, "an idle connection is reused"
    first, second = pool.acquire(), pool.acquire()
    assert first is not second, "a second caller meanwhile gets a connection of its own"
    pool.release(first)
    pool.release(second)
    assert pool.idle == 2
    pool.drop_idle()
    assert pool.idle == 0 and first.broken and second.broken
    taken = pool.acquire()
    pool.close()
    pool.release(taken)
    assert pool.idle == 0 and taken.broken, "given back after close: closed, not pooled"
    with pytest.raises(errors.ConnectionLost, match="this TestClient was closed"):
        pool.acquire()


def test_a_connection_the_engine_closed_while_idle_is_never_reused(engine_uri):
    pool = wire.Pool(engine_uri)
    conn = pool.acquire()
    pool.release(conn)
    conn.released = 0.0  # idle long enough to be checked before its next use
    conn.transport.sock.shutdown(socket.SHUT_RDWR)  # as if the engine had gone: readable, at EOF
    deadline = time.monotonic() + 30
    while not conn.transport.stale() and time.monotonic() < deadline:
        time.sleep(0.01)
    fresh = pool.acquire()
    assert fresh is not conn and conn.broken and fresh.call("ping")[0] == "pong"
    pool.close()
    pool.release(fresh)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def late_server(port, ready):
    """Listen on C{port} once C{ready} is set, and complete one handshake (no secret) for each client."""
    def serve():
        ready.wait(30)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen(4)
            server.settimeout(30)
            conn, _ = server.accept()
            with conn:
                head = b""
                while len(head) < 40:
                    head += conn.recv(40 - len(head))
                size = sum(wire.parse_header(head)[4:6])
                while size > 0:
                    size -= len(conn.recv(size))
                conn.sendall(wire.pack_message(wire.MSG_CONNECTOK, 3, b'{"handshake": {"srpy": 1}}'))
                conn.recv(1)  # until the client goes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_after_expect_restart_a_refused_connection_is_tried_until_the_engine_answers():
    port = free_port()
    pool = wire.Pool("PYRO:srpy.engine@127.0.0.1:%d" % port, connect_timeout=10)
    with pytest.raises(errors.SRPyServerNotFound):
        pool.connect()  # nothing there, and no restart expected: refused at once
    ready = threading.Event()
    thread = late_server(port, ready)
    pool.expect_restart(30)
    threading.Timer(0.3, ready.set).start()  # the "fresh engine" listens a little later
    conn = pool.connect()
    assert conn.handshake_info == {"srpy": 1}
    conn.close()
    thread.join(30)
    pool.close()
