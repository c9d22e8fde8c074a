"""
The documentation is checked like code: the API reference builds from the docstrings with no markup
errors, and the Python examples of README.md and doc/guide.md run and print what they say.

An example block is a fenced C{```python} block (C{```python notest} blocks are skipped). The
blocks of one page run in order, in one fresh interpreter, as one session. On a line that calls
C{print}, a trailing comment is the exact text that call prints.
"""

import configparser
import io
import json
import os
import re
import signal
import subprocess
import sys
import tokenize

import pytest

import srpy
from conftest import ROOT

CONFIG = os.path.join(ROOT, "epydoc-config")
FENCE = re.compile(r"^```python[ \t]*(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
# pydoctor reports every docstring or source problem as "path:line: message"
SOURCE_PROBLEM = re.compile(r"^\S+\.py:\d+: .*$", re.M)

# Runs in a fresh interpreter: executes the examples and records, for each print() call made by
# them, the line it was made on and the text it printed.
DRIVER = r"""
import builtins, json, sys
code_path, record_path = sys.argv[1], sys.argv[2]
records = []

def doc_print(*args, sep=" ", end="\n", file=None, flush=False):
    caller = sys._getframe(1)
    if file is None and caller.f_code.co_filename == "<doc>":
        records.append([caller.f_lineno, sep.join(str(a) for a in args)])
    builtins.print(*args, sep=sep, end=end, file=file, flush=flush)

try:
    with open(code_path, encoding="utf-8") as handle:
        source = handle.read()
    import linecache  # as IPython does: functions defined here keep their source (srpy ships it)
    linecache.cache["<doc>"] = (len(source), None, source.splitlines(True), "<doc>")
    code = compile(source, "<doc>", "exec")
    exec(code, {"__name__": "__main__", "print": doc_print})
finally:
    with open(record_path, "w", encoding="utf-8") as handle:
        json.dump(records, handle)
"""


def python_blocks(text):
    """The runnable python blocks of a markdown text, in order."""
    return [body for marker, body in FENCE.findall(text) if marker != "notest"]


def section(text, heading):
    """The part of a markdown text under C{## heading}, up to the next C{## } heading."""
    start = text.index("\n## " + heading + "\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def expected_prints(code):
    """{line: text} for each line that calls print and carries a trailing comment."""
    tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    print_lines, comments = set(), {}
    for index, token in enumerate(tokens):
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if (token.type == tokenize.NAME and token.string == "print" and following is not None
                and following.string == "("):
            print_lines.add(token.start[0])
        elif token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string[1:].strip()
    return {line: comments[line] for line in print_lines if line in comments}


def run_examples(blocks, tmp_path, timeout=180):
    """Run the blocks as one script; fail with the details unless every checked print matches."""
    assert blocks, "no python blocks found"
    code = "\n".join(blocks)
    code_path, record_path = tmp_path / "examples.py", tmp_path / "prints.json"
    code_path.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env.pop("SRPY_SECRET", None)
    process = subprocess.Popen([sys.executable, "-c", DRIVER, str(code_path), str(record_path)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    finally:
        try:  # whatever the examples started and left behind goes with them
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    assert process.returncode == 0, "the examples failed (exit code %s):\n%s\n%s\n--- code ---\n%s" % (
        process.returncode, out, err, code)
    printed = {}
    for line, text in json.loads(record_path.read_text(encoding="utf-8")):
        printed.setdefault(line, []).append(text)
    wrong = []
    for line, expected in sorted(expected_prints(code).items()):
        got = printed.get(line)
        if got is None or any(text != expected for text in got):
            wrong.append("line %d: %s\n    expected: %s\n    printed:  %s"
                         % (line, code.splitlines()[line - 1].strip(), expected, got))
    assert not wrong, "examples printed something else than their comments say:\n" + "\n".join(wrong)


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        return handle.read()


# -- the API reference ---------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(400)
def test_api_reference_builds_without_docstring_errors(tmp_path):
    output = tmp_path / "api"
    result = subprocess.run([sys.executable, "-m", "pydoctor", "--config=" + CONFIG,
                             "--html-output=" + str(output)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=300)
    problems = SOURCE_PROBLEM.findall(result.stdout)
    assert result.returncode == 0 and not problems and "syntax errors" not in result.stdout, result.stdout
    pages = {name[:-len(".html")] for name in os.listdir(output) if name.endswith(".html")}
    assert {"index", "srpy"} <= pages and pages & {"srpy.PythonEngine", "srpy.client.PythonEngine"}
    private = [page for page in pages if any(part.startswith("_") and not part.endswith("__")
                                             for part in page.split("."))]
    assert not private, "underscore names must be hidden: %s" % private
    with open(output / "moduleIndex.html", encoding="utf-8") as handle:
        index = handle.read()
    # a list item per module, or, once a package has many modules (pydoctor's "compact-modules"), a span
    entry = r'<(?:li|span)( class="private")?><code><a href="(srpy\.\w+)\.html"'
    listed = {page: bool(flag) for flag, page in re.findall(entry, index)}
    assert listed and not any(listed["srpy." + name] for name in PUBLIC_MODULES if name != "srpy"), listed
    assert all(flag for page, flag in listed.items() if page[len("srpy."):] not in PUBLIC_MODULES), listed


#: the modules whose names make srpy's public surface (the API reference shows only these by default)
PUBLIC_MODULES = {"srpy", "errors", "client", "box", "peers", "cluster", "lite", "wire"}


def test_every_module_is_public_or_private_on_purpose():
    """A new module must be placed: in PUBLIC_MODULES (and the façade's docs), or PRIVATE in epydoc-config."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(CONFIG, encoding="utf-8")
    rules = config["pydoctor"]["privacy"].split()
    private = {rule.split(":", 1)[1][len("srpy."):] for rule in rules if rule.startswith(("PRIVATE:", "HIDDEN:"))}
    modules = {name[:-3] for name in os.listdir(os.path.join(ROOT, "srpy")) if name.endswith(".py")}
    modules = {name for name in modules if not name.startswith("_")}
    unplaced = modules - private - PUBLIC_MODULES
    assert not unplaced, "place these modules in PUBLIC_MODULES or as PRIVATE in epydoc-config: %s" % unplaced
    assert not (private & PUBLIC_MODULES), private & PUBLIC_MODULES


def test_api_config_matches_the_package():
    config = configparser.ConfigParser(interpolation=None)
    config.read(CONFIG, encoding="utf-8")
    settings = config["pydoctor"]
    assert settings["project-version"] == srpy.__version__
    assert settings["project-name"] == "srpy"
    assert settings["docformat"] == "epytext"
    assert settings["html-output"] == "doc/api"
    assert settings["add-package"] == "srpy"


# -- the examples ---------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_readme_quick_start_runs(tmp_path):
    blocks = python_blocks(section(read("README.md"), "Quick start"))
    assert expected_prints("\n".join(blocks)), "the quick start should show what it prints"
    run_examples(blocks, tmp_path)


@pytest.mark.timeout(300)
def test_guide_examples_run(tmp_path):
    run_examples(python_blocks(read("doc/guide.md")), tmp_path)


def test_doc_links_point_to_existing_files():
    for page in ("README.md", "doc/index.md", "doc/guide.md"):
        folder = os.path.dirname(os.path.join(ROOT, page))
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
            if "://" not in target:
                assert os.path.exists(os.path.join(folder, target)), "%s links to missing %s" % (page, target)
