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

Large buffers travel raw beside the messages (L{srpy.wire}'s C{SRAW}): this daemon reads a
call's straight into the bytes or bytearray each becomes, before anything else (on every path,
so the connection stays in step; only srpy's own path gives them to the call), and sends a
reply's from the result's own memory (L{srpy.codec.dumps_with_buffers}).
What this takes of Pyro5's internals (its registry, its message class, its own handleRequest) it
takes through L{srpy._pyro5}, which says why and checks each against the installed Pyro5.
"""

import socket
from typing import Any, Dict, List, Optional, Set

from Pyro5 import config as pyro_config
from Pyro5 import errors as pyro_errors
from Pyro5 import protocol as pyro_protocol
from Pyro5.callcontext import current_context

from . import _pyro5, codec, errors, listener, logbuffer, wire
from .security import HANDSHAKE_MAX_SIZE, SecureDaemon, note_bad_input, note_too_large

_WAITALL = getattr(socket, "MSG_WAITALL", 0)
_INVOKE = wire.MSG_INVOKE
_FAST_FLAGS = 0  # any flag (oneway, batch, compressed, ...) takes Pyro5's path
#: what Pyro5's server loop takes quietly as the client going away
_CLIENT_GONE = (OSError, pyro_errors.ConnectionClosedError, pyro_errors.SecurityError, pyro_errors.TimeoutError)


class EngineDaemon(SecureDaemon):
    """A L{SecureDaemon} with a short path for srpy-serialized invoke messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        logbuffer.install()  # from here on no thread that serves ever waits for the log stream
        with listener.serving_daemons():  # accept and handshake without blocking (srpy.listener)
            super().__init__(*args, **kwargs)
        self._exposed: Dict[str, Set[str]] = {}
        _pyro5.check_once()
        # this process's Pyro5 reads marshal only after codec's check, and every message within
        # srpy's limits (an engine process serves one engine daemon)
        _pyro5.guard_marshal(codec.check_marshal)
        _pyro5.guard_messages(HANDSHAKE_MAX_SIZE)

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
        header = _read(conn, wire.HEADER.size)
        try:
            msgtype, serializer_id, flags, seq, data_size, ann_size = wire.parse_header(header)
        except wire.HeaderError:
            raise pyro_errors.ProtocolError("invalid message or protocol version") from None
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
        buffers = None
        if annotations and wire.TRAILING in annotations:
            raw = _trailing_size(annotations)
            if raw > limit:
                _discard(conn, raw)
                self._refuse_too_large(conn, serializer_id, flags, seq, raw, "raw bytes")
                return
            buffers = _read_buffers(conn, annotations)  # first: nothing may fail with them unread
        if msgtype == _INVOKE and serializer_id == codec.SERIALIZER_ID and flags == _FAST_FLAGS:
            self._serve(conn, seq, payload, ann_size, annotations, buffers)
            return
        # every other message passes the same checks (above, and here), then Pyro5's own handling
        if _pyro5.serializer(serializer_id) is None and msgtype != pyro_protocol.MSG_PING:
            raise pyro_errors.ProtocolError("unknown serializer id %d" % serializer_id)
        if msgtype == _INVOKE and flags & pyro_protocol.FLAGS_KEEPSERIALIZED:
            # Pyro5 would read the BLBI annotation with a plain marshal.loads and pass a blob that no
            # engine method takes: refused, as a reply to this call
            exc = pyro_errors.ProtocolError("srpy engines take no Pyro5 SerializedBlob arguments (flag 0x20)")
            _pyro5.send_exception(self, conn, seq, serializer_id, exc)
            return
        _pyro5.handle_as_pyro5(self, _Replay(conn, header, payload))

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
        if flags & wire.FLAGS_ONEWAY:
            return
        theirs = _pyro5.serializer(serializer_id)
        if serializer_id == codec.SERIALIZER_ID:
            data = _exception_reply(errors.MessageTooLargeError(text))
        elif theirs is not None:  # a type Pyro5's own clients rebuild
            data = theirs.dumps(pyro_errors.MessageTooLargeError(text))
        else:
            raise pyro_errors.ProtocolError(text)
        conn.send(wire.pack_message(wire.MSG_RESULT, serializer_id, data, seq, wire.FLAGS_EXCEPTION))

    def _serve(self, conn: Any, seq: int, payload: bytes, ann_size: int, annotations: Dict[str, Any],
               buffers: Optional[List[Any]]) -> None:
        _pyro5.enter_call(conn, seq, codec.SERIALIZER_ID, annotations)
        sent: List[Any] = []
        try:
            obj_id, method, vargs, kwargs = codec.loads(payload[ann_size:] if ann_size else payload, buffers)
            result = self._target(obj_id, method)(*vargs, **kwargs)
            data, sent = codec.dumps_with_buffers(result)
            flags = 0
        except Exception as exc:  # the call's failure is its reply, as in Pyro5
            _pyro5.attach_traceback(exc)
            data, flags, sent = _exception_reply(exc), wire.FLAGS_EXCEPTION, []
        annotations = current_context.response_annotations
        if sent:
            annotations = dict(annotations or {}, **wire.buffer_annotations(sent))
        conn.send(wire.pack_message(wire.MSG_RESULT, codec.SERIALIZER_ID, data, seq, flags, annotations))
        for view, _ in sent:  # from the result's own memory
            conn.send(view)

    def _target(self, obj_id: str, method: str) -> Any:
        obj = _pyro5.registered_object(self, obj_id)
        if obj is None:
            raise pyro_errors.DaemonError("unknown object")
        exposed = self._exposed.get(obj_id)
        if exposed is None:
            exposed = self._exposed[obj_id] = _pyro5.exposed_methods(obj)
        if method not in exposed:
            raise AttributeError("attempt to access unexposed or unknown method: %s" % method)
        return getattr(obj, method)


def _read(conn: Any, size: int) -> bytes:
    """Exactly C{size} bytes from C{conn}, in one system call when the socket allows it."""
    sock = conn.sock
    if _plain(conn):
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


def _read_buffers(conn: Any, annotations: Dict[str, Any]) -> List[Any]:
    """
    The raw buffers that follow a call's message, each read straight into what it becomes:
    bytes, or a bytearray or new memory, as SRBK says (a numpy array is then a view of it).
    """
    try:
        layout = wire.parse_buffers(annotations)
    except errors.ProtocolError as exc:
        raise pyro_errors.ProtocolError(str(exc)) from None
    return [_read(conn, size) if kind == "b" else _read_into(conn, size, kind == "m") for size, kind in layout]


def _read_into(conn: Any, size: int, memory: bool) -> Any:
    """
    Exactly C{size} bytes from C{conn}, read into new memory (L{wire.new_memory}), committed as the
    data comes (a bytearray(size) would be committed, zeroed, at once, for a client that may send
    nothing), then for a bytearray value (not C{memory}) made a bytearray.
    """
    try:
        buf = wire.new_memory(size)
    except (OSError, ValueError) as exc:  # no address space or mapping left: not the client going away
        raise pyro_errors.ProtocolError("cannot take a buffer of %d bytes: %s" % (size, exc)) from None
    view, got, sock = memoryview(buf), 0, conn.sock
    flags = _WAITALL if _plain(conn) else 0  # a plain socket fills it in one system call
    while got < size:
        try:
            count = sock.recv_into(view[got:], size - got, flags)
        except OSError as exc:
            raise pyro_errors.ConnectionClosedError("receiving: connection lost: %s" % exc) from None
        if not count:
            raise pyro_errors.ConnectionClosedError("receiving: connection lost")
        got += count
    view.release()  # the mapping can be closed once no view of it is left
    if memory or type(buf) is bytearray:
        return buf
    try:
        return bytearray(buf)
    finally:
        buf.close()


def _plain(conn: Any) -> bool:
    """Whether C{conn}'s socket is plain (not TLS) and blocking: then one read with MSG_WAITALL fills a buffer."""
    plain = getattr(conn, "srpy_plain", None)
    if plain is None:  # asked once per connection (after its handshake)
        sock = conn.sock
        plain = conn.srpy_plain = bool(_WAITALL) and not hasattr(sock, "getpeercert") and sock.gettimeout() is None
    return bool(plain)


def _trailing_size(annotations: Dict[str, Any]) -> int:
    """
    How many raw bytes a call announces after its message (srpy's C{SRAW} annotation), whatever
    its serializer; a malformed list ends the connection.
    """
    sizes = annotations.get(wire.TRAILING)
    if sizes is None:
        return 0
    try:
        return sum(wire.parse_trailing(sizes))
    except errors.ProtocolError as exc:
        raise pyro_errors.ProtocolError(str(exc)) from None


#: bytes read at a time when dropping a refused message: the limit is on memory, not on what is sent
_DISCARD_CHUNK = 1 << 20


def _discard(conn: Any, size: int) -> None:
    """Read and drop C{size} bytes from C{conn}, a chunk at a time."""
    while size > 0:
        step = min(size, _DISCARD_CHUNK)
        conn.recv(step)
        size -= step


def _annotations(payload: bytes, size: int) -> Dict[str, memoryview]:
    """The annotations that open C{payload} (L{srpy.wire.parse_annotations}), as Pyro5's protocol errors."""
    try:
        return wire.parse_annotations(payload, size)
    except errors.ProtocolError as exc:
        raise pyro_errors.ProtocolError(str(exc)) from None


def _exception_reply(exc: BaseException) -> bytes:
    try:
        return codec.dumps(exc)
    except (TypeError, ValueError) as failure:
        substitute = pyro_errors.PyroError("error serializing exception: %s. Original exception: %s: %s"
                                           % (failure, type(exc), exc))
        _pyro5.copy_traceback(exc, substitute)
        return codec.dumps(substitute)


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
