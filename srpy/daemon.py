"""
The engine's Pyro5 daemon: Pyro5's thread server and connect handshake (with srpy's secret proof,
from L{srpy.security}), plus a short path for the calls srpy's own clients make.

Measured on a 2-core machine, Pyro5's general C{handleRequest} costs about 75 us per call on top
of a 27 us raw-socket round trip (three reads per message, a fresh UUID, message objects, a walk
over the arguments). An engine serves mostly small calls from srpy clients, so this daemon
handles a plain invoke message in srpy's serializer itself: one read for the header, one for the
body, one write for the reply, the same wire format and the same error replies as Pyro5.
Everything else (json or serpent callers such as the Jython client, pings, oneway or batch
flags, unknown objects) is handed to Pyro5's own C{handleRequest}, after the same checks: every
message, whatever its serializer or flags, is held to the same size limit, raw trailing bytes to
the same limit, marshal to L{srpy.codec.check_marshal}, inflation to the size limit; Pyro5's
keep-serialized blob arguments (which it would read with a plain C{marshal.loads}) are refused.
"""

import socket
import struct
import zlib
from typing import Any, Dict, List, Optional, Set

from Pyro5 import config as pyro_config
from Pyro5 import errors as pyro_errors
from Pyro5 import protocol as pyro_protocol
from Pyro5 import serializers as pyro_serializers
from Pyro5 import server as pyro_server
from Pyro5.callcontext import current_context

from . import codec, errors, listener, lite, logbuffer
from .security import HANDSHAKE_MAX_SIZE, SecureDaemon, note_bad_input, note_too_large

_WAITALL = getattr(socket, "MSG_WAITALL", 0)
_INVOKE = lite.MSG_INVOKE
_FAST_FLAGS = 0  # any flag (oneway, batch, compressed, ...) takes Pyro5's path
_EMPTY_CORRELATION = b"\0" * 16
#: what Pyro5's server loop takes quietly as the client going away
_CLIENT_GONE = (OSError, pyro_errors.ConnectionClosedError, pyro_errors.SecurityError, pyro_errors.TimeoutError)


class EngineDaemon(SecureDaemon):
    """A L{SecureDaemon} with a short path for srpy-serialized invoke messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        logbuffer.install()  # from here on no thread that serves ever waits for the log stream
        with listener.serving_daemons():  # accept and handshake without blocking (srpy.listener)
            super().__init__(*args, **kwargs)
        self._exposed: Dict[str, Set[str]] = {}
        _guard_pyro()

    def handleRequest(self, conn: Any) -> None:
        """
        Serve one message from C{conn}: srpy's short path, or Pyro5's own. A message that cannot
        be read (bad header, bad annotations, a size over the limit, an unknown serializer) closes
        the connection with one line in the log, where Pyro5 would log a traceback for each one.
        """
        try:
            self._handle(conn)
        except _CLIENT_GONE:
            raise
        except Exception as exc:  # malformed input: only this client's connection ends
            note_bad_input(conn, exc, "message")
            raise pyro_errors.ConnectionClosedError("malformed message: %s" % exc) from None

    def _handle(self, conn: Any) -> None:
        header = _read(conn, lite.HEADER.size)
        tag, version, msgtype, serializer_id, flags, seq, data_size, ann_size, _, _, magic = lite.HEADER.unpack(header)
        if tag != b"PYRO" or magic != lite.MAGIC or version != lite.PROTOCOL_VERSION:
            raise pyro_errors.ProtocolError("invalid message or protocol version")
        size, limit = data_size + ann_size, pyro_config.MAX_MESSAGE_SIZE
        if msgtype == _INVOKE and size > limit and ann_size <= limit:
            # a call over the limit is read and dropped a chunk at a time, and answered with the sizes
            annotations = _annotations(_read(conn, ann_size), ann_size) if ann_size else {}
            _discard(conn, data_size + _trailing_size(annotations))
            self._refuse_too_large(conn, serializer_id, flags, seq, size, "message")
            return
        if size > limit:  # annotations alone over the limit: too broken to answer
            raise pyro_errors.ProtocolError("message too large (%d, max=%d)" % (size, limit))
        payload = _read(conn, size) if size else b""
        annotations = _annotations(payload, ann_size) if ann_size else {}
        if annotations:
            raw = _trailing_size(annotations)
            if raw > limit:
                _discard(conn, raw)
                self._refuse_too_large(conn, serializer_id, flags, seq, raw, "raw bytes")
                return
        if msgtype == _INVOKE and serializer_id == codec.SERIALIZER_ID and flags == _FAST_FLAGS:
            self._serve(conn, seq, payload, ann_size, annotations)
            return
        # every other message passes the same checks (above, and here), then Pyro5's own handling
        if serializer_id not in pyro_serializers.serializers_by_id and msgtype != pyro_protocol.MSG_PING:
            raise pyro_errors.ProtocolError("unknown serializer id %d" % serializer_id)
        if msgtype == _INVOKE and flags & pyro_protocol.FLAGS_KEEPSERIALIZED:
            # Pyro5 would read the BLBI annotation with a plain marshal.loads and pass a blob that no
            # engine method takes: refused, as a reply to this call
            exc = pyro_errors.ProtocolError("srpy engines take no Pyro5 SerializedBlob arguments (flag 0x20)")
            self._sendExceptionResponse(conn, seq, serializer_id, exc, None)
            return
        super().handleRequest(_Replay(conn, header, payload))

    def _refuse_too_large(self, conn: Any, serializer_id: int, flags: int, seq: int, size: int, what: str) -> None:
        """
        Answer a call whose message (or raw bytes) exceeded C{MAX_MESSAGE_SIZE}, already read and
        dropped, with an error that names both sizes; the connection stays in step and open. A
        serializer this daemon cannot answer in ends the connection instead.
        """
        limit = pyro_config.MAX_MESSAGE_SIZE
        text = ("message too large: this call sends %d bytes%s, more than this engine's limit of %d bytes "
                "(%.6g MB: srpyapp --max-message-size, or MAX_MESSAGE_SIZE in its -p file). Send the data "
                "in smaller parts, or give the engine a larger limit"
                % (size, "" if what == "message" else " of raw data", limit, limit / (1024 * 1024)))
        note_too_large(conn, text)
        if flags & lite.FLAGS_ONEWAY:
            return
        if serializer_id == codec.SERIALIZER_ID:
            data = _exception_reply(errors.MessageTooLargeError(text))
        elif serializer_id in pyro_serializers.serializers_by_id:  # a type Pyro5's own clients rebuild
            data = pyro_serializers.serializers_by_id[serializer_id].dumps(pyro_errors.MessageTooLargeError(text))
        else:
            raise pyro_errors.ProtocolError(text)
        header = lite.HEADER.pack(b"PYRO", lite.PROTOCOL_VERSION, lite.MSG_RESULT, serializer_id,
                                  lite.FLAGS_EXCEPTION, seq, len(data), 0, _EMPTY_CORRELATION, 0, lite.MAGIC)
        conn.send(header + data)

    def _serve(self, conn: Any, seq: int, payload: bytes, ann_size: int, annotations: Dict[str, Any]) -> None:
        current_context.client = conn
        current_context.seq = seq
        current_context.msg_flags = 0
        current_context.serializer_id = codec.SERIALIZER_ID
        current_context.correlation_id = None
        current_context.response_annotations = {}
        try:
            current_context.annotations = annotations
            obj_id, method, vargs, kwargs = codec.loads(payload[ann_size:] if ann_size else payload)
            result = self._target(obj_id, method)(*vargs, **kwargs)
            data, flags = codec.dumps(result), 0
        except Exception as exc:  # the call's failure is its reply, as in Pyro5
            exc._pyroTraceback = pyro_errors.format_traceback(detailed=pyro_config.DETAILED_TRACEBACK)
            data, flags = _exception_reply(exc), lite.FLAGS_EXCEPTION
        annotations = current_context.response_annotations
        chunks = b"".join(_chunk(k, v) for k, v in annotations.items()) if annotations else b""
        header = lite.HEADER.pack(b"PYRO", lite.PROTOCOL_VERSION, lite.MSG_RESULT, codec.SERIALIZER_ID, flags,
                                  seq, len(data), len(chunks), _EMPTY_CORRELATION, 0, lite.MAGIC)
        conn.send(header + chunks + data)

    def _target(self, obj_id: str, method: str) -> Any:
        obj = self.objectsById.get(obj_id)
        if obj is None:
            raise pyro_errors.DaemonError("unknown object")
        exposed = self._exposed.get(obj_id)
        if exposed is None:
            exposed = self._exposed[obj_id] = set(pyro_server._get_exposed_members(obj)["methods"])
        if method not in exposed:
            raise AttributeError("attempt to access unexposed or unknown method: %s" % method)
        return getattr(obj, method)


def _read(conn: Any, size: int) -> bytes:
    """Exactly C{size} bytes from C{conn}, in one system call when the socket allows it."""
    sock = conn.sock
    plain = getattr(conn, "srpy_plain", None)
    if plain is None:  # asked once per connection (after its handshake): a plain socket (not TLS), blocking
        plain = conn.srpy_plain = bool(_WAITALL) and not hasattr(sock, "getpeercert") and sock.gettimeout() is None
    if plain:
        try:
            data = sock.recv(size, _WAITALL)
        except OSError as exc:
            raise pyro_errors.ConnectionClosedError("receiving: connection lost: %s" % exc) from None
        if len(data) == size:
            return data
        if not data:
            raise pyro_errors.ConnectionClosedError("receiving: connection lost")
        return data + conn.recv(size - len(data))
    return conn.recv(size)


def _trailing_size(annotations: Dict[str, Any]) -> int:
    """
    How many raw bytes a call announces after its message (srpy's C{SRAW} annotation), whatever
    its serializer; a malformed list ends the connection.
    """
    sizes = annotations.get(lite.TRAILING)
    if sizes is None:
        return 0
    if len(sizes) % 8:
        raise pyro_errors.ProtocolError("malformed %s annotation (%d bytes, not a list of 8-byte sizes)"
                                        % (lite.TRAILING, len(sizes)))
    return sum(struct.unpack("!%dQ" % (len(sizes) // 8), bytes(sizes)))


#: bytes read at a time when dropping a refused message: the limit is on memory, not on what is sent
_DISCARD_CHUNK = 1 << 20


def _discard(conn: Any, size: int) -> None:
    """Read and drop C{size} bytes from C{conn}, a chunk at a time."""
    while size > 0:
        step = min(size, _DISCARD_CHUNK)
        conn.recv(step)
        size -= step


def _annotations(payload: bytes, size: int) -> Dict[str, memoryview]:
    view = memoryview(payload)
    found, offset = {}, 0
    while offset < size:
        key = bytes(view[offset:offset + 4]).decode("ascii")
        length = int.from_bytes(view[offset + 4:offset + 8], "big")
        if offset + 8 + length > size:
            raise pyro_errors.ProtocolError("annotation chunk length exceeds remaining data")
        found[key] = view[offset + 8:offset + 8 + length]
        offset += 8 + length
    return found


def _chunk(key: str, value: Any) -> bytes:
    return struct.pack("!4sI", key.encode("ascii"), len(value)) + bytes(value)


def _exception_reply(exc: BaseException) -> bytes:
    try:
        return codec.dumps(exc)
    except (TypeError, ValueError) as failure:
        substitute = pyro_errors.PyroError("error serializing exception: %s. Original exception: %s: %s"
                                           % (failure, type(exc), exc))
        substitute._pyroTraceback = getattr(exc, "_pyroTraceback", None)
        return codec.dumps(substitute)


class _CheckedMarshal(pyro_serializers.MarshalSerializer):
    """Pyro5's marshal serializer, with the check of L{codec.check_marshal} on what it reads."""

    def loadsCall(self, data: Any) -> Any:
        data = self._convertToBytes(data)
        codec.check_marshal(data)
        return super().loadsCall(data)

    def loads(self, data: Any) -> Any:
        data = self._convertToBytes(data)
        codec.check_marshal(data)
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


class _GuardedMessage(pyro_protocol.ReceivingMessage):
    """
    Pyro5's received message, with two limits Pyro5 lacks: a connect message holds at most
    L{HANDSHAKE_MAX_SIZE} bytes (so a client that has not passed the handshake cannot make the
    engine hold more), and a compressed message inflates to at most Pyro5's C{MAX_MESSAGE_SIZE}
    (Pyro5 inflates it whole: a megabyte of compressed zeros would take a gigabyte).
    """

    def __init__(self, header: bytes, payload: Optional[bytes] = None) -> None:
        super().__init__(header)
        size = self.data_size + self.annotations_size
        if self.type == pyro_protocol.MSG_CONNECT and size > HANDSHAKE_MAX_SIZE:
            raise pyro_errors.ProtocolError("connect message too large (%d, max=%d)" % (size, HANDSHAKE_MAX_SIZE))
        if payload is not None:
            self.add_payload(payload)

    def add_payload(self, payload: Any) -> None:
        ann_size = self.annotations_size
        if self.flags & pyro_protocol.FLAGS_COMPRESSED and len(payload) == self.data_size + ann_size:
            limit = HANDSHAKE_MAX_SIZE if self.type == pyro_protocol.MSG_CONNECT else pyro_config.MAX_MESSAGE_SIZE
            inflater = zlib.decompressobj()
            data = inflater.decompress(bytes(payload[ann_size:]), max(0, limit - ann_size) + 1)
            if len(data) + ann_size > limit or not inflater.eof:
                raise pyro_errors.ProtocolError("compressed message is incomplete or inflates to more than %d bytes"
                                                % limit)
            payload = bytes(payload[:ann_size]) + data
            self.flags &= ~pyro_protocol.FLAGS_COMPRESSED
            self.data_size = len(data)
        super().add_payload(payload)


def _guard_pyro() -> None:
    """
    Make this process's Pyro5 read marshal (serializer id 2) only through L{_CheckedMarshal}, and
    messages only through L{_GuardedMessage} (an engine process serves one engine daemon).
    """
    if not isinstance(pyro_serializers.serializers_by_id.get(2), _CheckedMarshal):
        checked = _CheckedMarshal()
        pyro_serializers.serializers["marshal"] = pyro_serializers.serializers_by_id[2] = checked
    pyro_protocol.ReceivingMessage = _GuardedMessage  # type: ignore[misc]


class _Replay:
    """A Pyro5 connection whose first message (already read, and checked) is served again."""

    def __init__(self, conn: Any, *consumed: bytes) -> None:
        self._conn = conn
        self._pending: List[bytes] = [part for part in consumed if part]

    def recv(self, size: int) -> bytes:
        pending = self._pending
        if not pending:
            return self._conn.recv(size)
        first = pending[0]
        if len(first) == size:  # Pyro5 reads header, then payload: each comes back whole, no copy
            del pending[0]
            return first
        parts, got = [], 0
        while pending and got < size:
            part = pending.pop(0)
            if got + len(part) > size:
                pending.insert(0, part[size - got:])
                part = part[:size - got]
            parts.append(part)
            got += len(part)
        data = b"".join(parts)
        return data if got == size else data + self._conn.recv(size - got)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
