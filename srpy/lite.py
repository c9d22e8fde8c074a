# -*- coding: utf-8 -*-
"""
A dependency-free client for srpy engines, in one file that runs unchanged on CPython 3 and
Jython/CPython 2.7.

It speaks Pyro5's wire protocol (version 502) itself: the message header, the connect handshake
(with srpy's secret proof when the engine wants one), invoke/result and error replies. The full
client (L{srpy.client.PythonEngine}) is built on the same L{Connection}, with srpy's faster
serializer; on its own, this module speaks json, which every engine accepts with no set-up.

Copy this file next to a script to call engines from anywhere Python runs::

    from lite import Engine
    eng = Engine("PYRO:srpy.engine@127.0.0.1:4000")
    eng.eval("a+b", a=2, b=3)       # -> 5

Values that survive json: None, bool, int, float, str, list and dict with str keys. Tuples and sets
come back as lists, and int dict keys as str; bytes cannot travel over json.
"""
from __future__ import absolute_import, division, print_function

import binascii
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import threading
import zlib

__all__ = ["Connection", "Engine", "Box", "JsonSerializer", "parse_uri", "proof",
           "SRPyError", "SRPyServerNotFound", "CommunicationError", "ConnectionLost", "ProtocolError",
           "CallTimeout", "AuthenticationError", "RemoteError", "RemoteSystemExit"]

PROTOCOL_VERSION = 502
MAGIC = 0x4dc5
HEADER = struct.Struct("!4sHBBHHII16sHH")
MSG_CONNECT, MSG_CONNECTOK, MSG_CONNECTFAIL, MSG_INVOKE, MSG_RESULT, MSG_PING = 1, 2, 3, 4, 5, 6
FLAGS_EXCEPTION, FLAGS_COMPRESSED, FLAGS_ONEWAY, FLAGS_BATCH = 1, 2, 4, 8
ENGINE_OBJECT = "srpy.engine"
RESULT_BLOB = "SBLB"  # annotation carrying a call's result as raw bytes
TRAILING = "SRAW"  # annotation listing the sizes of raw byte strings sent right after a call
JSON_SERIALIZER_ID = 3
_NO_CORRELATION = b"\0" * 16
_PY2 = sys.version_info[0] == 2
_text = unicode if _PY2 else str  # noqa: F821 (Python 2 name)

if __package__:  # imported as srpy.lite: share the package's exception types
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
    if isinstance(secret, _text):
        secret = secret.encode("utf-8")
    message = ("srpy-proof-1|%s|%s|%s" % (role, first_nonce, second_nonce)).encode("ascii")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def new_nonce():
    """16 fresh random bytes as hex text."""
    return binascii.hexlify(os.urandom(16)).decode("ascii")


def same_text(a, b):
    """Constant-time comparison of two texts."""
    if isinstance(a, _text):
        a = a.encode("utf-8")
    if isinstance(b, _text):
        b = b.encode("utf-8")
    return hmac.compare_digest(a, b)


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
    """Pyro5's json format (serializer id 3)."""
    serializer_id = JSON_SERIALIZER_ID

    def dumps(self, value):
        data = json.dumps(value, ensure_ascii=False, default=self._default)
        return data.encode("utf-8") if isinstance(data, _text) else data

    def dumps_call(self, obj, method, args, kwargs):
        return self.dumps({"object": obj, "method": method, "params": list(args), "kwargs": kwargs or {}})

    def loads(self, data):
        return json.loads(bytes(data).decode("utf-8"))

    def exception(self, value):
        if isinstance(value, BaseException):
            return value
        return exception_from_dict(value if isinstance(value, dict) else {"args": [value]})

    @staticmethod
    def _default(value):
        if isinstance(value, (set, frozenset, tuple)):
            return list(value)
        raise TypeError("cannot send a value of type %r over json: use None, bool, numbers, str, "
                        "lists and dicts with str keys" % (type(value).__name__,))


def exception_from_dict(data):
    """Rebuild an exception from Pyro5's dict form: the builtin type where there is one."""
    classname = str(data.get("__class__", "builtins.Exception"))
    args = tuple(data.get("args") or ())
    attrs = data.get("attributes") or {}
    tb = attrs.get("_pyroTraceback")
    tb_text = attrs.get("srpy_traceback") or ("".join(tb) if isinstance(tb, (list, tuple)) else tb)
    module, _, name = classname.rpartition(".")
    if module in ("builtins", "exceptions") and name == "SystemExit":
        return RemoteSystemExit(args[0] if args else None, tb_text)
    builtin_module = sys.modules["__builtin__" if _PY2 else "builtins"]
    exc_type = getattr(builtin_module, name, None) if module in ("builtins", "exceptions") else None
    exc = None
    if isinstance(exc_type, type) and issubclass(exc_type, BaseException):
        try:
            exc = exc_type(*args)
        except Exception:  # a constructor that wants other arguments
            exc = None
    if exc is None:
        message = args[0] if len(args) == 1 else ", ".join(str(a) for a in args)
        exc = RemoteError(classname, message, tb_text)
    exc.remote_traceback = tb_text
    return exc


# -- transports ------------------------------------------------------------------------------------

_WAITALL = getattr(socket, "MSG_WAITALL", 0)


class SocketTransport(object):
    """A TCP (optionally TLS) connection through Python's socket module."""

    def __init__(self, host, port, connect_timeout, ssl_context=None, server_hostname=None):
        sock = socket.create_connection((host, port), connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
        except Exception:
            sock.close()
            raise
        self.sock = sock
        self.plain = ssl_context is None and _WAITALL and not _PY2

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def send(self, parts):
        if len(parts) > 1 and sum(len(p) for p in parts) < 65536:
            parts = [b"".join(parts)]
        for part in parts:
            self.sock.sendall(part)

    def recv(self, size):
        if size == 0:
            return b""
        if self.plain:
            chunk = self.sock.recv(size, _WAITALL)
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
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except (socket.error, OSError):
            pass
        self.sock.close()


# -- one connection ------------------------------------------------------------------------------

class Connection(object):
    """
    One Pyro5 connection to one object, used by one call at a time (calls are serialized by a lock).
    A connection that failed mid-call is closed and must not be reused: C{broken} says so.
    """

    def __init__(self, uri, secret=None, serializer=None, connect_timeout=5.0, ssl_context=None,
                 transport_factory=None):
        self.uri = str(uri)
        self.object_id, self.host, self.port = parse_uri(uri)
        self.serializer = serializer or JsonSerializer()
        self.broken = False
        self.handshake_info = None
        self._seq = 0
        self._lock = threading.Lock()
        self._json = JsonSerializer()
        factory = transport_factory or SocketTransport
        try:
            self.transport = factory(self.host, self.port, connect_timeout, ssl_context)
        except (socket.error, OSError) as exc:
            raise SRPyServerNotFound(self.uri, str(exc))
        try:
            self.transport.settimeout(connect_timeout)
            self._handshake(secret)
            self.transport.settimeout(None)
        except (socket.timeout, socket.error, OSError, ConnectionLost) as exc:
            self.transport.close()
            raise SRPyServerNotFound(self.uri, "connected, but the handshake failed: %s" % (exc,))
        except Exception:
            self.transport.close()
            raise

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
        header = self.transport.recv(HEADER.size)
        tag, version, msgtype, serializer_id, flags, seq, data_size, ann_size, _, _, magic = HEADER.unpack(header)
        if tag != b"PYRO" or magic != MAGIC:
            raise ProtocolError("%s sent something that is not a Pyro5 message" % (self.uri,))
        if version != PROTOCOL_VERSION:
            raise ProtocolError("%s speaks Pyro5 protocol version %d; this client speaks %d"
                                % (self.uri, version, PROTOCOL_VERSION))
        annotations = {}
        while ann_size > 0:
            key, length = struct.unpack("!4sI", self.transport.recv(8))
            annotations[key.decode("ascii")] = self.transport.recv(length)
            ann_size -= 8 + length
        if ann_size != 0:
            raise ProtocolError("%s sent malformed annotations" % (self.uri,))
        data = self.transport.recv(data_size)
        if flags & FLAGS_COMPRESSED:
            data = zlib.decompress(data)
        return msgtype, serializer_id, flags, seq, data, annotations

    # the connect handshake, with srpy's secret proof
    def _handshake(self, secret):
        cnonce = new_nonce()
        request = {"handshake": {"srpy": 1, "nonce": cnonce}, "object": self.object_id}
        self._send(MSG_CONNECT, JSON_SERIALIZER_ID, self._json.dumps(request))
        msgtype, _, _, _, data, _ = self._receive()
        if msgtype == MSG_CONNECT:  # the engine wants the secret: a challenge
            challenge = self._json.loads(data)
            if not secret:
                raise AuthenticationError("the engine at %s requires a secret: pass secret=... or set "
                                          "SRPY_SECRET" % (self.uri,))
            snonce = challenge["nonce"]
            if not same_text(challenge["proof"], proof(secret, "server", cnonce, snonce)):
                raise AuthenticationError("the engine at %s could not prove it knows the secret "
                                          "(wrong secret on one side, or not the engine you meant)" % (self.uri,))
            answer = {"proof": proof(secret, "client", snonce, cnonce)}
            self._send(MSG_CONNECT, JSON_SERIALIZER_ID, self._json.dumps(answer))
            msgtype, _, _, _, data, _ = self._receive()
        if msgtype == MSG_CONNECTFAIL:
            reason = self._json.loads(data) if data else "?"
            if "secret" in str(reason):
                raise AuthenticationError("the engine at %s refused the connection: %s" % (self.uri, reason))
            raise CommunicationError("the engine at %s refused the connection: %s" % (self.uri, reason))
        if msgtype != MSG_CONNECTOK:
            raise ProtocolError("unexpected message type %d in the handshake with %s" % (msgtype, self.uri))
        response = self._json.loads(data)
        self.handshake_info = response.get("handshake") if isinstance(response, dict) else None

    # calls
    def call(self, method, args=(), kwargs=None, annotations=None, timeout=None, trailing=()):
        """
        Invoke C{method} on the remote object; return C{(value, response_annotations)}.
        A remote exception is raised here as a local one. C{trailing} byte strings are sent raw
        right after the call message (an srpy engine reads them before anything else).
        """
        with self._lock:
            if self.broken:
                raise ConnectionLost("this connection to %s failed earlier" % (self.uri,))
            self._seq = (self._seq + 1) & 0xffff
            data = self.serializer.dumps_call(self.object_id, method, args, kwargs)
            try:
                self.transport.settimeout(timeout)
                if trailing:
                    annotations = dict(annotations or {})
                    annotations[TRAILING] = struct.pack("!%dQ" % len(trailing), *[len(b) for b in trailing])
                self._send(MSG_INVOKE, self.serializer.serializer_id, data, self._seq, annotations)
                for blob in trailing:
                    self.transport.send([blob])
                msgtype, serializer_id, flags, seq, data, response_ann = self._receive()
                while msgtype == MSG_RESULT and not data and RESULT_BLOB in response_ann:
                    # an srpy engine sent bulk bytes ahead of the reply; the reply follows
                    blob = response_ann
                    msgtype, serializer_id, flags, seq, data, response_ann = self._receive()
                    response_ann.update(blob)
            except socket.timeout:
                self._break()
                raise CallTimeout("no answer from %s to %s() within %s s" % (self.uri, method, timeout))
            except (socket.error, OSError, ConnectionLost) as exc:
                self._break()
                raise ConnectionLost("lost the connection to %s during %s(): %s" % (self.uri, method, exc))
            except ProtocolError:
                self._break()
                raise
            if msgtype != MSG_RESULT or seq != self._seq:
                self._break()
                raise ProtocolError("%s answered out of order (type %d, seq %d)" % (self.uri, msgtype, seq))
            serializer = self.serializer if serializer_id == self.serializer.serializer_id else self._json
            value = serializer.loads(data)
            if flags & FLAGS_EXCEPTION:
                raise serializer.exception(value)
            return value, response_ann

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
    """

    connect_timeout = 5.0

    def __init__(self, uri, secret=None, serializer=None, ssl_context=None, connect_timeout=None,
                 transport_factory=None):
        self.uri = str(uri)
        if secret is None:
            secret = os.environ.get("SRPY_SECRET") or None
        self._secret = secret
        self._serializer = serializer or JsonSerializer()
        self._ssl_context = ssl_context
        self._transport_factory = transport_factory
        if connect_timeout is not None:
            self.connect_timeout = connect_timeout
        self._idle = []
        self._pool_lock = threading.Lock()
        self._release(self._connect())  # fail now, not at the first call, when nothing answers

    def _connect(self):
        return Connection(self.uri, self._secret, self._serializer, self.connect_timeout,
                          self._ssl_context, self._transport_factory)

    def _acquire(self):
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn):
        if conn.broken:
            return
        with self._pool_lock:
            if len(self._idle) < 8:
                self._idle.append(conn)
                return
        conn.close()

    def _invoke(self, method, args=(), kwargs=None, annotations=None, timeout=None, trailing=()):
        conn = self._acquire()
        try:
            return conn.call(method, args, kwargs, annotations, timeout, trailing)
        finally:
            self._release(conn)

    def _call(self, method, *args):
        return self._invoke(method, args)[0]

    def _call_with_vars(self, method, args, variables):
        return self._call(method, *(args + (variables,)))

    def close(self):
        """Close every pooled connection (the engine keeps running)."""
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

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
        """Import the named modules in the engine's namespace."""
        self._call("imp", list(modules))

    def install_source(self, module_name, source):
        """Ship one module's source text to the engine's sandbox, so L{imp} finds it."""
        path = module_name.replace(".", "/") + ".py"
        return self._call("install", {path: source})

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
        return self._call("wait", timeout)

    def benchmark(self, cycles=None):
        """Seconds the engine takes for its fixed processor workload."""
        return self._call("benchmark", cycles)

    def __repr__(self):
        return "<%s at %s>" % (type(self).__name__, self.uri)


class Box(object):
    """A simple fan-out over several engines: call one method on all, get {uri: result or exception}."""

    def __init__(self, uris, **options):
        self.engines = [Engine(uri, **options) for uri in uris]

    def __len__(self):
        return len(self.engines)

    def __iter__(self):
        return iter(self.engines)

    def __getitem__(self, index):
        return self.engines[index]

    def run(self, method, *args, **kwargs):
        """Call C{method} on every engine at once; exceptions become the engine's value."""
        results = {}

        def one(engine):
            try:
                results[engine.uri] = getattr(engine, method)(*args, **kwargs)
            except Exception as exc:  # each engine's failure is its own result
                results[engine.uri] = exc

        threads = [threading.Thread(target=one, args=(e,)) for e in self.engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results
