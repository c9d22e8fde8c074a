"""
What a set of engines is doing, over time: the figures behind the live dashboard (L{srpy.dashboard}).

A L{Monitor} asks every engine it can find for its C{status()} once a second (all at once, over a
client it keeps per engine), and each engine's peer object for its peers every few seconds; it
keeps the tasks done per second over the last minutes, and builds from all of it one
L{snapshot<Monitor.snapshot>}: plain data only (str, numbers, lists, dicts), each value taken from
what the engine said by name and type, so the JSON the page reads holds nothing else::

    engines ──status() 1/s──►  Monitor thread ──► snapshot() ──► GET /api/state (the page polls)
            ──peer_list() 5 s─►                 ──► stack(uri) ◄── POST /api/stack (a click)

Engines are found again every few seconds (the URIs given, a URI file read again, or the name
server), so one that starts later appears; one that does not answer is listed as C{down} (or
C{needs secret}) and asked again each round. A stack is asked of an engine on demand, only of an
engine the monitor lists (the page never names an address to connect to).
"""

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from . import wire
from .client import PythonEngine
from .errors import AuthenticationError, SRPyError
from .fanout import fan_out, start_thread
from .group import peer_uri

log = logging.getLogger("srpy.monitor")

#: seconds between two rounds of status calls
INTERVAL = 1.0
#: seconds between two looks for engines (URI file, name server)
FIND_EVERY = 5.0
#: seconds between two asks for each engine's peers
PEERS_EVERY = 5.0
#: seconds of tasks-per-second history kept (the chart's width)
HISTORY = 300.0
#: seconds the tasks-per-second figures average over (a map's chunks end in bursts)
RATE_WINDOW = 5.0
#: the longest text taken from an engine for one field (a stack: L{STACK_LIMIT})
TEXT_LIMIT = 300
STACK_LIMIT = 64 * 1024

__all__ = ["Monitor", "fixed", "from_file"]


def fixed(uris: Sequence[str]) -> Callable[[], List[str]]:
    """A finder that always finds these URIs."""
    found = list(dict.fromkeys(str(uri) for uri in uris))
    return lambda: list(found)


def from_file(path: str) -> Callable[[], List[str]]:
    """A finder that reads a URI file (one per line, C{#} comments) each time: a launcher's C{-u} file."""
    def find() -> List[str]:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    return find


class _Watched:
    """One engine as the monitor knows it."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client: Optional[PythonEngine] = None
        self.peer_link: Any = None  # a wire.Connection to its peer object
        self.status: Dict[str, Any] = {}
        self.state = "down"
        self.reason = "not asked yet"
        self.peers: List[str] = []
        self.tasks_seen: Optional[Tuple[int, int]] = None  # (pid, tasks) at the last answer
        self.done = 0  # tasks counted since the monitor started (restarts of the engine included)
        self.history: Deque[Tuple[float, int]] = collections.deque()  # (monotonic, done)
        self.answered = 0.0  # wall-clock time of the last answer

    def close(self) -> None:
        for link in (self.client, self.peer_link):
            if link is not None:
                try:
                    link.close()
                except (SRPyError, OSError) as exc:
                    log.debug("closing a link to %s: %s", self.uri, exc)
        self.client = self.peer_link = None


class Monitor:
    """
    Watches the engines C{find()} returns (called again every L{FIND_EVERY} seconds) from a
    thread of its own, once L{start}ed; L{snapshot} is what it saw last.

    @param find: returns the engines' URIs (see L{fixed}, L{from_file}, or the name server's).
    @param secret: the engines' secret, if they have one.
    @param ssl_context: for engines that serve TLS (L{srpy.security.client_tls}).
    @param timeout: seconds an engine has to answer one call.
    """

    def __init__(self, find: Callable[[], List[str]], secret: Optional[str] = None, ssl_context: Any = None,
                 interval: float = INTERVAL, timeout: float = 3.0) -> None:
        self.find = find
        self.secret = secret
        self.ssl_context = ssl_context
        self.interval = interval
        self.timeout = timeout
        self._watched: Dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._found_at = -FIND_EVERY
        self._peers_at = -PEERS_EVERY
        self._find_problem = ""
        self._series: Deque[Tuple[float, float, int]] = collections.deque()  # (wall time, tasks/s, busy)
        self._snapshot: Dict[str, Any] = self._build(time.time())

    # -- the thread ---------------------------------------------------------------------------------

    def start(self) -> "Monitor":
        """Start watching (a daemon thread); returns the monitor."""
        if self._thread is None:
            self._thread = start_thread(self._run, name="srpy-monitor")
        return self

    def stop(self) -> None:
        """Stop watching and close every link to the engines."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.timeout * 2 + 10)
        with self._lock:
            watched, self._watched = list(self._watched.values()), {}
        for one in watched:
            one.close()

    def _run(self) -> None:
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                self.poll()
            except Exception:  # a round that fails must not end the watching: said in the log
                log.exception("the monitor's round failed")
            self._stopping.wait(max(0.05, self.interval - (time.monotonic() - began)))

    # -- one round ---------------------------------------------------------------------------------

    def poll(self) -> Dict[str, Any]:
        """One round: find the engines if due, ask each for its status (and peers, if due); the new snapshot."""
        now = time.monotonic()
        if now - self._found_at >= FIND_EVERY:
            self._found_at = now
            self._refind()
        with self._lock:
            watched = list(self._watched.values())
        ask_peers = now - self._peers_at >= PEERS_EVERY
        if ask_peers:
            self._peers_at = now
        fan_out(lambda one: self._ask(one, ask_peers), watched, timeout=self.timeout * 2 + 5, name="srpy-monitor-ask")
        at = time.monotonic()
        rate, busy = 0.0, 0
        for one in watched:
            rate += _rate(one.history, at)
            busy += one.state == "busy"
        wall = time.time()
        with self._lock:
            self._series.append((wall, rate, busy))
            while self._series and self._series[0][0] < wall - HISTORY:
                self._series.popleft()
            self._snapshot = snapshot = self._build(wall)
        return snapshot

    def _refind(self) -> None:
        try:
            uris = [str(uri) for uri in self.find()]
            self._find_problem = ""
        except (SRPyError, OSError, ValueError) as exc:  # keep the engines known: the source may come back
            self._find_problem = " ".join(str(exc).split())
            log.info("could not look for engines: %s", self._find_problem)
            return
        with self._lock:
            gone = [self._watched.pop(uri) for uri in list(self._watched) if uri not in uris]
            for uri in uris:
                if uri not in self._watched:
                    self._watched[uri] = _Watched(uri)
        for one in gone:
            one.close()

    def _ask(self, one: _Watched, ask_peers: bool) -> None:
        try:
            status = self._call(one, "status")
        except AuthenticationError as exc:
            one.state, one.reason = "needs secret", " ".join(str(exc).split())
            one.close()
            return
        except (SRPyError, OSError) as exc:
            one.state, one.reason = "down", " ".join(str(exc).split())
            one.close()
            return
        if not isinstance(status, dict):
            one.state, one.reason = "down", "its status is not a dict"
            return
        one.status, one.answered, one.reason = status, time.time(), ""
        one.state = "busy" if status.get("busy") else "idle"
        _count(one, _int(status.get("pid")), _int(status.get("tasks")))
        if ask_peers:
            one.peers = self._peer_list(one)

    def _call(self, one: _Watched, method: str) -> Any:
        client = one.client
        if client is None:
            client = one.client = PythonEngine(one.uri, secret=self.secret, connect_timeout=self.timeout,
                                               ssl_context=self.ssl_context, forward_output=False)
        return client.call(method, timeout=self.timeout)

    def _peer_list(self, one: _Watched) -> List[str]:
        """The engine's peers, as its peer object lists them; those known before if it does not say."""
        try:
            if one.peer_link is None:
                one.peer_link = wire.Connection(peer_uri(one.uri), self.secret, connect_timeout=self.timeout,
                                                ssl_context=self.ssl_context)
            peers, _ = one.peer_link.call("peer_list", timeout=self.timeout)
        except (SRPyError, OSError, ValueError) as exc:
            log.debug("no peer list from %s: %s", one.uri, exc)
            if one.peer_link is not None:
                one.peer_link.close()
                one.peer_link = None
            return one.peers
        return [_text(uri) for uri in peers][:1000] if isinstance(peers, list) else []

    # -- what the page reads ---------------------------------------------------------------------------

    def snapshot(self) -> Dict[str, Any]:
        """What the last round saw (plain data: the dashboard sends it as JSON as it is)."""
        with self._lock:
            return self._snapshot

    def stack(self, uri: str) -> Dict[str, Any]:
        """
        Ask the engine at C{uri} now what its running call is doing: C{busy}, C{task},
        C{running_for} and C{stack} (the task's part of its thread's stack; the whole of it when
        no user code runs).

        @raise KeyError: the monitor does not watch an engine at C{uri}.
        @raise SRPyError: the engine did not answer.
        """
        with self._lock:
            one = self._watched.get(uri)
        if one is None:
            raise KeyError(uri)
        status = self._call(one, "status")
        if not isinstance(status, dict):
            raise SRPyError("%s answered no status" % uri)
        stack = _text(status.get("task_stack"), STACK_LIMIT) or _text(status.get("stack"), STACK_LIMIT)
        return {"uri": uri, "name": _text(status.get("name")), "busy": bool(status.get("busy")),
                "task": _text(status.get("task")), "call": _text(status.get("current")),
                "running_for": _number(status.get("running_for")), "stack": stack}

    def _build(self, wall: float) -> Dict[str, Any]:
        engines = sorted((_view(one) for one in self._watched.values()),
                         key=lambda view: (view["host"], view["name"], view["uri"]))
        live = [view for view in engines if view["state"] in ("busy", "idle")]
        return {
            "time": wall, "interval": self.interval, "history": HISTORY, "rate_window": RATE_WINDOW,
            "problem": self._find_problem,
            "engines": engines,
            "totals": {"engines": len(engines), "answering": len(live),
                       "busy": sum(view["state"] == "busy" for view in engines),
                       # the machines' cores, each machine once (its engines share them)
                       "cores": sum({view["host"]: view["cores"] for view in live}.values()),
                       "tasks": sum(view["tasks"] for view in engines),
                       "tasks_per_second": round(self._series[-1][1], 3) if self._series else 0.0},
            "series": {"time": [point[0] for point in self._series],
                       "tasks_per_second": [round(point[1], 3) for point in self._series],
                       "busy": [point[2] for point in self._series]},
        }


def _count(one: _Watched, pid: int, tasks: int) -> None:
    """Add the tasks done since the engine's last answer (all of them when it restarted since)."""
    before = one.tasks_seen
    if before is None:
        added = 0  # what it did before the monitor watched it is no rate
    elif before[0] != pid or tasks < before[1]:
        added = tasks  # a fresh process counts from 0 again
    else:
        added = tasks - before[1]
    one.tasks_seen = (pid, tasks)
    one.done += added
    now = time.monotonic()
    one.history.append((now, one.done))
    while len(one.history) > 2 and one.history[1][0] <= now - RATE_WINDOW:
        one.history.popleft()


def _rate(history: Deque[Tuple[float, int]], now: float) -> float:
    """Tasks per second over the window the history holds (0 for fewer than two points or a silent engine)."""
    if len(history) < 2 or now - history[-1][0] > RATE_WINDOW:
        return 0.0
    (first, done_then), (last, done_now) = history[0], history[-1]
    return (done_now - done_then) / (last - first) if last > first else 0.0


def _view(one: _Watched) -> Dict[str, Any]:
    """An engine for the page: each field taken by name and coerced to its type."""
    status = one.status
    load = status.get("load")
    return {
        "uri": one.uri, "state": one.state, "reason": _text(one.reason),
        "name": _text(status.get("name")) or one.uri, "host": _text(status.get("host")),
        "group": _text(status.get("group")), "pid": _int(status.get("pid")), "cores": _int(status.get("cores")),
        "call": _text(status.get("current")) if one.state == "busy" else "",
        "task": _text(status.get("task")) if one.state == "busy" else "",
        "running_for": _number(status.get("running_for")) if one.state == "busy" else 0.0,
        "tasks": _int(status.get("tasks")), "calls": _int(status.get("calls")),
        "tasks_per_second": round(_rate(one.history, time.monotonic()), 3),
        "load": [_number(value) for value in load[:3]] if isinstance(load, list) else [],
        "memory_total": _int(status.get("memory_total")), "memory_available": _int(status.get("memory_available")),
        "rss": _int(status.get("rss")), "peers": list(one.peers), "answered": one.answered,
    }


def _text(value: Any, limit: int = TEXT_LIMIT) -> str:
    """
    A str field, cut to C{limit} characters ('' for anything not a str).

    >>> _text("run_batch"), _text(42), _text("x" * 10, 4)
    ('run_batch', '', 'xxxx')
    """
    return value[:limit] if isinstance(value, str) else ""


def _int(value: Any) -> int:
    """
    A whole-number field (0 for anything else).

    >>> _int(3), _int(True), _int("3"), _int(2.5)
    (3, 0, 0, 0)
    """
    return value if type(value) is int else 0


def _number(value: Any) -> float:
    """
    A number field (0.0 for anything else, and for NaN or infinities, which JSON cannot carry).

    >>> _number(1.5), _number(2), _number(float("nan")), _number("1")
    (1.5, 2.0, 0.0, 0.0)
    """
    if type(value) not in (int, float) or value != value or value in (float("inf"), float("-inf")):
        return 0.0
    return float(value)
