"""
Environments installed where the work runs (issue 14): C{EngBox.require(..., install=True)}
against real engines hosted by the real launcher, with real venv, uv and pip. The packages are
wheels built by hand in each test (L{wheels.make_wheel}): no test needs a package index, and the
engines' index is made unreachable where it matters. Each test keeps its environments in its own
C{tmp_path} (C{srpyapp --env-dir}).
"""

import json
import os
import subprocess
import time
import sys

import pytest

import srpy
from conftest import ROOT
from srpy.environments import find_uv
from srpy.errors import EnvironmentConflict, InstallError, InvalidRequirement
from wheels import make_wheel

#: both installers where uv is installed (pip install .[test] installs it); pip alone where it is not
INSTALLERS = [pytest.param("uv", marks=pytest.mark.skipif(find_uv() is None, reason="uv is not installed")), "pip"]

#: what no engine can reach: a package index on a closed port, for uv and pip alike
NO_INDEX = {"UV_INDEX_URL": "http://127.0.0.1:9/simple", "UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple",
            "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "UV_HTTP_RETRIES": "0"}


def tinypkg_version():
    import tinypkg
    return tinypkg.__version__, tinypkg.__file__


def version_of(_):
    return tinypkg_version()[0]


def tinypkg_with_dep():
    import tinydep
    import tinypkg
    return tinypkg.__version__, tinydep.__version__


@pytest.fixture
def links(tmp_path):
    """A find-links folder with tinypkg 1.0 and 2.0."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "tinypkg", "1.0")
    make_wheel(folder, "tinypkg", "2.0")
    return str(folder)


@pytest.fixture
def env_dir(tmp_path):
    return str(tmp_path / "envs")


def folders(env_dir):
    """The names in the environments' folder but its lock files."""
    return sorted(name for name in os.listdir(env_dir) if not name.endswith(".lock")) if os.path.isdir(env_dir) else []


def envs_cli(*args):
    return subprocess.run([sys.executable, "-m", "srpy.cli", "envs"] + list(args), capture_output=True, text=True,
                          cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("installer", INSTALLERS)
def test_install_then_tasks_import_it_from_the_environment(start_launcher, links, env_dir, installer):
    launcher = start_launcher(["--env-dir", env_dir], env=dict(NO_INDEX, SRPY_INSTALLER=installer))
    with srpy.EngBox(launcher.uris) as box:
        with pytest.raises(srpy.MissingPackagesError):
            box.require("tinypkg")  # install=False: the check it always was
        results = box.require("tinypkg==1.0", install=True, find_links=links)
        info = results[launcher.uris[0]]
        assert info["status"] == "built" and info["installer"] == installer, info
        assert info["packages"] == {"tinypkg": "1.0"}
        version, where = box.submit(tinypkg_version).result()
        assert version == "1.0"
        assert where.startswith(os.path.join(env_dir, info["key"]) + os.sep), where
        engine_python = box[0].whoami()["Python Executable"]
    assert folders(env_dir) == [info["key"]]  # nothing half-made beside it
    # the environment the engine was started in is unchanged: its Python still has no tinypkg
    plain = subprocess.run([engine_python, "-c", "import tinypkg"], capture_output=True, timeout=60)
    assert plain.returncode != 0


def test_versions_side_by_side_on_one_host(start_launcher, links, env_dir):
    launcher = start_launcher(["-n", "2", "--env-dir", env_dir], count=2, env=NO_INDEX)
    first, second = launcher.uris
    with srpy.EngBox([first], requirements=["tinypkg==1.0"], find_links=links) as one, \
            srpy.EngBox([second], requirements=["tinypkg==2.0"], find_links=links) as two:
        futures = [one.submit(tinypkg_version), two.submit(tinypkg_version)]
        (v1, file1), (v2, file2) = [future.result(timeout=60) for future in futures]
    assert (v1, v2) == ("1.0", "2.0")
    assert os.path.dirname(os.path.dirname(file1)) != os.path.dirname(os.path.dirname(file2))
    assert len(folders(env_dir)) == 2


def test_one_engine_cannot_activate_a_conflicting_set(start_launcher, links, env_dir):
    launcher = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        box.require("tinypkg==1.0", install=True, find_links=links)
        assert box.submit(tinypkg_version).result()[0] == "1.0"  # imported now
        with pytest.raises(EnvironmentConflict) as caught:
            box.require("tinypkg==2.0", install=True, find_links=links)
        assert "tinypkg 1.0" in str(caught.value) and "tinypkg 2.0" in str(caught.value)
        assert box.submit(tinypkg_version).result()[0] == "1.0"  # nothing changed: the first one still serves
        # the same set again is the active one: nothing to do
        assert box.require("tinypkg==1.0", install=True)[launcher.uris[0]]["status"] == "active"


def test_an_environment_cannot_replace_what_the_engine_imported_from_its_own_python(start_launcher, tmp_path,
                                                                                   env_dir):
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder, "serpent", "0.0.1")  # every engine has imported serpent (a dependency of srpy's)
    launcher = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        own = box[0].eval("__import__('serpent').__version__")
        with pytest.raises(EnvironmentConflict) as caught:
            box.require("serpent==0.0.1", install=True, find_links=str(folder))
        assert "serpent 0.0.1" in str(caught.value) and "serpent %s" % own in str(caught.value), caught.value
        assert box[0].eval("__import__('serpent').__version__") == own  # the engine's own still serves


def test_the_cache_is_reused_by_later_engines(start_launcher, links, env_dir):
    first = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(first.uris) as box:
        built = box.require("tinypkg==1.0", install=True, find_links=links)[first.uris[0]]
    assert built["status"] == "built"
    marker = os.path.join(built["path"], "srpy-env.json")
    before = os.stat(marker)
    first.shutdown()
    # a fresh engine process (another launcher) on the same host: the environment is found, not rebuilt,
    # and nothing is shipped or installed, so no find_links and no index are needed
    second = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(second.uris) as box:
        again = box.require("tinypkg==1.0", install=True)[second.uris[0]]
        assert box.submit(tinypkg_version).result()[0] == "1.0"
    assert again["status"] == "cached" and again["key"] == built["key"]
    after = os.stat(marker)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with open(marker, encoding="utf-8") as handle:
        assert json.load(handle)["requirements"] == ["tinypkg==1.0"]


def test_two_engines_of_one_host_build_one_environment(start_launcher, links, env_dir):
    launcher = start_launcher(["-n", "2", "--env-dir", env_dir], count=2, env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        results = box.require("tinypkg==2.0", install=True, find_links=links)
        statuses = sorted(info["status"] for info in results.values())
        assert statuses == ["built", "cached"], results  # one built it, the other waited for its lock and used it
        assert list(box.map(version_of, range(2))) == ["2.0", "2.0"]
    assert len(folders(env_dir)) == 1


def test_a_failing_install_names_engine_and_requirement_and_leaves_nothing(start_launcher, links, env_dir):
    launcher = start_launcher(["-n", "2", "--env-dir", env_dir], count=2, env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        with pytest.raises(InstallError) as caught:
            box.require("tinypkg==3.0", install=True, find_links=links)
        error = caught.value
        text = str(error)
        assert "tinypkg==3.0" in text and error.requirements == ["tinypkg==3.0"]
        assert any(uri in text for uri in launcher.uris), text
        assert "tinypkg" in error.output and error.output in text  # the installer's own last lines
        assert folders(env_dir) == []  # no environment, no temporary folder
        assert [engine.ping() for engine in box] == ["pong", "pong"]
        box.require("tinypkg==1.0", install=True, find_links=links)  # the engines go on serving and installing
        assert box.submit(tinypkg_version).result()[0] == "1.0"


def test_an_invalid_requirement_fails_on_the_client_before_anything_is_sent(start_launcher, links, env_dir):
    launcher = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        calls = box[0].whoami()["Calls"]
        for bad in ("tinypkg=3.0", "tinypkg==1.0; os_name ==", "", "--index-url=http://elsewhere"):
            with pytest.raises(InvalidRequirement) as caught:
                box.require(bad, install=True, find_links=links)
            assert repr(bad) in str(caught.value)
        with pytest.raises(InvalidRequirement):
            box.require("tinypkg==1.0", 3, install=True)
        assert box[0].whoami()["Calls"] == calls  # no call reached the engine
        # the engine checks what reaches it too: an installer option is never passed on
        with pytest.raises(InvalidRequirement):
            box[0].call("environment", {"requirements": ["--index-url=http://elsewhere"], "action": "activate"})
        assert box[0].ping() == "pong"
    assert folders(env_dir) == []
    with pytest.raises(InvalidRequirement):  # the shortcut checks before it connects to anything
        srpy.EngBox(["PYRO:srpy.engine@127.0.0.1:9"], requirements=["tinypkg=>1"])


def test_engines_without_an_index_install_from_shipped_wheels(start_launcher, tmp_path, env_dir):
    folder = tmp_path / "offline"
    folder.mkdir()
    make_wheel(folder, "tinypkg", "1.5", requires=["tinydep>=0.2"])
    make_wheel(folder, "tinydep", "0.3")
    launcher = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        with pytest.raises(InstallError):  # no index, no wheels: nothing to install from
            box.require("tinydep==0.3", install=True)
        results = box.require("tinypkg==1.5", install=True, find_links=str(folder))
        assert results[launcher.uris[0]]["packages"] == {"tinydep": "0.3", "tinypkg": "1.5"}
        assert box.submit(tinypkg_with_dep).result() == ("1.5", "0.3")


def test_a_set_the_engine_has_already_is_left_as_it_is(start_launcher, env_dir):
    launcher = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        results = box.require("Pyro5>=5", "serpent", install=True)  # srpy's own dependencies
        assert results[launcher.uris[0]]["status"] == "satisfied"
    assert folders(env_dir) == []


def test_srpyapp_envs_lists_and_removes(start_launcher, links, env_dir):
    launcher = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        key = box.require("tinypkg==1.0", install=True, find_links=links)[launcher.uris[0]]["key"]
    listed = envs_cli("list", "--env-dir", env_dir)
    assert listed.returncode == 0 and key in listed.stdout and "tinypkg==1.0" in listed.stdout, listed
    assert "in use" in listed.stdout  # the engine holds it active
    entries = json.loads(envs_cli("--env-dir", env_dir, "list", "--json").stdout)
    assert [(entry["key"], entry["requirements"], entry["in_use"]) for entry in entries] == [(key, ["tinypkg==1.0"], True)]
    refused = envs_cli("remove", key, "--env-dir", env_dir)
    assert refused.returncode == 1 and "in use" in refused.stderr, refused
    assert folders(env_dir) == [key]
    launcher.shutdown()
    removed = envs_cli("remove", "--all", "--env-dir", env_dir)
    assert removed.returncode == 0 and key in removed.stdout, removed
    assert folders(env_dir) == []
    nothing = envs_cli("remove", "nosuchkey", "--env-dir", env_dir)
    assert nothing.returncode == 1 and "no environment nosuchkey" in nothing.stderr
    assert envs_cli("remove", "--env-dir", env_dir).returncode == 2  # KEY or --all


@pytest.mark.slow  # about 9 s: the engine is ended by its time limit and replaced
def test_an_engine_restarted_after_a_time_limit_keeps_its_environment(start_launcher, links, env_dir):
    launcher = start_launcher(["--env-dir", env_dir], env=NO_INDEX)
    with srpy.EngBox(launcher.uris) as box:
        box.require("tinypkg==1.0", install=True, find_links=links)
        pid = box[0].whoami()["PID"]
        with pytest.raises(srpy.TaskTimeout):
            box[0].limited(1).exe("x = 10**10**8")  # holds the interpreter: the engine process ends, a fresh one serves
        assert box[0].whoami()["PID"] != pid
        assert box.submit(tinypkg_version).result(timeout=60)[0] == "1.0"
        assert box.require("tinypkg==1.0", install=True)[launcher.uris[0]]["status"] == "active"


def sleep_then_version(seconds):
    import time
    time.sleep(seconds)
    return tinypkg_version()[0]


@pytest.mark.slow  # about 8 s: an engine is killed and its launcher restarts it
def test_an_engine_that_comes_back_to_the_box_gets_its_environment(start_launcher, links, env_dir):
    import psutil
    launcher = start_launcher(["-n", "2", "--restart", "--env-dir", env_dir], count=2, env=NO_INDEX)
    with srpy.EngBox(launcher.uris, requirements=["tinypkg==1.0"], find_links=links) as box:
        victim = box[0]
        pid = victim.whoami()["PID"]
        futures = [box.submit(sleep_then_version, 2) for _ in range(2)]
        time.sleep(0.5)
        psutil.Process(pid).kill()  # a crash: its launcher starts a fresh engine process, with no environment
        assert [future.result(timeout=60) for future in futures] == ["1.0", "1.0"]
        deadline = time.monotonic() + 60
        while victim not in box.getEngines() and time.monotonic() < deadline:  # it answers again, rejoins
            time.sleep(0.2)
        assert victim in box.getEngines()
        assert victim.whoami()["PID"] != pid
        # the box gave the fresh process its environment as it took it back
        assert victim.eval("__import__('tinypkg').__version__") == "1.0"


def test_an_old_pip_installs_with_target(tmp_path, links, monkeypatch):
    """pip before 22.3 has no --python: the environment is filled with --target (real pip, in this process)."""
    from srpy import environments
    monkeypatch.setenv("SRPY_INSTALLER", "pip")
    monkeypatch.setattr(environments, "pip_takes_python", lambda: False)
    root = str(tmp_path / "envs")
    metadata, built = environments.build(["tinypkg==2.0"], root, links, None, "this process")
    assert built and metadata["installer"] == "pip" and metadata["packages"] == {"tinypkg": "2.0"}
    site = os.path.join(root, metadata["key"], metadata["site"][0])
    assert os.path.isfile(os.path.join(site, "tinypkg", "__init__.py"))
    assert environments.build(["tinypkg==2.0"], root, links, None, "this process")[1] is False  # cached


def simple_index(folder, wheel):
    """A PEP 503 index in C{folder} serving C{wheel} (its project's page links it); returns its file:// URL."""
    import shutil
    name = os.path.basename(wheel).split("-")[0]
    project = folder / name
    project.mkdir(parents=True)
    shutil.copy(wheel, project)
    (project / "index.html").write_text('<a href="%s">%s</a>' % ((os.path.basename(wheel),) * 2))
    (folder / "index.html").write_text('<a href="%s/">%s</a>' % (name, name))
    return folder.as_uri()


@pytest.mark.parametrize("installer", INSTALLERS)
def test_index_url_names_the_index_the_engines_install_from(start_launcher, tmp_path, env_dir, installer):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    index = simple_index(tmp_path / "simple", make_wheel(wheels, "tinypkg", "2.0"))
    # their default index is unreachable: what they install comes from index_url
    launcher = start_launcher(["--env-dir", env_dir], env=dict(NO_INDEX, SRPY_INSTALLER=installer))
    with srpy.EngBox(launcher.uris) as box:
        with pytest.raises(ValueError):
            box.require("tinypkg", index_url=index)  # only with install=True
        results = box.require("tinypkg", install=True, index_url=index)
        assert results[launcher.uris[0]]["packages"] == {"tinypkg": "2.0"}
        assert box.submit(tinypkg_version).result()[0] == "2.0"


def test_without_flock_a_race_leaves_one_environment(tmp_path, links, monkeypatch):
    """Where there is no flock (Windows), two builders race; the rename keeps one copy, the loser discards its own."""
    import threading
    from srpy import environments
    monkeypatch.setattr(environments, "fcntl", None)
    root = str(tmp_path / "envs")
    start = threading.Barrier(2)
    outcomes = []

    def builder():
        start.wait()
        outcomes.append(environments.build(["tinypkg==1.0"], root, links, None, "this process"))

    threads = [threading.Thread(target=builder) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 2
    assert outcomes[0][0]["created"] == outcomes[1][0]["created"]  # both use the one that was renamed into place
    assert folders(root) == [outcomes[0][0]["key"]]  # the loser's copy is gone: no temporary folder left
