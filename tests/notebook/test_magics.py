"""
The IPython extension (C{%load_ext srpy}, srpy/magics.py), driven through IPython's own
InteractiveShell against real engines: each engine's output under its name, errors, targets,
push and pull, the line magic, %pxresult, %autopx, Ctrl-C, unloading.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy
import pytest

pytest.importorskip("IPython")

from IPython.core.error import UsageError  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402

import srpy  # noqa: E402
from srpy import magics  # noqa: E402

from conftest import ROOT, die_with_parent  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """IPython's shell, as a terminal's or a notebook's kernel runs it, with the extension loaded."""
    os.environ["IPYTHONDIR"] = str(tmp_path_factory.mktemp("ipython"))  # no profile in the user's home
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    InteractiveShell.clear_instance()
    ipython = InteractiveShell.instance(config=config)
    result = ipython.run_cell("%load_ext srpy")
    assert result.success, result.error_in_exec
    yield ipython
    ipython.run_cell("%unload_ext srpy")
    InteractiveShell.clear_instance()


@pytest.fixture(scope="module")
def box(pair, shell):
    """The pair of engines as the notebook's variable C{box}, chosen with C{%srpy use box}."""
    engines = srpy.EngBox(pair)
    shell.user_ns["box"] = engines
    shell.run_line_magic("srpy", "use box")
    yield engines
    engines.close()


@pytest.fixture
def ipy(shell, box, capsys):
    """The shell with the box chosen, %pxconfig's defaults back, and nothing captured yet."""
    shell.run_line_magic("pxconfig", "--targets all --block --stream")
    capsys.readouterr()
    return shell


def labels(box):
    return ["%d:%s" % (index, engine.name) for index, engine in enumerate(box)]


def test_each_engines_output_appears_under_its_name(ipy, box, capsys):
    ipy.run_cell_magic("px", "", "import os, sys\nprint('MARK-out', os.getpid())\nprint('MARK-err', file=sys.stderr)\n")
    out, err = capsys.readouterr()
    for label in labels(box):
        lines = [line for line in out.splitlines() if line.startswith("[%s] MARK-out" % label)]
        assert len(lines) == 1, out
        assert "[%s] MARK-err" % label in err.splitlines(), err
    assert "(%s) MARK-out" % box[0].name not in out, "shown once, under the label, not also as forwarded: %s" % out
    assert len(set(re.findall(r"MARK-out (\d+)", out))) == 2, "two engines, two processes: %s" % out


def test_the_magics_show_output_of_clients_that_do_not_forward(ipy, box, capsys):
    for engine in box:
        engine.forward_output = False  # keeps plain calls' lines in the engine's log; %px shows them still
    try:
        ipy.run_line_magic("px", "print('MARK-quiet-client')")
        out = capsys.readouterr().out
        assert all("[%s] MARK-quiet-client" % label in out for label in labels(box)), out
        box[0].exe("print('MARK-plain-call')")
        assert "MARK-plain-call" not in capsys.readouterr().out
    finally:
        for engine in box:
            engine.forward_output = True


def test_grouped_output_and_the_last_expression_per_engine(ipy, box, capsys):
    ipy.run_cell_magic("px", "--no-stream", "import os\nprint('MARK-grouped')\nprint('MARK-second')\n40 + 2")
    out, _ = capsys.readouterr()
    for label in labels(box):
        assert "[stdout %s]\nMARK-grouped\nMARK-second\n" % label in out, out
        assert "Out[%s]: 42" % label in out, out
    first, second = labels(box)
    assert out.index("[stdout %s]" % first) < out.index("Out[%s]" % first) < out.index("[stdout %s]" % second)
    ipy.run_cell_magic("px", "--no-stream", "x = 1\nx;")  # a final ; shows no value, as in IPython
    assert "Out[" not in capsys.readouterr().out


def test_a_value_that_cannot_travel_is_named_not_an_error(ipy, box, capsys):
    ipy.run_cell_magic("px", "", "import sys\nran = True\nsys")
    out = capsys.readouterr().out
    assert all("Out[%s]: <cannot send a value of type 'module'" % label in out for label in labels(box)), out
    assert ipy.run_line_magic("pull", "ran") == [True, True]


def test_an_error_on_one_engine_shows_its_traceback_and_the_others_output(ipy, box, capsys):
    ipy.run_line_magic("px", "--targets 0 fail = False")
    ipy.run_line_magic("px", "--targets 1 fail = True")
    cell = "print('MARK-before')\nif fail:\n    1 / 0\nprint('MARK-after')\n'done'"
    with pytest.raises(srpy.CellError) as info:
        ipy.run_cell_magic("px", "", cell)
    out, err = capsys.readouterr()
    ok, failing = labels(box)
    assert "[%s] MARK-before" % ok in out and "[%s] MARK-after" % ok in out, out
    assert "[%s] MARK-before" % failing in out and "[%s] MARK-after" % failing not in out, out
    assert "Out[%s]: 'done'" % ok in out and "Out[%s]" % failing not in out, out
    error = err[err.index("[error %s]" % failing):]
    assert "Traceback (most recent call last)" in error and "ZeroDivisionError: division by zero" in error, err
    assert 'line 3, in <module>' in error and "1 / 0" in error, "the cell's own line: %s" % error
    assert os.path.join("srpy", "") not in error, "user code only, no srpy frames: %s" % error
    assert list(info.value.errors) == [failing]
    assert isinstance(info.value.errors[failing], ZeroDivisionError)
    with pytest.raises(srpy.CellError) as info:  # sys.exit() on an engine is its error, the engine serves on
        ipy.run_line_magic("px", "--targets 1 import sys; sys.exit(3)")
    assert isinstance(info.value.errors[failing], SystemExit) and "[error %s]" % failing in capsys.readouterr().err
    # through a cell as a notebook runs it: the cell fails, with one line of its own (the tracebacks are above)
    result = ipy.run_cell("%%px\nif fail:\n    1 / 0\n")
    assert isinstance(result.error_in_exec, srpy.CellError)
    out, err = capsys.readouterr()
    shown = out + err
    assert "CellError: the cell failed on 1 of 2 engines: %s (ZeroDivisionError" % failing in shown, shown
    assert "magics.py" not in shown, "the magic's own frames are not shown: %s" % shown


def test_targets_and_engines_choose_a_subset(ipy, box, capsys):
    first, second = labels(box)
    ipy.run_line_magic("px", "--targets 1 print('MARK-one')")
    out = capsys.readouterr().out
    assert "[%s] MARK-one" % second in out and first not in out, out
    ipy.run_line_magic("px", "--engines %s print('MARK-named')" % box[0].name)
    out = capsys.readouterr().out
    assert "[%s] MARK-named" % first in out and second not in out, out
    ipy.run_line_magic("px", "--targets ::-1 print('MARK-both')")
    out = capsys.readouterr().out
    assert "[%s] MARK-both" % first in out and "[%s] MARK-both" % second in out, out
    ipy.run_line_magic("pxconfig", "--targets -1")
    ipy.run_line_magic("px", "print('MARK-default')")
    out = capsys.readouterr().out
    assert "[%s] MARK-default" % second in out and first not in out, out
    ipy.run_line_magic("pxconfig", "--targets all")
    for bad in ("--targets 5 1", "--targets x 1", "--engines nobody 1", "--targets 0 --engines x 1", "--nope 1"):
        with pytest.raises(UsageError):
            ipy.run_line_magic("px", bad)


def test_the_line_magic_runs_one_statement_as_typed(ipy, box, capsys):
    ipy.run_line_magic("px", "d = {'k': 'a b', 'n': 21}")  # no {var} expansion, quotes kept
    ipy.run_line_magic("px", "d['n'] * 2")
    out = capsys.readouterr().out
    assert all("Out[%s]: 42" % label in out for label in labels(box)), out
    assert ipy.run_line_magic("pull", "d") == [{"k": "a b", "n": 21}] * 2
    result = ipy.run_cell("%px print('MARK-cell', d['k'])")
    assert result.success
    out = capsys.readouterr().out
    assert all("[%s] MARK-cell a b" % label in out for label in labels(box)), out


def test_push_and_pull_round_trip_numpy_too(ipy, box, capsys):
    ipy.user_ns["arr"] = numpy.arange(12.0).reshape(3, 4)
    ipy.user_ns["label"] = "from the notebook"
    ipy.run_line_magic("push", "arr label")
    ipy.run_line_magic("px", "arr2 = arr * 2")
    doubled = ipy.run_line_magic("pull", "arr2")
    assert len(doubled) == 2 and all(numpy.array_equal(a, numpy.arange(12.0).reshape(3, 4) * 2) for a in doubled)
    both = ipy.run_line_magic("pull", "arr label")
    assert [sorted(d) for d in both] == [["arr", "label"]] * 2 and both[1]["label"] == "from the notebook"
    ipy.user_ns["only"] = 7
    ipy.run_line_magic("push", "--targets 1 only")
    assert ipy.run_line_magic("pull", "--targets 1 only") == [7]
    with pytest.raises(srpy.CellError) as info:
        ipy.run_line_magic("pull", "only")
    assert list(info.value.errors) == [labels(box)[0]] and isinstance(info.value.errors[labels(box)[0]], KeyError)
    assert ipy.run_line_magic("srpy", "pull --targets 1 only") == [7], "%srpy pull is %pull"
    with pytest.raises(UsageError):
        ipy.run_line_magic("push", "not_defined_here")
    # the Python API: the box's push and pull
    box.push({"api": numpy.ones(3)})
    assert all(numpy.array_equal(v, numpy.ones(3)) for v in box.pull("api"))
    assert box[[1]].pull(["api", "only"])[0]["only"] == 7


def test_noblock_and_pxresult(ipy, box, capsys):
    run = ipy.run_line_magic("px", "--noblock import time; time.sleep(0.3); print('MARK-late'); 6 * 7")
    assert isinstance(run, magics.CellRun) and "srpy cell on 2 engines" in repr(run)
    assert capsys.readouterr().out == "", "nothing is shown until %pxresult"
    ipy.run_line_magic("pxresult", "")
    out = capsys.readouterr().out
    for label in labels(box):
        assert "[stdout %s]\nMARK-late\n" % label in out and "Out[%s]: 42" % label in out, out
    assert run.done() and list(run.results.values()) == [42, 42]
    assert run.output(labels(box)[0]) == "MARK-late\n"


def test_autopx_runs_every_cell_on_the_engines_until_turned_off(ipy, box, capsys):
    ipy.run_cell("%autopx")
    try:
        ipy.run_cell("import os\nauto = os.getpid()\nprint('MARK-auto')")
        ipy.run_cell("%who_ls")  # a cell that begins with a magic stays here
    finally:
        ipy.run_cell("%autopx")
    out = capsys.readouterr().out
    assert all("[%s] MARK-auto" % label in out for label in labels(box)), out
    assert "auto" not in ipy.user_ns
    assert ipy.run_line_magic("pull", "auto") != [None, None]
    ipy.run_cell("local_only = 1")
    assert ipy.user_ns["local_only"] == 1


def test_a_box_from_uris_or_a_file(ipy, box, pair, tmp_path, capsys):
    try:
        ipy.run_line_magic("srpy", "use %s" % " ".join(pair))
        made = magics._loaded[ipy].box
        assert made is not box and len(made) == 2
        uri_file = tmp_path / "uris.txt"
        uri_file.write_text("# engines\n%s\n" % pair[1])
        ipy.run_line_magic("srpy", "use --file %s" % uri_file)
        with pytest.raises(RuntimeError):  # the box made from URIs was closed when replaced
            made.submit(abs, 1)
        assert [engine.uri for engine in magics._loaded[ipy].box] == [pair[1]]
        ipy.run_line_magic("srpy", "")
        assert "1 engine: 0:%s" % box[1].name in capsys.readouterr().out
        for bad in ("use", "use no_such_variable", "use 42", "use --file /no/such/file", "frobnicate"):
            with pytest.raises(UsageError):
                ipy.run_line_magic("srpy", bad)
    finally:
        ipy.run_line_magic("srpy", "use box")
    assert magics._loaded[ipy].box is box


def test_a_box_from_a_name_server(ipy, box, start_launcher, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = start_launcher(["-n", "2", "--start-ns", "--ns-port", str(port), "--group", "blue"], count=2)
    try:
        ipy.run_line_magic("srpy", "use --ns --ns-port %d blue" % port)
        assert sorted(engine.uri for engine in magics._loaded[ipy].box) == sorted(launcher.uris)
        ipy.run_line_magic("px", "print('MARK-ns')")
        assert capsys.readouterr().out.count("MARK-ns") == 2
        with pytest.raises(UsageError):
            ipy.run_line_magic("srpy", "use --ns --ns-port x")
    finally:
        ipy.run_line_magic("srpy", "use box")


def test_unloading_removes_the_magics_and_closes_only_its_own_box(shell, box, pair, capsys):
    shell.run_line_magic("srpy", "use %s" % pair[0])
    own = magics._loaded[shell].box
    shell.run_cell("%autopx")
    shell.run_cell("%unload_ext srpy")
    try:
        for name in ("px", "pxresult", "autopx", "pxconfig", "push", "pull", "srpy"):
            assert shell.find_line_magic(name) is None, name
        assert shell.find_cell_magic("px") is None
        assert shell.run_cell("unloaded = 1").success and shell.user_ns["unloaded"] == 1, "%autopx is gone too"
        with pytest.raises(RuntimeError):
            own.submit(abs, 1)
        assert box.submit(abs, -3).result(timeout=30) == 3, "the notebook's own box stays open"
    finally:
        shell.run_cell("%load_ext srpy")
        shell.run_line_magic("srpy", "use box")
    capsys.readouterr()
    shell.run_line_magic("px", "print('MARK-again')")
    assert "MARK-again" in capsys.readouterr().out


def test_no_box_is_a_usage_error(pair, tmp_path):
    """A fresh extension has no box: %px says what to do (in a shell of its own, not the module's)."""
    script = textwrap.dedent("""
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
        config = Config(); config.HistoryManager.hist_file = ":memory:"
        shell = InteractiveShell.instance(config=config)
        shell.run_cell("%load_ext srpy")
        shell.run_cell("%px 1")
        """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env=dict(os.environ, IPYTHONDIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "UsageError: no box to run on: %srpy use BOX first" in result.stdout + result.stderr


CTRL_C_SCRIPT = """
import faulthandler, sys, time
faulthandler.dump_traceback_later(50)  # a hang shows where it is
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config
import srpy
config = Config(); config.HistoryManager.hist_file = ":memory:"; config.InteractiveShell.colors = "NoColor"
shell = InteractiveShell.instance(config=config)
shell.user_ns["box"] = box = srpy.EngBox(sys.argv[1:])
shell.run_cell("%load_ext srpy")
shell.run_cell("%srpy use box")
shell.run_cell("%px kept = 'still here'")
started = time.monotonic()
cell = ("import time\\nprint('MARK-started', flush=True)\\nfor _ in range(600):\\n    time.sleep(0.1)\\n"
        "print('MARK-' + 'never')")
result = shell.run_cell("%%px\\n" + cell)
print("INTERRUPTED", type(result.error_in_exec).__name__, round(time.monotonic() - started, 1), flush=True)
print("BUSY", [engine.isBusy() for engine in box], flush=True)
print("KEPT", shell.run_line_magic("pull", "kept"), flush=True)
box.close()
"""


def test_ctrl_c_aborts_the_cell_on_the_engines(pair, tmp_path):
    process = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT] + list(pair), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, cwd=ROOT,
                               env=dict(os.environ, IPYTHONDIR=str(tmp_path)), preexec_fn=die_with_parent)
    try:
        seen = []
        deadline = time.monotonic() + 60
        while sum("MARK-started" in line for line in seen) < 2:
            assert time.monotonic() < deadline, "the cell never started on both engines: %s" % seen
            line = process.stdout.readline()
            assert line, "the script ended early: %s" % seen
            seen.append(line)
        process.send_signal(signal.SIGINT)  # Ctrl-C, as a terminal sends it to IPython
        try:
            out, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
            pytest.fail("the script did not end after Ctrl-C: %s" % ("".join(seen) + out))
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    out = "".join(seen) + out
    assert process.returncode == 0, out
    interrupted = re.search(r"INTERRUPTED (\w+) ([\d.]+)", out)
    assert interrupted and interrupted.group(1) == "CellInterrupted", out
    assert "KeyboardInterrupt: the cell was aborted on 2 of 2 engines" in out, out
    assert "magics.py" not in out, "Ctrl-C shows no frames of the magic's own: %s" % out
    assert float(interrupted.group(2)) < 50, "the engines stopped the cell, not its end: %s" % out
    assert "MARK-never" not in out and "TaskAborted" in out, "each engine shows it was aborted: %s" % out
    assert "BUSY [False, False]" in out, out
    assert "KEPT ['still here', 'still here']" in out, "the engines keep their namespaces: %s" % out
