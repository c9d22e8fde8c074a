"""
What travels to an engine's sandbox: the source files of local modules and packages.

>>> sorted(module_files("srpy.errors"))[:2]
['srpy/__init__.py', 'srpy/__main__.py']
"""

import ast
import functools
import importlib.util
import os
import sys
import types
from typing import Any, Dict, List, Optional, Tuple

from .errors import SRPyError


class ShippingError(SRPyError, ValueError):
    """A module cannot be shipped (not found, compiled, or not a source file)."""


def module_files(module: Any) -> Dict[str, str]:
    """
    The source files to ship for C{module} (a name or a module object), keyed by path relative to
    the sandbox. A module inside a package ships its whole top-level package, so that its relative
    imports and its package's C{__init__} come along.
    """
    name = module.__name__ if isinstance(module, types.ModuleType) else str(module)
    top = name.partition(".")[0]
    spec = _find(top)
    if spec.submodule_search_locations:
        files: Dict[str, str] = {}
        for location in spec.submodule_search_locations:
            files.update(package_sources(location, top))
        return files
    if name != top:
        raise ShippingError("%s is not a package, so it has no module %s" % (top, name))
    return {top + ".py": _read_source(spec.origin, name)}


def package_sources(location: str, top: str) -> Dict[str, str]:
    """The .py files under a package folder C{location}, keyed C{top/relative/path.py}."""
    files: Dict[str, str] = {}
    for folder, subfolders, names in os.walk(location):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__" and not d.startswith("."))
        for filename in sorted(names):
            if filename.endswith(".py"):
                full = os.path.join(folder, filename)
                relative = os.path.relpath(full, location).replace(os.sep, "/")
                with open(full, encoding="utf-8") as handle:
                    files[top + "/" + relative] = handle.read()
    return files


def _find(name: str) -> Any:
    if name in sys.builtin_module_names:
        raise ShippingError("%s is built into Python; it needs no shipping" % name)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        raise ShippingError("cannot find module %s here to ship it: %s" % (name, exc)) from None
    if spec is None:
        raise ShippingError("cannot find module %s here to ship it" % name)
    return spec


def _read_source(path: Any, name: str) -> str:
    if not path or not str(path).endswith(".py"):
        raise ShippingError("module %s is not a Python source file (%s): install it on the engine's "
                            "Python instead of shipping it" % (name, path))
    with open(path, encoding="utf-8") as handle:
        return handle.read()


# -- where a module comes from, and what local modules it needs ----------------------------------

@functools.lru_cache(maxsize=None)
def _library_dirs() -> Tuple[frozenset, frozenset]:
    """
    (the standard library's folders, site-packages' folders), real and case-normalized; computed
    on first use: sysconfig (and its data module) is not needed for an engine to start serving.
    """
    import sysconfig

    paths = sysconfig.get_paths()

    def real(names: Tuple[str, str]) -> frozenset:
        return frozenset(os.path.normcase(os.path.realpath(paths[name])) for name in names)
    return real(("stdlib", "platstdlib")), real(("purelib", "platlib"))


def module_origin(module: Any) -> str:
    """
    Where a module (object or name) comes from: 'builtin', 'stdlib', 'installed' (site-packages),
    'local' (a source file of the user's) or 'missing' (not importable here).

    >>> import json
    >>> module_origin(sys), module_origin(json), module_origin("no_such_module_here")
    ('builtin', 'stdlib', 'missing')
    """
    name = (module.__name__ if isinstance(module, types.ModuleType) else str(module)).partition(".")[0]
    if name in sys.builtin_module_names:
        return "builtin"
    if name in _STDLIB_NAMES:
        return "stdlib"
    if name == "srpy":  # every engine has it
        return "installed"
    origin = origin_of_path(_module_path(name))
    if origin == "local" and name in _distributed():  # read only when needed: it costs 0.2-0.4 s
        return "installed"  # an installed distribution provides it (editable installs too)
    return origin


_STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ()))
_MISSING = object()


def _module_path(name: str) -> Any:
    """The file of top-level module C{name} (None for one without a file), or L{_MISSING}."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        path = getattr(loaded, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return _MISSING
        path = spec.origin if spec.origin not in (None, "built-in", "frozen") else None
    return path


@functools.lru_cache(maxsize=1)
def _distributed() -> frozenset:
    """Top-level names that installed distributions provide (read once)."""
    import importlib.metadata  # on first use: it loads the email package, which nothing else here needs
    try:
        return frozenset(importlib.metadata.packages_distributions())
    except Exception:  # broken metadata of some distribution must not stop shipping
        return frozenset()


def origin_of_path(path: Any) -> str:
    """'missing', 'builtin', 'stdlib', 'installed' (site-packages) or 'local': where a module found at C{path} comes from."""
    if path is _MISSING:
        return "missing"
    if not path:
        return "builtin"
    path = os.path.normcase(os.path.realpath(path))
    stdlib, site_packages = _library_dirs()
    if any(path.startswith(site + os.sep) for site in site_packages):
        return "installed"
    if any(path.startswith(lib + os.sep) for lib in stdlib):
        return "stdlib"
    return "local"


def local_closure(module: Any) -> Dict[str, str]:
    """
    The files of C{module} (a local module) and of every local module they import, transitively
    (found by reading their import statements), keyed by sandbox-relative path.
    """
    name = module.__name__ if isinstance(module, types.ModuleType) else str(module)
    files: Dict[str, str] = {}
    todo, seen = [name.partition(".")[0]], set()
    while todo:
        top = todo.pop()
        if top in seen:
            continue
        seen.add(top)
        found = module_files(top)
        files.update(found)
        for path, source in found.items():
            for imported in imported_names(source, path):
                if imported not in seen and module_origin(imported) == "local":
                    todo.append(imported)
    return files


def imported_names(source: str, path: str = "<source>") -> List[str]:
    r"""
    The top-level names of the modules C{source} imports absolutely (relative imports stay
    inside its own package, which travels whole).

    >>> imported_names("import os.path, json as j\nfrom mylib.sub import x\nfrom . import y")
    ['json', 'mylib', 'os']
    """
    try:
        tree = ast.parse(source, path)
    except SyntaxError:
        return []
    names: set = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return sorted(names)
