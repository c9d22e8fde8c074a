"""
What a job needs to run somewhere else: the imports of a script (or of a module, or of a
function's module), found by reading its source, never by running it, and what each one is here.

 - C{stdlib}: the standard library (built-in modules and C{__future__} too): every Python has it.
 - C{installed}: a distribution installed here provides it (C{yaml} is PyYAML's): a requirement,
   pinned to the version installed here (C{PyYAML==6.0.2}).
 - C{local}: one of your own files, beside the script or on C{sys.path} outside site-packages and
   the standard library: srpy ships it (L{srpy.shipping}) instead of installing it. Its own imports
   are read too, transitively, each file once.
 - C{missing}: found nowhere here.
 - C{srpy}: srpy itself, which every engine has (no requirement).

L{analyze} returns it as a mapping; C{srpyapp analyze SCRIPT} (L{main}) prints the same as JSON.

>>> found = analyze("srpy.analysis")
>>> found["local"], found["missing"], found["imports"]["ast"]["kind"], found["imports"]["srpy"]["kind"]
([], [], 'stdlib', 'srpy')
"""

import argparse
import ast
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import platform
import re
import sys
import types
import warnings
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from .errors import AnalysisError
from .shipping import origin_of_path

log = logging.getLogger("srpy.analysis")

#: the standard library's top-level names (3.10+; on 3.9 a module's place on disk decides, L{srpy.shipping.origin_of_path})
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | frozenset(sys.builtin_module_names) | {"__future__"}
#: what an C{except} clause names that also catches an ImportError
_CATCHES_IMPORT_ERROR = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def analyze(target: Any) -> Dict[str, Any]:
    """
    What C{target} imports and what each import is here, as a plain mapping that C{json.dumps} takes.

    C{target} is a script (a path, C{str} or C{os.PathLike}, ending in C{.py} or naming an existing
    file), a module (its name, or the module object) or a function or method (its module's file is
    read). The source is parsed, never run or imported. Every import counts: C{import a.b},
    C{from a import b} (C{a.b} when it is a submodule), relative imports (resolved against the file's
    package), imports inside functions, C{if} and C{try} blocks, and C{importlib.import_module("a")}
    or C{__import__("a")} with a literal name; only imports under C{if TYPE_CHECKING:} are left out
    (they never run). The local modules found are read in turn.

    The mapping's keys:
     - C{python}: this interpreter's version, e.g. C{"3.11.7"}.
     - C{requirements}: sorted C{"distribution==version"} pins of the installed distributions that
       provide the imports (found through C{importlib.metadata}, so C{yaml} gives PyYAML and C{sklearn}
       scikit-learn). srpy itself is never one (every engine has it; see C{imports}).
     - C{local}: sorted top-level names of your own modules and packages (not in site-packages nor
       the standard library) that srpy ships instead; a module or function target's own module
       counts, a script does not (it runs as C{__main__}).
     - C{missing}: sorted import names found nowhere here, but the optional ones: a top-level name,
       a submodule of a local package that is not there (C{"mypkg.nothere"}), or a relative import
       that has no package to be relative to, as written (C{".helpers"}).
     - C{optional}: sorted names imported only inside C{try:} blocks whose C{except} catches an
       C{ImportError}: the job runs without them. Those installed here are among C{requirements}
       too (the job then behaves where it runs as it does here); missing ones are not in C{missing}.
     - C{unpinned}: sorted names installed here (in site-packages) that no distribution claims, so
       no pin can be given; usually empty.
     - C{imports}: for every top-level name, C{{"kind": "stdlib" | "installed" | "local" | "missing"
       | "srpy", "at": ["file:line", ...], "optional": bool}}, plus C{"requirements"} (its pins) for an
       installed one, C{"path"} (its file or folder) for a local one. Files are named relative to the
       script's folder (the folder above the target's top-level package for a module).

    @raise AnalysisError: a file does not parse (the message names the file and the line), a module
        named is not found or has no Python source.
    @raise FileNotFoundError: the script does not exist.
    @raise TypeError: C{target} is none of the above.
    """
    importlib.invalidate_caches()  # files written a moment ago (a test's, an editor's) are seen
    path, name = _source_of(target)
    root = _root_folder(path, name)
    walk = _Walk(root)
    walk.read(path, name, _package_of(name, path))
    return walk.result()


# -- the target ----------------------------------------------------------------------------------

def _source_of(target: Any) -> Tuple[str, str]:
    """(the source file to read, its module name: C{"__main__"} for a script) of an L{analyze} target."""
    if isinstance(target, (types.FunctionType, types.MethodType)):
        function = target.__func__ if isinstance(target, types.MethodType) else target
        module = sys.modules.get(function.__module__)
        if module is None:
            raise AnalysisError("cannot analyse %s: its module %s is not loaded here"
                                % (function.__qualname__, function.__module__))
        return _source_of(module)
    if isinstance(target, types.ModuleType):
        spec = getattr(target, "__spec__", None)
        name = spec.name if spec is not None else target.__name__  # __main__ run by -m knows its real name
        path = getattr(target, "__file__", None)
        if not path or not str(path).endswith(".py"):
            raise AnalysisError("cannot analyse module %s: it has no Python source file (%s)" % (name, path))
        return os.path.abspath(path), name
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if isinstance(target, str):
        if target.endswith(".py") or os.sep in target or os.path.isfile(target):
            if os.path.isdir(target):
                raise AnalysisError("cannot analyse %s: it is a folder; name the script in it" % target)
            if not os.path.isfile(target):
                raise FileNotFoundError(2, "no such script", target)
            return os.path.abspath(target), "__main__"
        return _module_source(target)
    raise TypeError("analyze() takes a script path, a module (name or object) or a function, not %s"
                    % type(target).__name__)


def _module_source(name: str) -> Tuple[str, str]:
    """The source file of module C{name}, found without importing it (nor its parent packages)."""
    if not all(part.isidentifier() for part in name.split(".")):
        raise AnalysisError("cannot analyse %r: not a module name, nor an existing file" % name)
    spec = _Finder([]).spec(name)
    if spec is None:
        raise AnalysisError("cannot analyse %s: no module (nor file) of that name here" % name)
    if not spec.has_location or not str(spec.origin).endswith(".py"):
        raise AnalysisError("cannot analyse module %s: it has no Python source file (%s)" % (name, spec.origin))
    return os.path.abspath(spec.origin), name


def _root_folder(path: str, name: str) -> str:
    """The folder a script or module is imported from: its own, or the one above its top-level package."""
    folder = os.path.dirname(path)
    if name != "__main__":
        for _ in range(name.count(".") + (os.path.basename(path) == "__init__.py")):
            folder = os.path.dirname(folder)
    return folder


def _package_of(name: str, path: str) -> str:
    """The package that module C{name} (file C{path}) resolves relative imports against ("" for none)."""
    if name == "__main__":
        return ""
    return name if os.path.basename(path) == "__init__.py" else name.rpartition(".")[0]


# -- reading one file --------------------------------------------------------------------------

class _Import(NamedTuple):
    """One import statement's module: C{level} dots, then C{module}; C{names} of a C{from} import."""

    module: str
    level: int
    names: Tuple[str, ...]
    line: int
    optional: bool


class _ImportFinder(ast.NodeVisitor):
    """Every import of a module's syntax tree, wherever it is, as L{_Import}s in C{found}."""

    def __init__(self) -> None:
        self.found: List[_Import] = []
        self._guarded = 0  # inside how many try: bodies whose except catches an ImportError

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(_Import(alias.name, 0, (), node.lineno, self._guarded > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = tuple(alias.name for alias in node.names if alias.name != "*")
        self.found.append(_Import(node.module or "", node.level, names, node.lineno, self._guarded > 0))

    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
        if (called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith(".")):
            self.found.append(_Import(node.args[0].value, 0, (), node.lineno, self._guarded > 0))
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if _names_type_checking(node.test):  # typing's imports never run
            for statement in node.orelse:
                self.visit(statement)
        else:
            self.generic_visit(node)

    def visit_Try(self, node: Any) -> None:
        guarded = any(_catches_import_error(handler) for handler in node.handlers)
        self._guarded += guarded
        for statement in node.body:
            self.visit(statement)
        self._guarded -= guarded
        for statement in node.handlers + node.orelse + node.finalbody:  # a fallback's imports are needed
            self.visit(statement)

    visit_TryStar = visit_Try  # 3.11's except*


def _names_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:  # a bare except
        return True
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any((getattr(kind, "id", None) or getattr(kind, "attr", None)) in _CATCHES_IMPORT_ERROR
               for kind in caught)


def read_imports(path: str, shown: str = "") -> List[_Import]:
    """
    The imports of source file C{path} (named C{shown} in errors).

    @raise AnalysisError: it does not parse; the message names the file and the line.
    """
    with open(path, "rb") as handle:
        source = handle.read()  # bytes: the parser honours a coding declaration
    try:
        with warnings.catch_warnings():  # the file's own warnings (invalid escapes...) are not ours to show
            warnings.simplefilter("ignore")
            tree = ast.parse(source, path)
    except SyntaxError as exc:
        raise AnalysisError("%s line %s: %s" % (shown or path, exc.lineno, exc.msg)) from None
    except ValueError as exc:  # null bytes, on some versions
        raise AnalysisError("%s: %s" % (shown or path, exc)) from None
    finder = _ImportFinder()
    finder.visit(tree)
    return finder.found


def absolute_name(imported: _Import, package: str) -> Optional[str]:
    """
    The absolute module name of a (maybe relative) import made in C{package}; None when it has no
    package to be relative to, or goes above its top-level package.

    >>> absolute_name(_Import("helpers", 2, ("x",), 1, False), "pkg.sub"), absolute_name(_Import("", 1, (), 1, False), "")
    ('pkg.helpers', None)
    """
    if not imported.level:
        return imported.module
    bits = package.rsplit(".", imported.level - 1) if package else []
    if len(bits) < imported.level:
        return None
    return bits[0] + "." + imported.module if imported.module else bits[0]


# -- where a module is ---------------------------------------------------------------------------

class _Finder:
    """
    Finds modules' specs the way an import would, first in C{folders} then on C{sys.path}, without
    importing anything (submodules are looked for in their parent package's folders).
    """

    def __init__(self, folders: List[str]) -> None:
        self.folders = folders
        self._specs: Dict[str, Any] = {}

    def spec(self, name: str) -> Any:
        if name not in self._specs:
            self._specs[name] = self._find(name)
        return self._specs[name]

    def _find(self, name: str) -> Any:
        parent, _, _ = name.rpartition(".")
        if parent:
            above = self.spec(parent)
            locations = above.submodule_search_locations if above is not None else None
            return importlib.machinery.PathFinder.find_spec(name, list(locations)) if locations else None
        spec = importlib.machinery.PathFinder.find_spec(name, self.folders + sys.path)
        if spec is None:
            try:  # meta path finders (editable installs) find a top-level name without importing it
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
        return spec


def _spec_path(spec: Any) -> Optional[str]:
    """A spec's file, or its first folder (a namespace package); None for a built-in or frozen module."""
    if spec.has_location and spec.origin:
        return str(spec.origin)
    locations = list(spec.submodule_search_locations or ())
    return locations[0] if locations else None


def _providers() -> Dict[str, Tuple[str, ...]]:
    """
    {top-level import name: the distributions that provide it}. Read afresh by each L{analyze} that
    meets an installed import (about 0.1 s for 150 distributions): what was installed since counts.
    """
    import importlib.metadata as metadata  # loads the email package: only when an installed import is met
    finder = getattr(metadata, "packages_distributions", None)  # 3.10+
    if finder is not None:
        try:
            return {name: tuple(dict.fromkeys(dists)) for name, dists in finder().items()}
        except Exception as exc:  # one distribution's broken metadata: read them one by one instead
            log.warning("importlib.metadata.packages_distributions failed (%s); reading each distribution", exc)
    return providers_from_records(metadata.distributions())


def providers_from_records(distributions: Iterable[Any]) -> Dict[str, Tuple[str, ...]]:
    """
    {top-level import name: distribution names} from each distribution's C{top_level.txt}, or, where
    it has none, from the files its C{RECORD} lists (what 3.10's C{packages_distributions} does).
    """
    found: Dict[str, List[str]] = {}
    for dist in distributions:
        try:
            name = dist.metadata["Name"]
            top_level = dist.read_text("top_level.txt")
            tops = top_level.split() if top_level else _tops_of_files(dist.files or ())
        except Exception as exc:  # a broken distribution must not hide the others
            log.warning("cannot read the metadata of %s: %s", getattr(dist, "_path", dist), exc)
            continue
        for top in tops:
            if name and name not in found.setdefault(top, []):
                found[top].append(name)
    return {top: tuple(names) for top, names in found.items()}


def _tops_of_files(files: Iterable[Any]) -> List[str]:
    tops = []
    for file in files:
        parts = str(file).replace("\\", "/").split("/")
        first = parts[0]
        if first in ("..", "__pycache__") or first.endswith((".dist-info", ".egg-info", ".data")):
            continue
        top = first if len(parts) > 1 else (first.split(".")[0] if first.endswith((".py", ".so", ".pyd")) else "")
        if top.isidentifier() and top not in tops:
            tops.append(top)
    return tops


def _canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (packaging's canonicalize_name, when it is installed)."""
    try:
        from packaging.utils import canonicalize_name
    except ImportError:
        return re.sub(r"[-_.]+", "-", name).lower()
    return str(canonicalize_name(name))


def _pins(top: str, dotted: Set[str], providers: Dict[str, Tuple[str, ...]]) -> List[str]:
    """The C{name==version} pins of the distributions that provide import C{top} (C{dotted}: its imported submodules)."""
    import importlib.metadata as metadata
    names = list(providers.get(top, ()))
    if len(names) > 1:  # a namespace package (google.*): keep the distributions that hold what is imported
        names = _narrowed(names, dotted) or names
    pins = []
    for name in names:
        try:
            pins.append("%s==%s" % (name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            log.warning("distribution %s (of import %s) has no version here", name, top)
    return pins


def _narrowed(names: List[str], dotted: Set[str]) -> List[str]:
    import importlib.metadata as metadata
    wanted = {name.replace(".", "/") for name in dotted if "." in name}
    kept = []
    for name in names:
        try:
            files = {str(file).replace("\\", "/") for file in metadata.distribution(name).files or ()}
        except metadata.PackageNotFoundError:
            continue
        if any(file.startswith(path + "/") or file.startswith(path + ".") for path in wanted for file in files):
            kept.append(name)
    return kept


# -- the walk over a job's files -----------------------------------------------------------------

class _Walk:
    """The state of one L{analyze}: the files read, and what each top-level import name is."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.finder = _Finder([root])
        self.seen: Set[str] = set()
        self.todo: List[Tuple[str, str, str]] = []
        self.names: Dict[str, Dict[str, Any]] = {}  # top-level name: its entry in the result's imports
        self.dotted: Dict[str, Set[str]] = {}  # top-level name: the dotted names imported under it
        self.missing_parts: Dict[str, bool] = {}  # a local package's missing submodule: optional?
        self._providers: Optional[Dict[str, Tuple[str, ...]]] = None

    @property
    def providers(self) -> Dict[str, Tuple[str, ...]]:
        """L{_providers}, read on first use."""
        if self._providers is None:
            self._providers = _providers()
        return self._providers

    def read(self, path: str, name: str, package: str) -> None:
        """Read C{path} (module C{name}) and, in turn, every local file it leads to."""
        self.todo.append((path, name, package))
        if name != "__main__":  # a module target is itself what would travel (or be installed)
            self._note(name, None, False)
        while self.todo:  # breadth first: a job's own imports before its modules' imports
            path, name, package = self.todo.pop(0)
            if path in self.seen:
                continue
            self.seen.add(path)
            shown = self._shown(path)
            for imported in read_imports(path, shown):
                self._resolve(imported, package, "%s:%d" % (shown, imported.line))

    def _shown(self, path: str) -> str:
        relative = os.path.relpath(path, self.root)
        return relative.replace(os.sep, "/") if not relative.startswith("..") else path

    def _resolve(self, imported: _Import, package: str, at: str) -> None:
        base = absolute_name(imported, package)
        if base is None:  # Python raises ImportError here: nothing to be relative to
            dots = "." * imported.level
            for written in [dots + imported.module] if imported.module else [dots + n for n in imported.names]:
                self._entry(written, at, imported.optional)["kind"] = "missing"
            return
        modules = [base] + [base + "." + name for name in imported.names]
        for position, module in enumerate(modules):
            kind = self._note(module, at, imported.optional)
            if kind == "local":
                # a from-import's names may be attributes, not submodules: only the base must exist
                self._follow(module, must_exist=position == 0, optional=imported.optional)

    def _entry(self, top: str, at: Optional[str], optional: bool) -> Dict[str, Any]:
        entry = self.names.get(top)
        if entry is None:
            entry = self.names[top] = {"kind": None, "at": [], "optional": True}
        if at is not None and at not in entry["at"]:
            entry["at"].append(at)
        entry["optional"] = entry["optional"] and optional
        return entry

    def _note(self, module: str, at: Optional[str], optional: bool) -> str:
        """Record that C{module} is imported at C{at}; returns what its top-level name is."""
        top = module.partition(".")[0]
        self.dotted.setdefault(top, set()).add(module)
        entry = self._entry(top, at, optional)
        if entry["kind"] is None:
            entry.update(self._kind(top))
        return str(entry["kind"])

    def _kind(self, top: str) -> Dict[str, Any]:
        """What top-level name C{top} is here: {"kind": ...}, with C{"path"} for a local one."""
        if top in _STDLIB:
            return {"kind": "stdlib"}
        if top == "srpy":
            return {"kind": "srpy"}
        spec = self.finder.spec(top)
        if spec is None:
            return {"kind": "missing"}
        path = _spec_path(spec)
        if path is None:  # built in, or frozen
            return {"kind": "stdlib"}
        kind = origin_of_path(path)
        beside = os.path.dirname(path) == self.root or os.path.dirname(os.path.dirname(path)) == self.root
        if kind == "local" and not beside and top in self.providers:
            kind = "installed"  # an editable install, or a .pth's folder: a distribution provides it
        entry: Dict[str, Any] = {"kind": kind}
        if kind == "local":  # a package is its folder
            entry["path"] = self._shown(os.path.dirname(path) if os.path.basename(path) == "__init__.py" else path)
        return entry

    def _follow(self, module: str, must_exist: bool, optional: bool) -> None:
        """Queue a local module's file for reading; note a local package's submodule that is not there."""
        spec = self.finder.spec(module)
        if spec is None:
            if must_exist and "." in module:
                self.missing_parts[module] = self.missing_parts.get(module, True) and optional
            return
        if spec.has_location and str(spec.origin).endswith(".py"):
            path = os.path.abspath(str(spec.origin))
            if path not in self.seen:
                self.todo.append((path, module, _package_of(module, path)))

    def result(self) -> Dict[str, Any]:
        imports = {}
        requirements: Dict[str, str] = {}
        unpinned = []
        for top in sorted(self.names):
            entry = self.names[top]
            if entry["kind"] == "installed":
                entry["requirements"] = _pins(top, self.dotted.get(top, set()), self.providers)
                if not entry["requirements"]:
                    unpinned.append(top)
                for pin in entry["requirements"]:
                    requirements[_canonical(pin.partition("==")[0])] = pin
            entry["at"].sort(key=_place)
            imports[top] = entry

        def kind(name: str) -> List[str]:
            return sorted(top for top, entry in imports.items() if entry["kind"] == name and not entry["optional"])
        missing = kind("missing") + [name for name, optional in self.missing_parts.items() if not optional]
        return {
            "python": platform.python_version(),
            "requirements": [requirements[name] for name in sorted(requirements)],
            "local": sorted(top for top, entry in imports.items() if entry["kind"] == "local"),
            "missing": sorted(missing),
            "optional": sorted(top for top, entry in imports.items() if entry["optional"]),
            "unpinned": unpinned,
            "imports": imports,
        }


def _place(at: str) -> Tuple[str, int]:
    """C{"file:line"} as (file, line), to sort a name's places by file, then line by line."""
    path, _, line = at.rpartition(":")
    return path, int(line)


# -- srpyapp analyze -----------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    C{srpyapp analyze SCRIPT [-o FILE]}: L{analyze}'s mapping as JSON; returns the exit code: 0,
    2 (one line on stderr) when SCRIPT is not there or does not parse, 1 when FILE cannot be written.
    """
    parser = argparse.ArgumentParser(
        prog="srpyapp analyze", description="Print what a Python script imports, and what each import is here "
                                            "(standard library, installed with its version, your own module, "
                                            "missing), as JSON. The script is read, not run.")
    parser.add_argument("script", metavar="SCRIPT", help="the script to read")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the JSON to FILE instead of stdout")
    options = parser.parse_args(argv)
    try:
        if not os.path.isfile(options.script):
            raise AnalysisError("%s: %s" % (options.script, "not a file" if os.path.exists(options.script)
                                            else "no such file"))
        found = analyze(options.script)
    except (AnalysisError, OSError) as exc:
        print("srpyapp analyze: error: %s" % " ".join(str(exc).split()), file=sys.stderr)
        return 2
    text = json.dumps(found, indent=2) + "\n"
    if not options.output:
        sys.stdout.write(text)
        return 0
    try:
        with open(options.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        print("srpyapp analyze: error: -o %s: %s" % (options.output, exc.strerror or exc), file=sys.stderr)
        return 1
    return 0
