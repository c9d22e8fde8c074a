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
import socket
import ssl
import threading
import time
from typing import Any, Optional

from Pyro5 import errors as pyro_errors
from Pyro5 import protocol
from Pyro5.server import Daemon

from . import lite
from .errors import SRPyError

log = logging.getLogger("srpy.security")
#: where malformed input is reported (one line each, within L{BAD_INPUT_LIMIT})
input_log = logging.getLogger("srpy.security.input")

#: seconds a client may take to answer the engine's challenge
HANDSHAKE_TIMEOUT = 10.0


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
    """A Pyro5 daemon that, given a secret, accepts only clients that prove they know it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret: Optional[str] = None,
                 **kwargs: Any) -> None:
        self._secret = secret or None
        protocol_log = logging.getLogger("Pyro5.protocol")  # logs each message of a wrong type
        if BAD_INPUT_LIMIT not in protocol_log.filters:
            protocol_log.addFilter(BAD_INPUT_LIMIT)
        super().__init__(host=host, port=port, **kwargs)

    def _handshake(self, conn: Any, denied_reason: Optional[str] = None) -> bool:
        """
        Pyro5's connect handshake, within L{HANDSHAKE_TIMEOUT}: a client that connects and then says
        nothing (or half a message) is dropped instead of holding one of the daemon's threads for ever.
        A failure Pyro5 lets through (a serializer it does not know, a client gone before the answer)
        drops the client with one line in the log, where Pyro5 would log a traceback for each one.
        """
        conn.settimeout(HANDSHAKE_TIMEOUT)
        try:
            return super()._handshake(conn, denied_reason)
        except Exception as exc:  # whatever the client sent, it only loses its own connection
            note_bad_input(conn, exc, "handshake")
            return False
        finally:
            conn.settimeout(None)

    def validateHandshake(self, conn: Any, data: Any) -> Any:
        """Run the challenge-response when this daemon has a secret (see the module text)."""
        if not self._secret:
            return {"srpy": 1, "auth": False}
        cnonce = data.get("nonce") if isinstance(data, dict) else None
        if not isinstance(cnonce, str) or not 16 <= len(cnonce) <= 128:
            raise pyro_errors.SecurityError("this engine requires a secret; connect with an srpy client "
                                            "that has it (secret=... or SRPY_SECRET)")
        snonce = lite.new_nonce()
        challenge = {"nonce": snonce, "proof": lite.proof(self._secret, "server", cnonce, snonce)}
        conn.settimeout(HANDSHAKE_TIMEOUT)
        try:
            msg = protocol.SendingMessage(protocol.MSG_CONNECT, 0, 0, lite.JSON_SERIALIZER_ID,
                                          json.dumps(challenge).encode("utf-8"))
            conn.send(msg.data)
            reply = protocol.recv_stub(conn, [protocol.MSG_CONNECT])
            answer = json.loads(bytes(reply.data).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise pyro_errors.SecurityError("malformed answer to the secret challenge: %s" % exc)
        finally:
            conn.settimeout(None)
        given = answer.get("proof") if isinstance(answer, dict) else None
        if not isinstance(given, str) or not lite.same_text(given, lite.proof(self._secret, "client", snonce, cnonce)):
            log.warning("refused a client at %s: wrong secret", _peer(conn))
            raise pyro_errors.SecurityError("wrong secret: the client could not prove it knows this engine's secret")
        return {"srpy": 1, "auth": True}


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
