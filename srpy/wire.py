# -*- coding: utf-8 -*-
"""
The wire: every byte an srpy client and engine exchange, and the connections that carry them.

A message is Pyro5's (wire protocol version 502): a fixed 40-byte header, zero or more annotation
chunks, then the payload (a serialized call, reply or handshake). The header, big-endian
(C{struct} format C{!4sHBBHHII16sHH}, L{HEADER})::

    offset code size  field
    0x00   4s   4     b"PYRO" (message identifier)
    0x04   H    2     protocol version: L{PROTOCOL_VERSION} (502, Pyro5 5.x)
    0x06   B    1     message type (MSG_*, below)
    0x07   B    1     serializer id of the payload: 1 serpent, 2 marshal, 3 json, 4 msgpack,
                      83 srpy's own (L{srpy.codec})
    0x08   H    2     flags (FLAGS_*, below)
    0x0a   H    2     sequence number: a reply carries its call's
    0x0c   I    4     payload size in bytes
    0x10   I    4     annotations size in bytes (all chunks together; 0 if none)
    0x14   16s  16    correlation id (srpy sends zeros)
    0x24   H    2     reserved (0)
    0x26   H    2     magic number L{MAGIC} (0x4dc5)
    total 0x28 (40 bytes)

Each annotation chunk (L{CHUNK}, C{!4sI}), right after the header::

    4s   4    name: 4 ASCII letters
    I    4    length of the value
    ...       the value (raw bytes)

Message types: 1 CONNECT, 2 CONNECTOK, 3 CONNECTFAIL (the handshake), 4 INVOKE (a call),
5 RESULT (its reply), 6 PING. Flags: 1 EXCEPTION (the reply is an exception), 2 COMPRESSED
(zlib payload; the annotations are not compressed), 4 ONEWAY, 8 BATCH, 0x20 KEEPSERIALIZED and
0x40 CORR_ID (Pyro5's; srpy engines refuse KEEPSERIALIZED arguments).

srpy's extensions, all within Pyro5's framing (a plain Pyro5 peer ignores the annotations)::

    name  on      value
    SRAW  both    N sizes, big-endian unsigned 64-bit (8*N bytes): N raw buffers follow the
                  message right after its payload, unframed, in order (L{TRAILING}); the
                  serializer's message names them by their place (srpy's: large bytes,
                  bytearray, memoryview, array.array and numpy data, L{srpy.codec}); at most
                  L{MAX_BUFFERS}, together held to the same size limit as a message
    SRBK  both    N ASCII letters, one per SRAW buffer, what to read it into: "b" bytes, "w" a
                  bytearray, "m" new memory of the reader's own (a private anonymous mapping,
                  not zeroed first: what a numpy array is built on, no copy); "w" and "m"
                  buffers are of L{BLOB_MIN} bytes or more; none: all "b" (L{BUFFER_KINDS})
    STMO  call    the call's time limit in seconds, a big-endian double (8 bytes) (L{CALL_TIMEOUT})
    SCID  call    the call's id, 8 bytes of the client's choice, for abort (L{CALL_ID})
    SRND  reply   empty: the engine ends its process right after this reply (a runaway call
                  that held the interpreter), and a fresh one starts at the same URI (L{ENDING})
    SOUT  call    b"1": from this call on, the caller takes what the calls of this connection
                  print, as it happens; b"0": no more (the engine remembers it per connection,
                  so a client sends it once per connection and switch) (L{OUTPUT})
    SOUT  reply   lines the call printed: RESULT messages with an empty payload and this one
                  annotation, sent AHEAD of the reply with the same sequence number, any number
                  of them, only on a connection that asked; each line is one byte, b"1"
                  (stdout) or b"2" (stderr), its UTF-8 text and b"\n" (L{output_ahead})

Buffers of at least L{BLOB_MIN} bytes travel this way, outside the serializer, both ways: from
the value's own memory to the socket, and from the socket into the memory of the value built
(an engine sends them only to callers that use srpy's serializer).

The handshake (what srpy adds is the secret proof, L{proof}, an HMAC-SHA256 over both nonces)::

    client  CONNECT    json {"handshake": {"srpy": 1, "nonce": Nc}, "object": OBJECT_ID}
    -- an engine without a secret answers CONNECTOK right away; with one, it challenges:
    engine  CONNECT    json {"nonce": Ne, "proof": proof(secret, "server", Nc, Ne)}
    client  CONNECT    json {"proof": proof(secret, "client", Ne, Nc)}
    engine  CONNECTOK  {"handshake": {...}, "meta": ...} in the client's serializer,
            or CONNECTFAIL with the reason as text

A client with a secret refuses an engine that does not challenge it (it could be any engine).

This module is the only one in srpy that packs or parses a frame. It runs unchanged on CPython 3
and on Jython 2.7 (standard library only): it is also the first half of the one-file Jython
client (C{python -m srpy.lite --save DIR}), whose second half is L{srpy.lite}.
"""
from __future__ import absolute_import, division, print_function

import contextlib
import json
import os
import struct
import sys
import threading
import time

__all__ = ["PROTOCOL_VERSION", "MAGIC", "HEADER", "CHUNK", "MSG_CONNECT", "MSG_CONNECTOK", "MSG_CONNECTFAIL",
           "MSG_INVOKE", "MSG_RESULT", "MSG_PING", "FLAGS_EXCEPTION", "FLAGS_COMPRESSED", "FLAGS_ONEWAY",
           "FLAGS_BATCH", "FLAGS_KEEPSERIALIZED", "FLAGS_CORR_ID", "TRAILING", "BUFFER_KINDS", "CALL_TIMEOUT",
           "CALL_ID", "ENDING", "JSON_SERIALIZER_ID", "MAX_MESSAGE_SIZE", "HANDSHAKE_REPLY_MAX",
           "BLOB_MIN", "MAX_BUFFERS", "ENGINE_OBJECT", "STALE_AFTER",
           "pack_header", "parse_header", "HeaderError", "sniff", "pack_chunk", "pack_annotations", "parse_chunk_head",
           "parse_annotations", "pack_message", "pack_trailing", "parse_trailing", "buffer_annotations",
           "parse_buffers", "new_memory", "pack_call_limit",
           "parse_call_limit", "inflate", "clock", "proof", "new_nonce", "same_text", "parse_uri",
           "OUTPUT", "output_ahead", "parse_output",
           "JsonSerializer", "exception_from_dict", "SocketTransport", "JavaSocketTransport", "default_transport",
           "Connection", "Pool"]  # the exceptions are srpy.errors' (or, in the one-file client, lite's)

# -- the constants of the table above -----------------------------------------------------------

#: the Pyro5 wire protocol version this module speaks (Pyro5 5.x)
PROTOCOL_VERSION = 502
MAGIC = 0x4dc5
#: the message header (see the table above)
HEADER = struct.Struct("!4sHBBHHII16sHH")
#: the head of one annotation chunk: its name and the length of its value
CHUNK = struct.Struct("!4sI")
MSG_CONNECT, MSG_CONNECTOK, MSG_CONNECTFAIL, MSG_INVOKE, MSG_RESULT, MSG_PING = 1, 2, 3, 4, 5, 6
FLAGS_EXCEPTION, FLAGS_COMPRESSED, FLAGS_ONEWAY, FLAGS_BATCH = 1, 2, 4, 8
FLAGS_KEEPSERIALIZED, FLAGS_CORR_ID = 0x20, 0x40
TRAILING = "SRAW"  # annotation listing the sizes of the raw buffers sent right after a message
BUFFER_KINDS = "SRBK"  # annotation saying what to read each of those buffers into: "b" bytes, "w" bytearray, "m" memory
CALL_TIMEOUT = "STMO"  # annotation carrying a call's time limit in seconds (big-endian double)
CALL_ID = "SCID"  # annotation naming a call (8 bytes, the client's choice) so that abort() can stop it
ENDING = "SRND"  # annotation on a reply sent by an engine that ends its process right after it (to stop a call)
OUTPUT = "SOUT"  # on a call: send me what calls print; ahead of a reply: lines printed (srpy.output)
JSON_SERIALIZER_ID = 3
#: buffers at least this large travel raw after their message (SRAW), outside the serializer
BLOB_MIN = 64 * 1024
#: the most raw buffers one message may announce
MAX_BUFFERS = 1 << 16
#: refuse messages announcing more than this many bytes (Pyro5's own default limit)
MAX_MESSAGE_SIZE = 1 << 30
#: the most a client accepts in one message before the handshake is complete (an engine's reply holds ~2 KB)
HANDSHAKE_REPLY_MAX = 64 * 1024
#: the Pyro5 object id srpy engines are served under
ENGINE_OBJECT = "srpy.engine"
#: seconds idle after which a pooled connection is checked before use
STALE_AFTER = 0.05
_NO_CORRELATION = b"\0" * 16
_TAG = b"PYRO"
_PY2 = sys.version_info[0] == 2
_JYTHON = sys.platform.startswith("java")
_text = unicode if _PY2 else str  # type: ignore[name-defined]  # noqa: F821 (Python 2 name)
#: the finest elapsed-time clock this Python has, in seconds (Jython 2.7 has no perf_counter: its
#: time.clock is System.nanoTime; on CPython 2 time.clock is CPU time, so time.time there)
clock = getattr(time, "perf_counter", getattr(time, "clock", None) if _JYTHON else time.time)

MYPY = False  # (mypy reads it as True: it checks the package's branch)
if MYPY or globals().get("__package__") == "srpy":  # srpy.wire: the package's exception types
    from .errors import (SRPyError, SRPyServerNotFound, CommunicationError, ConnectionLost,
                         ProtocolError, CallTimeout, AuthenticationError, RemoteError, RemoteSystemExit)
else:  # the one-file client (python -m srpy.lite --save): Jython, or a plain script
    class SRPyError(Exception):
        """Base class of every error raised by srpy itself."""

    class SRPyServerNotFound(SRPyError):
        """Nothing answered at an engine's URI within the connect timeout."""
        def __init__(self, uri, reason=""):
            self.uri = str(uri)
            self.reason = reason
            SRPyError.__init__(self, "no srpy engine answers at %s%s" % (uri, ": " + reason if reason else ""))

    class CommunicationError(SRPyError):
        """The connection to an engine failed or was lost during a call."""

    class ConnectionLost(CommunicationError):
        """The engine closed the connection (or died) while a call was under way."""

    class ProtocolError(CommunicationError):
        """The peer sent something that is not a valid Pyro5 message for srpy."""

    class CallTimeout(CommunicationError):
        """A call did not complete within its timeout."""

    class AuthenticationError(SRPyError):
        """The secret handshake failed."""

    class RemoteError(SRPyError):
        """An exception of a type with no local equivalent, raised by code on an engine."""
        def __init__(self, remote_type, message, remote_traceback=None):
            self.remote_type = remote_type
            self.remote_traceback = remote_traceback
            SRPyError.__init__(self, "%s: %s" % (remote_type, message))

    class RemoteSystemExit(SystemExit):
        """Code on an engine called sys.exit(); the engine keeps serving."""
        def __init__(self, remote_code=None, remote_traceback=None):
            self.remote_code = remote_code
            self.remote_traceback = remote_traceback
            SystemExit.__init__(self, "code on the engine called sys.exit(%r)" % (remote_code,))


# -- frames ---------------------------------------------------------------------------------------

class HeaderError(ProtocolError):
    """
    A header that is not Pyro5 502's: C{field} says which part is wrong ('tag', 'version' or
    'magic') and C{value} what it held, so that each side words its refusal as its peers expect.
    """

    def __init__(self, field, value, text):
        ProtocolError.__init__(self, text)
        self.field = field
        self.value = value


def pack_header(msgtype, serializer_id, data_size, seq=0, flags=0, ann_size=0):
    """The 40-byte header of a message of C{data_size} payload bytes and C{ann_size} bytes of annotations."""
    return HEADER.pack(_TAG, PROTOCOL_VERSION, msgtype, serializer_id, flags, seq, data_size, ann_size,
                       _NO_CORRELATION, 0, MAGIC)


def parse_header(header):
    """
    C{(msgtype, serializer_id, flags, seq, data_size, ann_size)} of a 40-byte header.

    @raise HeaderError: it is not a Pyro5 message, or not of protocol version 502.
    """
    tag, version, msgtype, serializer_id, flags, seq, data_size, ann_size, _, _, magic = HEADER.unpack(header)
    if tag != _TAG:
        raise HeaderError("tag", tag, "not a Pyro5 message (it starts %r)" % (tag,))
    if version != PROTOCOL_VERSION:
        raise HeaderError("version", version, "Pyro5 wire protocol version %d, but srpy speaks only version %d "
                          "(Pyro5 5.x)" % (version, PROTOCOL_VERSION))
    if magic != MAGIC:
        raise HeaderError("magic", magic, "a Pyro5 header with a wrong magic number")
    return msgtype, serializer_id, flags, seq, data_size, ann_size


def sniff(first):
    """
    What the first bytes a peer sent (up to 8, peeked at) open: C{("pyro", serializer id)} for a
    Pyro5 message; C{("maybe", None)} while fewer than 8 bytes could still be one; C{("other",
    None)} for anything else (a TLS handshake, say).
    """
    if _TAG.startswith(first[:4]) and len(first) < 8:
        return "maybe", None
    if first[:4] == _TAG:
        return "pyro", bytearray(first[7:8])[0]
    return "other", None


def pack_chunk(name, value):
    """One annotation chunk: C{name} (4 ASCII letters) and its raw C{value}."""
    return CHUNK.pack(name.encode("ascii"), len(value)) + _raw(value)


def pack_annotations(annotations):
    """The annotation chunks of C{{name: raw value}}, one after the other (b"" for none)."""
    return b"".join([pack_chunk(name, value) for name, value in annotations.items()]) if annotations else b""


def parse_chunk_head(head):
    """C{(name, length)} of the 8 bytes that open an annotation chunk."""
    name, length = CHUNK.unpack(head)
    try:
        return name.decode("ascii"), length
    except UnicodeError:
        raise ProtocolError("an annotation whose name is not ASCII (%r)" % (name,))


def parse_annotations(block, size):
    """
    C{{name: value}} of the C{size} bytes of annotation chunks that open C{block} (a payload read
    whole); each value is a memoryview into C{block}, so nothing is copied.

    @raise ProtocolError: a chunk runs past the annotations' end.
    """
    view = memoryview(block)
    found, offset = {}, 0
    while offset < size:
        if size - offset < CHUNK.size:
            raise ProtocolError("malformed annotations")
        name, length = parse_chunk_head(view[offset:offset + CHUNK.size].tobytes())
        if offset + CHUNK.size + length > size:
            raise ProtocolError("annotation chunk length exceeds remaining data")
        found[name] = view[offset + CHUNK.size:offset + CHUNK.size + length]
        offset += CHUNK.size + length
    return found


def pack_message(msgtype, serializer_id, data, seq=0, flags=0, annotations=None):
    """A whole message: header, the annotation chunks of C{annotations} and the payload C{data}."""
    chunks = pack_annotations(annotations)
    return pack_header(msgtype, serializer_id, len(data), seq, flags, len(chunks)) + chunks + data


def output_ahead(serializer_id, seq, lines):
    """
    A whole SOUT message, sent ahead of the reply to call C{seq}: C{lines} are C{(fd, text)}
    pairs, fd 1 (stdout) or 2 (stderr), each text one line without its newline.

    >>> message = output_ahead(83, 1, [(1, "a"), (2, "b")])
    >>> size = parse_header(message[:HEADER.size])[5]
    >>> parse_output(parse_annotations(message[HEADER.size:], size)[OUTPUT])
    [(1, 'a'), (2, 'b')]
    """
    value = b"".join([(b"2" if fd == 2 else b"1") + text.encode("utf-8", "backslashreplace") + b"\n"
                      for fd, text in lines])
    return pack_message(MSG_RESULT, serializer_id, b"", seq, 0, {OUTPUT: value})


def parse_output(value):
    """The C{(fd, text)} lines of a SOUT annotation's value (see L{output_ahead})."""
    return [(2 if line[:1] == b"2" else 1, line[1:].decode("utf-8", "replace"))
            for line in bytes(value).split(b"\n")[:-1]]


def pack_trailing(blobs):
    """The value of the SRAW annotation for the raw byte strings C{blobs}."""
    return struct.pack("!%dQ" % len(blobs), *[len(blob) for blob in blobs])


def parse_trailing(value):
    """
    The sizes an SRAW annotation lists.

    @raise ProtocolError: its length is not a multiple of 8.
    """
    if len(value) % 8:
        raise ProtocolError("malformed %s annotation (%d bytes, not a list of 8-byte sizes)" % (TRAILING, len(value)))
    if len(value) > 8 * MAX_BUFFERS:
        raise ProtocolError("a message announcing %d raw buffers (at most %d)" % (len(value) // 8, MAX_BUFFERS))
    return list(struct.unpack("!%dQ" % (len(value) // 8), _raw(value)))


def buffer_annotations(buffers):
    """
    The annotations (SRAW, SRBK) announcing C{buffers}, a list of C{(buffer, kind)}: each buffer
    a flat byte view or bytes, C{kind} what the reader builds (SRBK's letters).
    """
    annotations = {TRAILING: pack_trailing([view for view, _ in buffers])}
    kinds = "".join(kind for _, kind in buffers)
    if kinds.strip("b"):
        annotations[BUFFER_KINDS] = kinds.encode("ascii")
    return annotations


def parse_buffers(annotations):
    """
    C{[(size, kind), ...]}, the raw buffers a message's annotations announce (none: []).

    @raise ProtocolError: a malformed SRAW or SRBK, more than L{MAX_BUFFERS} buffers.
    """
    sizes = annotations.get(TRAILING)
    if sizes is None:
        return []
    sizes = parse_trailing(sizes)
    kinds = annotations.get(BUFFER_KINDS)
    if kinds is None:
        return [(size, "b") for size in sizes]
    kinds = _raw(kinds)
    if len(kinds) != len(sizes) or kinds.strip(b"bwm"):
        raise ProtocolError("malformed %s annotation (%d letters for %d buffers, each b, w or m)"
                            % (BUFFER_KINDS, len(kinds), len(sizes)))
    layout = [(size, kinds[i:i + 1].decode("ascii")) for i, size in enumerate(sizes)]
    for size, kind in layout:
        # srpy sends only large buffers beside a message; a small one read into memory of its own
        # would cost a page (and a mapping) for every byte sent
        if kind != "b" and size < BLOB_MIN:
            raise ProtocolError("a %s buffer of %d bytes beside a message (they are of %d bytes or more)"
                                % (kind, size, BLOB_MIN))
    return layout


def new_memory(size):
    """
    C{size} writable bytes of this process's own, not zeroed first: a private anonymous mapping
    (the system hands out its pages as they are first written, and a child forked later gets its
    own copy, never a share); a bytearray where there is no mmap that numpy can wrap (Jython,
    Python 2) or for less than L{BLOB_MIN} bytes.
    """
    if size < BLOB_MIN or _PY2:
        return bytearray(size)
    try:
        import mmap
    except ImportError:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _as_bytearray(memory):
    """A bytearray of C{memory}'s bytes (a copy); the mapping is released."""
    try:
        return bytearray(memory)
    finally:
        memory.close()


def pack_call_limit(seconds):
    """The value of the STMO annotation: a time limit of C{seconds}."""
    return struct.pack("!d", seconds)


def parse_call_limit(value):
    """The seconds an STMO annotation holds, or None if it holds no valid limit (not 8 bytes, not above 0)."""
    if value is None or len(value) != 8:
        return None
    seconds = struct.unpack("!d", _raw(value))[0]
    return seconds if seconds > 0 else None  # NaN, zero or negative: no limit


def _raw(value):
    """The bytes of C{value} (bytes, bytearray or memoryview; on Python 2, str() of a memoryview is not its bytes)."""
    return value.tobytes() if isinstance(value, memoryview) else bytes(value)


def inflate(data, limit):
    """
    A compressed payload, inflated to at most C{limit} bytes: a few KB of zeros could inflate to
    gigabytes, so no more than that is ever held.

    @raise ProtocolError: corrupt, incomplete, or more than C{limit} bytes once inflated (its
        text reads after "<peer> sent ").
    """
    import zlib
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ProtocolError("corrupt compressed data: %s" % (exc,))
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise ProtocolError("compressed data that inflates to more than the limit of %d bytes" % (limit,))
    if not getattr(inflater, "eof", True):  # Python 2's zlib cannot tell
        raise ProtocolError("incomplete compressed data")
    return inflated


# -- the secret proof ------------------------------------------------------------------------------

def proof(secret, role, first_nonce, second_nonce):
    """
    HMAC-SHA256 proof that one side knows C{secret}, bound to both fresh nonces and to the role
    ('server' or 'client'), so neither a captured proof nor the other side's proof can be replayed.
    Returns hex text.
    """
    import hashlib
    import hmac
    if isinstance(secret, _text):
        secret = secret.encode("utf-8")
    message = ("srpy-proof-1|%s|%s|%s" % (role, first_nonce, second_nonce)).encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def new_nonce():
    """16 fresh random bytes as hex text."""
    import binascii
    return binascii.hexlify(os.urandom(16)).decode("ascii")


def same_text(a, b):
    """Constant-time comparison of two texts (hmac.compare_digest, which Jython 2.7 lacks)."""
    if isinstance(a, _text):
        a = a.encode("utf-8")
    if isinstance(b, _text):
        b = b.encode("utf-8")
    import hmac
    compare = getattr(hmac, "compare_digest", None)
    if compare is not None:
        return compare(a, b)
    difference = len(a) ^ len(b)
    for x, y in zip(bytearray(a), bytearray(b)):
        difference |= x ^ y
    return difference == 0


# -- URIs ------------------------------------------------------------------------------------------

def parse_uri(uri):
    """
    Split C{PYRO:object@host:port} into (object, host, port).

    >>> parse_uri("PYRO:srpy.engine@127.0.0.1:4000")
    ('srpy.engine', '127.0.0.1', 4000)
    """
    text = str(uri).strip()
    if not text.startswith("PYRO:") or "@" not in text:
        raise ValueError("not a direct Pyro5 URI (PYRO:object@host:port): %r" % (text,))
    obj, _, location = text[5:].partition("@")
    if location.startswith("["):  # IPv6 [::1]:port
        host, _, port = location[1:].partition("]:")
    else:
        host, _, port = location.rpartition(":")
    if not obj or not host or not port.isdigit():
        raise ValueError("not a direct Pyro5 URI (PYRO:object@host:port): %r" % (text,))
    return obj, host, int(port)


# -- json, the serializer every engine accepts ---------------------------------------------------

class JsonSerializer(object):
    """
    Pyro5's json format (serializer id 3). On Python 2 the output is ASCII-escaped: Jython's
    json module is several times faster that way.
    """
    serializer_id = JSON_SERIALIZER_ID

    def __init__(self):
        # one encoder and decoder, made once: building them per call costs more than the call on Jython
        self._encoder = json.JSONEncoder(ensure_ascii=_PY2, default=self._default)
        self._decoder = json.JSONDecoder()

    def dumps(self, value):
        """Serialize one value to UTF-8 bytes."""
        data = self._encoder.encode(value)
        return data.encode("utf-8") if isinstance(data, _text) else data

    def dumps_call(self, obj, method, args, kwargs):
        """Serialize a call in Pyro5's json form."""
        return self.dumps({"object": obj, "method": method, "params": list(args), "kwargs": kwargs or {}})

    def loads(self, data):
        """Deserialize UTF-8 json bytes."""
        return self._decoder.decode(bytes(data).decode("utf-8"))

    def exception(self, value):
        """The local exception for a remote one (Pyro5's dict form)."""
        if isinstance(value, BaseException):
            return value
        return exception_from_dict(value if isinstance(value, dict) else {"args": [value]})

    @staticmethod
    def _default(value):
        if isinstance(value, (set, frozenset, tuple)):
            return list(value)
        raise TypeError("cannot send a value of type %r over json: use None, bool, numbers, str, "
                        "lists and dicts with str keys" % (type(value).__name__,))


#: Python 3 exception types Python 2 lacks, and the Python 2 type that stands for each
_PY2_EXCEPTIONS = {
    "ModuleNotFoundError": "ImportError", "RecursionError": "RuntimeError",
    "FileNotFoundError": "IOError", "FileExistsError": "OSError", "PermissionError": "IOError",
    "IsADirectoryError": "IOError", "NotADirectoryError": "OSError", "TimeoutError": "OSError",
    "ConnectionError": "IOError", "ConnectionRefusedError": "IOError", "ConnectionResetError": "IOError",
    "ConnectionAbortedError": "IOError", "BrokenPipeError": "IOError", "InterruptedError": "OSError",
    "BlockingIOError": "IOError", "ChildProcessError": "OSError", "ProcessLookupError": "OSError",
    "StopAsyncIteration": "Exception",
}


def exception_from_dict(data):
    """
    Rebuild an exception from Pyro5's dict form: the builtin type where this Python has one (on
    Python 2, the nearest older type for Python 3's newer ones), else L{RemoteError}. The engine's
    traceback text is in C{remote_traceback}, the remote type's dotted name in C{remote_type}.
    """
    classname = str(data.get("__class__", "builtins.Exception"))
    args = tuple(_native(a) for a in (data.get("args") or ()))
    attrs = data.get("attributes") or {}
    tb = attrs.get("_pyroTraceback")
    tb_text = attrs.get("srpy_traceback") or ("".join(tb) if isinstance(tb, (list, tuple)) else tb)
    module, _, name = classname.rpartition(".")
    if module in ("builtins", "exceptions") and name == "SystemExit":
        return RemoteSystemExit(args[0] if args else None, tb_text)
    exc = _builtin_exception(module, name, args)
    if exc is None:
        message = args[0] if len(args) == 1 else ", ".join(str(a) for a in args)
        exc = RemoteError(classname, message, tb_text)
    exc.remote_traceback = tb_text
    exc.remote_type = classname
    return exc


def _builtin_exception(module, name, args):
    if module not in ("builtins", "exceptions"):
        return None
    builtin_module = sys.modules["__builtin__" if _PY2 else "builtins"]
    exc_type = getattr(builtin_module, name, None)
    if exc_type is None and _PY2:
        exc_type = getattr(builtin_module, _PY2_EXCEPTIONS.get(name, ""), None)
    if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
        return None
    if issubclass(exc_type, SyntaxError) and len(args) == 2 and isinstance(args[1], (list, tuple)):
        args = (args[0], tuple(args[1][:4]))  # (filename, line, offset, text): Python 3.10 adds two
    try:
        return exc_type(*args)
    except Exception:  # a constructor that wants other arguments than it got
        return None


def _native(value):
    """On Python 2, ASCII unicode as str and other unicode as UTF-8 str (printable messages)."""
    if _PY2 and isinstance(value, _text):
        try:
            return value.encode("ascii")
        except UnicodeError:
            return value.encode("utf-8")
    return value


# -- transports ------------------------------------------------------------------------------------
# A transport is a connected byte stream with settimeout(seconds or None), send(list of byte
# strings), recv(exact size) and close(). Its class attributes timeout_errors and io_errors name
# what its methods raise on a timeout and on other failures; it raises ConnectionLost on EOF.

class SocketTransport(object):
    """A TCP (optionally TLS) connection through Python's socket module."""

    def stale(self):
        """True if this idle connection has something to read: an idle one only does once closed."""
        import select
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (ValueError, OSError, select.error):
            return True

    io_errors = (IOError, OSError)

    def __init__(self, host, port, connect_timeout, ssl_context=None, server_hostname=None):
        import socket
        self._socket = socket
        self.timeout_errors = (socket.timeout,)
        self.io_errors = (socket.error, IOError, OSError)
        sock = socket.create_connection((host, port), connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
        except Exception:
            sock.close()
            raise
        self.sock = sock
        self._timeout = sock.gettimeout()
        self._waitall = getattr(socket, "MSG_WAITALL", 0)
        self.plain = ssl_context is None and self._waitall and not _PY2

    def settimeout(self, timeout):
        """Seconds a send or receive may block (None: forever)."""
        if timeout != self._timeout:  # settimeout() costs a system call; most calls keep it
            self.sock.settimeout(timeout)
            self._timeout = timeout

    def send(self, parts):
        """Send the byte strings in C{parts}, in order."""
        if len(parts) > 1 and sum(len(p) for p in parts) < 65536:
            parts = [b"".join(parts)]
        for part in parts:
            self.sock.sendall(part)

    def recv(self, size):
        """Exactly C{size} bytes."""
        if size == 0:
            return b""
        if self.plain:
            chunk = self.sock.recv(size, self._waitall)
            if len(chunk) == size:
                return chunk
            if not chunk:
                raise ConnectionLost("the engine closed the connection")
            chunks, got = [chunk], len(chunk)
        else:
            chunks, got = [], 0
        while got < size:
            chunk = self.sock.recv(min(size - got, 1 << 20))
            if not chunk:
                raise ConnectionLost("the engine closed the connection")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def recv_buffer(self, size, memory=False):
        """
        Exactly C{size} bytes, read straight into a new bytearray, or (C{memory}) into new memory
        of this process's own: an anonymous mapping, which is not zeroed first as a bytearray is
        (200 MB: 87 ms saved). Either way its memory is the final value's.
        """
        buf = new_memory(size)  # a bytearray too is read here first: bytearray(size) would commit it all at once
        view, got = memoryview(buf), 0
        flags = self._waitall if self.plain else 0  # a plain socket fills it in one system call
        while got < size:
            count = self.sock.recv_into(view[got:], size - got, flags)
            if not count:
                raise ConnectionLost("the engine closed the connection")
            got += count
        view.release()  # the mapping can be closed once no view of it is left
        return buf if memory or type(buf) is bytearray else _as_bytearray(buf)

    def close(self):
        """Close the connection (idempotent)."""
        try:
            self.sock.shutdown(self._socket.SHUT_RDWR)
        except (self._socket.error, OSError):
            pass
        self.sock.close()


if _JYTHON:
    from java.io import (BufferedInputStream as _JBufferedInput, BufferedOutputStream as _JBufferedOutput,
                         DataInputStream as _JDataInput, EOFException as _JEOFException,
                         IOException as _JIOException)
    from java.net import InetSocketAddress as _JAddress, Socket as _JSocket
    from java.net import SocketTimeoutException as _JSocketTimeout
    from jarray import zeros as _jzeros
    from org.python.core import Py as _JPy
    from org.python.core.util import StringUtil as _JStringUtil


class JavaSocketTransport(object):
    """
    A TCP connection through C{java.net.Socket}: the transport used on Jython, where it is several
    times faster than Jython's socket module. No TLS (pass an ssl_context to use L{SocketTransport}).
    """

    timeout_errors = (CallTimeout,)
    io_errors = (IOError, OSError)

    def __init__(self, host, port, connect_timeout, ssl_context=None, server_hostname=None):
        if ssl_context is not None:
            raise ValueError("JavaSocketTransport has no TLS; use SocketTransport for an ssl_context")
        sock = _JSocket()
        try:
            sock.setTcpNoDelay(True)
            sock.connect(_JAddress(host, port), _millis(connect_timeout))
            self.input = _JDataInput(_JBufferedInput(sock.getInputStream(), 65536))
            self.output = _JBufferedOutput(sock.getOutputStream(), 65536)
        except _JIOException as exc:
            sock.close()
            raise IOError("cannot connect to %s:%s: %s" % (host, port, exc))
        self.sock = sock
        self._timeout = None

    def settimeout(self, timeout):
        """Seconds a receive may block (None: forever)."""
        if timeout != self._timeout:
            self.sock.setSoTimeout(_millis(timeout))
            self._timeout = timeout

    def send(self, parts):
        """Send the byte strings in C{parts}, in order."""
        if len(parts) > 1 and sum(len(p) for p in parts) < 65536:
            parts = [b"".join(parts)]
        try:
            for part in parts:
                self.output.write(_JStringUtil.toBytes(part))
            self.output.flush()
        except _JIOException as exc:
            raise IOError(str(exc))

    def recv(self, size):
        """Exactly C{size} bytes."""
        if size == 0:
            return b""
        buf = _jzeros(size, "b")
        try:
            self.input.readFully(buf)
        except _JSocketTimeout:
            raise CallTimeout("no data within the timeout")
        except _JEOFException:
            raise ConnectionLost("the engine closed the connection")
        except _JIOException as exc:
            raise IOError(str(exc))
        if size < 512:
            return buf.tostring()
        return _JPy.newString(_JStringUtil.fromBytes(buf))  # much faster than tostring() for big data

    def recv_buffer(self, size, memory=False):
        """Exactly C{size} bytes, as a bytearray."""
        return bytearray(self.recv(size))

    def close(self):
        """Close the connection (idempotent)."""
        try:
            self.sock.close()
        except _JIOException:
            pass


def _millis(seconds):
    """Java's timeout for C{seconds}: 0 is forever, so a positive timeout is at least 1 ms."""
    if seconds is None:
        return 0
    return max(1, int(seconds * 1000))


def default_transport(ssl_context=None):
    """The transport class for this Python: Java's sockets on Jython (without TLS), else Python's."""
    if _JYTHON and ssl_context is None:
        return JavaSocketTransport
    return SocketTransport


# -- one connection ------------------------------------------------------------------------------

class Connection(object):
    """
    One Pyro5 connection to one object, used by one call at a time (calls are serialized by a lock).
    A connection that failed mid-call is closed and must not be reused: C{broken} says so.

    @raise SRPyServerNotFound: nothing answers, or the handshake did not complete.
    @raise AuthenticationError: the engine wants a secret this client lacks or got wrong.
    @raise ProtocolError: the peer does not speak Pyro5's protocol version 502.
    """

    max_message_size = MAX_MESSAGE_SIZE
    #: the most one message may hold, inflated or not: small until the handshake is complete
    limit = HANDSHAKE_REPLY_MAX
    #: who takes what calls print on the engine (L{srpy.forwarding}): when its C{on} is true, the
    #: connection asks for it (SOUT) and C{sink(value)} gets each SOUT annotation ahead of a reply
    output_sink = None  # type: object
    #: whether this connection has asked its engine for output (SOUT b"1")
    output_asked = False

    def __init__(self, uri, secret=None, serializer=None, connect_timeout=5.0, ssl_context=None,
                 transport_factory=None):
        self.uri = str(uri)
        self.object_id, self.host, self.port = parse_uri(uri)
        self.serializer = serializer or JsonSerializer()
        self.broken = False
        self.released = 0.0
        self.handshake_info = None
        #: True once the engine proved it holds the secret (a connection made with one)
        self.verified = False
        self.limit = min(HANDSHAKE_REPLY_MAX, self.max_message_size)
        self._seq = 0
        self._lock = threading.Lock()
        self._json = JsonSerializer()
        self.tls = ssl_context is not None
        factory = transport_factory or default_transport(ssl_context)
        try:
            self.transport = factory(self.host, self.port, connect_timeout, ssl_context)
        except (IOError, OSError) as exc:
            raise SRPyServerNotFound(self.uri, str(exc))
        self._timeouts = tuple(getattr(self.transport, "timeout_errors", ())) + (CallTimeout,)
        self._failures = tuple(getattr(self.transport, "io_errors", (IOError, OSError))) + (ConnectionLost,)
        self._open(secret, connect_timeout)

    def _open(self, secret, connect_timeout):
        try:
            self.transport.settimeout(connect_timeout)
            self._handshake(secret)
            self.transport.settimeout(None)
        except self._timeouts:
            self._break()
            raise SRPyServerNotFound(self.uri, "connected, but no answer to the handshake within %s s"
                                     % (connect_timeout,))
        except self._failures as exc:
            # no guess at the cause here (it used to suggest TLS for any failure, a busy engine's too):
            # an srpy engine that serves TLS says so itself to a client that does not speak it
            self._break()
            raise SRPyServerNotFound(self.uri, "connected, but the handshake failed: %s" % (exc,))
        except BaseException:
            self._break()
            raise
        self.limit = self.max_message_size

    # framing
    def _send(self, msgtype, serializer_id, data, seq=0, annotations=None, flags=0, buffers=()):
        """
        One message, then the raw C{buffers} it announces (SRAW); the payload and the buffers are
        sent as they are, not copied into the header's bytes.
        """
        chunks = pack_annotations(annotations)
        head = pack_header(msgtype, serializer_id, len(data), seq, flags, len(chunks)) + chunks
        self.transport.send([head, data] + list(buffers))

    def _receive(self):
        """
        One message: C{(type, serializer id, flags, seq, data, annotations, buffers)}, C{buffers}
        the raw ones that followed it (SRAW: bytes, or what SRBK says: a bytearray, new memory).
        Nothing the peer sends makes this hold more than L{limit} bytes (announced, or once
        inflated, and the buffers apart): a peer that has not yet proved itself in the handshake
        gets L{HANDSHAKE_REPLY_MAX}, an engine afterwards L{max_message_size}, as engines limit
        what they accept.
        """
        try:
            msgtype, serializer_id, flags, seq, data_size, ann_size = parse_header(self.transport.recv(HEADER.size))
        except HeaderError as exc:
            raise ProtocolError(self._header_problem(exc))
        self._check_size(data_size + ann_size)
        if not ann_size and not flags & FLAGS_COMPRESSED:  # the common reply: its data, one more read
            return msgtype, serializer_id, flags, seq, self.transport.recv(data_size), {}, ()
        annotations = {}
        while ann_size >= CHUNK.size:
            # read chunk by chunk, not as one block: a blob's value is then its own bytes, never a copy
            key, length = parse_chunk_head(self.transport.recv(CHUNK.size))
            if length > ann_size - CHUNK.size:
                raise ProtocolError("%s sent an annotation longer than its message" % (self.uri,))
            annotations[key] = self.transport.recv(length)
            ann_size -= CHUNK.size + length
        if ann_size != 0:
            raise ProtocolError("%s sent malformed annotations" % (self.uri,))
        data = self.transport.recv(data_size)
        buffers = self._receive_buffers(annotations) if TRAILING in annotations else ()
        if flags & FLAGS_COMPRESSED:
            try:
                data = inflate(data, self.limit)
            except ProtocolError as exc:
                raise ProtocolError("%s sent %s" % (self.uri, exc))
        return msgtype, serializer_id, flags, seq, data, annotations, buffers

    def _receive_buffers(self, annotations):
        """The raw buffers that follow a message, each read straight into the object it becomes."""
        try:
            layout = parse_buffers(annotations)
        except ProtocolError as exc:
            raise ProtocolError("%s sent %s" % (self.uri, exc))
        self._check_size(sum(size for size, _ in layout))
        transport = self.transport
        return [transport.recv(size) if kind == "b" else transport.recv_buffer(size, kind == "m")
                for size, kind in layout]

    def _header_problem(self, exc):
        if exc.field == "tag":
            return "%s sent something that is not a Pyro5 message (it starts %r)" % (self.uri, exc.value)
        if exc.field == "version":
            return ("%s speaks Pyro5 wire protocol version %d, but this client speaks only version %d (Pyro5 5.x): "
                    "use a matching Pyro5 on the engine" % (self.uri, exc.value, PROTOCOL_VERSION))
        return "%s sent a Pyro5 header with a wrong magic number" % (self.uri,)

    def _check_size(self, size):
        if size > self.limit:
            raise ProtocolError("%s announced a message of %d bytes, more than the limit of %d%s"
                                % (self.uri, size, self.limit,
                                   "" if self.limit == self.max_message_size else " before the handshake is complete"))

    # the connect handshake, with srpy's secret proof
    def _handshake(self, secret):
        cnonce = new_nonce()
        request = {"handshake": {"srpy": 1, "nonce": cnonce}, "object": self.object_id}
        self._send(MSG_CONNECT, JSON_SERIALIZER_ID, self._json.dumps(request))
        msgtype, _, _, _, data, _, _ = self._receive()
        if msgtype == MSG_CONNECT:  # the engine wants the secret: a challenge
            self._answer_challenge(secret, cnonce, self._loads_json(data))
            msgtype, _, _, _, data, _, _ = self._receive()
            challenged = True
        else:
            challenged = False
        if msgtype == MSG_CONNECTFAIL:
            reason = self._loads_json(data) if data else "?"
            if "secret" in str(reason):
                raise AuthenticationError("the engine at %s refused the connection: %s" % (self.uri, reason))
            if "serves TLS" in str(reason):  # an srpy engine telling a plain client to speak TLS
                raise SRPyServerNotFound(self.uri, str(reason))
            raise CommunicationError("the engine at %s refused the connection: %s" % (self.uri, reason))
        if msgtype != MSG_CONNECTOK:
            raise ProtocolError("unexpected message type %d in the handshake with %s" % (msgtype, self.uri))
        response = self._loads_json(data)
        if secret and not challenged:
            # with a secret, only an engine that proves it holds the same one is trusted
            raise AuthenticationError("the engine at %s has no secret, so it cannot prove it is the engine "
                                      "you meant: give it the secret (srpyapp --secret), or connect "
                                      "without one" % (self.uri,))
        self.handshake_info = response.get("handshake") if isinstance(response, dict) else None
        self.verified = challenged

    def _answer_challenge(self, secret, cnonce, challenge):
        if not secret:
            raise AuthenticationError("the engine at %s requires a secret: pass secret=... or set "
                                      "SRPY_SECRET" % (self.uri,))
        if not isinstance(challenge, dict) or "nonce" not in challenge or "proof" not in challenge:
            raise ProtocolError("%s sent a malformed secret challenge" % (self.uri,))
        snonce = challenge["nonce"]
        if not same_text(challenge["proof"], proof(secret, "server", cnonce, snonce)):
            raise AuthenticationError("the engine at %s could not prove it knows the secret "
                                      "(wrong secret on one side, or not the engine you meant)" % (self.uri,))
        answer = {"proof": proof(secret, "client", snonce, cnonce)}
        self._send(MSG_CONNECT, JSON_SERIALIZER_ID, self._json.dumps(answer))

    def _loads_json(self, data):
        try:
            return self._json.loads(data)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            raise ProtocolError("%s sent a handshake that is not valid json: %s" % (self.uri, exc))

    # calls
    def call(self, method, args=(), kwargs=None, annotations=None, timeout=None, trailing=()):
        """
        Invoke C{method} on the remote object; return C{(value, response_annotations)}.
        A remote exception is raised here as a local one. A serializer that leaves large buffers
        beside the message (C{dumps_call_with_buffers}, srpy's) has them sent raw right after it,
        after the C{trailing} byte strings (raw bytes too, which the call's message does not name).
        What the call prints on the engine (SOUT messages ahead of the reply) goes to
        L{output_sink}, if it is on.

        @param timeout: seconds to wait for the answer; None waits forever.
        @raise CallTimeout: no answer within C{timeout} (the connection is then closed).
        @raise ConnectionLost: the connection failed or the engine went away during the call.
        @raise ProtocolError: the engine's answer is not a valid Pyro5 reply to this call.
        """
        with self._lock:
            if self.broken:
                raise ConnectionLost("this connection to %s failed earlier" % (self.uri,))
            seq = self._seq = (self._seq + 1) & 0xffff
            serializer = self.serializer
            if hasattr(serializer, "dumps_call_with_buffers"):
                data, buffers = serializer.dumps_call_with_buffers(self.object_id, method, args, kwargs)
            else:
                data, buffers = serializer.dumps_call(self.object_id, method, args, kwargs), []
            if trailing:
                buffers = buffers + [(blob, "b") for blob in trailing]  # after: the message names its own by place
            transport = self.transport
            sink = self.output_sink
            wanted = sink is not None and bool(sink.on)
            asking = wanted != self.output_asked
            if asking:  # the engine sends what calls print as it happens (SOUT)
                annotations = dict(annotations or {})
                annotations[OUTPUT] = b"1" if wanted else b"0"
            try:
                transport.settimeout(timeout)
                if annotations or buffers:
                    if buffers:
                        annotations = dict(annotations or {})
                        annotations.update(buffer_annotations(buffers))
                    self._send(MSG_INVOKE, serializer.serializer_id, data, seq, annotations,
                               buffers=[view for view, _ in buffers])
                else:  # the common call: one write
                    transport.send([pack_header(MSG_INVOKE, serializer.serializer_id, len(data), seq) + data])
                msgtype, serializer_id, flags, seq, data, response_ann, received = self._receive()
                if msgtype == MSG_RESULT and not data and OUTPUT in response_ann:
                    msgtype, serializer_id, flags, seq, data, response_ann, received = self._take_output(
                        sink, timeout, response_ann)
            except self._timeouts:
                self._break()
                raise CallTimeout("no answer from %s to %s() within %s s" % (self.uri, method, timeout))
            except self._failures as exc:
                self._break()
                raise ConnectionLost("lost the connection to %s during %s(): %s" % (self.uri, method, exc))
            except ProtocolError:
                self._break()
                raise
            except BaseException:  # MemoryError, KeyboardInterrupt...: the message is half read
                self._break()
                raise
            try:
                value = self._result(method, msgtype, serializer_id, flags, seq, data, received)
            except SRPyError as exc:
                if ENDING in response_ann:  # the engine ends once this is sent: a fresh one follows
                    exc.engine_ending = True
                raise
            if asking:  # asked, and answered: a call refused before it ran (unknown method, say) asks again
                self.output_asked = wanted
            return value, response_ann

    def _take_output(self, sink, timeout, annotations):
        """
        Hand the SOUT messages that come ahead of a reply to C{sink} (a failing sink loses lines,
        never the reply), and return the next other message. C{timeout} still bounds the whole
        call: output that keeps coming does not keep a call's wait open past it.
        """
        deadline = None if timeout is None else clock() + timeout
        while True:
            if sink is not None:
                try:
                    sink(annotations[OUTPUT])
                except Exception:  # the sink's own failure (a closed stdout): the call goes on
                    pass
            if deadline is not None:
                left = deadline - clock()
                if left <= 0:
                    raise CallTimeout("no reply within the timeout")
                self.transport.settimeout(left)
            message = self._receive()
            if message[0] != MSG_RESULT or message[4] or OUTPUT not in message[5]:
                return message
            annotations = message[5]

    def _result(self, method, msgtype, serializer_id, flags, seq, data, buffers=()):
        if msgtype != MSG_RESULT or seq != self._seq:
            self._break()
            raise ProtocolError("%s answered %s() out of order (message type %d, seq %d, expected %d)"
                                % (self.uri, method, msgtype, seq, self._seq))
        serializer = self.serializer if serializer_id == self.serializer.serializer_id else self._json
        try:
            # buffers only a serializer that names them can use (srpy's); any other leaves them unread
            if buffers and serializer is not self._json:
                value = serializer.loads(data, buffers)
            else:
                value = serializer.loads(data)
        except ValueError as exc:
            if getattr(exc, "message_intact", False):  # read whole, in step: only this value cannot be built here
                raise
            self._break()
            raise ProtocolError("%s sent an answer to %s() that cannot be decoded: %s" % (self.uri, method, exc))
        if flags & FLAGS_EXCEPTION:
            raise serializer.exception(value)
        return value

    def stale(self):
        """
        True if the engine closed this (idle) connection; a transport that cannot tell says False.
        Only a connection idle for more than L{STALE_AFTER} seconds is probed: an engine that
        restarts takes longer than that, and the probe is a system call on every call otherwise.
        """
        if self.broken:
            return True
        if clock() - self.released <= STALE_AFTER:
            return False
        check = getattr(self.transport, "stale", None)
        return check is not None and bool(check())

    def _break(self):
        self.broken = True
        self.transport.close()

    def close(self):
        """Close the connection."""
        self.broken = True
        self.transport.close()


# -- a pool of connections ------------------------------------------------------------------------

class Pool(object):
    """
    The connections of one client to one engine, shared by its threads: L{acquire} takes an idle
    connection (one the engine closed meanwhile is dropped, never reused) or opens a new one, and
    L{release} puts it back, so a control call (C{is_busy}) is answered while another thread's long
    call runs. After L{close}, L{acquire} raises L{ConnectionLost}: nothing reconnects behind the
    caller's back.

    @ivar uri: the engine's URI.
    @ivar connect_timeout: seconds to connect and complete the handshake.
    """

    #: the most idle connections kept open
    size = 8

    def __init__(self, uri, secret=None, serializer=None, ssl_context=None, connect_timeout=5.0,
                 transport_factory=None, owner="connection pool"):
        """
        @param secret: the engine's shared secret (default: the environment's SRPY_SECRET).
        @param owner: what the pool's user calls itself, to name it once it is closed.
        """
        self.uri = str(uri)
        if secret is None:
            secret = os.environ.get("SRPY_SECRET") or None
        self.secret = secret
        self.serializer = serializer or JsonSerializer()
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.transport_factory = transport_factory
        self.owner = owner
        self.closed = False
        self._idle = []
        self._lock = threading.Lock()
        self._restart_until = 0.0  # until when a refused connection may be an engine restarting
        self._restart_wait = 0.0

    def connect(self):
        """
        A new connection, not from the pool (L{release} puts it there). Within the time
        L{expect_restart} named, a refused or reset connection is tried again until the engine
        answers: an engine that just ended its process to stop a call is back in milliseconds.

        @raise SRPyServerNotFound: nothing answers (or nothing named like the URI's object is served there).
        """
        try:
            return self._open()
        except SRPyServerNotFound:
            if clock() >= self._restart_until:
                raise
        return self._open_within(self._restart_wait)

    #: the L{Connection.output_sink} of every connection this pool opens
    output_sink = None  # type: object

    def _open(self):
        try:
            conn = Connection(self.uri, self.secret, self.serializer, self.connect_timeout, self.ssl_context,
                              self.transport_factory)
            conn.output_sink = self.output_sink
            return conn
        except CommunicationError as exc:
            # Pyro5 refuses the handshake with this reason when the URI's object is not served there
            if "unknown object" not in str(exc):
                raise
            raise SRPyServerNotFound(self.uri, "something answers at that address, but it serves no object "
                                     "named %r (an srpy engine's URI is PYRO:%s@HOST:PORT)"
                                     % (parse_uri(self.uri)[0], ENGINE_OBJECT))

    def _open_within(self, seconds):
        """A new connection, tried with back-off for up to C{seconds}; the last failure is raised."""
        deadline, delay = clock() + seconds, 0.01
        while True:
            try:
                return self._open()
            except SRPyError:
                if clock() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def acquire(self):
        """An idle connection that is still open, or a new one."""
        if self.closed:
            raise ConnectionLost("this %s was closed: make a new one to call the engine at %s again"
                                 % (self.owner, self.uri))
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            if not conn.stale():
                return conn
            conn.close()  # the engine closed it while idle (it restarted): never reuse it
        return self.connect()

    def release(self, conn):
        """Give back a connection from L{acquire} (a broken one, or any once the pool is closed, is dropped)."""
        if conn.broken:
            return
        if self.closed:  # closed while this call was under way: nothing goes back to the pool
            conn.close()
            return
        conn.released = clock()
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def connection(self):
        """C{with pool.connection() as conn:} a pooled connection, given back afterwards."""
        conn = self.acquire()
        try:
            yield conn
        finally:
            self.release(conn)

    @property
    def idle(self):
        """How many idle connections the pool holds."""
        return len(self._idle)

    def drop_idle(self):
        """Close the idle connections (calls under way keep theirs)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def expect_restart(self, seconds):
        """
        The engine may be ending its process and starting afresh at the same URI: drop the idle
        connections (they may reach the old process for a few more milliseconds), and for the
        next C{seconds}, let L{connect} wait out a refused connection for up to C{seconds}.
        """
        self._restart_wait = seconds
        self._restart_until = clock() + seconds
        self.drop_idle()

    def await_restart(self, seconds):
        """
        Wait (up to C{seconds}) until the engine answers a new connection, which joins the pool:
        so that the caller's next call finds the fresh engine serving, not the old one's closing
        socket. True if it answered.
        """
        try:
            conn = self._open_within(seconds)
        except SRPyError:
            return False
        self.release(conn)
        return True

    def close(self):
        """
        Close every idle connection (the engine keeps running); calls under way finish, and any
        later L{acquire} raises L{ConnectionLost}. Closing again does nothing.
        """
        self.closed = True
        self.drop_idle()

    def __repr__(self):
        return "<%s of %s to %s, %d idle>" % (type(self).__name__, self.owner, self.uri, len(self._idle))
