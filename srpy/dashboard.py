"""
C{srpyapp dashboard} (and C{srpyapp -n N --dashboard PORT}): a live web page of what the engines do::

    srpyapp dashboard                          # engines in the name server; http://127.0.0.1:8470/
    srpyapp dashboard -u uris.txt --port 9000  # the engines of a URI file (read again as it changes)
    srpyapp -n 4 --dashboard 8470              # a launcher serving the page of its own engines

The page shows every engine found (host, group, cores, busy or idle, the task it runs and for how
long, tasks done, load, memory), the tasks done per second over the last minutes as a chart,
the peer mesh (which engines each engine has as peers), and, on a click on a busy engine, the
stack of the task it runs. It reads one JSON document a second (C{GET /api/state}, what the
L{srpy.monitor.Monitor} saw last); a stack is C{POST /api/stack}.

Built on the standard library's C{http.server} (a C{ThreadingHTTPServer}); the chart is uPlot
(MIT), one minified file served from C{srpy/dashboard_static/} with its licence beside it, so the
page needs no network beyond this server. Those files are uPlot 1.6.32 as the npm package
C{uplot} ships them (C{dist/uPlot.iife.min.js}, C{dist/uPlot.min.css}, C{LICENSE}), unchanged:
vendored rather than taken from a Python package, as no maintained one ships it, and one 50 KB
file with no dependencies is less to trust than a package that would. The page's own script builds every element with DOM
calls and C{textContent}: nothing it reads is parsed as HTML or run as code.

Security:
 - It listens on 127.0.0.1 unless told C{--host}. Bound beyond loopback, the page asks for the
   engines' secret (a login form, C{POST /login}); a right one gets a session cookie, an HMAC of
   a random number drawn at start under the secret (HttpOnly, SameSite=Strict), so the secret
   itself is never in a URL, a cookie or the log. Without a secret it will not listen beyond
   loopback unless C{--insecure}; C{--login} asks for the secret on loopback too.
 - On loopback without a login, a request must name this machine in its C{Host} header (a page
   elsewhere cannot reach it through DNS rebinding).
 - The page is read-only: the one POST it makes (a stack) must be JSON from the same origin
   (C{Content-Type: application/json}, C{Origin} this server's), and names an engine the
   monitor lists; nothing from a request is evaluated or connected to.
 - Every response says C{Content-Security-Policy: default-src 'self'} (no inline scripts, no
   other origins) and C{X-Content-Type-Options: nosniff}; the JSON is C{no-store}.
"""

import argparse
import hmac
import http.cookies
import http.server
import json
import logging
import os
import secrets as random_numbers
import signal
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import discovery, monitor, security, status
from .errors import SRPyError
from .fanout import start_thread

log = logging.getLogger("srpy.dashboard")

#: the port C{srpyapp dashboard} serves on unless told C{--port}
DEFAULT_PORT = 8470
#: the folder of the page's files (package data)
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard_static")
#: the files served from it, and their types; anything else is 404
FILES = {"index.html": "text/html; charset=utf-8", "login.html": "text/html; charset=utf-8",
         "dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8",
         "uPlot.iife.min.js": "text/javascript; charset=utf-8", "uPlot.min.css": "text/css; charset=utf-8"}
#: what the login page needs before a session exists
OPEN_FILES = {"login.html", "dashboard.css"}
COOKIE = "srpy_dashboard"
#: the largest request body read (a login, a stack's engine URI)
BODY_LIMIT = 4096
#: seconds a failed login waits before its answer (guesses come slowly)
LOGIN_DELAY = 1.0
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" with the login form
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}

__all__ = ["Dashboard", "main", "DEFAULT_PORT"]


class Dashboard:
    """
    The dashboard's web server over a L{monitor.Monitor}, serving from a thread of its own once
    L{start}ed.

    @param login: ask for the secret (None: exactly when bound beyond loopback).
    @param insecure: allow listening beyond loopback without a secret (no login then).
    @raise SRPyError: the address cannot be listened on, or the options do not fit (a login
        without a secret; beyond loopback without a secret nor C{insecure}).
    """

    def __init__(self, watcher: monitor.Monitor, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 secret: Optional[str] = None, login: Optional[bool] = None, insecure: bool = False) -> None:
        loopback = security.is_loopback(host)
        self.login = login_needed(host, secret, login, insecure)
        self.monitor = watcher
        self.loopback_only = loopback and not self.login
        self._secret = secret or ""
        self._session = hmac.new(self._secret.encode("utf-8"), b"srpy dashboard session\0"
                                 + random_numbers.token_bytes(32), "sha256").hexdigest()
        server_class = _ServerV6 if ":" in host else _Server
        try:
            self.server = server_class((host, port), _Handler)
        except OSError as exc:
            raise SRPyError("cannot serve the dashboard on %s:%s: %s" % (host, port, exc.strerror or exc)) from None
        self.server.dashboard = self  # type: ignore[attr-defined]
        self._thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[str, int]:
        """The host and port it listens on (the port chosen when asked for 0)."""
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.address
        return "http://%s:%d/" % ("[%s]" % host if ":" in host else host, port)

    def start(self) -> "Dashboard":
        """Start the monitor and serve from a daemon thread; returns the dashboard."""
        self.monitor.start()
        self._thread = start_thread(self.server.serve_forever, name="srpy-dashboard")
        log.info("dashboard at %s%s", self.url, " (secret required)" if self.login else "")
        return self

    def close(self) -> None:
        """Stop serving and watching."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(10)
        self.server.server_close()
        self.monitor.stop()

    # -- what the handler asks ---------------------------------------------------------------------

    def session_ok(self, cookie_header: Optional[str]) -> bool:
        """Whether a request may read the page: no login asked, or it carries the session cookie."""
        if not self.login:
            return True
        try:
            cookie = http.cookies.SimpleCookie(cookie_header or "")
        except http.cookies.CookieError:
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode("ascii", "replace"),
                                                          self._session.encode("ascii"))

    def secret_ok(self, given: str) -> bool:
        return bool(self._secret) and hmac.compare_digest(given.encode("utf-8"), self._secret.encode("utf-8"))

    def session_cookie(self) -> str:
        return "%s=%s; Path=/; HttpOnly; SameSite=Strict" % (COOKIE, self._session)


def login_needed(host: str, secret: Optional[str], login: Optional[bool] = None, insecure: bool = False) -> bool:
    """
    Whether the dashboard on C{host} asks for the secret: when told (C{login}), else exactly
    when it listens beyond loopback. Beyond loopback without a secret it will not serve, unless
    C{insecure} (then it asks for nothing, and says so in the log).

    >>> login_needed("127.0.0.1", None), login_needed("0.0.0.0", "s3cret"), login_needed("127.0.0.1", "s3cret", True)
    (False, True, True)
    >>> login_needed("0.0.0.0", None)
    Traceback (most recent call last):
    srpy.errors.SRPyError: refusing to serve the dashboard on 0.0.0.0 without a secret: ...

    @raise SRPyError: a login without a secret; beyond loopback without a secret nor C{insecure}.
    """
    needed = (not security.is_loopback(host)) if login is None else bool(login)
    if not needed or secret:
        return needed
    if login:
        raise SRPyError("--login needs the engines' secret: give --secret (or SRPY_SECRET)")
    if not insecure:
        raise SRPyError("refusing to serve the dashboard on %s without a secret: anyone who reaches it would "
                        "see the engines and their code. Give --secret (the engines'), or --insecure if you "
                        "really mean it" % host)
    log.warning("INSECURE: the dashboard on %s asks for no secret: anyone who reaches it sees the engines "
                "and the stacks of their code", host)
    return False


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a page left open holds no thread past close()
    allow_reuse_address = True


class _ServerV6(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request: the page's files, its JSON, a stack, the login."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that sends nothing does not hold its thread for long

    @property
    def dashboard(self) -> Dashboard:
        return self.server.dashboard  # type: ignore[attr-defined,no-any-return]

    def version_string(self) -> str:
        return "srpy-dashboard"  # not the Python version: nobody needs it to read the page

    def log_message(self, format: str, *args: Any) -> None:  # the request line holds no secret: none is ever in a URL
        log.debug("%s %s", self.address_string(), format % args)

    # -- routes --------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        path = urllib.parse.urlsplit(self.path).path
        name = "index.html" if path == "/" else "login.html" if path == "/login" else \
            path[len("/static/"):] if path.startswith("/static/") else None
        if path == "/api/state":
            if not self.dashboard.session_ok(self.headers.get("Cookie")):
                return self._send_json(401, {"error": "log in first", "login": "/login"})
            return self._send_json(200, self.dashboard.monitor.snapshot())
        if name not in FILES:
            return self._send(404, b"not found\n", "text/plain; charset=utf-8")
        if name not in OPEN_FILES and not self.dashboard.session_ok(self.headers.get("Cookie")):
            return self._redirect("/login")
        if name == "login.html" and not self.dashboard.login:
            return self._redirect("/")
        with open(os.path.join(STATIC, name), "rb") as handle:
            body = handle.read()
        if name == "login.html" and "failed=1" in urllib.parse.urlsplit(self.path).query:
            body = body.replace(b" data-failed hidden", b" data-failed")  # the page's own text, shown
        self._send(200, body, FILES[name], cache="no-cache")

    def do_POST(self) -> None:
        body = self._body()  # read first: a refusal leaves no body behind on a kept-alive connection
        if body is None or not self._host_ok() or not self._same_origin():
            return
        path = urllib.parse.urlsplit(self.path).path
        if path == "/login":
            return self._login(body)
        if path != "/api/stack":
            return self._send(404, b"not found\n", "text/plain; charset=utf-8")
        if not self.dashboard.session_ok(self.headers.get("Cookie")):
            return self._send_json(401, {"error": "log in first", "login": "/login"})
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            return self._send_json(415, {"error": "a stack is asked for with a JSON body"})
        try:
            uri = json.loads(body.decode("utf-8")).get("uri")
        except (ValueError, AttributeError):
            uri = None
        if not isinstance(uri, str):
            return self._send_json(400, {"error": 'send {"uri": "<an engine\'s URI>"}'})
        try:
            return self._send_json(200, self.dashboard.monitor.stack(uri))
        except KeyError:
            return self._send_json(404, {"error": "no engine %s on this dashboard" % uri[:200]})
        except (SRPyError, OSError) as exc:
            return self._send_json(502, {"error": "%s did not answer: %s" % (uri, " ".join(str(exc).split()))})

    def _login(self, body: bytes) -> None:
        if not self.dashboard.login:
            return self._redirect("/")
        fields = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        given = (fields.get("secret") or [""])[0]
        if not self.dashboard.secret_ok(given):
            log.warning("dashboard: a wrong secret from %s", self.address_string())
            time.sleep(LOGIN_DELAY)
            return self._redirect("/login?failed=1")
        self._redirect("/", cookie=self.dashboard.session_cookie())

    # -- checks ----------------------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        """On loopback without a login, the Host header must name this machine (no DNS rebinding)."""
        if not self.dashboard.loopback_only:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.strip("[]") in ("localhost", "127.0.0.1", "::1", self.dashboard.address[0]):
            return True
        self._send(421, b"this dashboard answers requests for localhost only\n", "text/plain; charset=utf-8")
        return False

    def _same_origin(self) -> bool:
        """A POST from a page of another origin is refused (browsers send Origin with every POST)."""
        origin = self.headers.get("Origin")
        if origin is None:
            return True  # not a browser's cross-site request: a browser always sends it with a POST
        if urllib.parse.urlsplit(origin).netloc.lower() == (self.headers.get("Host") or "").lower():
            return True
        self._send(403, b"refused: a request from another site\n", "text/plain; charset=utf-8")
        return False

    def _body(self) -> Optional[bytes]:
        try:
            size = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            size = -1
        if not 0 <= size <= BODY_LIMIT:
            self._send(413, b"a request body is at most 4 KiB\n", "text/plain; charset=utf-8")
            return None
        return self.rfile.read(size)

    # -- answers ---------------------------------------------------------------------------------------

    def _send_json(self, code: int, value: Dict[str, Any]) -> None:
        self._send(code, json.dumps(value, allow_nan=False).encode("utf-8"), "application/json", cache="no-store")

    def _redirect(self, where: str, cookie: Optional[str] = None) -> None:
        extra = {"Location": where}
        if cookie:
            extra["Set-Cookie"] = cookie
        self._send(303, b"", "text/plain; charset=utf-8", cache="no-store", extra=extra)

    def _send(self, code: int, body: bytes, kind: str, cache: str = "no-store",
              extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(code)
        if code >= 400:  # whatever went wrong, the next request starts on a fresh connection
            self.send_header("Connection", "close")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for name, value in list(_HEADERS.items()) + list((extra or {}).items()):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# -- srpyapp dashboard --------------------------------------------------------------------------------

def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("%r is not a port: use 1 to 65535 (0: any free port)" % (text,))
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of C{srpyapp dashboard}."""
    parser = argparse.ArgumentParser(prog="srpyapp dashboard",
                                     description="Serve a live web page of what srpy engines are doing.")
    parser.add_argument("uris", nargs="*", help="engine URIs (default: every engine in the name server)")
    parser.add_argument("-u", "--uri-file", help="read engine URIs from this file (again every few seconds)")
    parser.add_argument("--group", default=None, help="only engines of this group (name server)")
    parser.add_argument("--ns-host", default=None)
    parser.add_argument("--ns-port", type=_port, default=None)
    parser.add_argument("--host", default="127.0.0.1", help="address to serve the page on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port of the page (default %d)" % DEFAULT_PORT)
    parser.add_argument("--secret", default=None,
                        help="the engines' secret (default: $SRPY_SECRET); the page asks for it beyond loopback")
    parser.add_argument("--login", action="store_true", help="ask for the secret on loopback too")
    parser.add_argument("--insecure", action="store_true", help="serve beyond loopback without a secret")
    parser.add_argument("--tls-ca", metavar="FILE", help="CA bundle to trust, for engines that serve TLS")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate, for engines that require one")
    parser.add_argument("--tls-key", metavar="FILE", help="the client certificate's private key")
    parser.add_argument("--interval", type=status.positive_seconds, default=monitor.INTERVAL, help="seconds between two looks")
    parser.add_argument("--timeout", type=status.positive_seconds, default=3.0, help="seconds an engine has to answer")
    return parser


def finder(options: argparse.Namespace) -> Callable[[], List[str]]:
    """Where the engines are found: the URIs given and the URI file, else the name server."""
    given = list(options.uris)
    if options.uri_file:
        read = monitor.from_file(options.uri_file)
        return lambda: list(dict.fromkeys(given + read()))
    if given:
        return monitor.fixed(given)

    def look_up() -> List[str]:
        return [uri for _, uri, _ in discovery.find(options.group, options.ns_host, options.ns_port)]
    return look_up


def main(argv: Optional[Sequence[str]] = None) -> int:
    """C{srpyapp dashboard ...}: serve until Ctrl-C or SIGTERM; the exit code (0, or 1 if it cannot serve)."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.tls_key and not options.tls_cert:
        parser.error("--tls-key needs --tls-cert")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("Pyro5").setLevel(logging.WARNING)
    secret = options.secret or os.environ.get("SRPY_SECRET") or None
    context = None
    if options.tls_ca or options.tls_cert:
        context = security.client_tls(ca=options.tls_ca, cert=options.tls_cert, key=options.tls_key)
    if options.uri_file and not os.path.isfile(options.uri_file):
        print("srpyapp dashboard: -u %s: no such file" % options.uri_file, file=sys.stderr)
        return 1
    try:
        board = Dashboard(monitor.Monitor(finder(options), secret, context, options.interval, options.timeout),
                          options.host, options.port, secret, login=True if options.login else None,
                          insecure=options.insecure)
    except SRPyError as exc:
        print("srpyapp dashboard: %s" % " ".join(str(exc).split()), file=sys.stderr)
        return 1
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    board.start()
    print("srpy dashboard: %s%s" % (board.url, " (secret required)" if board.login else ""))
    sys.stdout.flush()
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        board.close()
    return 0
