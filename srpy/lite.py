# -*- coding: utf-8 -*-
"""
A dependency-free client for srpy engines, in one file that runs unchanged on CPython 3 and on
Jython 2.7 (or CPython 2.7).

It speaks Pyro5's wire protocol (version 502) itself: the message header, the connect handshake
(with srpy's secret proof when the engine wants one), invoke/result and error replies. The full
client (L{srpy.client.PythonEngine}) is built on the same L{Connection}, with srpy's faster
serializer; on its own, this module speaks json, which every engine accepts with no set-up.

Copy this file next to a script to call engines from anywhere Python runs, Jython included::

    from lite import Engine
    eng = Engine("PYRO:srpy.engine@127.0.0.1:4000")
    eng.eval("a+b", a=2, b=3)       # -> 5

Values that survive json: None, bool, int (long), float, str (unicode), list, and dict with str
keys. Tuples and sets come back as lists, int dict keys as str, and bytes cannot travel; on
Python 2 every str comes back as unicode. A value the engine cannot send as json (a module, a
function, an object) raises a TypeError that names its type.

On Jython the connection is a C{java.net.Socket} (several times faster there than Jython's
socket module, which is not even imported); elsewhere it is Python's socket module.
"""
from __future__ import absolute_import, division, print_function

import json
import os
import struct
import sys
import threading
import time

__all__ = ["Connection", "Engine", "Box", "JsonSerializer", "SocketTransport", "JavaSocketTransport",
           "parse_uri", "proof", "exception_from_dict", "PROTOCOL_VERSION",
           "SRPyError", "SRPyServerNotFound", "CommunicationError", "ConnectionLost", "ProtocolError",
           "CallTimeout", "AuthenticationError", "RemoteError", "RemoteSystemExit"]

#: the Pyro5 wire protocol version this module speaks (Pyro5 5.x)
PROTOCOL_VERSION = 502
MAGIC = 0x4dc5
HEADER = struct.Struct("!4sHBBHHII16sHH")
MSG_CONNECT, MSG_CONNECTOK, MSG_CONNECTFAIL, MSG_INVOKE, MSG_RESULT, MSG_PING = 1, 2, 3, 4, 5, 6
FLAGS_EXCEPTION, FLAGS_COMPRESSED, FLAGS_ONEWAY, FLAGS_BATCH = 1, 2, 4, 8
ENGINE_OBJECT = "srpy.engine"
STALE_AFTER = 0.05  # seconds idle after which a pooled connection is checked before use
RESULT_BLOB = "SBLB"  # annotation carrying a call's result as raw bytes
TRAILING = "SRAW"  # annotation listing the sizes of raw byte strings sent right after a call
CALL_TIMEOUT = "STMO"  # annotation carrying a call's time limit in seconds (big-endian double)
CALL_ID = "SCID"  # annotation naming a call (8 bytes, the client's choice) so that abort() can stop it
BLOB_NAMES = "SRBN"  # annotation naming the call's variables (UTF-8, NUL-separated) that travel as its raw trailing bytes
ENDING = "SRND"  # annotation on a reply sent by an engine that ends its process right after it (to stop a call)
JSON_SERIALIZER_ID = 3
#: refuse messages announcing more than this many bytes (Pyro5's own default limit)
MAX_MESSAGE_SIZE = 1 << 30
#: the most a client accepts in one message before the handshake is complete (an engine's reply holds ~2 KB)
HANDSHAKE_REPLY_MAX = 64 * 1024
_NO_CORRELATION = b"\0" * 16
_PY2 = sys.version_info[0] == 2
_JYTHON = sys.platform.startswith("java")
_text = unicode if _PY2 else str  # noqa: F821 (Python 2 name)
_clock = getattr(time, "perf_counter", time.clock if _JYTHON else time.time)  # Jython: nanoTime
_NO_TIMEOUT = object()  # a call that may take as long as it takes, whatever the engine's timeout

if globals().get("__package__"):  # imported as srpy.lite: share the package's exception types
    from .errors import (SRPyError, SRPyServerNotFound, CommunicationError, ConnectionLost,
                         ProtocolError, CallTimeout, AuthenticationError, RemoteError, RemoteSystemExit)
else:  # a copy of this file on its own (Jython, or a plain script)
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
    def _send(self, msgtype, serializer_id, data, seq=0, annotations=None, flags=0):
        parts = [None]
        ann_size = 0
        for key, value in (annotations or {}).items():
            parts.append(struct.pack("!4sI", key.encode("ascii"), len(value)))
            parts.append(value)
            ann_size += 8 + len(value)
        parts.append(data)
        parts[0] = HEADER.pack(b"PYRO", PROTOCOL_VERSION, msgtype, serializer_id, flags, seq,
                               len(data), ann_size, _NO_CORRELATION, 0, MAGIC)
        self.transport.send(parts)

    def _receive(self):
        """
        One message: C{(type, serializer id, flags, seq, data, annotations)}. Nothing the peer sends
        makes this hold more than L{limit} bytes (announced, or once inflated): a peer that has not
        yet proved itself in the handshake gets L{HANDSHAKE_REPLY_MAX}, an engine afterwards
        L{max_message_size}, as engines limit what they accept.
        """
        header = self.transport.recv(HEADER.size)
        tag, version, msgtype, serializer_id, flags, seq, data_size, ann_size, _, _, magic = HEADER.unpack(header)
        self._check_header(tag, version, magic, data_size + ann_size)
        if not ann_size and not flags & FLAGS_COMPRESSED:  # the common reply: its data, one more read
            return msgtype, serializer_id, flags, seq, self.transport.recv(data_size), {}
        annotations = {}
        while ann_size >= 8:
            key, length = struct.unpack("!4sI", self.transport.recv(8))
            if length > ann_size - 8:
                raise ProtocolError("%s sent an annotation longer than its message" % (self.uri,))
            annotations[key.decode("ascii", "replace")] = self.transport.recv(length)
            ann_size -= 8 + length
        if ann_size != 0:
            raise ProtocolError("%s sent malformed annotations" % (self.uri,))
        data = self.transport.recv(data_size)
        if flags & FLAGS_COMPRESSED:
            data = self._inflate(data)
        return msgtype, serializer_id, flags, seq, data, annotations

    def _inflate(self, data):
        """Compressed C{data}, inflated to at most L{limit} bytes (a few KB of zeros could be gigabytes)."""
        import zlib
        inflater = zlib.decompressobj()
        try:
            inflated = inflater.decompress(data, self.limit + 1)
        except zlib.error as exc:
            raise ProtocolError("%s sent corrupt compressed data: %s" % (self.uri, exc))
        if len(inflated) > self.limit or inflater.unconsumed_tail:
            raise ProtocolError("%s sent compressed data that inflates to more than the limit of %d bytes"
                                % (self.uri, self.limit))
        return inflated

    def _check_header(self, tag, version, magic, size):
        if tag != b"PYRO":
            raise ProtocolError("%s sent something that is not a Pyro5 message (it starts %r)" % (self.uri, tag))
        if version != PROTOCOL_VERSION:
            raise ProtocolError("%s speaks Pyro5 wire protocol version %d, but this client speaks only "
                                "version %d (Pyro5 5.x): use a matching Pyro5 on the engine"
                                % (self.uri, version, PROTOCOL_VERSION))
        if magic != MAGIC:
            raise ProtocolError("%s sent a Pyro5 header with a wrong magic number" % (self.uri,))
        if size > self.limit:
            raise ProtocolError("%s announced a message of %d bytes, more than the limit of %d%s"
                                % (self.uri, size, self.limit,
                                   "" if self.limit == self.max_message_size else " before the handshake is complete"))

    # the connect handshake, with srpy's secret proof
    def _handshake(self, secret):
        cnonce = new_nonce()
        request = {"handshake": {"srpy": 1, "nonce": cnonce}, "object": self.object_id}
        self._send(MSG_CONNECT, JSON_SERIALIZER_ID, self._json.dumps(request))
        msgtype, _, _, _, data, _ = self._receive()
        if msgtype == MSG_CONNECT:  # the engine wants the secret: a challenge
            self._answer_challenge(secret, cnonce, self._loads_json(data))
            msgtype, _, _, _, data, _ = self._receive()
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
        A remote exception is raised here as a local one. C{trailing} byte strings are sent raw
        right after the call message (an srpy engine reads them before anything else).

        @param timeout: seconds to wait for the answer; None waits forever.
        @raise CallTimeout: no answer within C{timeout} (the connection is then closed).
        @raise ConnectionLost: the connection failed or the engine went away during the call.
        @raise ProtocolError: the engine's answer is not a valid Pyro5 reply to this call.
        """
        with self._lock:
            if self.broken:
                raise ConnectionLost("this connection to %s failed earlier" % (self.uri,))
            seq = self._seq = (self._seq + 1) & 0xffff
            data = self.serializer.dumps_call(self.object_id, method, args, kwargs)
            transport = self.transport
            try:
                transport.settimeout(timeout)
                if annotations or trailing:
                    if trailing:
                        annotations = dict(annotations or {})
                        annotations[TRAILING] = struct.pack("!%dQ" % len(trailing), *[len(b) for b in trailing])
                    self._send(MSG_INVOKE, self.serializer.serializer_id, data, seq, annotations)
                    for blob in trailing:
                        transport.send([blob])
                else:  # the common call: one write
                    transport.send([HEADER.pack(b"PYRO", PROTOCOL_VERSION, MSG_INVOKE, self.serializer.serializer_id,
                                                0, seq, len(data), 0, _NO_CORRELATION, 0, MAGIC) + data])
                msgtype, serializer_id, flags, seq, data, response_ann = self._receive()
                while msgtype == MSG_RESULT and not data and RESULT_BLOB in response_ann:
                    # an srpy engine sent bulk bytes ahead of the reply; the reply follows
                    blob = response_ann
                    msgtype, serializer_id, flags, seq, data, response_ann = self._receive()
                    response_ann.update(blob)
            except self._timeouts:
                self._break()
                raise CallTimeout("no answer from %s to %s() within %s s" % (self.uri, method, timeout))
            except self._failures as exc:
                self._break()
                raise ConnectionLost("lost the connection to %s during %s(): %s" % (self.uri, method, exc))
            except ProtocolError:
                self._break()
                raise
            try:
                return self._result(method, msgtype, serializer_id, flags, seq, data), response_ann
            except SRPyError as exc:
                if ENDING in response_ann:  # the engine ends once this is sent: a fresh one follows
                    exc.engine_ending = True
                raise

    def _result(self, method, msgtype, serializer_id, flags, seq, data):
        if msgtype != MSG_RESULT or seq != self._seq:
            self._break()
            raise ProtocolError("%s answered %s() out of order (message type %d, seq %d, expected %d)"
                                % (self.uri, method, msgtype, seq, self._seq))
        serializer = self.serializer if serializer_id == self.serializer.serializer_id else self._json
        try:
            value = serializer.loads(data)
        except ValueError as exc:
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
        if _clock() - self.released <= STALE_AFTER:
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


# -- the call surface ------------------------------------------------------------------------------

class Engine(object):
    """
    One engine, with SRPy's call surface. Safe to share between threads: each call takes an idle
    connection from a small pool (opening one if none is idle), so a control call such as
    L{isBusy} is answered while another thread's long L{exe} runs.

    @ivar uri: the engine's URI.
    @ivar timeout: seconds any call may take before L{CallTimeout} (None: no limit).
    """

    connect_timeout = 5.0
    timeout = None
    _closed = False  # set by close(): from then on every call raises instead of reconnecting

    def __init__(self, uri, secret=None, serializer=None, ssl_context=None, connect_timeout=None,
                 transport_factory=None, timeout=None):
        """
        Connect to the engine at C{uri} now (so that a dead engine fails here).

        @param secret: the engine's shared secret (default: the environment's SRPY_SECRET).
        @param connect_timeout: seconds to connect and complete the handshake.
        @param timeout: seconds any call may take (default: no limit).
        @raise SRPyServerNotFound: nothing answers at C{uri}.
        @raise AuthenticationError: the secret is missing or wrong.
        """
        self.uri = str(uri)
        if secret is None:
            secret = os.environ.get("SRPY_SECRET") or None
        self._secret = secret
        self._serializer = serializer or JsonSerializer()
        self._ssl_context = ssl_context
        self._transport_factory = transport_factory
        if connect_timeout is not None:
            self.connect_timeout = connect_timeout
        if timeout is not None:
            self.timeout = timeout
        self._idle = []
        self._pool_lock = threading.Lock()
        self._release(self._connect())  # fail now, not at the first call, when nothing answers

    def _connect(self):
        try:
            return Connection(self.uri, self._secret, self._serializer, self.connect_timeout,
                              self._ssl_context, self._transport_factory)
        except CommunicationError as exc:
            # Pyro5 refuses the handshake with this reason when the URI's object is not served there
            if "unknown object" not in str(exc):
                raise
            raise SRPyServerNotFound(self.uri, "something answers at that address, but it serves no object "
                                     "named %r (an srpy engine's URI is PYRO:%s@HOST:PORT)"
                                     % (parse_uri(self.uri)[0], ENGINE_OBJECT))

    def _acquire(self):
        if self._closed:
            raise ConnectionLost("this %s was closed: make a new one to call the engine at %s again"
                                 % (type(self).__name__, self.uri))
        while True:
            with self._pool_lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            if not conn.stale():
                return conn
            conn.close()  # the engine closed it while idle (it restarted): never reuse it
        return self._connect()

    def _release(self, conn):
        if conn.broken:
            return
        if self._closed:  # closed while this call was under way: nothing goes back to the pool
            conn.close()
            return
        conn.released = _clock()
        with self._pool_lock:
            if len(self._idle) < 8:
                self._idle.append(conn)
                return
        conn.close()

    def _invoke(self, method, args=(), kwargs=None, annotations=None, timeout=None, trailing=()):
        if timeout is None:
            timeout = self.timeout
        elif timeout is _NO_TIMEOUT:
            timeout = None
        conn = self._acquire()
        try:
            return conn.call(method, args, kwargs, annotations, timeout, trailing)
        finally:
            self._release(conn)

    def _call(self, method, *args, **options):
        return self._invoke(method, args, timeout=options.get("timeout"))[0]

    def _call_with_vars(self, method, args, variables):
        return self._call(method, *(args + (variables,)))

    def close(self):
        """
        Close every pooled connection (the engine keeps running). Calls under way finish; any later
        call raises L{ConnectionLost}. Closing again does nothing.
        """
        self._closed = True
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # SRPy's surface
    def set(self, **variables):
        """Create or overwrite variables in the engine's namespace."""
        self._call_with_vars("set", (), variables)

    def get(self, vars=None):
        """None: the namespace's names; a name: its value; a list of names: {name: value}."""
        return self._call("get", vars)

    def clear(self):
        """Empty the namespace."""
        self._call("clear")

    def eval(self, expr, **variables):
        """Set C{variables}, then evaluate C{expr} in the namespace and return its value."""
        return self._call_with_vars("eval", (expr,), variables)

    def exe(self, code, **variables):
        """Set C{variables}, then execute C{code} in the namespace."""
        self._call_with_vars("exe", (code,), variables)

    def vexe(self, code, get=(), **variables):
        """Run C{code} in a throw-away namespace made of C{variables}; return {name: value} for C{get}."""
        return self._call_with_vars("vexe", (code, list(get)), variables)

    def imp(self, *modules):
        """Import the named modules in the engine's namespace (as C{import name} binds them)."""
        self._call("imp", [getattr(m, "__name__", m) for m in modules])

    def install(self, *modules):
        """
        Ship local modules (names or module objects) to the engine's sandbox, so that L{imp} finds
        them there. A module of a package ships its whole top-level package. Returns the paths written.
        """
        files = {}
        for module in modules:
            files.update(module_sources(module))
        return self._call("install", files)

    def install_source(self, module_name, source):
        """Ship one module's source text to the engine's sandbox, so L{imp} finds it."""
        path = module_name.replace(".", "/") + ".py"
        return self._call("install", {path: source})

    def associateFunction(self, name):
        """A local callable that calls the engine's function C{name} (dotted names allowed)."""
        description = self._call("inspect", name)
        if description.get("kind") != "object" or not description.get("callable"):
            raise TypeError("%r on %s is not a function" % (name, self.uri))

        def remote(*args, **kwargs):
            return self._call("call", name, list(args), kwargs)

        remote.__name__ = str(description.get("name") or name.rpartition(".")[2])
        remote.__doc__ = description.get("doc") or None
        return remote

    def ping(self):
        """'pong', if the engine answers."""
        return self._call("ping")

    def whoami(self):
        """The engine's description (SRPy's keys and more)."""
        return self._call("whoami")

    def isBusy(self):
        """True while the engine runs a call that holds its lock."""
        return self._call("is_busy")

    def wait(self, timeout=None):
        """Block until the engine is idle (True), or C{timeout} seconds passed (False)."""
        if timeout is None or self.timeout is None:
            return self._call("wait", timeout, timeout=_NO_TIMEOUT)
        return self._call("wait", timeout, timeout=self.timeout + timeout)

    def benchmark(self, cycles=None, pings=5):
        """
        Measure the engine: C{(net_seconds, proc_seconds, is_busy)}, where net is the median of
        C{pings} round trips and proc the engine's time for its fixed workload of C{cycles}.
        """
        trips = []
        for _ in range(max(1, pings)):
            start = _clock()
            self._call("ping")
            trips.append(_clock() - start)
        result = self._call("benchmark", cycles)
        return _median(trips), result["proc"], result["busy"]

    def getURI(self):
        """The engine's URI."""
        return self.uri

    def setGroup(self, name):
        """Label the engine with group C{name}."""
        self._call("set_group", name)

    def __repr__(self):
        return "<%s at %s>" % (type(self).__name__, self.uri)


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


# -- shipping source -------------------------------------------------------------------------------

def module_sources(module):
    """
    C{{relative path: source text}} to ship for C{module} (a name or a module object): its own
    file, or for a module in a package, the whole top-level package's C{.py} files.
    """
    name = str(module if isinstance(module, (str, _text)) else module.__name__)
    top = name.partition(".")[0]
    source = _source_path(_locate(top))
    if os.path.basename(source) != "__init__.py":
        if top != name:
            raise ValueError("%s is not a package, so it has no module %s" % (top, name))
        return {top + ".py": _read_text(source)}
    return package_sources(os.path.dirname(source), top)


def _locate(top):
    """The file of top-level module C{top} (a package's __init__), found without importing it."""
    loaded = sys.modules.get(top)
    path = getattr(loaded, "__file__", None)
    if path:
        return path
    try:
        import importlib.util
    except ImportError:  # Python 2
        import imp
        try:
            handle, path, _ = imp.find_module(top)
        except ImportError:
            raise ValueError("cannot find module %s here to ship it" % (top,))
        if handle is not None:
            handle.close()
        return os.path.join(path, "__init__.py") if os.path.isdir(path) else path
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        raise ValueError("cannot find a source file of module %s here to ship it" % (top,))
    return spec.origin


def _source_path(path):
    """The .py file behind a module's __file__ (which may name a .pyc or Jython's $py.class)."""
    for suffix in ("$py.class", ".pyc", ".pyo"):
        if path.endswith(suffix):
            path = path[:-len(suffix)] + ".py"
    if not path.endswith(".py") or not os.path.isfile(path):
        raise ValueError("%s is not a Python source file that can be shipped" % (path,))
    return path


def package_sources(location, top):
    """The .py files under a package folder C{location}, keyed C{top/relative/path.py}."""
    files = {}
    for folder, subfolders, names in os.walk(location):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__" and not d.startswith("."))
        for filename in sorted(names):
            if filename.endswith(".py"):
                full = os.path.join(folder, filename)
                relative = os.path.relpath(full, location).replace(os.sep, "/")
                files[top + "/" + relative] = _read_text(full)
    return files


def _read_text(path):
    import io
    with io.open(path, encoding="utf-8") as handle:
        return handle.read()


# -- fan-out ---------------------------------------------------------------------------------------

class Box(object):
    """
    A simple fan-out over several engines: L{run} calls one method on all of them at once and
    returns C{{uri: result}}, where an engine's exception is its result (it is not raised).
    """

    def __init__(self, uris, **options):
        """Connect to every URI now (L{SRPyServerNotFound} for one that does not answer)."""
        self.engines = []
        try:
            for uri in uris:
                self.engines.append(uri if isinstance(uri, Engine) else Engine(uri, **options))
        except Exception:
            self.close()
            raise

    def __len__(self):
        return len(self.engines)

    def __iter__(self):
        return iter(self.engines)

    def __getitem__(self, index):
        return self.engines[index]

    def run(self, method, *args, **kwargs):
        """Call C{method} on every engine at once; return C{{uri: result or exception}}."""
        results = {}

        def one(engine):
            try:
                results[engine.uri] = getattr(engine, method)(*args, **kwargs)
            except Exception as exc:  # each engine's failure is its own result
                results[engine.uri] = exc

        threads = [threading.Thread(target=one, args=(e,)) for e in self.engines]
        for thread in threads:
            thread.daemon = True
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def close(self):
        """Close every engine's connections."""
        for engine in self.engines:
            engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
