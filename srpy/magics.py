"""
srpy in IPython and Jupyter: C{%load_ext srpy}, then the magics ipyparallel users know.

::

    %srpy use box                 # a variable holding an EngBox (or a PythonEngine, or a list of them)
    %srpy use PYRO:... PYRO:...   # or URIs, or --file URIFILE, or --ns [GROUP]: a box of its own
    %srpy                         # the box: each engine's index and name
    %%px                          # the cell, on every engine at once
    %%px --targets 0,2 --noblock  # on some (indexes, slices: ::2; or --engines NAME,NAME)
    %px import numpy as np        # one statement
    %pxresult                     # the last run again (waits for one that runs: --noblock)
    %autopx                       # every cell runs on the engines, until %autopx again
    %pxconfig --targets 1: --no-stream   # the defaults of %px
    %push a b                     # the notebook's a and b, set on the engines
    %pull a                       # [a on engine 0, a on engine 1, ...]; %pull a b: a dict per engine

A run (L{CellRun}) sends the cell to each engine in a thread of its own and waits for them all
(C{--noblock}: returns the run at once). What an engine prints comes back as it happens (see
L{srpy.forwarding}); it is shown under the engine's label, C{index:name}: by default each line as
it comes, C{[0:engine-4242@host] text} (C{--stream}, as ipyparallel's C{%px}); with
C{--no-stream}, and for C{%pxresult}, grouped per engine once all are done::

    [stdout 0:engine-4242@host]
    text
    [stderr 1:engine-4243@host]
    ...
    [error 1:engine-4243@host]
    Traceback (most recent call last):
      File "<srpy exec ...>", line 2, in <module>
    ZeroDivisionError: division by zero
    Out[0:engine-4242@host]: 42

The value of the cell's last expression on each engine is shown as C{Out[label]: value} (not
when it is None, or when the cell ends with C{;}), and kept in the run's L{results<CellRun.results>}.
An engine that raises has its traceback (user code only) shown in its place, the other engines'
output and values are shown all the same, and then the magic raises L{CellError}, so that the
cell counts as failed. Ctrl-C (KeyboardInterrupt) while a run is waited for aborts it on every
engine still running it (each call carries an id, L{PythonEngine.abort}), shows what they
printed, and raises L{CellInterrupted}, a KeyboardInterrupt. Code that holds the interpreter
(one long C call, such as a C{time.sleep(60)}) is stopped as srpy stops it at a time limit: its
engine ends its process and a fresh one serves at the same URI, with an empty namespace.

Plain text, through C{print}: the same in a terminal's IPython and in Jupyter.
"""

import ast
import logging
import shlex
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.lib.pretty import pretty

from . import forwarding
from .box import EngBox
from .client import PythonEngine
from .errors import CellError, CellInterrupted, SerializationError, TaskAborted
from .fanout import fan_out, start_thread

log = logging.getLogger("srpy.magics")

#: seconds a run waits, after Ctrl-C, for its engines to stop the cell (one that must end its
#: process to stop it restarts within srpy.client.RESTART_WAIT)
ABORT_WAIT = 15.0
#: the magics' options that take a value; the others are flags
_VALUED = ("--targets", "--engines")
_FLAGS = ("--block", "--noblock", "--stream", "--no-stream")


def split_cell(source: str) -> Tuple[str, Optional[str]]:
    """
    C{(statements, last expression)} of a cell: the expression whose value is shown, if the
    cell ends with one (and not with C{;}), else None. The expression keeps its line number
    (leading newlines), so that a traceback points at the cell's own line. A cell that does
    not parse here goes whole (the engine reports the error).

    >>> split_cell("x = 1\\nx + 1")
    ('x = 1\\n', '\\nx + 1')
    >>> split_cell("x = 1; x")
    ('x = 1; ', 'x')
    >>> split_cell("print(1);")
    ('print(1);', None)
    >>> split_cell("for i in range(3):\\n    i")
    ('for i in range(3):\\n    i', None)
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source, None
    if not tree.body or not isinstance(tree.body[-1], ast.Expr) or source.rstrip().endswith(";"):
        return source, None
    node = tree.body[-1]
    lines = source.splitlines(True)
    first = lines[node.lineno - 1].encode("utf-8")
    body = "".join(lines[:node.lineno - 1]) + first[:node.col_offset].decode("utf-8")
    segment = ast.get_source_segment(source, node)
    if segment is None:  # pragma: no cover - the parser gave no positions
        return source, None
    return body, "\n" * (node.lineno - 1) + segment


class EngineRun:
    """
    One engine's part of a L{CellRun}.

    @ivar label: C{index:name}, how the engine is shown.
    @ivar lines: what it printed, C{(fd, line)} in order (fd 1 stdout, 2 stderr).
    @ivar value: the value of the cell's last expression (see L{has_value}).
    @ivar error: the exception the cell raised there (None if none).
    @ivar note: why a value is not shown (it cannot travel here), or None.
    """

    def __init__(self, index: int, engine: PythonEngine) -> None:
        self.index = index
        self.engine = engine
        self.label = "%d:%s" % (index, engine.name or engine.uri)
        self.call_id = PythonEngine.new_call_id()
        self.lines: List[Tuple[int, str]] = []
        self.value: Any = None
        self.has_value = False
        self.error: Optional[BaseException] = None
        self.note: Optional[str] = None
        self.started = False
        self.finished = threading.Event()


class CellRun:
    """
    A cell (or a statement) run on some engines of a box at once: what each printed, the value
    of its last expression, its error. L{start} starts it; L{wait} waits for it; L{show} prints it.
    """

    def __init__(self, targets: Sequence[Tuple[int, PythonEngine]], source: str,
                 stream: bool = False) -> None:
        """
        @param targets: C{(index in the box, engine)} of each engine to run it on.
        @param stream: print each line as it comes, prefixed with its engine's label.
        """
        self.source = source
        self.body, self.last = split_cell(source)
        self.parts = [EngineRun(index, engine) for index, engine in targets]
        self.stream = stream
        self.aborted = False
        self._printing = threading.Lock()

    # -- running --------------------------------------------------------------------------------

    def start(self) -> "CellRun":
        """Send the cell to every engine, each in a thread of its own (cells may wait for each other: peers)."""
        for part in self.parts:
            part.started = True  # before the thread: a Ctrl-C in between finds it started (abort waits for it)
            start_thread(self._run, part, name="srpy-px-%s" % part.label)
        return self

    def _run(self, part: EngineRun) -> None:
        view = part.engine.tagged(part.call_id)
        try:
            with forwarding.redirected(lambda fd, line: self._line(part, fd, line)):
                if self.body.strip():
                    view.exe(self.body)
                if self.last is not None:
                    try:
                        part.value = view.eval(self.last)
                    except SerializationError as exc:  # it ran; only its value cannot come here
                        part.note = str(exc).split(":")[0]
                    part.has_value = part.value is not None or part.note is not None
        except BaseException as exc:  # the engine's error (sys.exit() there too: RemoteSystemExit) is its part
            part.error = exc
        finally:
            part.finished.set()

    def _line(self, part: EngineRun, fd: int, line: str) -> None:
        part.lines.append((fd, line))
        if self.stream:
            with self._printing:
                _write(fd, "[%s] %s\n" % (part.label, line))

    def done(self) -> bool:
        """True once every engine has finished (or failed)."""
        return all(part.finished.is_set() for part in self.parts)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """
        Wait until every engine has finished, or C{timeout} s; True if they all have. Ctrl-C
        meanwhile (KeyboardInterrupt) aborts the run (L{abort}) and is raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for part in self.parts:
                while not part.finished.wait(0.1):  # short waits: Ctrl-C is seen at once
                    if deadline is not None and time.monotonic() >= deadline:
                        return False
        except KeyboardInterrupt:
            self.abort()
            raise
        return True

    def abort(self, wait: float = ABORT_WAIT) -> None:
        """Stop the cell on every engine still running it (their parts fail with TaskAborted); wait up to C{wait} s."""
        self.aborted = True
        for part in self.parts:
            if not part.started:  # Ctrl-C came while the run was being sent
                part.error = TaskAborted("the run was aborted before it was sent to this engine")
                part.finished.set()
        running = [part for part in self.parts if not part.finished.is_set()]
        for part, outcome in zip(running, fan_out(lambda p: p.engine.abort(p.call_id), running,
                                                  max(1, len(running)), name="srpy-px-abort")):
            if isinstance(outcome, Exception):
                log.warning("could not abort the cell on %s: %s", part.label, outcome)
        deadline = time.monotonic() + wait
        for part in running:
            part.finished.wait(max(0.0, deadline - time.monotonic()))

    # -- what it gave ---------------------------------------------------------------------------

    @property
    def results(self) -> Dict[str, Any]:
        """C{{label: value of the last expression}}, of the engines where it has one (not None) that came here."""
        return {part.label: part.value for part in self.parts if part.finished.is_set() and part.has_value
                and part.note is None}

    @property
    def errors(self) -> Dict[str, BaseException]:
        """C{{label: exception}} of the engines where the cell raised."""
        return {part.label: part.error for part in self.parts if part.finished.is_set() and part.error is not None}

    def output(self, label: str) -> str:
        """What the engine C{label} printed (stdout and stderr, as they came)."""
        for part in self.parts:
            if part.label == label:
                return "".join(line + "\n" for _, line in part.lines)
        raise KeyError(label)

    def show(self, grouped: bool = True) -> None:
        """
        Print the run, engine by engine in the box's order: what each printed (unless it was
        streamed: C{grouped=False}), its error, its value. An engine still running is said so.
        """
        for part in self.parts:
            if not part.finished.is_set():
                _write(2, "[running %s] (not done yet)\n" % part.label)
                continue
            if grouped:
                for fd, stream in ((1, "stdout"), (2, "stderr")):
                    text = "".join(line + "\n" for where, line in part.lines if where == fd)
                    if text:
                        _write(fd, "[%s %s]\n%s" % (stream, part.label, text))
            if part.error is not None:
                _write(2, "[error %s]\n%s" % (part.label, _traceback_text(part.error)))
            elif part.has_value:
                text = "<%s>" % part.note if part.note is not None else pretty(part.value)
                _write(1, "Out[%s]:%s%s\n" % (part.label, "\n" if "\n" in text else " ", text))

    def raise_errors(self, what: str = "the cell") -> None:
        """Raise L{CellError} if the cell raised on any engine."""
        errors = self.errors
        if errors:
            raise CellError(what, errors, len(self.parts))

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        if self.done() and self.errors:
            state = "failed on %d" % len(self.errors)
        return "<srpy cell on %d engine%s: %s>" % (len(self.parts), "" if len(self.parts) == 1 else "s", state)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _write(fd: int, text: str) -> None:
    """Write to sys.stdout or sys.stderr as they are now (IPython's, a notebook's, pytest's)."""
    stream = sys.stderr if fd == 2 else sys.stdout
    stream.write(text)
    stream.flush()


def _traceback_text(exc: BaseException) -> str:
    """The engine's traceback of C{exc} (user code only), or C{Type: message} for srpy's own errors."""
    text = getattr(exc, "remote_traceback", None)
    if not text:
        text = "%s: %s" % (type(exc).__name__, exc)
    return text if text.endswith("\n") else text + "\n"


def parse_options(line: str, valued: Iterable[str] = _VALUED,
                  flags: Iterable[str] = _FLAGS) -> Tuple[Dict[str, Any], str]:
    """
    The leading C{--options} of a magic's line, and the rest of it (the code, as typed).

    >>> parse_options("--targets 0,2 --noblock x = '--y'")
    ({'--targets': '0,2', '--noblock': True}, "x = '--y'")
    >>> parse_options("--targets=::2")
    ({'--targets': '::2'}, '')

    @raise UsageError: an option it does not know, one without its value.
    """
    valued, flags = tuple(valued), tuple(flags)
    options: Dict[str, Any] = {}
    rest = line.strip()
    while rest.startswith("--") and rest[2:3].isalpha():  # "--x" alone would be code, a double negation
        word, _, after = rest.partition(" ")
        name, equals, value = word.partition("=")
        if name in valued:
            if not equals:
                value, _, after = after.strip().partition(" ")
            if not value:
                raise UsageError("%s needs a value" % name)
            options[name] = value
        elif name in flags and not equals:
            options[name] = True
        else:
            raise UsageError("unknown option %s (known: %s)" % (name, ", ".join(valued + flags) or "none"))
        rest = after.strip()
    return options, rest


def select(engines: Sequence[PythonEngine], targets: Optional[str] = None,
           names: Optional[str] = None) -> List[Tuple[int, PythonEngine]]:
    """
    C{(index, engine)} of the engines C{targets} picks (C{"all"}, or indexes and slices separated
    by commas: C{"0,2"}, C{"1:"}, C{"::2"}, C{"-1"}), or those C{names} names (names or URIs,
    separated by commas); all of them if neither.

    @raise UsageError: an index the box does not have, a name none of its engines has.
    """
    indexed = list(enumerate(engines))
    if targets and names:
        raise UsageError("--targets or --engines, not both")
    if names:
        wanted = [name.strip() for name in names.split(",") if name.strip()]
        unknown = [name for name in wanted if not any(name in (e.name, e.uri) for e in engines)]
        if unknown:
            raise UsageError("no engine of the box is named %s (they are: %s)"
                             % (", ".join(unknown), ", ".join(e.name for e in engines) or "none"))
        return [(i, e) for i, e in indexed if e.name in wanted or e.uri in wanted]
    if not targets or targets.strip() == "all":
        return indexed
    chosen: List[int] = []
    for item in targets.split(","):
        item = item.strip()
        try:
            if ":" in item:
                bounds = [int(part) if part.strip() else None for part in item.split(":")]
                if len(bounds) > 3:
                    raise ValueError(item)
                chosen.extend(range(len(engines))[slice(*bounds)])
            else:
                index = int(item)
                if not -len(engines) <= index < len(engines):
                    raise UsageError("target %d: the box has %d engine%s" % (index, len(engines),
                                                                             "" if len(engines) == 1 else "s"))
                chosen.append(index % len(engines))
        except ValueError:
            raise UsageError("targets are indexes and slices separated by commas (0,2 or 1: or ::2), not %r"
                             % targets) from None
    seen: List[int] = []
    for index in chosen:
        if index not in seen:
            seen.append(index)
    return [indexed[i] for i in seen]


@magics_class
class SrpyMagics(Magics):
    """
    The magics of C{%load_ext srpy} (see L{srpy.magics}), and their state: the box, the
    defaults of C{%pxconfig}, the last run, C{%autopx}.

    @ivar box: the L{EngBox} the magics run on (None until C{%srpy use}).
    @ivar last: the last L{CellRun} (C{%pxresult} shows it).
    """

    shell: Any  # IPython's InteractiveShell (typed None in IPython's base class)
    magics: Any  # {kind: {magic name: method name}}, filled in by @magics_class

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.box: Optional[EngBox] = None
        self._owned = False  # the box was made here (from URIs, a file, a name server): closed here
        self.defaults: Dict[str, Any] = {"--targets": None, "--engines": None, "block": True, "stream": True}
        self.last: Optional[CellRun] = None
        self.autopx = False

    # -- the box ---------------------------------------------------------------------------------

    @line_magic("srpy")
    @no_var_expand
    def srpy(self, line: str) -> Any:
        """
        C{%srpy use BOX}: the box the magics run on: a variable (or expression) holding an
        EngBox, a PythonEngine or a list of them; or URIs; or C{--file URIFILE}; or C{--ns
        [--ns-host HOST] [--ns-port PORT] [GROUP]} (the engines of a Pyro5 name server, of
        C{GROUP} if given). C{%srpy}: the box and its engines.
        C{%srpy push ...} and C{%srpy pull ...}: as C{%push} and C{%pull}.
        """
        command, _, rest = line.strip().partition(" ")
        if command in ("", "info"):
            return self._describe()
        if command == "use":
            return self._use(rest.strip())
        if command == "push":
            return self.push(rest)
        if command == "pull":
            return self.pull(rest)
        raise UsageError("%%srpy use BOX | %%srpy | %%srpy push NAMES | %%srpy pull NAMES, not %r" % line)

    def use(self, box: EngBox, owned: bool = False) -> None:
        """Run the magics on C{box} from now on; C{owned}: close it when another replaces it, or on unloading."""
        previous, was_owned = self.box, self._owned
        self.box, self._owned = box, owned
        if was_owned and previous is not None and previous is not box:
            previous.close()

    def _use(self, text: str) -> None:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            raise UsageError("%%srpy use: %s" % exc) from None
        if not words:
            raise UsageError("%srpy use BOX (a variable holding an EngBox), URIs, --file URIFILE or --ns [GROUP]")
        if words[0] == "--file":
            if len(words) != 2:
                raise UsageError("%srpy use --file URIFILE")
            try:
                with open(words[1], encoding="utf-8") as handle:
                    uris = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
            except OSError as exc:
                raise UsageError("%%srpy use --file: %s" % exc) from None
            self.use(EngBox(uris), owned=True)
        elif words[0] == "--ns":
            options, group = parse_options(" ".join(words[1:]), valued=("--ns-host", "--ns-port"), flags=())
            if len(group.split()) > 1 or not options.get("--ns-port", "0").isdigit():
                raise UsageError("%srpy use --ns [--ns-host HOST] [--ns-port PORT] [GROUP]")
            port = options.get("--ns-port")
            self.use(EngBox.discover(group or None, ns_host=options.get("--ns-host"),
                                     ns_port=int(port) if port else None), owned=True)
        elif all(word.startswith("PYRO:") for word in words):
            self.use(EngBox(words), owned=True)
        else:
            try:
                value = self.shell.ev(text)
            except Exception as exc:
                raise UsageError("%%srpy use %s: %s: %s (give a variable holding an EngBox, URIs, --file URIFILE "
                                 "or --ns [GROUP])" % (text, type(exc).__name__, exc)) from None
            if isinstance(value, EngBox):
                self.use(value)
            elif isinstance(value, (PythonEngine, str)):
                self.use(EngBox([value]), owned=True)
            elif isinstance(value, (list, tuple)) and all(isinstance(v, (PythonEngine, str)) for v in value):
                self.use(EngBox(list(value)), owned=True)
            else:
                raise UsageError("%%srpy use %s: that is a %s, not an EngBox, a PythonEngine or a list of them"
                                 % (text, type(value).__name__))
        print("srpy: %s" % self._summary())

    def _summary(self) -> str:
        box = self._box()
        return "%d engine%s: %s" % (len(box), "" if len(box) == 1 else "s",
                                    ", ".join("%d:%s" % (i, e.name or e.uri) for i, e in enumerate(box)))

    def _describe(self) -> None:
        if self.box is None:
            print("srpy: no box yet (%srpy use BOX)")
            return
        print("srpy: %s" % self._summary())
        for index, engine in enumerate(self.box):
            print("  %d:%s  %s" % (index, engine.name, engine.uri))
        if self.defaults["--targets"] or self.defaults["--engines"]:
            print("  %%px runs on: %s" % (self.defaults["--targets"] or self.defaults["--engines"]))

    def _box(self) -> EngBox:
        if self.box is None:
            raise UsageError("no box to run on: %srpy use BOX first (a variable holding an EngBox, URIs, "
                             "--file URIFILE or --ns [GROUP])")
        return self.box

    def _targets(self, options: Dict[str, Any]) -> List[Tuple[int, PythonEngine]]:
        targets, names = options.get("--targets"), options.get("--engines")
        if targets is None and names is None:
            targets, names = self.defaults["--targets"], self.defaults["--engines"]
        chosen = select(self._box().getEngines(), targets, names)
        if not chosen:
            raise UsageError("no engine to run on (the box has %d; targets: %s)" % (len(self._box()),
                                                                                      targets or names or "all"))
        return chosen

    # -- running code ------------------------------------------------------------------------------

    @line_cell_magic("px")
    @no_var_expand
    def px(self, line: str, cell: Optional[str] = None) -> Optional[CellRun]:
        """
        C{%%px [--targets 0,2 | --engines NAME,NAME] [--block | --noblock] [--stream | --no-stream]}:
        run the cell on the box's engines (or those chosen), each one's output and errors shown
        under its name; C{%px [options] statement}: one statement. With C{--noblock}, returns
        the run at once (C{%pxresult} shows it). See L{srpy.magics}.
        """
        options, code = parse_options(line)
        if cell is not None:
            if code:
                raise UsageError("%%%%px takes options only on its line, not %r" % code)
            code = cell
        if not code.strip():
            return None
        return self._run(code, options)

    def _run(self, code: str, options: Dict[str, Any]) -> Optional[CellRun]:
        block = self._choice(options, "--block", "--noblock", "block")
        stream = block and self._choice(options, "--stream", "--no-stream", "stream")
        run = CellRun(self._targets(options), code, stream=stream)
        self.last = run
        if not block:
            return run.start()
        self._wait(run, grouped=not stream, start=True)
        return None

    @staticmethod
    def _wait(run: CellRun, grouped: bool, start: bool = False) -> None:
        """
        (C{start} and) wait for C{run}, show it, raise L{CellError} if it failed; Ctrl-C aborts
        it, shows what it printed, and is raised.
        """
        try:
            if start:  # in here: a Ctrl-C that comes as the run starts aborts it too
                run.start()
            run.wait()
        except KeyboardInterrupt:
            if not run.aborted:
                run.abort()
            run.show(grouped=grouped)
            stopped = sum(isinstance(part.error, TaskAborted) for part in run.parts)
            raise CellInterrupted("the cell was aborted on %d of %d engine%s" % (
                stopped, len(run.parts), "" if len(run.parts) == 1 else "s")) from None
        run.show(grouped=grouped)
        run.raise_errors()

    def _choice(self, options: Dict[str, Any], yes: str, no: str, default: str) -> bool:
        if options.get(yes) and options.get(no):
            raise UsageError("%s or %s, not both" % (yes, no))
        if options.get(yes) or options.get(no):
            return bool(options.get(yes))
        return bool(self.defaults[default])

    @line_magic("pxresult")
    def pxresult(self, line: str = "") -> None:
        """
        C{%pxresult}: show the last run of C{%px}, grouped per engine (waits for one still
        running; Ctrl-C aborts it).
        """
        if line.strip():
            raise UsageError("%pxresult takes no arguments")
        if self.last is None:
            raise UsageError("no %px run yet")
        self._wait(self.last, grouped=True)

    @line_magic("pxconfig")
    def pxconfig(self, line: str) -> None:
        """
        C{%pxconfig [--targets SPEC | --engines NAMES] [--block | --noblock] [--stream | --no-stream]}:
        the defaults of C{%px} and C{%%px} (C{--targets all}: every engine again).
        """
        options, rest = parse_options(line)
        if rest:
            raise UsageError("%%pxconfig takes options only, not %r" % rest)
        if "--targets" in options or "--engines" in options:
            if self.box is not None:
                select(self.box.getEngines(), options.get("--targets"), options.get("--engines"))  # checked now
            targets = options.get("--targets")
            self.defaults["--targets"] = None if targets == "all" else targets
            self.defaults["--engines"] = options.get("--engines")
        for yes, no, key in (("--block", "--noblock", "block"), ("--stream", "--no-stream", "stream")):
            self.defaults[key] = self._choice(options, yes, no, key)

    @line_magic("autopx")
    def autopx(self, line: str = "") -> None:
        """
        C{%autopx}: from now on every cell runs on the engines, as if it began with C{%%px}
        (with C{%pxconfig}'s defaults), except cells that begin with a magic (C{%...}); C{%autopx}
        again ends it.
        """
        if line.strip():
            raise UsageError("%autopx takes no arguments (%pxconfig sets what %px does)")
        transforms = self.shell.input_transformers_cleanup
        if self.autopx:
            self._stop_autopx()
            print("%autopx disabled")
        else:
            self._box()
            transforms.append(self._autopx_transform)
            self.autopx = True
            print("%autopx enabled: cells run on the engines; %autopx again to stop")

    def _stop_autopx(self) -> None:
        transforms = self.shell.input_transformers_cleanup
        while self._autopx_transform in transforms:
            transforms.remove(self._autopx_transform)
        self.autopx = False

    def _autopx_transform(self, lines: List[str]) -> List[str]:
        """IPython's input transformer of C{%autopx}: a cell that is not a magic gets a C{%%px} line."""
        if not "".join(lines).strip() or lines[0].lstrip().startswith("%"):
            return lines
        return ["%%px\n"] + lines

    _autopx_transform.has_side_effects = True  # type: ignore[attr-defined]  # not for IPython's completeness check

    # -- variables -------------------------------------------------------------------------------

    @line_magic("push")
    @no_var_expand
    def push(self, line: str) -> None:
        """
        C{%push [--targets SPEC | --engines NAMES] a b ...}: set the notebook's variables C{a},
        C{b} on the engines (all, or those chosen). Names only; see L{EngBox.push} from Python.
        """
        options, rest = parse_options(line, flags=())
        names = rest.split()
        if not names:
            raise UsageError("%push NAME [NAME ...]")
        missing = [name for name in names if name not in self.shell.user_ns]
        if missing:
            raise UsageError("not defined here: %s" % ", ".join(missing))
        variables = {name: self.shell.user_ns[name] for name in names}
        self._each("%push", self._targets(options), lambda engine: engine.set(**variables))

    @line_magic("pull")
    @no_var_expand
    def pull(self, line: str) -> List[Any]:
        """
        C{%pull [--targets SPEC | --engines NAMES] a [b ...]}: the engines' values, in the box's
        order: for one name, a list of its value on each engine (C{xs = %pull x}); for several,
        a C{{name: value}} dict per engine. See L{EngBox.pull} from Python.
        """
        options, rest = parse_options(line, flags=())
        names = rest.split()
        if not names:
            raise UsageError("%pull NAME [NAME ...]")
        query: Any = names[0] if len(names) == 1 else names
        return self._each("%pull", self._targets(options), lambda engine: engine.get(query))

    def _each(self, what: str, targets: List[Tuple[int, PythonEngine]],
              action: Callable[[PythonEngine], Any]) -> List[Any]:
        """C{action(engine)} on each target at once; their results, or L{CellError} naming those that failed."""
        outcomes = fan_out(action, [engine for _, engine in targets], max(1, len(targets)), name="srpy-px-vars")
        failed = {"%d:%s" % (index, engine.name or engine.uri): outcome
                  for (index, engine), outcome in zip(targets, outcomes) if isinstance(outcome, Exception)}
        if failed:
            raise CellError(what, failed, len(targets))
        return outcomes

    # -- unloading -------------------------------------------------------------------------------

    def unload(self) -> None:
        """Undo L{load_ipython_extension}: the magics, C{%autopx}'s transformer, a box made here (closed)."""
        self._stop_autopx()
        registered = self.shell.magics_manager.magics
        for kind, names in self.magics.items():
            for name in names:
                if getattr(registered[kind].get(name), "__self__", None) is self:
                    del registered[kind][name]
        self.shell.magics_manager.registry.pop(type(self).__name__, None)
        if self._owned and self.box is not None:
            self.box.close()
        self.box, self._owned = None, False


#: the magics loaded in each IPython shell
_loaded: "weakref.WeakKeyDictionary[Any, SrpyMagics]" = weakref.WeakKeyDictionary()


def load_ipython_extension(ipython: Any) -> None:
    """What C{%load_ext srpy} calls: register the magics in C{ipython} (an InteractiveShell)."""
    if ipython in _loaded:
        return
    magics = SrpyMagics(ipython)
    ipython.register_magics(magics)
    _loaded[ipython] = magics


def unload_ipython_extension(ipython: Any) -> None:
    """What C{%unload_ext srpy} calls: remove the magics, and close a box they made."""
    magics = _loaded.pop(ipython, None)
    if magics is not None:
        magics.unload()
