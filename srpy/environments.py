"""
Environments on an engine's host: one per requirement set, built once, kept in a cache folder and
activated in an engine process (the engine side of C{EngBox.require(..., install=True)}, and of
C{srpyapp envs}).

 - B{Where}: C{$SRPY_ENV_DIR}, else C{$XDG_CACHE_HOME/srpy/envs}, else C{~/.cache/srpy/envs}
   (C{%LOCALAPPDATA%\\srpy\\envs} on Windows); C{srpyapp --env-dir DIR} sets C{SRPY_ENV_DIR} for
   the engines it starts.
 - B{Key}: a hash of the requirement set (the strings as the client normalized them, sorted, each
   once) and of the Python that runs the engine (implementation, version, ABI flags, platform):
   engines of one host and one Python share an environment, another Python gets its own.
 - B{Build}: C{python -m venv --without-pip} into a temporary folder beside the cache entry, then
   C{uv pip install --python <venv python>} where uv is found (on C{PATH} or beside the engine's
   Python), else the engine's own pip, C{python -m pip --python <venv python> install} (a pip
   older than 22.3: C{--target} its site-packages); C{SRPY_INSTALLER=pip} or C{uv} forces one. Requirement strings are arguments after
   C{--}, never read by a shell. Only once the installer succeeded is the folder renamed into
   place, in one step; on failure it is removed, and L{InstallError<srpy.errors.InstallError>}
   names the engine, the requirements and the installer's last lines. A lock file
   (C{.KEY.lock}, C{fcntl.flock}) makes one engine of a host build while the others wait and then
   use what it built; the rename alone also keeps a race safe where there is no C{flock} (the
   loser discards its copy).
 - B{Activation}: the environment's site-packages (and what its C{.pth} files add) go on
   C{sys.path} right after the engine's sandbox (shipped modules still win) and before the
   engine's own site-packages; the environment the engine was started in is never changed. An
   engine has one active environment at a time, for all the work it runs. Another one replaces it
   unless a module already imported (from the engine's Python, or from the environment active
   before) is one the new environment provides at another version: then
   L{EnvironmentConflict<srpy.errors.EnvironmentConflict>} names the modules and both versions,
   and nothing changes (a process cannot hold two versions of one module: give conflicting sets
   engines of their own, or restart the engine).
 - An active environment holds a shared lock on its C{srpy-env.json}: C{srpyapp envs remove}
   refuses to remove one that a running engine uses.

>>> environment_key(["tinypkg==1.0", "other>=2"]) == environment_key(["other>=2", "tinypkg==1.0", "tinypkg==1.0"])
True
>>> len(environment_key(["tinypkg==1.0"]))
20
>>> check_requirements(["--index-url=http://elsewhere"])
Traceback (most recent call last):
srpy.errors.InvalidRequirement: not a requirement string: '--index-url=http://elsewhere'
"""

import argparse
import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .errors import EnvironmentConflict, InstallError, InvalidRequirement, SRPyError

try:
    import fcntl
except ImportError:  # Windows: the atomic rename alone keeps builds safe
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("srpy.environments")

#: where environments are kept, if set (C{srpyapp --env-dir} sets it for its engines)
ENV_DIR_VARIABLE = "SRPY_ENV_DIR"
#: C{uv} or C{pip}: the installer to use (default: uv where it is found, else pip)
INSTALLER_VARIABLE = "SRPY_INSTALLER"
#: the file that marks a complete environment, and describes it
MARKER = "srpy-env.json"
#: the file in an engine's sandbox naming its active environment: its keeper reads it when the
#: engine ends to stop a call, and the fresh engine it forks activates the same (L{restore})
ACTIVE_FILE = ".srpy-environment"
#: seconds an installer may run
INSTALL_TIMEOUT = 1800.0
#: how many of the installer's last lines an InstallError carries
OUTPUT_LINES = 20
_LONGEST_REQUIREMENT = 2000

#: the environment active in this process: {"key", "path", "entries", "handle"}, or None
_active: Optional[Dict[str, Any]] = None


def env_dir() -> str:
    """The folder where this host keeps its environments (it may not exist yet)."""
    configured = os.environ.get(ENV_DIR_VARIABLE)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(os.path.join("~", "AppData", "Local"))
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache"))
    return os.path.join(base, "srpy", "envs")


def check_requirements(requirements: Any) -> List[str]:
    """
    The requirement strings sorted, each once, after the checks an engine makes itself (the client
    parsed them with packaging already): each is a non-empty one-line string that cannot be read
    as an installer's option.

    @raise InvalidRequirement: one is not a requirement string.
    """
    if not isinstance(requirements, (list, tuple)) or not requirements:
        raise InvalidRequirement("requirements are a non-empty list of strings, not %r" % (requirements,))
    for requirement in requirements:
        if (not isinstance(requirement, str) or not requirement.strip() or requirement != requirement.strip()
                or requirement.startswith("-") or len(requirement) > _LONGEST_REQUIREMENT
                or any(char in requirement for char in "\0\r\n")):
            raise InvalidRequirement("not a requirement string: %r" % (requirement,))
    return sorted(set(requirements))


def python_identity() -> Dict[str, str]:
    """What of this Python an environment depends on: implementation, version, ABI flags, platform."""
    import sysconfig
    return {"implementation": sys.implementation.name, "python": platform.python_version(),
            "abi": getattr(sys, "abiflags", ""), "platform": sysconfig.get_platform()}


def environment_key(requirements: Sequence[str]) -> str:
    """The cache key of C{requirements} for this Python: 20 hex digits."""
    identity = dict(python_identity(), requirements=check_requirements(requirements))
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def active() -> Optional[Dict[str, str]]:
    """The environment active in this process, C{{'key', 'path'}}, or None."""
    return None if _active is None else {"key": _active["key"], "path": _active["path"]}


# -- the engine's call ----------------------------------------------------------------------------

def provide(request: Any, engine: str, sandbox: str) -> Dict[str, Any]:
    """
    The engine's C{environment} call. C{request}: C{requirements} (strings), C{names} (the
    distributions whose versions to report as this process imports them now), C{action}
    (C{'check'}: report only; C{'activate'}: build the environment if the host has none, and
    activate it), C{find_links} (a folder inside the sandbox, holding shipped wheels and sdists:
    the installer then uses no index unless C{index_url} is given) and C{index_url}.

    Returns C{{'key', 'path', 'status', 'versions', 'seconds', 'installer', 'packages'}}, C{status}
    being C{'active'} (it was already), C{'cached'} (the host had it, or another engine of the
    host built it meanwhile), C{'built'} (this engine built it) or, for C{'check'}, C{'absent'}.

    @param engine: how errors name this engine (its name and URI).
    @param sandbox: the engine's sandbox: C{find_links} is inside it, the environment goes after it.
    @raise InstallError: the installer failed (nothing is left of the attempt).
    @raise EnvironmentConflict: the environment provides, at another version, a module already imported.
    """
    if not isinstance(request, dict):
        raise TypeError("environment() takes a dict, not %s" % type(request).__name__)
    requirements = check_requirements(request.get("requirements"))
    action = request.get("action", "check")
    if action not in ("check", "activate"):
        raise ValueError("action is 'check' or 'activate', not %r" % (action,))
    names = request.get("names") or []
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise TypeError("names are a list of distribution names")
    key = environment_key(requirements)
    root = env_dir()
    path = os.path.join(root, key)
    info: Dict[str, Any] = {"key": key, "path": path, "versions": installed_versions(names), "status": "absent",
                            "seconds": 0.0, "installer": None, "packages": {}}
    metadata = read_marker(path)
    if metadata is not None:
        info.update(installer=metadata.get("installer"), packages=metadata.get("packages", {}))
    if _active is not None and _active["key"] == key:
        info["status"] = "active"
        return info
    if action == "check":
        info["status"] = "cached" if metadata is not None else "absent"
        return info
    start = time.perf_counter()
    built = False
    if metadata is None:
        find_links = request.get("find_links")
        if find_links is not None:
            find_links = _inside(sandbox, find_links)
        index_url = request.get("index_url")
        if index_url is not None and (not isinstance(index_url, str) or index_url.startswith("-")):
            raise ValueError("index_url is a URL, not %r" % (index_url,))
        metadata, built = build(requirements, root, find_links, index_url, engine)
    activate(path, metadata, sandbox)
    info.update(status="built" if built else "cached", seconds=time.perf_counter() - start,
                installer=metadata.get("installer"), packages=metadata.get("packages", {}))
    return info


def installed_versions(names: Sequence[str]) -> Dict[str, Optional[str]]:
    """C{{name: version}} of the distributions this process imports now (None: not installed)."""
    import importlib.metadata  # on first use: it loads the email package, which an engine does not need
    versions: Dict[str, Optional[str]] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _inside(sandbox: str, relative: Any) -> str:
    """The folder C{relative} inside C{sandbox}, refusing one outside it."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        raise ValueError("find_links is a folder inside the sandbox, not %r" % (relative,))
    folder = os.path.normpath(os.path.join(sandbox, relative))
    if not folder.startswith(os.path.normpath(sandbox) + os.sep) or not os.path.isdir(folder):
        raise ValueError("find_links %r is no folder inside the sandbox" % (relative,))
    return folder


# -- building ---------------------------------------------------------------------------------------

def read_marker(path: str) -> Optional[Dict[str, Any]]:
    """The description of the complete environment at C{path}, or None if there is none."""
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (OSError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


@contextlib.contextmanager
def _exclusive(lock_path: str) -> Iterator[None]:
    """Hold the lock file C{lock_path} (blocking) where the system has C{flock}."""
    if fcntl is None:
        yield
        return
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def build(requirements: Sequence[str], root: str, find_links: Optional[str], index_url: Optional[str],
          engine: str) -> Tuple[Dict[str, Any], bool]:
    """
    Build the environment of C{requirements} in C{root}, unless it is there (or another process
    built it while this one waited for the lock). Returns (its description, whether this call built it).

    @raise InstallError: the installer failed; its temporary folder is removed.
    """
    requirements = check_requirements(requirements)
    key = environment_key(requirements)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, key)
    with _exclusive(os.path.join(root, "." + key + ".lock")):
        existing = read_marker(final)
        if existing is not None:
            return existing, False
        _remove_leftovers(root, key, final)
        temporary = tempfile.mkdtemp(prefix=".tmp-%s-" % key, dir=root)
        try:
            metadata = _make(temporary, final, requirements, find_links, index_url, engine)
            try:
                os.rename(temporary, final)
            except OSError:
                existing = read_marker(final)  # another process won the race (no flock here): use its copy
                if existing is None:
                    raise
                shutil.rmtree(temporary, ignore_errors=True)
                return existing, False
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    log.info("built environment %s (%s) with %s in %.1f s", key, " ".join(requirements), metadata["installer"],
             metadata["seconds"])
    return metadata, True


def _remove_leftovers(root: str, key: str, final: str) -> None:
    """
    Under the key's lock, what an engine killed while building left (its temporary folder), and a
    folder at the final place without its marker (never made by srpy: it renames complete ones).
    """
    for name in os.listdir(root):
        if name.startswith(".tmp-%s-" % key):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if os.path.lexists(final):
        log.warning("%s is no complete environment: it is replaced", final)
        shutil.rmtree(final, ignore_errors=True)


def _make(temporary: str, final: str, requirements: List[str], find_links: Optional[str], index_url: Optional[str],
          engine: str) -> Dict[str, Any]:
    """Create the venv in C{temporary}, install into it, describe it (for its place C{final})."""
    start = time.perf_counter()
    _run([sys.executable, "-m", "venv", "--without-pip", "--prompt", "srpy-" + os.path.basename(final), temporary],
         "python -m venv", requirements, engine)
    python = venv_python(temporary)
    query = "import json, sysconfig; print(json.dumps([sysconfig.get_path('purelib'), sysconfig.get_path('platlib')]))"
    output = _run([python, "-I", "-c", query], "python -c sysconfig", requirements, engine)
    sites = []
    for site in json.loads(output.strip().splitlines()[-1]):
        relative = os.path.relpath(site, temporary)
        if relative not in sites and not relative.startswith(".."):
            sites.append(relative)
    if not sites:
        raise _install_error(engine, requirements, "the venv has no site-packages folder inside it", output.encode())
    name, command = installer_command(python, os.path.join(temporary, sites[0]))
    # uv's --default-index wins over its UV_INDEX_URL and UV_DEFAULT_INDEX (its --index-url does not)
    index_option = "--default-index" if name == "uv" else "--index-url"
    if find_links is not None:
        command += ["--find-links", find_links] + ([index_option, index_url] if index_url else ["--no-index"])
    elif index_url:
        command += [index_option, index_url]
    _run(command + ["--"] + requirements, name, requirements, engine)
    _repoint(temporary, final)
    modules: Dict[str, Tuple[str, str]] = {}
    for site in sites:
        modules.update(_top_levels(os.path.join(temporary, site)))
    metadata = {"key": os.path.basename(final), "requirements": requirements, "python": python_identity(),
                "installer": name, "created": time.time(), "site": sites, "modules": modules,
                "packages": _distributions([os.path.join(temporary, site) for site in sites]),
                "seconds": round(time.perf_counter() - start, 3)}
    with open(os.path.join(temporary, MARKER), "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=1, sort_keys=True)
    return metadata


def venv_python(folder: str) -> str:
    """The interpreter of the venv in C{folder}."""
    if os.name == "nt":
        return os.path.join(folder, "Scripts", "python.exe")
    return os.path.join(folder, "bin", "python")


def installer_command(python: str, site: str) -> Tuple[str, List[str]]:
    """
    (C{'uv'} or C{'pip'}, the command that installs into the venv of C{python}, whose
    site-packages is C{site}, without the requirements). A pip older than 22.3 has no
    C{--python}: it installs into C{site} with C{--target}.
    """
    choice = os.environ.get(INSTALLER_VARIABLE, "").strip().lower()
    if choice not in ("", "uv", "pip"):
        raise SRPyError("%s is 'uv' or 'pip', not %r" % (INSTALLER_VARIABLE, choice))
    if choice != "pip":
        uv = find_uv()
        if uv is not None:
            return "uv", [uv, "pip", "install", "--python", python]
        if choice == "uv":
            raise SRPyError("%s=uv, but no uv is found (on PATH, or beside %s)" % (INSTALLER_VARIABLE, sys.executable))
    options = ["--disable-pip-version-check", "--no-input"]
    if not pip_takes_python():
        return "pip", [sys.executable, "-m", "pip", "install", "--target", site] + options
    return "pip", [sys.executable, "-m", "pip", "--python", python, "install"] + options


def pip_takes_python() -> bool:
    """True when this Python's pip has C{--python} (pip 22.3 and later), or when it cannot tell (pip will say)."""
    import importlib.metadata
    import re
    try:
        version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        return True
    found = re.match(r"(\d+)\.(\d+)", version)
    return found is None or (int(found.group(1)), int(found.group(2))) >= (22, 3)


def find_uv() -> Optional[str]:
    """The uv program: on C{PATH}, or where C{pip install uv} put it beside this Python; None if neither."""
    found = shutil.which("uv")
    if found:
        return found
    beside = os.path.join(os.path.dirname(sys.executable), "uv.exe" if os.name == "nt" else "uv")
    return beside if os.path.isfile(beside) and os.access(beside, os.X_OK) else None


def _run(command: List[str], what: str, requirements: List[str], engine: str) -> str:
    """Run C{command} (no shell); its output; L{InstallError} with its last lines if it fails."""
    import subprocess
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=env, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise _install_error(engine, requirements, "%s did not finish within %d s" % (what, INSTALL_TIMEOUT),
                             exc.output or b"") from None
    except OSError as exc:
        raise _install_error(engine, requirements, "cannot run %s: %s" % (what, exc), b"") from None
    if done.returncode != 0:
        raise _install_error(engine, requirements, "%s failed (exit code %d)" % (what, done.returncode), done.stdout)
    return done.stdout.decode("utf-8", "replace")


def _install_error(engine: str, requirements: List[str], what: str, output: bytes) -> InstallError:
    lines = [line.rstrip() for line in output.decode("utf-8", "replace").splitlines() if line.strip()]
    last = "\n".join(lines[-OUTPUT_LINES:])
    message = "engine %s could not install %s: %s" % (engine, " ".join(requirements), what)
    return InstallError(message + (":\n" + last if last else ""), engine=engine, requirements=requirements,
                        output=last)


def _repoint(temporary: str, final: str) -> None:
    """
    Make the venv's scripts (their C{#!} lines, the activate scripts) name its final place: the
    venv and the installer wrote the temporary one, and the folder is about to be renamed.
    """
    old, new = temporary.encode(), final.encode()
    scripts = os.path.join(temporary, "Scripts" if os.name == "nt" else "bin")
    for name in os.listdir(scripts) if os.path.isdir(scripts) else ():
        path = os.path.join(scripts, name)
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 1 << 20:
            continue
        with open(path, "rb") as handle:
            data = handle.read()
        if old in data:
            with open(path, "wb") as handle:
                handle.write(data.replace(old, new))


def _distributions(sites: Sequence[str]) -> Dict[str, str]:
    """C{{distribution name: version}} of what is installed in the folders C{sites}."""
    found: Dict[str, str] = {}
    for site in sites:
        for name, (dist, version) in _top_levels(site).items():
            found[dist] = version
        for dist, version in _names_in(site):
            found.setdefault(dist, version)
    return dict(sorted(found.items()))


def _names_in(site: str) -> List[Tuple[str, str]]:
    import importlib.metadata
    return [(str(dist.metadata["Name"]), str(dist.version)) for dist in importlib.metadata.distributions(path=[site])]


# -- activation ----------------------------------------------------------------------------------

def activate(path: str, metadata: Dict[str, Any], sandbox: str) -> None:
    """
    Make the environment at C{path} the one this process imports from (see the module's text).

    @raise EnvironmentConflict: it provides, at another version, modules imported already; nothing changed.
    """
    global _active
    entries = [os.path.realpath(os.path.join(path, site)) for site in metadata.get("site", [])]
    entries = [site for site in dict.fromkeys(entries) if os.path.isdir(site)]
    if not entries:
        raise InstallError("environment %s has no site-packages folder: remove it (srpyapp envs remove %s)"
                           % (path, os.path.basename(path)))
    conflicts = _conflicts(entries, metadata.get("modules"))
    if conflicts:
        raise EnvironmentConflict(
            "this engine cannot use environment %s (%s): it imported already %s. One process holds one version "
            "of a module: run this requirement set on other engines, or restart this one"
            % (os.path.basename(path), " ".join(metadata.get("requirements", [])), "; ".join(conflicts)))
    handle = _hold_shared(os.path.join(path, MARKER))
    previous = _active
    if previous is not None:
        for entry in previous["entries"]:
            while entry in sys.path:
                sys.path.remove(entry)
        _release(previous["handle"])
    import importlib
    import site as site_module
    before = set(sys.path)
    for site in entries:
        site_module.addsitedir(site)  # appends it and what its .pth files name (and runs their import lines)
    added = [entry for entry in dict.fromkeys(sys.path) if entry not in before]
    for entry in added:
        sys.path.remove(entry)
    position = sys.path.index(sandbox) + 1 if sandbox in sys.path else 0
    sys.path[position:position] = added
    importlib.invalidate_caches()
    _active = {"key": os.path.basename(path), "path": path, "entries": added, "handle": handle}
    try:
        with open(os.path.join(sandbox, ACTIVE_FILE), "w", encoding="utf-8") as note:
            note.write(path)
    except OSError as exc:  # only a restart would miss it
        log.warning("cannot note the active environment in the sandbox: %s", exc)
    log.info("environment %s active (%s)", _active["key"], " ".join(metadata.get("requirements", [])))


def restore(path: str, sandbox: str) -> bool:
    """
    Activate again, in a fresh engine process, the environment at C{path} that the engine it
    replaces had active (its keeper passes it on); False, and a warning, if it cannot be.
    """
    metadata = read_marker(path)
    if metadata is None:
        log.warning("environment %s, active before the restart, is gone: this engine has none", path)
        return False
    try:
        activate(path, metadata, sandbox)
        return True
    except (SRPyError, OSError) as exc:
        log.warning("environment %s, active before the restart, cannot be activated again: %s", path, exc)
        return False


def noted(sandbox: str) -> Optional[str]:
    """The environment the engine of C{sandbox} had active (see L{ACTIVE_FILE}), or None."""
    try:
        with open(os.path.join(sandbox, ACTIVE_FILE), encoding="utf-8") as note:
            return note.read().strip() or None
    except OSError:
        return None


def _hold_shared(path: str) -> Any:
    """The file C{path}, open and share-locked (so that C{srpyapp envs remove} sees it in use)."""
    handle = open(path, "rb")
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
    return handle


def _release(handle: Any) -> None:
    try:
        handle.close()  # closing it drops the lock
    except OSError:
        pass


def _conflicts(entries: List[str], modules: Any = None) -> List[str]:
    """
    What the environment of C{entries} provides (C{modules}: C{{top-level name: (distribution,
    version)}}, as its marker records them) that this process imported at another version.
    """
    import importlib.metadata
    if not isinstance(modules, dict):
        modules = {}
        for site in entries:
            modules.update(_top_levels(site))
    found = []
    for top, (dist, version) in sorted(modules.items()):
        module = sys.modules.get(top)
        origin = _folder_of(module) if module is not None else None
        if origin is None or origin in entries:
            continue
        # the same distribution where the imported module comes from (a name lookup, not a scan); none
        # there: the module is not that distribution's (the standard library's, the sandbox's...)
        loaded = next(iter(importlib.metadata.distributions(path=[origin], name=dist)), None)
        if loaded is not None and str(loaded.version) != version:
            found.append("%s (%s %s from %s; the environment has %s %s)" % (top, dist, loaded.version, origin, dist,
                                                                           version))
    return found


def _folder_of(module: Any) -> Optional[str]:
    """The folder that holds top-level C{module} (as a sys.path entry would name it), or None."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    folder = os.path.dirname(os.path.realpath(path))
    return os.path.dirname(folder) if hasattr(module, "__path__") else folder


def _top_levels(site: str) -> Dict[str, Tuple[str, str]]:
    """C{{top-level module name: (distribution, version)}} of the distributions installed in C{site}."""
    try:
        stamp = os.stat(site).st_mtime_ns
    except OSError:
        return {}
    return _top_levels_at(site, stamp)


@functools.lru_cache(maxsize=64)
def _top_levels_at(site: str, stamp: int) -> Dict[str, Tuple[str, str]]:
    import importlib.metadata
    found: Dict[str, Tuple[str, str]] = {}
    for dist in importlib.metadata.distributions(path=[site]):
        name, version = str(dist.metadata["Name"]), str(dist.version)
        tops = set((dist.read_text("top_level.txt") or "").split())
        if not tops:
            for file in dist.files or ():
                parts = file.parts
                if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith((".dist-info", ".data")):
                    continue
                if len(parts) > 1:
                    tops.add(parts[0])
                elif parts[0].endswith(".py"):
                    tops.add(parts[0][:-3])
                elif parts[0].endswith((".so", ".pyd")):
                    tops.add(parts[0].split(".")[0])
        for top in tops:
            found[top] = (name, version)
    return found


def _canonical(name: str) -> str:
    import re
    return re.sub(r"[-_.]+", "-", name).lower()


# -- srpyapp envs ---------------------------------------------------------------------------------

def list_environments(root: Optional[str] = None) -> List[Dict[str, Any]]:
    """The complete environments in C{root} (default L{env_dir}), each described, with C{path}, C{size} and C{in_use}."""
    root = root or env_dir()
    found = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        path = os.path.join(root, name)
        metadata = read_marker(path) if not name.startswith(".") else None
        if metadata is not None:
            found.append(dict(metadata, key=name, path=path, size=_size(path), in_use=_in_use(path)))
    return found


def remove_environment(key: str, root: Optional[str] = None, force: bool = False) -> str:
    """
    Remove the environment C{key} from C{root} (default L{env_dir}); returns its path.

    @raise SRPyError: there is none, or a running engine uses it (unless C{force}).
    """
    root = root or env_dir()
    if not key or key.startswith(".") or os.sep in key or (os.altsep and os.altsep in key):
        raise SRPyError("no environment %r in %s" % (key, root))
    path = os.path.join(root, key)
    if not os.path.isdir(path):
        raise SRPyError("no environment %s in %s" % (key, root))
    with _exclusive(os.path.join(root, "." + key + ".lock")):
        if not force and _in_use(path):
            raise SRPyError("environment %s is in use by a running engine (stop it first, or --force)" % key)
        doomed = tempfile.mkdtemp(prefix=".removing-%s-" % key, dir=root)
        os.rename(path, os.path.join(doomed, key))  # gone from its place at once: no half-removed environment
        shutil.rmtree(doomed, ignore_errors=True)
    try:
        os.remove(os.path.join(root, "." + key + ".lock"))
    except OSError:
        pass
    return path


def remove_leftovers(root: Optional[str] = None) -> List[str]:
    """Remove what builds and removals that were killed left in C{root} (their hidden folders); returns them."""
    root = root or env_dir()
    removed = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else ():
        if name.startswith((".tmp-", ".removing-")):
            key = name.split("-")[1]
            with _exclusive(os.path.join(root, "." + key + ".lock")):  # not one a builder is filling now
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(name)
        elif name.startswith(".") and name.endswith(".lock") and not os.path.isdir(os.path.join(root, name[1:-5])):
            os.remove(os.path.join(root, name))  # a failed build's: a builder that waits on it still builds safely
    return removed


def _in_use(path: str) -> bool:
    """True when an engine holds the environment at C{path} active (its shared lock on the marker)."""
    if fcntl is None:
        return False
    try:
        with open(os.path.join(path, MARKER), "rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def _size(path: str) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def main(args: Sequence[str]) -> int:
    """C{srpyapp envs list|remove ...}: list or remove this host's environments; returns the exit code."""
    parser = argparse.ArgumentParser(prog="srpyapp envs", description="List or remove the environments engines of "
                                     "this host built for EngBox.require(..., install=True).")
    parser.add_argument("--env-dir", metavar="DIR", default=None,
                        help="where the environments are (default: $%s, else ~/.cache/srpy/envs)" % ENV_DIR_VARIABLE)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="each environment: key, size, in use, requirements")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    removing = commands.add_parser("remove", help="remove environments by key (or --all)")
    removing.add_argument("keys", nargs="*", metavar="KEY")
    removing.add_argument("--all", action="store_true", help="every environment (and leftovers of killed builds)")
    removing.add_argument("--force", action="store_true", help="even one a running engine uses")
    for sub in (listing, removing):
        sub.add_argument("--env-dir", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    options = parser.parse_args(list(args))
    root = os.path.abspath(os.path.expanduser(options.env_dir)) if options.env_dir else env_dir()
    if options.command == "list":
        found = list_environments(root)
        if options.json:
            print(json.dumps(found, indent=1, sort_keys=True))
            return 0
        if not found:
            print("no environments in %s" % root)
            return 0
        print("%d environment%s in %s" % (len(found), "" if len(found) == 1 else "s", root))
        for entry in found:
            print("%s  %7.1f MB  %-6s  python %s  %s  %s" % (
                entry["key"], entry["size"] / 1e6, "in use" if entry["in_use"] else "", entry["python"].get("python", "?"),
                entry.get("installer", "?"), " ".join(entry.get("requirements", []))))
        return 0
    if bool(options.keys) == bool(options.all):
        parser.error("remove takes KEY... or --all")
    keys = [entry["key"] for entry in list_environments(root)] if options.all else options.keys
    code = 0
    for key in keys:
        try:
            print("removed %s" % remove_environment(key, root, options.force))
        except SRPyError as exc:
            print("srpyapp envs: error: %s" % exc, file=sys.stderr)
            code = 1
    if options.all:
        for name in remove_leftovers(root):
            print("removed leftover %s" % os.path.join(root, name))
    return code
