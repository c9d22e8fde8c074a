"""
Functions that travel: a function becomes a I{bundle} of source text and what it needs, an engine
turns the bundle back into a function, and both sides key it by a hash so it travels once per engine.

How a function travels, in order of preference:
 - I{by reference}: a function or class importable by its module and qualified name (a module
   function of an installed package, C{math.sqrt}, C{operator.mul}) is imported on the engine;
   if its module is a local one (neither standard library nor installed), its source (the whole
   top-level package) travels with it;
 - I{by source}: functions of C{__main__}, of an interactive session, lambdas and nested functions
   travel as source, with what they use: the modules they reference (imported on the engine,
   local ones shipped), the helper functions and classes of the same module (as source), and plain
   global values that srpy can carry (as values, captured when the function is first sent).

Refused, with a L{FunctionShippingError} naming the object and what to do instead: closures over
local variables, bound methods of objects, and globals that cannot travel (sockets, open files...).

>>> import math
>>> pack(math.sqrt)["kind"]
'ref'
>>> bundle = pack(lambda x: x * x)
>>> bundle["kind"], bundle["source"]
('lambda', 'lambda x: x * x')
>>> build(bundle, None)(7)
49
"""

import ast
import builtins
import functools
import importlib
import inspect
import linecache
import sys
import textwrap
import types
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import codec, shipping
from .shipping import module_origin
from .errors import SRPyError

#: file name prefix of code compiled on an engine (tracebacks show it, with the source lines)
SOURCE_PREFIX = "<srpy"
SOURCE_FILE = "<srpy>"
_FUTURE_ANNOTATIONS = __import__("__future__").annotations.compiler_flag


class FunctionShippingError(SRPyError, TypeError):
    """A function (or something it uses) cannot travel to an engine."""


# -- packing (client side) ----------------------------------------------------------------------

_cache: "weakref.WeakKeyDictionary[Any, Dict[str, Any]]" = weakref.WeakKeyDictionary()
_strong_cache: Dict[Any, Dict[str, Any]] = {}


def pack(fn: Callable[..., Any]) -> Dict[str, Any]:
    """
    The bundle for C{fn} (cached per function object: globals are captured at the first call).
    Its C{'hash'} names it on engines.
    """
    try:
        cached = _cache.get(fn)
    except TypeError:  # not weak-referenceable (builtins)
        cached = _strong_cache.get(fn)
    if cached is not None:
        return cached
    bundle = _pack(fn)
    import hashlib  # on the first bundle: an engine needs no hashlib to start serving

    bundle["hash"] = hashlib.sha1(codec.dumps(sorted(bundle.items()))).hexdigest()
    try:
        _cache[fn] = bundle
    except TypeError:
        _strong_cache[fn] = bundle
    return bundle


def _pack(fn: Any) -> Dict[str, Any]:
    if isinstance(fn, functools.partial):
        raise FunctionShippingError("functools.partial objects cannot travel: use a lambda or a def "
                                    "that calls %r with the fixed arguments" % (fn.func,))
    bound_to = getattr(fn, "__self__", None)
    if inspect.ismethod(fn) or (isinstance(fn, types.BuiltinMethodType) and bound_to is not None
                                and not inspect.ismodule(bound_to)):
        raise FunctionShippingError("%r is a method bound to an object, which cannot travel: ship a "
                                    "module-level function that builds or receives the object" % (fn,))
    reference = _as_reference(fn)
    if reference is not None:
        return reference
    if not isinstance(fn, types.FunctionType):
        raise FunctionShippingError("%r (a %s) cannot travel: give a function defined with def or lambda"
                                    % (fn, type(fn).__name__))
    return _by_source(fn)


def _as_reference(fn: Any) -> Optional[Dict[str, Any]]:
    """A bundle that imports C{fn} by name, when that gives back the very same object."""
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    if not module_name or module_name == "__main__" or "<" in qualname:
        return None
    module = sys.modules.get(module_name)
    if module is None:
        return None
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    if target is not fn:
        return None
    origin = module_origin(module)
    files = shipping.local_closure(module_name) if origin == "local" else {}
    requires = [module_name.partition(".")[0]] if origin == "installed" else []
    return {"kind": "ref", "module": module_name, "qualname": qualname, "files": files, "requires": requires}


def _by_source(fn: types.FunctionType) -> Dict[str, Any]:
    if fn.__closure__:
        names = ", ".join(repr(n) for n in fn.__code__.co_freevars)
        raise FunctionShippingError(
            "function %s uses the local variable(s) %s of the function it was defined in, which cannot "
            "travel: pass them as arguments, or define %s at module level" % (fn.__qualname__, names, fn.__name__))
    state = _PackState(fn.__module__)
    main_source, kind = _function_source(fn)
    state.visit_code(fn.__code__, fn.__globals__, fn.__qualname__)
    return {
        "kind": kind, "name": fn.__name__, "source": main_source,
        "defaults": list(fn.__defaults__ or ()), "kwdefaults": dict(fn.__kwdefaults__ or {}),
        "imports": state.imports, "values": state.values, "helpers": state.helpers,
        "files": state.files, "requires": sorted(state.requires),
    }


class _PackState:
    """What a function's source needs on the engine, gathered by walking the names it uses."""

    def __init__(self, module_name: str) -> None:
        self.module_name = module_name
        self.imports: Dict[str, Tuple[str, str]] = {}
        self.values: Dict[str, Any] = {}
        self.helpers: List[str] = []
        self.files: Dict[str, str] = {}
        self.requires: Set[str] = set()
        self._seen: Set[str] = set()

    def visit_code(self, code: types.CodeType, namespace: Dict[str, Any], owner: str) -> None:
        for name in _global_names(code):
            if name in self._seen or name not in namespace:
                continue  # builtins, or names the function defines itself
            self._seen.add(name)
            self.visit_global(name, namespace[name], namespace, owner)

    def visit_global(self, name: str, value: Any, namespace: Dict[str, Any], owner: str) -> None:
        if inspect.ismodule(value):
            self.imports[name] = ("module", value.__name__)
            self._need_module(value)
            return
        if isinstance(value, (types.FunctionType, type)) and getattr(value, "__module__", None) == self.module_name:
            self._helper(name, value, namespace)
            return
        module = sys.modules.get(getattr(value, "__module__", None) or "")
        qualname = getattr(value, "__qualname__", None)
        if module is not None and qualname and _importable(module, qualname, value):
            self.imports[name] = ("from", module.__name__ + ":" + qualname)
            self._need_module(module)
            return
        try:
            codec.dumps(value)
        except (TypeError, ValueError):
            raise FunctionShippingError(
                "%s uses the global %r (a %s), which cannot travel: create it inside the function, or "
                "pass what the function needs as arguments" % (owner, name, type(value).__name__)) from None
        self.values[name] = value

    def _helper(self, name: str, value: Any, namespace: Dict[str, Any]) -> None:
        if isinstance(value, types.FunctionType):
            if value.__closure__:
                raise FunctionShippingError("helper %s is a closure and cannot travel" % value.__qualname__)
            source, _ = _function_source(value, keep_defaults=True)
            self.helpers.append(source)
            self.visit_code(value.__code__, namespace, value.__qualname__)
            return
        try:
            source = textwrap.dedent(inspect.getsource(value))
        except (OSError, TypeError):
            raise FunctionShippingError("the source of class %s is not available, so it cannot travel: "
                                        "put it in a module of its own" % value.__qualname__) from None
        self.helpers.append(source)
        for member in vars(value).values():
            if isinstance(member, (types.FunctionType, staticmethod, classmethod)):
                inner: Any = getattr(member, "__func__", member)
                self.visit_code(inner.__code__, namespace, value.__qualname__)

    def _need_module(self, module: types.ModuleType) -> None:
        origin = module_origin(module)
        if origin == "local":
            self.files.update(shipping.local_closure(module.__name__))
        elif origin == "installed":
            self.requires.add(module.__name__.partition(".")[0])


def _importable(module: types.ModuleType, qualname: str, value: Any) -> bool:
    if module.__name__ == "__main__" or "<" in qualname:
        return False
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target is value


def _global_names(code: types.CodeType) -> List[str]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return names


def _function_source(fn: types.FunctionType, keep_defaults: bool = False) -> Tuple[str, str]:
    """(source, 'def' or 'lambda'): a def without decorators and with defaults sent as values."""
    try:
        lines, _ = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        raise FunctionShippingError(
            "the source of %s is not available (defined in an interactive session or with exec?), so "
            "it cannot travel: define it in a file" % fn.__qualname__) from None
    text = textwrap.dedent("".join(lines))
    if fn.__name__ == "<lambda>":
        return _lambda_source(fn, text), "lambda"
    tree = ast.parse(text)
    node = tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise FunctionShippingError("cannot find the definition of %s in its source" % fn.__qualname__)
    node.decorator_list = []
    if not keep_defaults:
        node.args.defaults = [ast.Constant(None) for _ in node.args.defaults]
        node.args.kw_defaults = [None if d is None else ast.Constant(None) for d in node.args.kw_defaults]
    return ast.unparse(node), "def"


def _lambda_source(fn: types.FunctionType, text: str) -> str:
    """Find, among the lambdas on the lines of C{fn}'s source, the one whose code is C{fn}'s."""
    tree = _parse_fragment(text)
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Lambda):
                segment = ast.get_source_segment(text, node) or ast.unparse(node)
                if _same_code(segment, fn.__code__):
                    return segment
    raise FunctionShippingError(
        "cannot recover the source of the lambda at %s:%d (several lambdas on one line, or a line "
        "continued?): use a def instead" % (fn.__code__.co_filename, fn.__code__.co_firstlineno))


def _parse_fragment(text: str) -> Optional[ast.AST]:
    """Parse source lines that may be a fragment of a larger statement (trimmed until it parses)."""
    for candidate in (text, text.rstrip().rstrip(",").rstrip("\\"), "(" + text.strip().rstrip(",") + ")"):
        try:
            return ast.parse(candidate)
        except SyntaxError:
            continue
    lines = text.splitlines()
    for cut in range(len(lines), 0, -1):
        for tail in ("", ")", "))", ")))"):
            try:
                return ast.parse("\n".join(lines[:cut]) + tail)
            except SyntaxError:
                continue
    return None


def _same_code(source: str, code: types.CodeType) -> bool:
    try:
        compiled = compile(source, SOURCE_FILE, "eval")
    except SyntaxError:
        return False
    inner = next((c for c in compiled.co_consts if isinstance(c, types.CodeType)), None)
    return inner is not None and inner.co_code == code.co_code and inner.co_names == code.co_names \
        and inner.co_varnames == code.co_varnames


# -- building (engine side) ---------------------------------------------------------------------

def build(bundle: Dict[str, Any], install: Optional[Callable[[Dict[str, str]], Any]]) -> Callable[..., Any]:
    """
    Turn a bundle back into a function. C{install} receives the bundle's local module files
    (the engine writes them into its sandbox) before anything is imported.
    """
    if bundle.get("files") and install is not None:
        install(bundle["files"])
    if bundle["kind"] == "ref":
        return _import_attribute(bundle["module"], bundle["qualname"])
    namespace: Dict[str, Any] = {"__builtins__": builtins, "__name__": "__srpy_function__"}
    for alias, (how, what) in bundle.get("imports", {}).items():
        if how == "module":
            importlib.import_module(what)
            namespace[alias] = sys.modules[what]
        else:
            module, _, qualname = what.partition(":")
            namespace[alias] = _import_attribute(module, qualname)
    namespace.update(bundle.get("values", {}))
    for source in bundle.get("helpers", ()):
        exec(_compile(source, "exec", "helper"), namespace)
    if bundle["kind"] == "lambda":
        return eval(_compile(bundle["source"], "eval", "lambda"), namespace)
    exec(_compile(bundle["source"], "exec", bundle["name"]), namespace)
    fn = namespace[bundle["name"]]
    fn.__defaults__ = tuple(bundle.get("defaults") or ()) or None
    fn.__kwdefaults__ = dict(bundle.get("kwdefaults") or {}) or None
    return fn


def source_filename(source: str, label: str = "") -> str:
    """
    A file name for C{source} that tracebacks can show lines of: it is registered in C{linecache}.

    >>> import linecache
    >>> name = source_filename("x = 1\\n", "demo")
    >>> name.startswith("<srpy demo "), linecache.getline(name, 1)
    (True, 'x = 1\\n')
    """
    import hashlib

    digest = hashlib.sha1(source.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    name = "%s %s %s>" % (SOURCE_PREFIX, label or "code", digest)
    if name not in linecache.cache:
        lines = source.splitlines(True)
        linecache.cache[name] = (len(source), None, lines, name)
    return name


def _compile(source: str, mode: str, label: str) -> Any:
    flags = _FUTURE_ANNOTATIONS if mode == "exec" else 0
    return compile(source, source_filename(source, label), mode, flags, dont_inherit=True)


def _import_attribute(module_name: str, qualname: str) -> Any:
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target
