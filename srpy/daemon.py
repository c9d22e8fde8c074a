"""
The engine's Pyro5 daemon: Pyro5's thread server and connect handshake (with srpy's secret proof,
from L{srpy.security}), plus a short path for the calls srpy's own clients make.

Measured on a 2-core machine, Pyro5's general C{handleRequest} costs about 75 us per call on top
of a 27 us raw-socket round trip (three reads per message, a fresh UUID, message objects, a walk
over the arguments). An engine serves mostly small calls from srpy clients, so this daemon
handles a plain invoke message in srpy's serializer itself: one read for the header, one for the
body, one write for the reply, the same wire format and the same error replies as Pyro5.
Everything else (json or serpent callers such as the Jython client, pings, oneway or batch
flags, unknown objects) is handed, unchanged, to Pyro5's own C{handleRequest}.
"""

import socket
import struct
from typing import Any, Dict, Optional, Set

from Pyro5 import config as pyro_config
from Pyro5 import errors as pyro_errors
from Pyro5 import server as pyro_server
from Pyro5.callcontext import current_context

from . import codec, lite
from .security import SecureDaemon

_WAITALL = getattr(socket, "MSG_WAITALL", 0)
_INVOKE = lite.MSG_INVOKE
_FAST_FLAGS = 0  # any flag (oneway, batch, compressed, ...) takes Pyro5's path
_EMPTY_CORRELATION = b"\0" * 16


class EngineDaemon(SecureDaemon):
    """A L{SecureDaemon} with a short path for srpy-serialized invoke messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._exposed: Dict[str, Set[str]] = {}

    def handleRequest(self, conn: Any) -> None:
        """Serve one message from C{conn}: srpy's short path, or Pyro5's own."""
        header = _read(conn, lite.HEADER.size)
        tag, version, msgtype, serializer_id, flags, seq, data_size, ann_size, _, _, magic = lite.HEADER.unpack(header)
        if tag != b"PYRO" or magic != lite.MAGIC or version != lite.PROTOCOL_VERSION:
            raise pyro_errors.ProtocolError("invalid message or protocol version")
        if msgtype != _INVOKE or serializer_id != codec.SERIALIZER_ID or flags != _FAST_FLAGS:
            super().handleRequest(_Replay(conn, header))
            return
        if data_size + ann_size > pyro_config.MAX_MESSAGE_SIZE:
            raise pyro_errors.ProtocolError("message too large (%d, max=%d)"
                                            % (data_size + ann_size, pyro_config.MAX_MESSAGE_SIZE))
        payload = _read(conn, data_size + ann_size) if data_size + ann_size else b""
        annotations = _annotations(payload, ann_size) if ann_size else {}
        _check_trailing(annotations)
        self._serve(conn, seq, payload, ann_size, annotations)

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
    if _WAITALL and sock.gettimeout() is None and not hasattr(sock, "getpeercert"):
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


def _check_trailing(annotations: Dict[str, Any]) -> None:
    """Refuse (closing the connection) a call announcing more raw bytes than a message may hold."""
    sizes = annotations.get(lite.TRAILING)
    if sizes is None:
        return
    count = len(sizes) // 8
    total = sum(struct.unpack("!%dQ" % count, bytes(sizes[:count * 8])))
    if total > pyro_config.MAX_MESSAGE_SIZE:
        raise pyro_errors.ProtocolError("call announces %d raw bytes, more than the limit of %d"
                                        % (total, pyro_config.MAX_MESSAGE_SIZE))


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


class _Replay:
    """A Pyro5 connection whose first bytes (a header already read) are served again."""

    def __init__(self, conn: Any, consumed: bytes) -> None:
        self._conn = conn
        self._pending: Optional[bytes] = consumed

    def recv(self, size: int) -> bytes:
        pending = self._pending
        if not pending:
            return self._conn.recv(size)
        head, self._pending = pending[:size], pending[size:]
        return head if len(head) == size else head + self._conn.recv(size - len(head))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
