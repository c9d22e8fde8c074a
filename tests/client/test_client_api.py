"""SRPy 2009's documented examples, against an engine hosted by the launcher."""

import math

import pytest

import srpy


def test_eval_sets_variables_and_returns_value(engine):
    assert engine.eval("a+b", a=2, b=3) == 5


def test_exe_then_get(engine):
    assert engine.exe("import math; n = math.sqrt(n)", n=2) is None
    assert engine.get("n") == 1.4142135623730951


def test_vexe_leaves_namespace_untouched(engine):
    result = engine.vexe("import math; a=math.sqrt(n); b=a**2", get=["a", "b"], n=2)
    assert result == {"a": math.sqrt(2), "b": math.sqrt(2) ** 2}
    assert "a" not in engine.get() and "n" not in engine.get()


def test_get_forms(engine):
    engine.set(x=1, y="two")
    assert engine.get() == ["x", "y"]
    assert engine.get("y") == "two"
    assert engine.get(["x", "y"]) == {"x": 1, "y": "two"}
    with pytest.raises(KeyError):
        engine.get("missing")


def test_clear(engine):
    engine.set(x=1)
    engine.clear()
    assert engine.get() == []


def test_ns_view(engine):
    engine.ns.a = 3
    assert engine.ns.a == 3
    engine.imp("math")
    assert engine.ns.math.sqrt(3) == 1.7320508075688772
    assert engine.ns.dir() == ["a", "math"]
    del engine.ns.a
    assert engine.ns.dir() == ["math"]
    with pytest.raises(AttributeError):
        engine.ns.nothing_here


def test_associate_function(engine):
    engine.exe("def double(x):\n    'Twice x.'\n    return 2 * x")
    double = engine.associateFunction("double")
    assert double(21) == 42
    assert double.__name__ == "double" and double.__doc__ == "Twice x."
    engine.imp("os.path")
    join = engine.associateFunction("os.path.join")
    assert join("a", "b") == "a/b"
    engine.set(notfunc=3)
    with pytest.raises(TypeError):
        engine.associateFunction("notfunc")


def test_whoami_keys(engine):
    info = engine.whoami()
    for key in ("OS System", "Hostname", "OS Release", "OS Version", "Machine Architecture",
                "Processor Architecture", "Python Version", "Python Compiler", "PythonEngine ID",
                "Cores", "Load", "Memory Total", "Memory Available", "srpy Version"):
        assert key in info, key
    assert info["Cores"] >= 1 and info["srpy Version"] == srpy.__version__


def test_info_accessors_and_repr(engine, engine_uri):
    assert engine.getURI() == engine_uri
    assert engine.ping() == "pong"
    assert engine.getHostname() == engine.info["Hostname"]
    assert engine.getSystem() == engine.info["OS System"]
    assert repr(engine) == "<PythonEngine %s on %s>" % (engine.info["PythonEngine ID"], engine.hostname)
    assert "Python Version: " in str(engine)
    assert engine.ip == "127.0.0.1" and engine.port == int(engine_uri.rsplit(":", 1)[1])
    engine.setGroup("blue")
    assert engine.getGroup() == "blue" and engine.whoami()["Group"] == "blue"


def test_benchmark_is_meaningful(engine):
    net, proc, busy = engine.benchmark()
    assert 0 < net < 0.5
    assert proc > 0.005, "the processor workload must take milliseconds, not be timer noise"
    assert busy is False


def test_install_and_imp_module_and_package(engine, tmp_path, monkeypatch):
    pkg = tmp_path / "shippedpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .inner import value\n")
    (pkg / "inner.py").write_text("value = 41 + 1\n")
    (tmp_path / "shippedmod.py").write_text("def hello(name):\n    return 'hello ' + name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    written = engine.install("shippedmod", "shippedpkg")
    assert sorted(written) == ["shippedmod.py", "shippedpkg/__init__.py", "shippedpkg/inner.py"]
    engine.imp("shippedmod", "shippedpkg.inner")
    assert engine.eval("shippedmod.hello('srpy')") == "hello srpy"
    assert engine.eval("shippedpkg.value") == 42
    (tmp_path / "shippedmod.py").write_text("def hello(name):\n    return 'hi ' + name\n")
    engine.install("shippedmod")
    engine.imp("shippedmod")
    assert engine.eval("shippedmod.hello('again')") == "hi again"


def test_detect_ncpus():
    assert srpy.detectNCPUs() >= 1


def test_version_and_copyright():
    assert srpy.version == srpy.__version__ and "BSD" in srpy.copyright
