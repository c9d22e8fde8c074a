"""
`srpy.analyze` and `srpyapp analyze` (issue 14): what a job imports, found by reading its source,
and what each import is here — standard library, an installed distribution pinned to its version,
the user's own modules (which srpy ships), or missing.

The installed packages used are the ones `pip install -e .[test]` brings (srpy's own dependencies
and its test extra); the expected pins are read from importlib.metadata, never written down. Every
case analyses real files written in tmp_path, and the command line is a real `srpyapp` process.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import srpy
from conftest import ROOT, SRPYAPP
from srpy import analysis

pytestmark = pytest.mark.timeout(120)


def pins(*names):
    """The pins analyze should give for these distributions, in its order (PEP 503 names)."""
    return sorted(("%s==%s" % (name, importlib.metadata.version(name)) for name in names),
                  key=lambda pin: re.sub(r"[-_.]+", "-", pin.partition("==")[0]).lower())


def write(folder, files):
    """Write {relative path: source} under C{folder} (dedented); returns the folder."""
    for relative, source in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
    return folder


JOB = {
    "job.py": """
        from __future__ import annotations
        import os, json
        from collections import abc
        from typing import TYPE_CHECKING

        import hypothesis
        import xdist                      # the distribution is pytest-xdist
        import helpers
        from mypkg import tools

        if TYPE_CHECKING:                 # never runs: no requirement
            import typing_only_xyz

        try:
            import surely_optional_xyz    # used when it is there
        except ImportError:
            surely_optional_xyz = None

        def work():
            import psutil
            from serpent import dumps
            return dumps(psutil.cpu_count())

        import surely_not_installed_xyz
        """,
    "helpers.py": """
        import numpy.linalg
        def certificate():
            import trustme
            return trustme.CA()
        """,
    "mypkg/__init__.py": """
        from .tools import thing
        """,
    "mypkg/tools.py": """
        from . import inner
        import Pyro5.api
        thing = 1
        """,
    "mypkg/inner.py": """
        import pandas
        """,
    "mypkg/unused.py": """
        import never_read_xyz             # nothing imports this module: it is not read
        """,
}


@pytest.fixture
def job(tmp_path):
    return write(tmp_path / "job", JOB) / "job.py"


def test_a_script_its_local_modules_and_what_they_import(job):
    found = analysis.analyze(str(job))
    assert found["python"] == "%d.%d.%d" % sys.version_info[:3]
    assert found["requirements"] == pins("hypothesis", "numpy", "pandas", "psutil", "Pyro5", "pytest-xdist",
                                         "serpent", "trustme")
    assert found["local"] == ["helpers", "mypkg"]
    assert found["missing"] == ["surely_not_installed_xyz"]
    assert found["optional"] == ["surely_optional_xyz"]
    assert found["unpinned"] == []
    imports = found["imports"]
    assert {name: imports[name]["kind"] for name in ("os", "json", "collections", "__future__", "typing")} == \
        dict.fromkeys(("os", "json", "collections", "__future__", "typing"), "stdlib")
    assert imports["xdist"]["requirements"] == pins("pytest-xdist")
    assert imports["surely_not_installed_xyz"] == {"kind": "missing", "at": ["job.py:24"], "optional": False}
    assert imports["surely_optional_xyz"] == {"kind": "missing", "at": ["job.py:15"], "optional": True}
    # followed: helpers' function-level import, the package's relative imports, transitively
    assert imports["trustme"]["at"] == ["helpers.py:3"]
    assert imports["pandas"]["at"] == ["mypkg/inner.py:1"]
    assert imports["psutil"]["at"] == ["job.py:20"]
    assert imports["mypkg"]["at"] == ["job.py:9", "mypkg/__init__.py:1", "mypkg/tools.py:1"]
    assert (imports["helpers"]["path"], imports["mypkg"]["path"]) == ("helpers.py", "mypkg")
    assert "typing_only_xyz" not in imports and "never_read_xyz" not in imports
    assert json.loads(json.dumps(found)) == found


def test_the_script_is_read_not_run_and_nothing_is_imported(job):
    before = set(sys.modules)
    found = srpy.analyze(job)  # an os.PathLike, through the façade
    assert found["local"] == ["helpers", "mypkg"]
    assert not {"helpers", "mypkg", "hypothesis", "xdist", "trustme"} & (set(sys.modules) - before)


def test_a_script_that_would_leave_a_trace_leaves_none(tmp_path):
    script = write(tmp_path, {"trace.py": """
        import pathlib
        pathlib.Path(__file__).with_name("ran").write_text("the script ran")
        import tracer
        """, "tracer.py": """
        import pathlib
        pathlib.Path(__file__).with_name("imported").write_text("a module of it was imported")
        """}) / "trace.py"
    assert analysis.analyze(str(script))["local"] == ["tracer"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trace.py", "tracer.py"]


def test_a_module_by_name_and_by_object_and_a_function(tmp_path, monkeypatch):
    write(tmp_path, {
        "shop/__init__.py": "",
        "shop/prices.py": """
            import serpent
            from .cart import Cart
            def never_called():
                from ..outside import x  # above the top-level package: Python would refuse it
            def total(items):
                from . import tax
                return sum(items)
            class Till:
                def ring(self):
                    return 0
            """,
        "shop/cart.py": "import psutil\nclass Cart: pass\n",
        "shop/tax.py": "import Pyro5\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    by_name = analysis.analyze("shop.prices")
    assert "shop" not in sys.modules, "analysing a module by name must not import it"
    assert by_name["local"] == ["shop"]
    assert by_name["requirements"] == pins("psutil", "Pyro5", "serpent")
    assert by_name["missing"] == ["..outside"]
    assert by_name["imports"]["psutil"]["at"] == ["shop/cart.py:1"]
    assert by_name["imports"]["shop"] == {"kind": "local", "at": ["shop/prices.py:2", "shop/prices.py:6"],
                                          "optional": False, "path": "shop"}
    try:
        import shop.prices
        assert analysis.analyze(shop.prices) == by_name
        assert analysis.analyze(shop.prices.total) == by_name
        assert analysis.analyze(shop.prices.Till().ring) == by_name
    finally:
        for name in [name for name in sys.modules if name.partition(".")[0] == "shop"]:
            del sys.modules[name]


def test_missing_submodules_attributes_and_relative_imports_in_a_script(tmp_path):
    script = write(tmp_path, {
        "run.py": """
            import kit.nothere
            from kit import not_a_module_but_a_name, there
            from . import sibling
            from .kit import other
            """,
        "kit/__init__.py": "not_a_module_but_a_name = 1\n",
        "kit/there.py": "",
    }) / "run.py"
    found = analysis.analyze(str(script))
    assert found["local"] == ["kit"]
    # a script runs as __main__, with no package: its relative imports fail in Python too
    assert found["missing"] == [".kit", ".sibling", "kit.nothere"]
    assert found["requirements"] == []


def test_optional_means_every_import_of_it_is_guarded(tmp_path):
    script = write(tmp_path, {"opt.py": """
        try:
            import surely_optional_a_xyz
            import psutil
        except (ValueError, ModuleNotFoundError):
            import surely_fallback_xyz
        try:
            import surely_optional_b_xyz
        except OSError:                  # does not catch an ImportError: not optional
            pass
        import surely_optional_a_xyz as again
        """}) / "opt.py"
    found = analysis.analyze(str(script))
    assert found["optional"] == ["psutil"]
    assert found["requirements"] == pins("psutil")
    assert found["missing"] == ["surely_fallback_xyz", "surely_optional_a_xyz", "surely_optional_b_xyz"]


def test_import_module_with_a_literal_name_counts(tmp_path):
    script = write(tmp_path, {"dyn.py": """
        import importlib
        serpent = importlib.import_module("serpent")
        mod = __import__("surely_dynamic_xyz")
        name = "psutil"
        importlib.import_module(name)    # not a literal: cannot be known without running
        """}) / "dyn.py"
    found = analysis.analyze(str(script))
    assert found["requirements"] == pins("serpent")
    assert found["missing"] == ["surely_dynamic_xyz"]


def test_an_import_of_srpy_is_no_requirement(tmp_path):
    script = write(tmp_path, {"uses_srpy.py": "import srpy\nfrom srpy import errors\n"}) / "uses_srpy.py"
    found = analysis.analyze(str(script))
    assert found["requirements"] == [] and found["local"] == [] and found["missing"] == []
    assert found["imports"]["srpy"]["kind"] == "srpy"


def test_a_local_file_beside_the_script_shadows_an_installed_package(tmp_path):
    script = write(tmp_path, {"main.py": "import serpent\n", "serpent.py": "import surely_inner_xyz\n"}) / "main.py"
    found = analysis.analyze(str(script))
    assert (found["local"], found["requirements"], found["missing"]) == (["serpent"], [], ["surely_inner_xyz"])


def test_import_name_to_distribution_name_yaml_is_pyyaml(tmp_path):  # PyYAML is in the test extra for this
    script = write(tmp_path, {"conf.py": "import yaml\n"}) / "conf.py"
    assert analysis.analyze(str(script))["requirements"] == pins("PyYAML")


def test_a_namespace_package_pins_the_distribution_that_holds_the_submodule(tmp_path, monkeypatch):
    """Two distributions share the top-level name nsxyz (as the google.* ones do), installed in a folder of their own."""
    site = tmp_path / "site"
    for dist, version, sub in (("nsxyz-a", "1.0", "a"), ("nsxyz-b", "2.0", "b")):
        info = "%s-%s.dist-info" % (dist.replace("-", "_"), version)
        files = ["nsxyz/%s/__init__.py" % sub, info + "/METADATA", info + "/RECORD"]
        write(site, {"nsxyz/%s/__init__.py" % sub: "",
                     info + "/METADATA": "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (dist, version),
                     info + "/RECORD": "".join("%s,,\n" % f for f in files)})
    script = write(tmp_path / "job", {"ns.py": "import nsxyz.b\n"}) / "ns.py"
    assert analysis.analyze(str(script))["missing"] == ["nsxyz"]
    monkeypatch.syspath_prepend(str(site))  # installed since the last analyze: it counts
    found = analysis.analyze(str(script))
    assert found["requirements"] == ["nsxyz-b==2.0"]
    assert found["local"] == [] and found["imports"]["nsxyz"]["kind"] == "installed"


def test_the_metadata_fallback_agrees_with_packages_distributions():
    """Python 3.9 has no packages_distributions: the fallback reads top_level.txt or RECORD."""
    fallback = analysis.providers_from_records(importlib.metadata.distributions())
    real = importlib.metadata.packages_distributions()
    for name in ("numpy", "xdist", "_pytest", "pytest", "Pyro5", "serpent", "psutil", "hypothesis"):
        assert set(fallback[name]) == set(real[name]), name


def test_a_file_that_does_not_parse_is_named_with_its_line(tmp_path):
    script = write(tmp_path, {"main.py": "import broken\n", "broken.py": "import os\n\ndef f(:\n    pass\n"}) / "main.py"
    with pytest.raises(srpy.AnalysisError, match=r"^broken\.py line 3: ") as caught:
        analysis.analyze(str(script))
    assert "\n" not in str(caught.value) and isinstance(caught.value, ValueError)


def test_what_cannot_be_analysed_says_so_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such script"):
        analysis.analyze(str(tmp_path / "nothere.py"))
    with pytest.raises(srpy.AnalysisError, match="is a folder"):
        analysis.analyze(tmp_path)
    with pytest.raises(srpy.AnalysisError, match="no module"):
        analysis.analyze("surely_not_a_module_xyz")
    with pytest.raises(srpy.AnalysisError, match="no Python source"):
        analysis.analyze(sys)
    with pytest.raises(srpy.AnalysisError, match="no Python source"):
        analysis.analyze("math")
    with pytest.raises(TypeError, match=r"^analyze\(\) takes a script path, a module .* not int$"):
        analysis.analyze(42)


# -- srpyapp analyze -----------------------------------------------------------------------------

def srpyapp(*args, cwd=ROOT):
    done = subprocess.run([sys.executable, SRPYAPP, "analyze"] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout, done.stderr


def test_cli_prints_the_mapping_as_json(job):
    code, out, err = srpyapp(job)
    assert (code, err) == (0, "")
    assert json.loads(out) == analysis.analyze(str(job))
    assert out.startswith('{\n  "python": ')  # indent 2


def test_cli_writes_the_json_to_a_file(job, tmp_path):
    target = tmp_path / "needs.json"
    code, out, err = srpyapp("job.py", "-o", target, cwd=job.parent)  # a relative path, as from a shell
    assert (code, out, err) == (0, "", "")
    assert json.loads(target.read_text(encoding="utf-8")) == analysis.analyze(str(job))


@pytest.mark.parametrize("files, script, message", [
    ({"bad.py": "x = (\n"}, "bad.py", "bad.py line 1: "),
    ({}, "nothere.py", "nothere.py: no such file"),
    ({"folder/x.py": ""}, "folder", "folder: not a file"),
], ids=["parse-error", "missing-file", "folder"])
def test_cli_errors_exit_2_with_one_line(tmp_path, files, script, message):
    write(tmp_path, files)
    code, out, err = srpyapp(script, cwd=tmp_path)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("srpyapp analyze: error: " + message), err


def test_cli_output_file_that_cannot_be_written_exits_1(job, tmp_path):
    code, out, err = srpyapp(job, "-o", tmp_path / "no" / "such" / "dir.json")
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 1 and err.startswith("srpyapp analyze: error: -o "), err


def test_cli_without_a_script_gets_the_usage():
    code, out, err = srpyapp()
    assert code == 2 and err.startswith("usage: srpyapp analyze") and "SCRIPT" in err


# -- the documented example ------------------------------------------------------------------------

DOC = os.path.join(ROOT, "doc", "environments.md")


def test_the_documented_example_says_what_analyze_says(tmp_path):
    """doc/environments.md's job.py and helpers.py blocks, analysed: every print line's comment holds (versions aside)."""
    with open(DOC, encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index("## Analyse what a job needs"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"^```python[^\n]*\n(.*?)^```", section, re.M | re.S)
    named = [(re.match(r"# (\w+\.py):", block), block) for block in blocks]  # "# job.py: what it does"
    files = {match.group(1): block for match, block in named if match}
    assert set(files) == {"job.py", "helpers.py"}, files
    write(tmp_path, files)
    calls = [block for block in blocks if "srpy.analyze(\"job.py\")" in block]
    assert len(calls) == 1, calls
    checks = re.findall(r"^print\((.*)\)\s+# (.*)$", calls[0], re.M)
    assert len(checks) >= 4, calls[0]
    found = analysis.analyze(str(tmp_path / "job.py"))

    def unversioned(text):
        return re.sub(r"==[^']*'", "=='", text)
    for expression, expected in checks:
        got = str(eval(expression, {"found": found}))
        assert unversioned(got) == unversioned(expected), expression
