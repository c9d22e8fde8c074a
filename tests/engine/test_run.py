"""Scripts run as __main__ on engines: eng.run, box.run and `srpyapp run` (argv, output, exit status, tracebacks)."""

import os
import subprocess
import sys
import textwrap

import pytest

import srpy
from srpy import scripts

from conftest import ROOT, SRPYAPP

pytestmark = pytest.mark.timeout(90)


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


@pytest.fixture
def quiet(engine):
    """The module's engine, its output kept in its log (these tests read run's result, not forwarded lines)."""
    engine.forward_output = False
    return engine


def test_run_gives_argv_name_file_and_output(quiet, tmp_path):
    script = write(tmp_path, "show.py", """
        import sys
        print("argv", sys.argv)
        print("name", __name__, "file", __file__)
        print("to stderr", file=sys.stderr)
        sys.stdout.write("no newline at the end")
    """)
    result = quiet.run(script, "a b", 2, 0.5)
    assert result["exit"] == 0, result
    assert result["stdout"] == ("argv %r\nname __main__ file %s\nno newline at the end"
                                % ([script, "a b", "2", "0.5"], script))
    assert result["stderr"] == "to stderr\n"


@pytest.mark.parametrize("ending,code,stderr", [
    ("sys.exit()", 0, ""),
    ("sys.exit(None)", 0, ""),
    ("sys.exit(0)", 0, ""),
    ("sys.exit(3)", 3, ""),
    ("raise SystemExit(7)", 7, ""),
    ("sys.exit('bad input: no file')", 1, "bad input: no file\n"),
    ("pass", 0, ""),
])
def test_exit_status_follows_python(quiet, tmp_path, ending, code, stderr):
    script = write(tmp_path, "ending.py", "import sys\nprint('ran')\n%s\nprint('not reached')\n" % ending)
    result = quiet.run(script)
    assert (result["exit"], result["stderr"]) == (code, stderr), result
    assert result["stdout"].startswith("ran\n")
    assert ("not reached" in result["stdout"]) == (ending == "pass")


def test_an_exception_gives_exit_1_and_the_user_traceback(quiet, tmp_path):
    script = write(tmp_path, "fails.py", """
        def parse(text):
            return int(text)

        print("before")
        parse("not a number")
    """)
    result = quiet.run(script)
    assert result["exit"] == 1 and result["stdout"] == "before\n"
    err = result["stderr"]
    assert err.startswith("Traceback (most recent call last):\n"), err
    assert 'File "%s", line 6, in <module>' % script in err and 'parse("not a number")' in err
    assert "return int(text)" in err, "the script's lines are shown, from its text"
    assert err.rstrip().endswith("ValueError: invalid literal for int() with base 10: 'not a number'")
    assert "srpy" not in err.replace(script, ""), "only user code's frames"
    assert quiet.ping() == "pong"


def test_a_syntax_error_is_refused_before_anything_is_sent(quiet, tmp_path):
    script = write(tmp_path, "broken.py", "print('x'\n")
    with pytest.raises(SyntaxError):
        quiet.run(script)
    with pytest.raises(FileNotFoundError):
        quiet.run(str(tmp_path / "missing.py"))


def test_the_engine_is_untouched_by_the_script(quiet, tmp_path):
    quiet.exe("import sys, os; kept = 1; argv_before = list(sys.argv); cwd_before = os.getcwd(); "
              "main_before = sys.modules['__main__']")
    script = write(tmp_path, "messy.py", """
        import os, sys
        kept = "the script's own"
        scratch = 42
        sys.argv.append("extra")
        os.chdir("/")
        sys.stdout = open(os.devnull, "w")
        raise RuntimeError("after making a mess")
    """)
    assert quiet.run(script)["exit"] == 1
    assert quiet.get("kept") == 1 and "scratch" not in quiet.get()
    assert quiet.eval("sys.argv == argv_before and os.getcwd() == cwd_before")
    assert quiet.eval("sys.modules['__main__'] is main_before")
    assert quiet.eval("__name__") == "__srpy__"
    again = quiet.run(write(tmp_path, "after.py", "print('still printing')\n"))
    assert again == {"exit": 0, "stdout": "still printing\n", "stderr": ""}, "the engine's own streams are back"


def test_the_scripts_local_modules_travel(quiet, tmp_path):
    write(tmp_path, "helper.py", "from tools.numbers import twice\n\ndef compute(x):\n    return twice(x) + 1\n")
    write(tmp_path, "tools/__init__.py", "")
    write(tmp_path, "tools/numbers.py", "from .base import BASE\n\ndef twice(x):\n    return BASE * x\n")
    write(tmp_path, "tools/base.py", "BASE = 2\n")
    write(tmp_path, "unused.py", "raise RuntimeError('never imported')\n")
    script = write(tmp_path, "main.py", """
        import json, sys
        def later():
            import helper  # an import inside a function is found too
            return helper.compute(int(sys.argv[1]))
        print(json.dumps(later()))
    """)
    packed = scripts.pack(script)
    assert sorted(packed.files) == ["helper.py", "tools/__init__.py", "tools/base.py", "tools/numbers.py"]
    assert quiet.run(script, 20) == {"exit": 0, "stdout": "41\n", "stderr": ""}
    # a changed module is loaded afresh by the next run
    write(tmp_path, "tools/base.py", "BASE = 3\n")
    assert quiet.run(script, 20)["stdout"] == "61\n"


def test_run_stopped_by_a_time_limit_is_a_timeout_not_an_exit(quiet, tmp_path):
    script = write(tmp_path, "slow.py", "import time\nprint('started')\nwhile True:\n    time.sleep(0.01)\n")
    with pytest.raises(srpy.TaskTimeout):
        quiet.limited(1).run(script)
    assert quiet.ping() == "pong"


def test_box_run_on_two_engines(pair, tmp_path):
    write(tmp_path, "where.py", "import os\n\ndef pid():\n    return os.getpid()\n")
    script = write(tmp_path, "job.py", """
        import sys, where
        print("engine pid", where.pid(), "args", sys.argv[1:])
        sys.exit(int(sys.argv[1]))
    """)
    with srpy.EngBox(pair, forward_output=False) as box:
        results = box.run(script, 5, "x")
    assert sorted(results) == sorted(pair)
    pids = set()
    for uri, result in results.items():
        assert result["exit"] == 5 and result["stderr"] == "", result
        assert result["stdout"].endswith("args ['5', 'x']\n")
        pids.add(result["stdout"].split()[2])
    assert len(pids) == 2, "each engine ran it"


def test_srpyapp_run_prints_each_engines_output_and_the_exit_code(pair, tmp_path):
    uri_file = tmp_path / "uris.txt"
    uri_file.write_text("\n".join(pair) + "\n")
    script = write(tmp_path, "cli_job.py", """
        import os, sys
        print("out", sys.argv[1:])
        print("err line", file=sys.stderr)
        sys.exit(int(sys.argv[1]))
    """)

    def srpyapp_run(*args):
        return subprocess.run([sys.executable, SRPYAPP, "run", "-u", str(uri_file), script] + list(args),
                              capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)

    done = srpyapp_run("0", "--size", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    headers = [line for line in lines if line.startswith("--- engine ")]
    assert len(headers) == 2 and all(line.endswith("exit 0 ---") for line in headers), done.stdout
    for uri in pair:
        assert any("(%s) exit 0" % uri in line for line in headers), (uri, headers)
    assert lines.count("out ['0', '--size', '3']") == 2, done.stdout
    assert done.stderr.count("err line") == 2, done.stderr
    assert lines[0].startswith("--- engine ") and lines[1] == "out ['0', '--size', '3']", "output under its header"
    failed = srpyapp_run("4")
    assert failed.returncode == 4 and failed.stdout.count("exit 4 ---") == 2, failed.stdout + failed.stderr
    missing = subprocess.run([sys.executable, SRPYAPP, "run", "-u", str(uri_file), str(tmp_path / "nope.py")],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert missing.returncode == 1 and "no script at" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_srpyapp_run_finds_the_engines_in_the_name_server(start_launcher, tmp_path):
    import socket
    import time

    from srpy import discovery
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = start_launcher(["-n", "2", "--group", "runners", "--start-ns", "--ns-port", str(port)], count=2)
    deadline = time.monotonic() + 30
    while sorted(uri for _, uri, _ in discovery.find("runners", "127.0.0.1", port)) != sorted(launcher.uris):
        assert time.monotonic() < deadline, "the engines did not register"
        time.sleep(0.1)
    script = write(tmp_path, "ns_job.py", "import sys\nprint('ran with', sys.argv[1:])\n")
    done = subprocess.run([sys.executable, SRPYAPP, "run", "--ns", "--group", "runners", "--ns-host", "127.0.0.1",
                           "--ns-port", str(port), script, "-x", "1"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ran with ['-x', '1']") == 2 and done.stdout.count("exit 0 ---") == 2, done.stdout
    none = subprocess.run([sys.executable, SRPYAPP, "run", "--ns", "--group", "nobody", "--ns-host", "127.0.0.1",
                           "--ns-port", str(port), script],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert none.returncode == 1 and "no engines found" in none.stderr
