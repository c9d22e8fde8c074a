"""
L{EngBox}: many engines as one list-like container (SRPy's API) and as one
C{concurrent.futures.Executor}.

>>> import srpy
>>> uri, process = srpy.newSubEngine()
>>> with srpy.EngBox([uri]) as box:
...     list(box.map(abs, [-1, -2, 3]))
...     box.submit(pow, 2, 10).result()
[1, 2, 3]
1024
>>> srpy.stopSubEngine(process)
0
"""

import concurrent.futures
import io
import logging
import os
import tarfile
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import discovery, functions, provisioning, scheduler as scheduling
from .fanout import fan_out, start_thread
from .client import PythonEngine
from .errors import AuthenticationError, CommunicationError, NoEnginesError, SRPyServerNotFound
from .progress import progress_bar
from .scheduler import MapIterator, MapJob, Scheduler, Task, missing_packages

log = logging.getLogger("srpy.box")

EngineLike = Union[PythonEngine, str]


class EngBox(concurrent.futures.Executor):
    """
    A list of L{PythonEngine}s that is also an executor spreading work over them.

    As a container: C{append}, C{startAndAppend*}, C{len}, iteration, C{box[i]} (an engine),
    C{box[[0, 2]]} and C{box[1:]} (new boxes), C{del box[i]}, C{searchForEngine}, C{getFastest},
    C{getDead}/C{cleanDead}, C{mrs}/C{mrp}/C{mrpwait}.

    As an executor: C{submit}, C{map}, C{shutdown}, C{with EngBox(...) as box:}; futures are
    C{concurrent.futures.Future}s, so C{as_completed}, C{wait} and C{cancel} work as documented.
    What C{multiprocessing} users reach for: C{imap} (lazy, bounded memory), C{imap_unordered},
    C{starmap}. C{abort(future)} and C{abort_all()} stop work that already runs. Exit and Ctrl-C
    behave as in C{concurrent.futures} (see L{srpy.scheduler}).

    An engine that dies while running the box's work leaves the box (its work goes to the others);
    if it answers again within a minute, as an engine restarted by C{srpyapp --restart} does on the
    same URI, it is appended to the box again and gets work (see L{srpy.scheduler}).

    @ivar task_timeout: seconds any one submitted task may run (None: no limit).
    """

    def __init__(self, engines: Union[EngineLike, Iterable[EngineLike], None] = None, secret: Optional[str] = None,
                 task_timeout: Optional[float] = None, ssl_context: Any = None,
                 requirements: Optional[Sequence[str]] = None, find_links: Optional[str] = None,
                 index_url: Optional[str] = None, forward_output: Optional[bool] = None) -> None:
        """
        @param engines: L{PythonEngine}s or URIs to connect to; one URI string or engine alone
            means that one engine.
        @param requirements: requirement strings the box's work needs: once connected, the box
            calls C{require(*requirements, install=True, find_links=find_links,
            index_url=index_url)} (see L{require}).
        @param forward_output: print what the box's work prints on the engines here, each line
            prefixed with its engine's name, as it happens (None: the default, on; see
            L{srpy.forwarding}); for the clients the box connects itself (a L{PythonEngine}
            given keeps its own setting).
        """
        if requirements:
            provisioning.parse(list(requirements))  # a wrong string fails here, before any engine is reached
        elif find_links is not None or index_url is not None:
            raise ValueError("find_links and index_url are for requirements=[...]")
        if isinstance(engines, (str, PythonEngine)):
            engines = [engines]
        self._engines: List[PythonEngine] = []
        self._away: List[PythonEngine] = []  # left the box by dying; may rejoin if they answer again
        self._secret = secret
        self._ssl_context = ssl_context
        self._forward_output = forward_output
        self._lock = threading.RLock()
        self._scheduler: Optional[Scheduler] = None
        self._shut = False
        self.task_timeout = task_timeout
        self.mrs = _MultiRun(self, parallel=False)
        self.mrp = _MultiRun(self, parallel=True)
        self._pending: Dict[str, str] = {}  # URIs given that did not answer yet: uri -> why
        self._owned: set = set()  # ids of the clients this box made (and closes); siblings share, not own
        #: what require(install=True) installed: engines that join later get it too
        self._environment: Optional[Tuple[List[str], Optional[str], Optional[str]]] = None
        self._connect_all(list(engines or ()))
        if requirements:
            self.require(*requirements, install=True, find_links=find_links, index_url=index_url)

    def _connect_all(self, engines: List[EngineLike]) -> None:
        """
        Add C{engines}, connecting to the URIs among them at once. One that does not answer (busy
        in a long C call, restarting, not up yet) does not stop the box: it is named in the log and
        tried again in the background, for up to L{srpy.scheduler.REJOIN_WAIT} s, and joins the box
        when it answers (L{pending} lists them meanwhile). Only when none answers is that an error.

        @raise AuthenticationError: an engine refused this box's secret (a wrong secret is no delay).
        @raise NoEnginesError: URIs were given and none answered; names each and why.
        """
        uris = [engine for engine in engines if not isinstance(engine, PythonEngine)]
        connected = dict(_parallel(uris, self._connect)) if len(uris) > 1 else {}
        failed: Dict[str, str] = {}
        for engine in engines:
            if isinstance(engine, PythonEngine):
                self.append(engine)
                continue
            outcome = connected[engine] if engine in connected else _attempt(self._connect, engine)
            if isinstance(outcome, AuthenticationError):
                raise outcome
            if isinstance(outcome, (SRPyServerNotFound, CommunicationError)):
                failed[str(engine)] = str(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                self.append(outcome)
        if failed and not self._engines:
            raise NoEnginesError("no engine answered: %s" % "; ".join("%s (%s)" % item for item in failed.items()))
        for uri, why in failed.items():
            log.warning("engine %s does not answer yet (%s); the box goes on without it and keeps trying", uri, why)
            self._pending[uri] = why
            start_thread(self._keep_trying, uri, name="srpy-connect-%s" % uri)

    def _connect(self, uri: str, timeout: Optional[float] = None) -> PythonEngine:
        """A client for C{uri}, made by this box: L{close} closes it (engines given to the box are the giver's)."""
        engine = PythonEngine(uri, secret=self._secret, ssl_context=self._ssl_context,
                              connect_timeout=5.0 if timeout is None else timeout, forward_output=self._forward_output)
        with self._lock:
            self._owned.add(id(engine))
        return engine

    def _keep_trying(self, uri: str) -> None:
        """Connect to C{uri} with back-off until it answers (it joins the box) or srpy gives up."""
        deadline, delay = time.monotonic() + scheduling.REJOIN_WAIT, 0.1
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, scheduling.REJOIN_PROBE)
            with self._lock:
                if self._shut or uri not in self._pending:
                    return
            try:
                engine = self._connect(uri)
            except (SRPyServerNotFound, CommunicationError) as exc:
                with self._lock:
                    self._pending[uri] = str(exc)
                continue
            except Exception as exc:  # answers, but not as an engine of this box can (a wrong secret, say)
                with self._lock:
                    self._pending.pop(uri, None)
                log.warning("engine %s answers but cannot join the box: %s", uri, exc)
                return
            with self._lock:  # one step with close(): a box that is shut never takes it
                self._pending.pop(uri, None)
                if self._shut:
                    engine.close()
                    return
                try:
                    self.append(engine)
                except Exception as exc:  # it answers, but cannot have the box's environment
                    log.warning("engine %s answers but cannot join the box: %s", uri, exc)
                    return
            log.info("engine %s answers now; it joins the box", uri)
            return
        with self._lock:
            why = self._pending.pop(uri, None)
        if why is not None:
            log.warning("engine %s never answered (%s); the box gives up on it", uri, why)

    @property
    def pending(self) -> Dict[str, str]:
        """The URIs given to the box that have not answered yet, and why: C{{uri: reason}}."""
        with self._lock:
            return dict(self._pending)

    # -- the container -------------------------------------------------------------------------------

    def append(self, engine: EngineLike) -> PythonEngine:
        """Add an engine (a L{PythonEngine} or a URI to connect to); returns it."""
        if not isinstance(engine, PythonEngine):
            engine = self._connect(engine)
        if self._environment is not None:  # it gets what the box's work needs, or does not join
            specs, find_links, index_url = self._environment
            provisioning.provision([engine], specs, find_links, index_url)
        with self._lock:
            self._engines.append(engine)
            if self._scheduler is not None:
                self._scheduler.add_engine(engine)
        return engine

    def startAndAppend(self, uri: str) -> PythonEngine:
        """Connect to the engine at C{uri} and add it."""
        return self.append(self._connect(uri))

    def startAndAppendFromText(self, text: str) -> List[PythonEngine]:
        """Connect to every URI in C{text} (one per line; blank lines and C{#} comments skipped)."""
        uris = [line.strip() for line in text.splitlines()]
        return [self.startAndAppend(uri) for uri in uris if uri and not uri.startswith("#")]

    def startAndAppendFromFile(self, path: str) -> List[PythonEngine]:
        """Connect to every URI in the file at C{path} (as written by C{srpyapp -u}) and add them."""
        with open(path, encoding="utf-8") as handle:
            return self.startAndAppendFromText(handle.read())

    def getEngines(self) -> List[PythonEngine]:
        """The engines, as a new list."""
        with self._lock:
            return list(self._engines)

    toList = getEngines

    def _sibling(self, engines: Iterable[PythonEngine]) -> "EngBox":
        """A new box of C{engines} with this box's secret, TLS context and task timeout."""
        return EngBox(engines, secret=self._secret, task_timeout=self.task_timeout, ssl_context=self._ssl_context,
                      forward_output=self._forward_output)

    def __len__(self) -> int:
        return len(self._engines)

    def __iter__(self) -> Iterator[PythonEngine]:
        return iter(self.getEngines())

    def __getitem__(self, index: Any) -> Any:
        with self._lock:
            if isinstance(index, slice):
                return self._sibling(self._engines[index])
            if isinstance(index, (list, tuple)):
                return self._sibling([self._engines[i] for i in index])
            return self._engines[index]

    def __delitem__(self, index: Any) -> None:
        with self._lock:
            doomed = self._engines[index] if isinstance(index, slice) else [self._engines[index]]
            del self._engines[index]
            for engine in doomed:
                if self._scheduler is not None:
                    self._scheduler.remove_engine(engine)

    def remove(self, engine: PythonEngine) -> None:
        """Take C{engine} out of the box (and out of the scheduling); one that died will not rejoin."""
        with self._lock:
            if engine in self._engines:
                self._engines.remove(engine)
            if engine in self._away:
                self._away.remove(engine)
            if self._scheduler is not None:
                self._scheduler.remove_engine(engine)

    def __repr__(self) -> str:
        return "<EngBox of %d engine%s>" % (len(self), "" if len(self) == 1 else "s")

    def searchForEngine(self, name: str = "", group: str = "", ip: str = "", hostname: str = "") -> "EngBox":
        """A new box of the engines matching every non-empty criterion."""
        def matches(engine: PythonEngine) -> bool:
            return ((not name or engine.name == name) and (not group or engine.group == group)
                    and (not ip or engine.ip == ip) and (not hostname or engine.hostname == hostname))
        return self._sibling([e for e in self if matches(e)])

    def getFastest(self, single: bool = True, basis: str = "all", cycles: Optional[int] = None) -> Any:
        """
        Benchmark every engine at once; the fastest engine, or (C{single=False}) a new box sorted
        fastest first. C{basis}: 'net', 'proc' or 'all' (their sum). Engines whose benchmark
        fails are left out (and logged), never crash the call.
        """
        if basis not in ("net", "proc", "all"):
            raise ValueError("basis must be 'net', 'proc' or 'all', not %r" % (basis,))
        results = _parallel(self.getEngines(), lambda e: e.benchmark(cycles))
        scored = []
        for engine, result in results:
            if isinstance(result, BaseException):
                log.warning("benchmark of %s failed: %s", engine.uri, result)
                continue
            net, proc, _ = result
            engine.measured_proc = proc
            scored.append(({"net": net, "proc": proc, "all": net + proc}[basis], engine))
        scored.sort(key=lambda pair: pair[0])
        if single:
            if not scored:
                raise NoEnginesError("no engine answered the benchmark")
            return scored[0][1]
        return self._sibling([engine for _, engine in scored])

    def getDead(self, new: bool = False) -> Any:
        """The indexes of the engines that do not answer, or (C{new=True}) a box of them."""
        engines = self.getEngines()
        answers = _parallel(engines, lambda e: e.ping())
        dead = [i for i, (_, answer) in enumerate(answers) if answer != "pong"]
        return self._sibling([engines[i] for i in dead]) if new else dead

    def cleanDead(self) -> List[PythonEngine]:
        """Remove every engine that does not answer; returns the removed engines."""
        engines = self.getEngines()
        dead = [engines[i] for i in self.getDead()]
        for engine in dead:
            self.remove(engine)
        return dead

    def mrpwait(self, result: "MultiRunResult", timeout: float = -1) -> Dict[PythonEngine, Any]:
        """
        Wait (without polling) until an C{mrp} call has an answer from every engine; return the
        filled dict. C{timeout} < 0 waits for ever; past a timeout, C{TimeoutError} names the
        engines still running.
        """
        if not result.wait(None if timeout is None or timeout < 0 else timeout):
            waiting = [e.uri for e in result.engines if e not in result]
            raise TimeoutError("mrp call not complete after %s s: still waiting for %s" % (timeout, waiting))
        return result

    def connectPeers(self) -> Dict[str, List[str]]:
        """
        Introduce the engines to each other, so that code on them can message, share data and
        share work directly (L{srpy.peers}). An engine keeps only peers of its own group that pass
        its secret handshake. Returns {uri: the peers it kept}.
        """
        uris = [engine.uri for engine in self.getEngines()]
        results = _parallel(self.getEngines(), lambda e: e.call("set_peers", uris))
        return {engine.uri: _raise_if_error(kept) for engine, kept in results}

    # -- discovery ----------------------------------------------------------------------------------

    @classmethod
    def discover(cls, group: Optional[str] = None, ns_host: Optional[str] = None, ns_port: Optional[int] = None,
                 secret: Optional[str] = None, timeout: float = 5.0, ssl_context: Any = None) -> "EngBox":
        """
        A box of every live engine registered in the Pyro5 name server (of C{group}, if given).
        Entries whose engine no longer answers within C{timeout} are skipped and removed.
        """
        box = cls(secret=secret, ssl_context=ssl_context)
        stale = []
        entries = discovery.find(group, ns_host, ns_port, ssl_context=ssl_context)

        def connect(entry: Any) -> PythonEngine:
            return box._connect(entry[1], timeout)

        for (name, uri, _), engine in _parallel(entries, connect):
            if isinstance(engine, SRPyServerNotFound):
                stale.append(name)
            elif isinstance(engine, BaseException):
                log.warning("skipping %s at %s: %s", name, uri, engine)
            else:
                box.append(engine)
        discovery.remove_entries(stale, ns_host, ns_port, ssl_context=ssl_context)
        return box

    # -- projects and environments ------------------------------------------------------------------

    def require(self, *packages: str, install: bool = False, find_links: Optional[str] = None,
                index_url: Optional[str] = None) -> Optional[Dict[str, Dict[str, Any]]]:
        """
        Check that every engine can import every package (C{install=False}: C{packages} are module
        names), or give every engine what the requirements C{packages} (C{"numpy>=2"},
        C{"tinypkg==1.0"}) need (C{install=True}).

        With C{install=True} an engine that lacks a requirement gets an environment of the whole
        set: built once on its host (uv where found, else pip; kept in C{srpyapp --env-dir}, by
        default C{~/.cache/srpy/envs}) and reused by later boxes, then activated for all the work
        the engine runs; the engine's own Python is never changed. Engines that join the box later
        (or come back after dying under its work) get it too. C{find_links}: a folder of wheels and sdists on
        this machine, shipped to the engines; they install from it without any index (unless
        C{index_url} is given too). See doc/environments.md.

        @return: None (C{install=False}); else C{{uri: info}}, info's C{status} being
            C{'satisfied'} (the engine had it all), C{'active'}, C{'cached'} or C{'built'}.
        @raise MissingPackagesError: (C{install=False}) naming which engines lack which packages.
        @raise InvalidRequirement: a requirement string is not valid; raised before anything is sent.
        @raise InstallError: installing failed: one error naming the engines, the requirements
            and the installer's last lines; no half-made environment is left.
        @raise EnvironmentConflict: an engine imported already, at another version, a module of
            the environment (one engine per conflicting set, or restart it).
        """
        if not install:
            if find_links is not None or index_url is not None:
                raise ValueError("find_links and index_url are for install=True")
            error = missing_packages(self.getEngines(), list(packages))
            if error is not None:
                raise error
            return None
        specs = list(packages)
        results = provisioning.provision(self.getEngines(), specs, find_links, index_url)  # parses them first
        self._environment = (specs, find_links, index_url)
        return results

    def _provide(self, engine: PythonEngine) -> bool:
        """Give an engine that joins the box what L{require} installed on the others; False if it failed."""
        assert self._environment is not None
        specs, find_links, index_url = self._environment
        try:
            provisioning.provision([engine], specs, find_links, index_url)
            return True
        except Exception as exc:  # an engine that cannot have the box's environment cannot do its work
            log.warning("engine %s cannot have the box's requirements %s: %s", engine.uri, " ".join(specs), exc)
            return False

    def upload(self, path: str) -> Dict[str, List[str]]:
        """
        Ship a file or a whole directory tree (packed as one archive) into every engine's sandbox,
        which is each engine's working directory: tasks open the files by relative path
        (C{open('data/x.csv')} after C{upload('data')}). Returns {uri: files unpacked}.
        """
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(path, arcname=os.path.basename(os.path.normpath(path)),
                    filter=lambda info: None if info.issym() or info.islnk() else info)
        archive = buffer.getvalue()
        results = _parallel(self.getEngines(), lambda e: e.call("unpack", {"archive": archive}))
        return {engine.uri: _raise_if_error(result) for engine, result in results}

    def push(self, variables: Dict[str, Any]) -> None:
        """
        Set C{variables} ({name: value}) on every engine at once, as L{PythonEngine.set} does on
        one (ipyparallel's C{view.push}). A subset: C{box[[0, 2]].push(...)}.

        @raise Exception: an engine's error (a value that cannot travel, an engine gone): the
            first, once every engine has answered.
        """
        for _, outcome in _parallel(self.getEngines(), lambda e: e.set(**variables)):
            _raise_if_error(outcome)

    def pull(self, names: Union[str, Sequence[str]]) -> List[Any]:
        """
        The values of C{names} on every engine, in the box's order (ipyparallel's C{view.pull}):
        for one name (a string), its value on each engine; for a list of names, a C{{name:
        value}} dict per engine. A subset: C{box[[0, 2]].pull(...)}.

        @raise KeyError: a name an engine does not have (the first error, once every engine
            has answered).
        """
        query: Any = names if isinstance(names, str) else list(names)
        return [_raise_if_error(outcome) for _, outcome in _parallel(self.getEngines(), lambda e: e.get(query))]

    def run(self, path: str, *argv: Any) -> Dict[str, Dict[str, Any]]:
        """
        Run the script at C{path} on every engine at once, as L{PythonEngine.run} does on one:
        C{__main__}, C{sys.argv == [path, *argv]}, its folder's modules that it imports shipped.
        Returns {uri: {'exit': code, 'stdout': text, 'stderr': text}}, once every engine is done;
        what the scripts print is also forwarded as it happens (see C{forward_output}).

        @raise SRPyError: an engine could not run it (it went away, say): the first such error,
            once the others are done.
        """
        from . import scripts

        script = scripts.pack(path)  # read and scanned once, for every engine
        args = scripts.arguments(argv)
        engines = self.getEngines()
        # one thread per engine, as mrp: scripts run at once may wait for each other (peer messages)
        results = fan_out(lambda e: e.call("run_script", script.path, script.source, args, script.files), engines,
                          max(1, len(engines)), name="srpy-run")
        return {engine.uri: _raise_if_error(result) for engine, result in zip(engines, results)}

    # -- the executor ------------------------------------------------------------------------------

    def _get_scheduler(self) -> Scheduler:
        with self._lock:
            if scheduling.exiting():
                raise RuntimeError("cannot schedule new work after interpreter shutdown")
            if self._shut:
                raise RuntimeError("cannot schedule new work after shutdown")
            if self._scheduler is None:
                if not self._engines:
                    raise NoEnginesError("the box has no engine to run work on")
                self._scheduler = Scheduler(on_dead=self._engine_died, on_back=self._engine_back)
                for engine in self._engines:
                    self._scheduler.add_engine(engine)
            return self._scheduler

    def _engine_died(self, engine: PythonEngine) -> None:
        with self._lock:
            if engine in self._engines:
                self._engines.remove(engine)
                self._away.append(engine)

    def _engine_back(self, engine: PythonEngine, back: bool) -> bool:
        """An engine that died answers again (C{back}): it rejoins, unless removed meanwhile; or it is given up."""
        if back and self._environment is not None and not self._provide(engine):
            back = False  # a fresh process has no active environment: it gets the box's, or cannot rejoin
        with self._lock:
            if engine not in self._away:
                return False
            self._away.remove(engine)
            if not back or self._shut or self._scheduler is None:
                return False
            self._engines.append(engine)
            self._scheduler.add_engine(engine)
            return True

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Run C{fn(*args, **kwargs)} on some engine; returns its Future at once."""
        bundle = functions.pack(fn)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._get_scheduler().put(Task(bundle, "call", [args, kwargs], future, self.task_timeout))
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: Optional[int] = None, progress: bool = False) -> MapIterator:
        """
        Like the builtin map, over the engines: results in order, computed in chunks whose size
        srpy picks from what it measures of C{fn} (or C{chunksize}, if given). The iterables are
        read at once, as C{concurrent.futures} does. C{timeout} counts from this call: a result
        not there by then raises C{TimeoutError} (one already there is returned). C{progress=True}
        shows a live progress bar: tqdm's (C{tqdm.auto}: a widget in a notebook, a text bar on
        stderr in a terminal) if tqdm is installed, else srpy's own line on stderr (rate, ETA;
        see L{srpy.progress}). An exception raised by C{fn} is raised
        when its result is reached. Breaking out of the results (and dropping them), their
        C{close()}, a timeout or an exception cancels the rest and stops its chunks still running.
        """
        bundle = functions.pack(fn)
        single = len(iterables) == 1
        items = list(iterables[0]) if single else list(zip(*iterables))
        _check_chunksize(chunksize)
        bar = progress_bar(len(items)) if progress and items else None
        job = MapJob(bundle, "map1" if single else "map", items, chunksize, self.task_timeout, bar)
        return self._start_map(job, timeout)

    def starmap(self, fn: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: Optional[int] = None, timeout: Optional[float] = None) -> List[Any]:
        """
        C{[fn(*args) for args in iterable]} over the engines, as C{multiprocessing.Pool.starmap}
        (a list, once every result is in; C{chunksize} as for L{map}).
        """
        bundle = functions.pack(fn)
        _check_chunksize(chunksize)
        job = MapJob(bundle, "map", [tuple(args) for args in iterable], chunksize, self.task_timeout)
        return list(self._start_map(job, timeout))

    def imap(self, fn: Callable[..., Any], iterable: Iterable[Any], chunksize: Optional[int] = None, *,
             buffersize: Optional[int] = None, timeout: Optional[float] = None) -> MapIterator:
        """
        Lazy L{map} over one iterable, as C{multiprocessing.Pool.imap}: the iterable is read in
        this thread as the results are taken, at most C{buffersize} items ahead of them (default:
        L{IMAP_BUFFER<srpy.scheduler.IMAP_BUFFER>}, or two chunks per engine if more), so an
        endless iterable runs in bounded memory. Results come in order.
        """
        return self._imap(fn, iterable, chunksize, buffersize, timeout, ordered=True)

    def imap_unordered(self, fn: Callable[..., Any], iterable: Iterable[Any], chunksize: Optional[int] = None, *,
                       buffersize: Optional[int] = None, timeout: Optional[float] = None) -> MapIterator:
        """L{imap}, with the results in the order they complete (a chunk's results stay together, in order)."""
        return self._imap(fn, iterable, chunksize, buffersize, timeout, ordered=False)

    def _imap(self, fn: Callable[..., Any], iterable: Iterable[Any], chunksize: Optional[int],
              buffersize: Optional[int], timeout: Optional[float], ordered: bool) -> MapIterator:
        bundle = functions.pack(fn)
        _check_chunksize(chunksize)
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be >= 1")
        window = buffersize or max(scheduling.IMAP_BUFFER, 2 * len(self) * (chunksize or 1))
        job = MapJob(bundle, "map1", [], chunksize, self.task_timeout, source=iter(iterable),
                     window=window, ordered=ordered)
        return self._start_map(job, timeout)

    def _start_map(self, job: MapJob, timeout: Optional[float]) -> MapIterator:
        deadline = None if timeout is None else time.monotonic() + timeout
        scheduler = self._get_scheduler()
        scheduler.put_map(job)
        scheduler.feed(job)  # an imap starts on what it reads now
        return scheduling.results(job, deadline)

    def abort(self, future: concurrent.futures.Future) -> bool:
        """
        Stop the task behind C{future} (a future of this box): one that has not started is
        cancelled; one that runs is stopped on its engine, by the same mechanism as time limits,
        and its future fails with L{TaskAborted<srpy.errors.TaskAborted>} (short tasks sent in
        the same batch go back to the queue and run again). Waits (a few seconds at most) until
        the engine has stopped it. Returns True if the task was cancelled or stopped, False if it
        had ended (or ended meanwhile with its result), or is not this box's.
        """
        scheduler = self._scheduler
        return scheduler.abort(future) if scheduler is not None else False

    def abort_all(self) -> int:
        """
        Stop all of this box's work: queued tasks are cancelled, maps cut nothing more (their
        iterators raise L{TaskAborted<srpy.errors.TaskAborted>}), running calls are stopped on
        their engines (their futures fail with TaskAborted). The box takes new work afterwards.
        Returns how many tasks and chunks it ended.
        """
        scheduler = self._scheduler
        return scheduler.abort_all() if scheduler is not None else 0

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """
        Stop taking work. C{cancel_futures=True} cancels what has not started (queued tasks, the
        chunks of maps not cut yet); C{wait=True} waits for the rest. With C{wait=False} it
        returns at once, and the accepted work still runs (interpreter exit waits for it).
        """
        with self._lock:
            self._shut = True
            scheduler = self._scheduler
        if scheduler is not None:
            scheduler.shutdown(wait=wait, cancel_futures=cancel_futures)

    def stats(self) -> Dict[str, int]:
        """How many tasks (map items count one each) each engine completed: {uri: count}."""
        return self._scheduler.stats() if self._scheduler is not None else {}

    def close(self) -> None:
        """
        Shut the executor down and close the clients this box connected itself (from URIs; the
        engines keep running). L{PythonEngine}s given to the box, and the boxes that slicing,
        C{getFastest} or C{searchForEngine} make, leave them open: they belong to their giver.
        """
        self.shutdown(wait=True)
        with self._lock:
            mine = [e for e in self._engines + self._away if id(e) in self._owned]
        for engine in mine:
            engine.close()


def _check_chunksize(chunksize: Optional[int]) -> None:
    if chunksize is not None and chunksize < 1:
        raise ValueError("chunksize must be >= 1")


def _parallel(items: Sequence[Any], action: Callable[[Any], Any]) -> List[Any]:
    """C{[(item, action(item) or the exception it raised)]}, in a bounded number of threads at once."""
    return list(zip(items, fan_out(action, items, name="srpy-parallel")))


def _attempt(action: Callable[[Any], Any], item: Any) -> Any:
    """C{action(item)}, or the exception it raised."""
    try:
        return action(item)
    except Exception as exc:  # the caller sorts the failures
        return exc


def _raise_if_error(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


class MultiRunResult(dict):
    """The dict an C{mrp} call fills in as engines answer: {engine: result or exception}."""

    def __init__(self, engines: List[PythonEngine]) -> None:
        super().__init__()
        self.engines = engines
        self._done = threading.Event()
        self._left = len(engines)
        self._lock = threading.Lock()
        if not engines:
            self._done.set()

    def _fill(self, engine: PythonEngine, value: Any) -> None:
        with self._lock:
            self[engine] = value
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True once every engine has answered (blocks, no polling)."""
        return self._done.wait(timeout)


class _MultiRun:
    """C{box.mrs.method(...)} / C{box.mrp.method(...)}: call a PythonEngine method on every engine."""

    def __init__(self, box: EngBox, parallel: bool) -> None:
        self._box = box
        self._parallel = parallel

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_") or not callable(getattr(PythonEngine, method, None)):
            raise AttributeError("PythonEngine has no method %r" % method)

        def run(*args: Any, **kwargs: Any) -> Dict[PythonEngine, Any]:
            engines = self._box.getEngines()
            result = MultiRunResult(engines)
            if self._parallel:
                # the caller goes on at once; the result fills in as engines answer. One thread per
                # engine: code run on all engines at once may wait for each other (peer messages)
                start_thread(fan_out, lambda engine: _call_into(result, engine, method, args, kwargs), engines,
                             max(1, len(engines)), name="srpy-mrp")
            else:
                for engine in engines:
                    _call_into(result, engine, method, args, kwargs)
            return result

        run.__name__ = method
        return run


def _call_into(result: MultiRunResult, engine: PythonEngine, method: str, args: Any, kwargs: Any) -> None:
    try:
        value = getattr(engine, method)(*args, **kwargs)
    except Exception as exc:  # an engine's exception is its value, by SRPy's contract
        value = exc
    result._fill(engine, value)

