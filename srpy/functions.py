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

Classes of C{__main__} that travel as records (dataclasses, enums, named tuples, exception
classes: L{srpy.records}) are not part of a function's own source: each travels as a I{main class}
bundle (L{pack_main_class}): its source and what it needs, executed into one module of the
engine's named for the client (L{srpy.records.main_alias}), so that the records and exceptions an
engine sends back name a class the client resolves to its own C{__main__}. A function of
C{__main__} that uses one imports it from that module, its bundle carrying the class's.

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
import itertools
import linecache
import sys
import textwrap
import threading
import types
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import codec, shipping
from .shipping import module_origin
from .errors import SRPyError

#: the prefix of the module an engine keeps a client's __main__ classes in (L{srpy.records.MAIN_PREFIX})
MAIN_PREFIX = "srpy_main_"

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
    The bundle for C{fn} (cached per function object: globals are captured at the first call;
    a function that uses a class of C{__main__} defined again since, a notebook cell run again,
    is packed again, with the class its name now holds, as the function would use locally).
    Its C{'hash'} names it on engines.
    """
    try:
        cached = _cache.get(fn)
    except TypeError:  # not weak-referenceable (builtins)
        cached = _strong_cache.get(fn)
    if cached is not None and not (cached.get("main_classes") and _main_classes_redefined(cached)):
        return cached
    bundle = _pack(fn)
    import hashlib  # on the first bundle: an engine needs no hashlib to start serving

    bundle["hash"] = hashlib.sha1(codec.dumps(sorted(bundle.items()))).hexdigest()
    try:
        _cache[fn] = bundle
    except TypeError:
        _strong_cache[fn] = bundle
    return bundle


def _main_classes_redefined(bundle: Dict[str, Any]) -> bool:
    """Whether a class of C{__main__} that C{bundle} carries is no longer the one its name holds there."""
    records = sys.modules.get("srpy.records")
    own = records.main_alias() if records is not None else ""
    main = vars(sys.modules["__main__"])
    for carried in bundle["main_classes"]:
        if carried["module"] != own:  # an engine passing its client's classes on: they are what it was given
            continue
        now = main.get(carried["qualname"].partition(".")[0])
        if not isinstance(now, type) or _main_cache.get(now, {}).get("serial") != carried["serial"]:
            return True
    return False


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
        "files": state.files, "requires": sorted(state.requires), "main_classes": state.main_classes,
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
        self.main_classes: List[Dict[str, Any]] = []
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
        bundle = self._main_class_bundle(value) if self._main_classes_apart else None
        if bundle is not None:
            # a record class of __main__ lives in the engine's module for its client, where replies name it
            self.main_classes.append(bundle)
            self.imports[name] = ("from", bundle["module"] + ":" + value.__qualname__)
            self.files.update(bundle["files"])
            self.requires.update(bundle["requires"])
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

    #: whether record classes of __main__ travel as bundles of their own (not within a main class's module)
    _main_classes_apart = True

    @staticmethod
    def _main_class_bundle(value: Any) -> Optional[Dict[str, Any]]:
        """
        The main class bundle of C{value} if it is a record class of C{__main__} (a client's), or
        of a client's C{__main__} module on an engine (the bundle it was built from: an engine
        spawning a function of its client's passes the class on); None otherwise.
        """
        module_name = getattr(value, "__module__", None) if isinstance(value, type) else None
        if not (module_name == "__main__" or (isinstance(module_name, str) and module_name.startswith(MAIN_PREFIX))):
            return None  # the common case: srpy.records is not loaded for it
        from . import records

        if not records.is_record_class(value):
            return None
        if module_name == "__main__":
            return pack_main_class(value)
        return received_bundle(module_name + ":" + value.__qualname__)

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


def pack_module(module_name: str) -> Dict[str, Any]:
    """
    A bundle that makes an engine import the module C{module_name}, imported here: its local
    files travel with it (the whole top-level package and the local modules it imports), an
    installed one is required there, a standard one is imported. For an engine passing a record's
    module on to a peer that has not imported it.

    @raise FunctionShippingError: it is not imported here, or it is a client's C{__main__} module.
    """
    import hashlib

    module = sys.modules.get(module_name)
    if not isinstance(module, types.ModuleType) or module_name.startswith(MAIN_PREFIX) \
            or module_name in ("__main__", "__mp_main__"):
        raise FunctionShippingError("module %s is not imported here as a module that can travel" % module_name)
    origin = module_origin(module)
    files = shipping.local_closure(module_name) if origin == "local" else {}
    requires = [module_name.partition(".")[0]] if origin == "installed" else []
    bundle = {"kind": "module", "module": module_name, "files": files, "requires": requires}
    bundle["hash"] = hashlib.sha1(codec.dumps(sorted(bundle.items()))).hexdigest()
    return bundle


#: the bundles of record classes' modules this process was given and built (see L{received_bundle})
_received: Dict[str, Dict[str, Any]] = {}


def received_bundle(reference: str) -> Optional[Dict[str, Any]]:
    """
    The bundle this process built that holds the record class C{reference} (C{'module:qualname'}):
    for a client's C{__main__} module, the main class bundle of its top-level class; for another
    module, the bundle that made this process import it (a function's by reference, or a
    module's); None if none. An engine passes it on to a peer unchanged.
    """
    module_name, _, qualname = reference.partition(":")
    if module_name.startswith(MAIN_PREFIX):
        found = _received.get(module_name + ":" + qualname.partition(".")[0])
        return None if found is None else dict(found, qualname=qualname)
    return _received.get(module_name)


def _keep(bundle: Dict[str, Any]) -> None:
    if bundle["kind"] == "main_class":
        _received[bundle["module"] + ":" + bundle["qualname"].partition(".")[0]] = bundle
    elif bundle["kind"] in ("ref", "module") and type(bundle.get("module")) is str:
        _received.setdefault(bundle["module"], bundle)


_main_cache: "weakref.WeakKeyDictionary[type, Dict[str, Any]]" = weakref.WeakKeyDictionary()
_main_serials = itertools.count(1)


def pack_main_class(kind: type) -> Dict[str, Any]:
    """
    The bundle of C{kind}, a class of C{__main__} (or a class nested in one), to be built into
    the engine's module L{srpy.records.main_alias}: C{'definitions'}, the sources of the
    top-level class and of the functions and classes of C{__main__} it uses (dependencies first,
    each executed there once per text), with the C{imports} and C{values} they need, as a
    function's. Cached per class object; its C{'serial'} makes a class redefined under the same
    name (a notebook cell run again) a bundle of its own.

    @raise FunctionShippingError: its source cannot be found, or something it uses cannot travel.
    """
    top_name = kind.__qualname__.partition(".")[0]
    top = vars(sys.modules["__main__"]).get(top_name)
    if not isinstance(top, type):
        raise FunctionShippingError("__main__ holds no class %s" % top_name)
    cached = _main_cache.get(top)
    if cached is None:
        with _main_pack_lock:  # one bundle per class object, whichever thread packs it first
            cached = _main_cache.get(top) or _pack_main_class(top, top_name)
    if top is kind:
        return cached
    return dict(cached, qualname=kind.__qualname__)


_main_pack_lock = threading.RLock()


def _pack_main_class(top: type, top_name: str) -> Dict[str, Any]:
    """The bundle of C{top}, a top-level class of C{__main__} (see L{pack_main_class}), kept for it."""
    import hashlib

    from . import records, sources

    source = sources.class_source(top)
    if source is None:
        raise FunctionShippingError(
            "the source of class __main__.%s cannot be found (defined with exec, or typed where no text is "
            "kept?), so it cannot travel: define it in a file or a notebook cell" % top_name)
    state = _MainPackState()
    state.visit_source(top_name, source, vars(sys.modules["__main__"]))
    bundle = {"kind": "main_class", "module": records.main_alias(), "qualname": top_name,
              "definitions": state.definitions + state.aliases, "imports": state.imports, "values": state.values,
              "files": state.files, "requires": sorted(state.requires), "serial": next(_main_serials)}
    bundle["hash"] = hashlib.sha1(codec.dumps(sorted(bundle.items()))).hexdigest()
    _main_cache[top] = bundle
    return bundle


class _MainPackState(_PackState):
    """What a class of C{__main__} needs in its module on the engine: everything of C{__main__} it uses, as source."""

    _main_classes_apart = False

    def __init__(self) -> None:
        super().__init__("__main__")
        self.definitions: List[Tuple[str, str]] = []
        self.aliases: List[Tuple[str, str]] = []

    def visit_source(self, name: str, source: str, namespace: Dict[str, Any]) -> None:
        """Visit the globals C{source} (defining C{name}) loads, then place it after what it needs."""
        self._seen.add(name)
        code = compile(source, SOURCE_FILE, "exec", _FUTURE_ANNOTATIONS, dont_inherit=True)
        for used in _loaded_names(code):
            if used in self._seen or used not in namespace:
                continue
            self._seen.add(used)
            self.visit_global(used, namespace[used], namespace, name)
        self.definitions.append((name, source))

    def _helper(self, name: str, value: Any, namespace: Dict[str, Any]) -> None:
        if isinstance(value, types.FunctionType):
            if value.__closure__:
                raise FunctionShippingError("helper %s is a closure and cannot travel" % value.__qualname__)
            source, _ = _function_source(value, keep_defaults=True)
        else:
            from . import sources

            found = sources.class_source(value)
            if found is None:
                raise FunctionShippingError("the source of class __main__.%s is not available, so it cannot "
                                            "travel: define it in a file or a notebook cell" % value.__qualname__)
            source = found
        real_name = getattr(value, "__name__", name)
        if real_name != name:  # used under another name (P = Point): define it, then bind that name too
            if real_name not in self._seen:
                self.visit_source(real_name, source, namespace)
            self.aliases.append((name, "%s = %s\n" % (name, real_name)))  # after every definition
            return
        self.visit_source(name, source, namespace)


#: the instructions that read a global (or, in a class body, a name of the class or a global)
_LOADS = frozenset(("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"))


def _loaded_names(code: types.CodeType) -> List[str]:
    """The names C{code} and the code it holds read as globals, without those it stores itself (its own definitions)."""
    import dis  # only for a class of __main__

    loaded: List[str] = []
    stored: Set[str] = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in _LOADS and isinstance(instruction.argval, str):
            loaded.append(instruction.argval)
        elif instruction.opname in ("STORE_NAME", "STORE_GLOBAL"):
            stored.add(instruction.argval)
    # a class body reads __name__ (its __module__) and __qualname__: the module's own, on the engine
    names = [name for name in loaded if name not in stored and not (name.startswith("__") and name.endswith("__"))]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_loaded_names(const))
    return names


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
        found = _import_attribute(bundle["module"], bundle["qualname"])
        _keep(bundle)
        return found
    if bundle["kind"] == "module":
        module: Any = importlib.import_module(bundle["module"])
        _keep(bundle)
        return module  # a module, not a function: a peer builds it for its records (srpy.peerrecords)
    if bundle["kind"] == "main_class":
        return _build_main_class(bundle, install)
    for main_class in bundle.get("main_classes", ()):
        _build_main_class(main_class, install)
    namespace: Dict[str, Any] = {"__builtins__": builtins, "__name__": "__srpy_function__"}
    _bind_imports(namespace, bundle)
    for source in bundle.get("helpers", ()):
        exec(_compile(source, "exec", "helper"), namespace)
    if bundle["kind"] == "lambda":
        return eval(_compile(bundle["source"], "eval", "lambda"), namespace)
    exec(_compile(bundle["source"], "exec", bundle["name"]), namespace)
    fn = namespace[bundle["name"]]
    fn.__defaults__ = tuple(bundle.get("defaults") or ()) or None
    fn.__kwdefaults__ = dict(bundle.get("kwdefaults") or {}) or None
    return fn


def _bind_imports(namespace: Dict[str, Any], bundle: Dict[str, Any]) -> None:
    for alias, (how, what) in bundle.get("imports", {}).items():
        if how == "module":
            importlib.import_module(what)
            namespace[alias] = sys.modules[what]
        else:
            module, _, qualname = what.partition(":")
            namespace[alias] = _import_attribute(module, qualname)
    namespace.update(bundle.get("values", {}))


def _build_main_class(bundle: Dict[str, Any], install: Optional[Callable[[Dict[str, str]], Any]]) -> type:
    """
    Execute a main class bundle's definitions into its module (made on the first, kept in
    C{sys.modules}: records name it), each text once; return its class.
    """
    module_name = bundle["module"]
    if type(module_name) is not str or not module_name.startswith(MAIN_PREFIX) \
            or not module_name.isidentifier():
        raise ValueError("a main class bundle names the module %r, which is not srpy's for a client's __main__"
                         % (module_name,))
    if bundle.get("files") and install is not None:
        install(bundle["files"])
    with _main_lock:  # the engine's define and its peers' (which take no engine lock) may give it at once
        return _build_main_class_locked(bundle, module_name)


_main_lock = threading.Lock()


def _build_main_class_locked(bundle: Dict[str, Any], module_name: str) -> type:
    import hashlib

    module = sys.modules.get(module_name)
    if module is None:
        module = types.ModuleType(module_name, "the classes of __main__ of one srpy client, shipped as source")
        module.__dict__["__builtins__"] = builtins
        module.__dict__["__srpy_sources__"] = {}
        sys.modules[module_name] = module
    namespace = module.__dict__
    _bind_imports(namespace, bundle)
    done = namespace["__srpy_sources__"]
    for name, source in bundle["definitions"]:
        digest = hashlib.sha1(source.encode("utf-8", "surrogatepass")).hexdigest()
        if done.get(name) != digest:  # the same text again keeps the class (and its records' identity)
            exec(_compile(source, "exec", name), namespace)
            done[name] = digest
    found = _import_attribute(module_name, bundle["qualname"])
    _keep(bundle)
    return found


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
