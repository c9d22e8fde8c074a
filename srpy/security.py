"""
Who may talk to an engine: the secret handshake, and the rules for where an engine may listen.

With a secret, the engine's Pyro5 daemon runs a mutual challenge-response inside Pyro5's connect
handshake, before any call is accepted:

 1. the client sends a fresh nonce in its connect message;
 2. the engine answers with its own fresh nonce and C{HMAC(secret, server|client nonce|engine nonce)};
 3. the client checks that proof, and answers C{HMAC(secret, client|engine nonce|client nonce)};
 4. the engine checks it and accepts the connection, or refuses it naming the cause.

The secret never crosses the wire, both nonces are fresh for each connection (a recorded handshake
is useless later), and the client knows it reached an engine that holds the same secret.
Without a secret the handshake is Pyro5's plain one, which is why an engine without a secret may
only listen on a loopback address unless told C{--insecure}.
"""

import ipaddress
import json
import logging
import marshal
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from Pyro5 import errors as pyro_errors
from Pyro5 import protocol
from Pyro5.server import Daemon

from . import _pyro5, codec, wire
from .errors import SRPyError

log = logging.getLogger("srpy.security")
#: where malformed input is reported (one line each, within L{BAD_INPUT_LIMIT})
input_log = logging.getLogger("srpy.security.input")

#: seconds a client has for its whole connect handshake (TLS included), from the moment it connects
HANDSHAKE_TIMEOUT = 10.0
#: the most a connect message may hold, in bytes (an srpy client's holds about 100)
HANDSHAKE_MAX_SIZE = 16 * 1024
#: the most the answer to the secret challenge may hold, in bytes
ANSWER_MAX_SIZE = 1024


class RateLimit(logging.Filter):
    """
    A logging filter that lets at most C{burst} records through per C{period} seconds and says how
    many it held back on the next record it lets through. Anyone who can reach an engine's port
    can send it garbage; without this, each message would add its lines to the engine's log, and
    an engine whose log is a pipe nobody reads would stop serving once the pipe is full.
    """

    def __init__(self, burst: int = 10, period: float = 60.0) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self._lock = threading.Lock()
        self._start = float("-inf")
        self._passed = self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._start >= self.period:
                self._start, self._passed = now, 0
            if self._passed >= self.burst:
                self._held += 1
                return False
            self._passed += 1
            held, self._held = self._held, 0
        if held:
            record.msg = "%s (and %d more such messages not logged)" % (record.msg, held)
        return True


#: the limit on reports of malformed input: srpy's own, and Pyro5's protocol errors in an engine
BAD_INPUT_LIMIT = RateLimit()
input_log.addFilter(BAD_INPUT_LIMIT)
#: where refused secrets are reported, within a limit of their own (a flood of garbage does not hide them)
auth_log = logging.getLogger("srpy.security.auth")
auth_log.addFilter(RateLimit())


def note_bad_input(conn: Any, exc: BaseException, stage: str) -> None:
    """Report in one line (within L{BAD_INPUT_LIMIT}) that a client's connection ended at its C{stage}."""
    input_log.warning("ended the connection from %s at its %s: %s: %s", _peer(conn), stage,
                      type(exc).__name__, exc)


def note_too_large(conn: Any, text: str) -> None:
    """Report in one line (within L{BAD_INPUT_LIMIT}) that a call from a client was refused for its size."""
    input_log.warning("refused a call from %s: %s", _peer(conn), text)


def is_loopback(host: str) -> bool:
    """
    True when C{host} names only this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except (socket.gaierror, ValueError):
            return False


def check_listen_policy(host: str, secret: Optional[str], insecure: bool) -> None:
    """
    Refuse to listen beyond this machine without a secret, unless C{insecure} is set (then warn).

    @raise SRPyError: a non-loopback host with no secret and no C{insecure}.
    """
    if secret or is_loopback(host):
        return
    if not insecure:
        raise SRPyError("refusing to listen on %s without a secret: anyone who reaches that address "
                        "could run code here. Give --secret (or SRPY_SECRET), or --insecure if you "
                        "really mean it" % host)
    log.warning("INSECURE: listening on %s with no secret; anyone who can reach this port can run "
                "any code as this user", host)


class SecureDaemon(Daemon):
    """
    A Pyro5 daemon whose connect handshake is srpy's L{Handshake}: strictly decoded, within
    L{HANDSHAKE_TIMEOUT} for the whole of it, and, given a secret, passed only by clients that
    prove they know it. It is created within L{srpy.listener.serving_daemons}, whose server runs
    that handshake: created elsewhere it refuses to exist, since Pyro5's own server would run
    Pyro5's handshake, which knows no secret.

    @raise SRPyError: created outside L{srpy.listener.serving_daemons}.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret: Optional[str] = None,
                 **kwargs: Any) -> None:
        self._secret = secret or None
        protocol_log = logging.getLogger("Pyro5.protocol")  # logs each message of a wrong type
        if BAD_INPUT_LIMIT not in protocol_log.filters:
            protocol_log.addFilter(BAD_INPUT_LIMIT)
        super().__init__(host=host, port=port, **kwargs)
        if not getattr(self.transportServer, "runs_srpy_handshake", False):
            self.close()
            raise SRPyError("a SecureDaemon serves only through srpy.listener.serving_daemons(): Pyro5's own "
                            "server would run Pyro5's handshake, without srpy's secret check")

    def secret_challenge(self, handshake: Any) -> Optional["SecretChallenge"]:
        """
        The challenge a client must answer before this daemon accepts it (None: no secret, none).

        @raise pyro_errors.SecurityError: the client's handshake carries no nonce to answer with.
        """
        if not self._secret:
            return None
        cnonce = handshake.get("nonce") if isinstance(handshake, dict) else None
        if not isinstance(cnonce, str) or not 16 <= len(cnonce) <= 128:
            raise pyro_errors.SecurityError("this engine requires a secret; connect with an srpy client "
                                            "that has it (secret=... or SRPY_SECRET)")
        return SecretChallenge(self._secret, cnonce)

    def validateHandshake(self, conn: Any, data: Any) -> Any:
        """What srpy clients learn from the handshake (the secret, if any, was checked by then)."""
        return {"srpy": 1, "auth": bool(self._secret)}


class SecretChallenge:
    """Steps 2-4 of the module text for one connection: the engine's challenge, and its check of the answer."""

    def __init__(self, secret: str, cnonce: str) -> None:
        self._secret = secret
        self._cnonce = cnonce
        self._snonce = wire.new_nonce()
        challenge = {"nonce": self._snonce, "proof": wire.proof(secret, "server", cnonce, self._snonce)}
        #: the challenge, as the body of a json connect message
        self.message = json.dumps(challenge).encode("utf-8")

    def check(self, answer: Any, peer: str) -> None:
        """
        @raise pyro_errors.SecurityError: C{answer} is not the proof the client must give.
        """
        given = answer.get("proof") if isinstance(answer, dict) else None
        if not isinstance(given, str) or len(given) > 128 \
                or not wire.same_text(given, wire.proof(self._secret, "client", self._snonce, self._cnonce)):
            auth_log.warning("refused a client at %s: wrong secret", peer)
            raise pyro_errors.SecurityError("wrong secret: the client could not prove it knows this engine's secret")


# -- the connect handshake, strictly ------------------------------------------------------------------

class _Refused(Exception):
    """A handshake ends here: the client gets C{text} as its refusal."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Handshake:
    """
    One client's connect handshake, without any I/O of its own, so that a listener can drive many
    at once without a thread each: L{needed} says how many bytes to read next, L{feed} takes
    exactly those, L{take_output} hands over what to send. Once L{needed} is 0 and the output is
    sent, L{accepted} says whether the client may make calls (True) or was refused (False).

    Before a client is accepted it can make the engine hold at most L{HANDSHAKE_MAX_SIZE} bytes
    and decode only what a handshake needs: the connect message is read with the plain decoder of
    its serializer (json, marshal after L{srpy.codec.check_marshal}, serpent's literal reader,
    msgpack without extension types; srpy's own as plain marshal, no tagged values), and must be
    a dict of C{handshake} (small plain data) and C{object} (a short str). Everything else is
    refused with a one-line reason, in the client's serializer when its header names one.
    """

    def __init__(self, daemon: Any, conn: Any, peer: str) -> None:
        self.daemon = daemon
        self.conn = conn
        self.peer = peer
        #: bytes to read next (0: nothing more; send the output, then close or serve)
        self.needed = len(_PREFIX)
        #: True once accepted, False once refused, None while under way
        self.accepted: Optional[bool] = None
        self._out: List[bytes] = []
        self._step: Callable[[bytes], None] = self._connect_prefix
        self._prefix = b""
        self._serializer_id = _MARSHAL_ID  # what refusals are written in until the header names another
        self._seq = 0
        self._header: Tuple[int, ...] = ()
        self._request: Any = None
        self._challenge: Optional[SecretChallenge] = None

    def feed(self, data: bytes) -> None:
        """Take the L{needed} bytes that came next from the client."""
        try:
            self._step(bytes(data))
        except _Refused as refused:
            self._refuse(refused.text)
        except pyro_errors.PyroError as exc:  # the daemon's own refusals: unknown object, wrong secret
            self._refuse(str(exc))
        except Exception as exc:  # a daemon's hook failing must still end this handshake only
            note_bad_input(self.conn, exc, "handshake")
            self._refuse("handshake failed: %s" % exc)

    def take_output(self) -> bytes:
        """What to send the client now (empty when nothing)."""
        out, self._out = b"".join(self._out), []
        return out

    # the steps
    def _connect_prefix(self, data: bytes) -> None:
        """The first 6 bytes: what is not Pyro5 (an HTTP request, say) is refused before the rest of a header."""
        if data[:4] != _PREFIX[:4]:
            raise _Refused("invalid data")
        if data != _PREFIX:
            raise _Refused("invalid protocol version: %d" % int.from_bytes(data[4:6], "big"))
        self._prefix = data
        self._step = self._connect_header
        self.needed = protocol_header_size - len(_PREFIX)

    def _connect_header(self, data: bytes) -> None:
        data = self._prefix + data
        msgtype, size, _ = self._parse_header(data, protocol.MSG_CONNECT, HANDSHAKE_MAX_SIZE, "connect")
        self._step = self._connect_body
        self.needed = size
        if not size:
            self._connect_body(b"")

    def _connect_body(self, data: bytes) -> None:
        body = self._body(data, HANDSHAKE_MAX_SIZE)
        request = _decode_connect(self._serializer_id, body)
        self._request = request
        challenge_for = getattr(self.daemon, "secret_challenge", None)
        self._challenge = challenge_for(request["handshake"]) if challenge_for is not None else None
        if self._challenge is None:
            self._finish()
            return
        self._out.append(_message(protocol.MSG_CONNECT, wire.JSON_SERIALIZER_ID, self._challenge.message, self._seq))
        self._step = self._answer_header
        self.needed = protocol_header_size

    def _answer_header(self, data: bytes) -> None:
        try:
            _, size, serializer_id = self._parse_header(data, protocol.MSG_CONNECT, ANSWER_MAX_SIZE, "answer")
        except _Refused as refused:
            raise _Refused("malformed answer to the secret challenge: %s" % refused.text) from None
        if serializer_id != wire.JSON_SERIALIZER_ID:
            raise _Refused("malformed answer to the secret challenge: it must be json")
        self._step = self._answer_body
        self.needed = size
        if not size:
            self._answer_body(b"")

    def _answer_body(self, data: bytes) -> None:
        try:
            answer = json.loads(self._body(data, ANSWER_MAX_SIZE).decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise _Refused("malformed answer to the secret challenge: %s" % exc) from None
        assert self._challenge is not None
        self._challenge.check(answer, self.peer)
        self._finish()

    def _finish(self) -> None:
        request = self._request
        response = self.daemon.validateHandshake(self.conn, request["handshake"])
        meta = _pyro5.object_metadata(self.daemon, request["object"])
        data = _serializer(self._serializer_id).dumps({"handshake": response, "meta": meta})
        self._out.append(_message(protocol.MSG_CONNECTOK, self._serializer_id, data, self._seq))
        self.accepted = True
        self.needed = 0

    def _refuse(self, text: str) -> None:
        self._out.append(refusal(text, self._serializer_id, self._seq))
        self.accepted = False
        self.needed = 0

    # framing
    def _parse_header(self, data: bytes, wanted: int, limit: int, what: str) -> Tuple[int, int, int]:
        try:
            msgtype, serializer_id, flags, seq, data_size, ann_size = wire.parse_header(data)
        except wire.HeaderError as exc:  # worded as Pyro5's own server words it
            raise _Refused({"tag": "invalid data", "version": "invalid protocol version: %s" % (exc.value,),
                            "magic": "invalid magic number"}[exc.field]) from None
        if _pyro5.serializer(serializer_id) is not None:
            self._serializer_id = serializer_id  # refusals from here on in the client's own serializer
        self._seq = seq
        if msgtype != wanted:
            raise _Refused("invalid msg type %d received (expected: %d)" % (msgtype, wanted))
        if data_size + ann_size > limit:
            raise _Refused("%s message too large (%d bytes, max=%d before the handshake is complete)"
                           % (what, data_size + ann_size, limit))
        if flags & ~(protocol.FLAGS_COMPRESSED | protocol.FLAGS_CORR_ID):
            raise _Refused("invalid flags %#x in a %s message" % (flags, what))
        self._header = (flags, data_size, ann_size)
        return msgtype, data_size + ann_size, serializer_id

    def _body(self, payload: bytes, limit: int) -> bytes:
        """The data of the message whose header came last: annotations checked and skipped, inflated within C{limit}."""
        flags, data_size, ann_size = self._header
        try:
            wire.parse_annotations(payload, ann_size)  # checked, and not used
        except SRPyError as exc:  # wire's ProtocolError
            raise _Refused(str(exc)) from None
        body = payload[ann_size:]
        if flags & protocol.FLAGS_COMPRESSED:
            try:
                body = wire.inflate(body, limit)
            except SRPyError as exc:
                raise _Refused("a message of %s" % exc) from None
        return body


def refusal(text: str, serializer_id: Optional[int] = None, seq: int = 0) -> bytes:
    """A Pyro5 CONNECTFAIL message saying C{text}, in the given serializer if known (else marshal, as Pyro5's)."""
    sid = serializer_id if serializer_id is not None and _pyro5.serializer(serializer_id) is not None else _MARSHAL_ID
    return _message(protocol.MSG_CONNECTFAIL, sid, _serializer(sid).dumps(text), seq)


def _message(msgtype: int, serializer_id: int, data: bytes, seq: int) -> bytes:
    return wire.pack_message(msgtype, serializer_id, data, seq)


def _serializer(serializer_id: int) -> Any:
    return _pyro5.serializer(serializer_id) or _pyro5.serializer(_MARSHAL_ID)


def _decode_connect(serializer_id: int, body: bytes) -> Dict[str, Any]:
    """The connect request, read with the plainest decoder for its serializer, or L{_Refused}."""
    decoder = _CONNECT_DECODERS.get(serializer_id)
    if decoder is None or _pyro5.serializer(serializer_id) is None:
        raise _Refused("unknown serializer id %d" % serializer_id)
    try:
        request = decoder(body)
    except Exception as exc:  # whatever a decoder raises on garbage (ValueError, SyntaxError, msgpack's own ...)
        raise _Refused("malformed connect message: %s: %s" % (type(exc).__name__, _clip(str(exc)))) from None
    if not isinstance(request, dict) or set(request) != {"handshake", "object"}:
        raise _Refused("malformed connect message: it must hold 'handshake' and 'object', nothing else")
    if not isinstance(request["object"], str) or len(request["object"]) > 256:
        raise _Refused("malformed connect message: 'object' must be a short name")
    if not _plain(request["handshake"], 3):
        raise _Refused("malformed connect message: 'handshake' must be small plain data")
    return request


def _plain(value: Any, depth: int) -> bool:
    """True for the small plain data a handshake may hold: None, bool, int, float, short str, few items."""
    kind = type(value)
    if value is None or kind is bool or kind is float:
        return True
    if kind is int:
        return -2 ** 63 <= value < 2 ** 64
    if kind is str:
        return len(value) <= 1024
    if kind in (list, tuple) and depth > 0 and len(value) <= 32:
        return all(_plain(item, depth - 1) for item in value)
    if kind is dict and depth > 0 and len(value) <= 32:
        return all(type(k) is str and len(k) <= 64 and _plain(v, depth - 1) for k, v in value.items())
    return False


def _marshal_plain(body: bytes) -> Any:
    codec.check_marshal(body)
    return marshal.loads(body)


def _msgpack_plain(body: bytes) -> Any:
    import msgpack  # only when a client speaks it (Pyro5 registers id 4 only if msgpack is installed)

    def no_extensions(code: int, data: bytes) -> Any:
        raise ValueError("msgpack extension type %d before the handshake" % code)

    return msgpack.unpackb(body, raw=False, strict_map_key=False, ext_hook=no_extensions)


def _serpent_plain(body: bytes) -> Any:
    import serpent
    return serpent.loads(body)


_MARSHAL_ID = 2
_CONNECT_DECODERS: Dict[int, Callable[[bytes], Any]] = {
    1: _serpent_plain,
    _MARSHAL_ID: _marshal_plain,
    wire.JSON_SERIALIZER_ID: lambda body: json.loads(body.decode("utf-8")),
    4: _msgpack_plain,
    codec.SERIALIZER_ID: _marshal_plain,  # srpy's format, as plain marshal: no tagged values before the handshake
}
protocol_header_size = wire.HEADER.size
_PREFIX = wire.pack_header(0, 0, 0)[:6]  # how every message srpy accepts starts: b"PYRO" and the version


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def client_tls(ca: Optional[str] = None, cert: Optional[str] = None, key: Optional[str] = None,
               check_hostname: bool = True) -> ssl.SSLContext:
    """
    A client TLS context for engines that serve TLS (C{srpyapp --tls-cert ...}): trusts C{ca} (a
    PEM bundle; default: the system's), and presents C{cert}/C{key} when engines require client
    certificates. Pass it as C{ssl_context=} to L{srpy.PythonEngine} or L{srpy.EngBox}.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.check_hostname = check_hostname
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _peer(conn: Any) -> str:
    try:
        return "%s:%s" % conn.sock.getpeername()[:2]
    except (OSError, AttributeError):
        return "?"
