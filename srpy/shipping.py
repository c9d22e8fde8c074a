"""
What travels to an engine's sandbox: the source files of local modules and packages.

>>> sorted(module_files("srpy.errors"))[:2]
['srpy/__init__.py', 'srpy/benchmark.py']
"""

import importlib.util
import os
import sys
import types
from typing import Any, Dict

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
            files.update(_package_files(location, top))
        return files
    if name != top:
        raise ShippingError("%s is not a package, so it has no module %s" % (top, name))
    return {top + ".py": _read_source(spec.origin, name)}


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


def _package_files(location: str, top: str) -> Dict[str, str]:
    files = {}
    for folder, subfolders, names in os.walk(location):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__" and not d.startswith("."))
        for filename in sorted(names):
            if filename.endswith(".py"):
                full = os.path.join(folder, filename)
                relative = os.path.relpath(full, location).replace(os.sep, "/")
                files[top + "/" + relative] = _read_source(full, top)
    return files
