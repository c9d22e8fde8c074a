"""
Records that keep their types on the wire: dataclass instances (frozen and nested included),
C{enum.Enum}/C{IntEnum}/C{Flag} members, C{typing.NamedTuple} (and C{collections.namedtuple})
instances, and the classes of user exceptions. L{srpy.codec} loads this module only when it meets
such a value or such a tag, and passes its own callbacks to encode and decode the values inside.

A class travels B{by reference} (its module's name and qualified name), never as code. The
receiving side resolves it only from modules already imported in its own process
(C{sys.modules}, read as dictionaries: no import, no module C{__getattr__}, no descriptor), then
checks its kind: only a dataclass, an C{Enum} subclass, a C{NamedTuple} class (a tuple subclass
with C{_fields}) or an exception class is ever rebuilt; anything else is a C{ValueError}. Rebuilding
runs none of the class's code: a dataclass instance is C{object.__new__} plus its declared fields
set with C{object.__setattr__} (no C{__init__}, no C{__post_init__}); an enum member is looked up
by name among the class's members; a named tuple is C{tuple.__new__(cls, items)}; an exception is
made by its builtin base's C{__new__}, its C{args} and attributes written directly.

A class of C{__main__} (a script's, a notebook's) cannot be imported by a receiver: the client
ships its source to an engine instead, into a module named for the client (L{main_alias}), and a
record of it travels by reference to that module; a reference to this process's own name
resolves to the class defined in this process's C{__main__}.

This module does not import L{srpy.codec} (codec imports it, lazily).

>>> import enum
>>> class Colour(enum.Enum):
...     RED = 1
>>> reference(Colour) is None  # defined in a doctest, no module holds it: it cannot be resolved
True
"""

import dataclasses
import enum
import os
import sys
import threading
import types
import weakref
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from . import errors

#: the tag kinds this module writes and reads
KINDS = frozenset(("dataclass", "enum", "flag", "namedtuple"))
#: modules whose classes never resolve by name: the receiver's C{__main__} is another program
_UNRESOLVED_MODULES = frozenset(("__main__", "__mp_main__"))
#: the prefix of the module an engine keeps a client's C{__main__} classes in (see L{main_alias})
MAIN_PREFIX = "srpy_main_"
_main_alias = ""

_references: "weakref.WeakKeyDictionary[type, Optional[str]]" = weakref.WeakKeyDictionary()


class _Met(threading.local):
    """The record classes this thread encoded since the client last looked (L{take_met})."""

    def __init__(self) -> None:
        self.classes: Set[type] = set()


_met = _Met()


def main_alias() -> str:
    """
    The name this process's C{__main__} is known by on the engines it sends records to:
    C{srpy_main_} and 12 hex digits drawn once per process (a forked child keeps them, with the
    C{__main__} it was forked with). The client ships each C{__main__} record class's source
    into a module of that name on an engine (L{srpy.functions.pack_main_class}); a record of such
    a class travels as C{'srpy_main_...:qualname'}, and one coming back under this process's own
    name resolves to the class in this process's C{__main__}.
    """
    global _main_alias
    if not _main_alias:
        _main_alias = MAIN_PREFIX + os.urandom(6).hex()
    return _main_alias


def is_record_class(kind: Any) -> bool:
    """Whether C{kind} is a class of the kinds that travel as records: dataclass, Enum, named tuple, exception."""
    return isinstance(kind, type) and (
        dataclasses.is_dataclass(kind) or issubclass(kind, (enum.Enum, BaseException))
        or (issubclass(kind, tuple) and type(getattr(kind, "_fields", None)) is tuple))


def reference(kind: type) -> Optional[str]:
    """
    C{'module:qualname'} of C{kind} when a receiver can find it by that name (its module is
    imported here and holds it under that name, and is not C{__main__}); for a class of
    C{__main__} whose source srpy can find (L{srpy.sources}), C{'srpy_main_...:qualname'} (see
    L{main_alias}); None otherwise.
    """
    try:
        found = _references[kind]
    except KeyError:
        pass
    else:
        if found is None or not found.startswith(MAIN_PREFIX) or _still_named(kind, found):
            return found
        # a class of a client's __main__ defined again since under its name: its values cannot be named
    module_name = getattr(kind, "__module__", None)
    qualname = getattr(kind, "__qualname__", None)
    found = None
    if isinstance(module_name, str) and isinstance(qualname, str) and "<" not in qualname:
        if module_name == "__main__":
            if _lookup(module_name, qualname) is kind and main_source(kind) is not None:
                found = main_alias() + ":" + qualname
        elif module_name not in _UNRESOLVED_MODULES and _lookup(module_name, qualname) is kind:
            found = module_name + ":" + qualname
    _references[kind] = found
    return found


def _still_named(kind: type, found: str) -> bool:
    """Whether C{found} (a reference to a class of C{__main__}, here or a client's) still names C{kind}."""
    module_name = "__main__" if kind.__module__ == "__main__" else found.partition(":")[0]
    return _lookup(module_name, kind.__qualname__) is kind


def main_source(kind: type) -> Optional[str]:
    """The source of the top-level class of C{__main__} that holds C{kind} (C{kind} itself, or its outer class)."""
    from . import sources  # only for a class of __main__: inspect and ast are not loaded otherwise

    outer = _lookup("__main__", kind.__qualname__.partition(".")[0])
    return sources.class_source(outer) if isinstance(outer, type) else None


def _lookup(module_name: str, qualname: str) -> Any:
    """The object C{module_name}'s C{qualname} names, read from dictionaries only (no code runs); None if none."""
    module = sys.modules.get(module_name)
    if not isinstance(module, types.ModuleType):
        return None
    target: Any = module
    for part in qualname.split("."):
        namespace = vars(target) if isinstance(target, (types.ModuleType, type)) else None
        if namespace is None or part not in namespace:
            return None
        target = namespace[part]
    return target


def take_met() -> List[type]:
    """The record classes encoded by this thread since the last call (the client ships their modules)."""
    met = _met.classes
    if not met:  # the common case, asked on every call a client makes once a record has been met
        return []
    _met.classes = set()
    return list(met)


def _note(kind: type) -> None:
    _met.classes.add(kind)


# -- sending -------------------------------------------------------------------------------------

def encode(value: Any, where: Any, encode_value: Callable[[Any, Any], Any], tagged: Callable[[str, Any], tuple],
           item: Any) -> Optional[tuple]:
    """
    The tagged form of C{value}, a record, with its nested values encoded by C{encode_value(v,
    where)}; None for an int, float, str or tuple subclass whose class cannot be resolved by name
    (it travels as its base type, as before). C{item} is codec's step for "an item of".

    @raise SerializationError: for a dataclass or a plain enum whose class cannot be resolved by name.
    """
    kind = type(value)
    if isinstance(value, BaseException):  # a dataclass exception too: it travels as an exception
        return None
    ref = reference(kind)
    if ref is None:
        if isinstance(value, (int, float, complex, str, bytes, tuple)):
            return None
        now = _lookup("__main__", kind.__qualname__) if kind.__module__ == "__main__" else None
        if isinstance(now, type) and now is not kind and "<" not in kind.__qualname__:
            raise errors.SerializationError(
                "cannot send a value of type __main__.%s: the class was defined again since (a notebook cell run "
                "again), and this value is of the old one" % kind.__qualname__)
        if kind.__module__ == "__main__" and "<" not in kind.__qualname__:
            raise errors.SerializationError(
                "cannot send a value of type __main__.%s: srpy cannot find the source of its class (defined with "
                "exec, or typed where no text is kept?), and a class of __main__ travels as its source: define it "
                "in a file or a notebook cell, or in a module of its own" % kind.__qualname__)
        if kind.__module__.startswith(MAIN_PREFIX):
            raise errors.SerializationError(
                "cannot send a value of type %s: its class, of a client's __main__, was defined again there since "
                "(a notebook cell run again): this value is of the old class" % kind.__qualname__)
        raise errors.SerializationError(
            "cannot send a value of type %s.%s: its class is not importable by its module and name (a class of "
            "a function or of code run with exec): define it at the top of a module or of your script, which "
            "srpy ships to engines" % (kind.__module__, kind.__qualname__))
    _note(kind)
    if isinstance(value, enum.Flag):
        name = value._name_
        if name is not None and kind._member_map_.get(name) is value:
            return tagged("enum", (ref, name))
        members = _flag_members(value)
        combined = 0
        for member in members:
            combined |= member._value_
        if combined != value._value_:
            raise errors.SerializationError("cannot send the %s %r: its value is not a combination of its "
                                            "class's members" % (kind.__qualname__, value))
        return tagged("flag", (ref, tuple(member._name_ for member in members)))
    if isinstance(value, enum.Enum):
        return tagged("enum", (ref, value._name_))
    if isinstance(value, tuple) and type(getattr(kind, "_fields", None)) is tuple:
        return tagged("namedtuple", (ref, tuple(encode_value(v, (where, item)) for v in tuple.__iter__(value))))
    names = tuple(field.name for field in dataclasses.fields(value))
    values = []
    for name in names:
        try:
            field_value = getattr(value, name)
        except AttributeError:
            raise errors.SerializationError("cannot send a %s without its field %r (at %s)"
                                            % (kind.__qualname__, name, where)) from None
        values.append(encode_value(field_value, (where, name)))
    return tagged("dataclass", (ref, names, tuple(values)))


def _flag_members(value: enum.Flag) -> List[Any]:
    """The canonical (one-bit) members a Flag combination holds, once each (aliases share their member)."""
    found: List[Any] = []
    for member in type(value)._member_map_.values():
        bits = member._value_
        if isinstance(bits, int) and bits > 0 and bits & (bits - 1) == 0 and bits & value._value_ == bits \
                and member not in found:
            found.append(member)
    return found


# -- receiving -----------------------------------------------------------------------------------

def _bad(text: str) -> ValueError:
    return ValueError("bad srpy data (%s)" % text)


def resolve(ref: Any, what: str) -> type:
    """
    The class C{ref} (C{'module:qualname'}) names, from modules already imported here only.

    @raise ValueError: for a reference that is malformed, to a module not imported here, or to no class.
    """
    if type(ref) is not str or ref.count(":") != 1:
        raise _bad("a tagged %s whose class is not named as 'module:qualname'" % what)
    module_name, qualname = ref.split(":")
    if module_name in _UNRESOLVED_MODULES or not qualname or "<" in qualname:
        raise _bad("a tagged %s of class %s, which cannot be resolved by name" % (what, _clip(ref)))
    if module_name == main_alias():  # a class of this process's __main__, back from an engine
        kind = _main_class(qualname)
        if kind is None:
            raise _bad("a tagged %s of class %s: __main__ holds no such class" % (what, _clip(ref)))
        return kind
    if not isinstance(sys.modules.get(module_name), types.ModuleType):
        missing = errors.RecordModuleNotImported(
            "bad srpy data (a tagged %s of class %s: module %s is not imported here (srpy never imports a module "
            "because of a message: import it, or on an engine ship it with the value's sender))"
            % (what, _clip(ref), _clip(module_name)))
        missing.reference = ref  # what a sender ships, or what an engine asks its peer for
        raise missing
    kind = _lookup(module_name, qualname)
    if kind is None and module_name.startswith(MAIN_PREFIX):
        # a client's __main__ module is given class by class: this one has not been given here yet
        missing = errors.RecordModuleNotImported(
            "bad srpy data (a tagged %s of class %s: that class of a client's __main__ was not given here)"
            % (what, _clip(ref)))
        missing.reference = ref
        raise missing
    if not isinstance(kind, type):
        raise _bad("a tagged %s of class %s: module %s holds no such class" % (what, _clip(ref), _clip(module_name)))
    return kind


def _main_class(qualname: str) -> Optional[type]:
    """The class of this process's C{__main__} named C{qualname} (defined there, not imported into it); None if none."""
    kind = _lookup("__main__", qualname)
    if isinstance(kind, type) and type.__dict__["__module__"].__get__(kind) == "__main__":
        return kind
    return None


def _class_attribute(cls: type, name: str) -> Any:
    """C{cls}'s attribute C{name} as its classes' C{__dict__}s hold it (no metaclass, no descriptor asked); None if none."""
    for base in type.__dict__["__mro__"].__get__(cls):
        namespace = type.__dict__["__dict__"].__get__(base)
        if name in namespace:
            return namespace[name]
    return None


def _clip(text: str) -> str:
    return text if len(text) <= 120 else text[:117] + "..."


def _parts(payload: Any, count: int, what: str) -> tuple:
    if type(payload) is not tuple or len(payload) != count:
        raise _bad("a tagged %s that is not a tuple of %d items" % (what, count))
    return payload


def decode(kind: str, payload: Any, decode_value: Callable[[Any], Any]) -> Any:
    """The record a tagged C{kind} item stood for, its nested values decoded by C{decode_value}."""
    if kind == "dataclass":
        return _dataclass(payload, decode_value)
    if kind == "namedtuple":
        ref, items = _parts(payload, 2, kind)
        cls = resolve(ref, kind)
        fields = _class_attribute(cls, "_fields") if issubclass(cls, tuple) else None
        if type(fields) is not tuple:
            raise _bad("a tagged namedtuple of class %s, which is not a named tuple class" % _clip(ref))
        if type(items) is not tuple or len(items) != len(fields):
            raise _bad("a tagged namedtuple of class %s that does not hold its %d fields" % (_clip(ref), len(fields)))
        return tuple.__new__(cls, [decode_value(v) for v in items])
    if kind == "enum":
        ref, name = _parts(payload, 2, kind)
        return _member(resolve(ref, kind), ref, name)
    if kind == "flag":
        ref, names = _parts(payload, 2, kind)
        cls = resolve(ref, kind)
        if not issubclass(cls, enum.Flag):
            raise _bad("a tagged flag of class %s, which is not a Flag class" % _clip(ref))
        if type(names) is not tuple:
            raise _bad("a tagged flag whose members are not a tuple of names")
        combined = 0
        for name in names:
            combined |= _member(cls, ref, name)._value_
        known = _class_attribute(cls, "_value2member_map_")
        known = known.get(combined) if isinstance(known, dict) else None
        if known is not None:
            return known
        # a combination not made here yet: enum's own code makes it (Flag's _missing_, not the class's)
        return enum.Flag._missing_.__func__(cls, combined)  # type: ignore[attr-defined]
    raise _bad("unknown tagged kind %r" % (kind,))


def _member(cls: type, ref: str, name: Any) -> Any:
    if not issubclass(cls, enum.Enum):
        raise _bad("a tagged enum of class %s, which is not an Enum class" % _clip(ref))
    if type(name) is not str:
        raise _bad("a tagged enum member whose name is not a str")
    members = _class_attribute(cls, "_member_map_")
    member = members.get(name) if isinstance(members, dict) else None
    if member is None:
        raise _bad("a tagged enum member %s.%s, which its class does not have" % (_clip(ref), _clip(name)))
    return member


def _dataclass(payload: Any, decode_value: Callable[[Any], Any]) -> Any:
    ref, names, values = _parts(payload, 3, "dataclass")
    cls = resolve(ref, "dataclass")
    if not isinstance(_class_attribute(cls, "__dataclass_fields__"), dict) or not dataclasses.is_dataclass(cls):
        raise _bad("a tagged dataclass of class %s, which is not a dataclass" % _clip(ref))
    if type(names) is not tuple or type(values) is not tuple or len(names) != len(values) \
            or any(type(name) is not str for name in names):
        raise _bad("a tagged dataclass whose fields are not names and as many values")
    expected = [field.name for field in dataclasses.fields(cls)]
    if sorted(names) != sorted(expected):
        missing = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        raise _bad("a tagged %s with %s" % (_clip(ref), "; ".join(
            part for part in ("missing fields %s" % ", ".join(missing) if missing else "",
                              "extra fields %s" % ", ".join(map(_clip, extra)) if extra else "",
                              "repeated fields" if not (missing or extra) else "") if part)))
    instance = object.__new__(cls)
    for name, value in zip(names, values):
        object.__setattr__(instance, name, decode_value(value))
    return instance


# -- exceptions ----------------------------------------------------------------------------------

def exception(module_name: str, qualname: str, args: tuple, attributes: Dict[str, Any],
              traceback_text: Any) -> Optional[BaseException]:
    """
    The exception C{module_name}'s C{qualname} described, with C{args}, C{attributes} and the
    remote traceback (C{remote_traceback}), when that names an exception class imported here
    (srpy's and Pyro5's own stay L{RemoteError<srpy.errors.RemoteError>}); None otherwise. It is
    made without the class's code: by the C{__new__} of its nearest builtin base, its attributes
    written to its C{__dict__} (no C{__init__}, no C{__setattr__}, no property).
    """
    if module_name in _UNRESOLVED_MODULES or module_name.partition(".")[0] in ("srpy", "Pyro5") \
            or not qualname or "<" in qualname:
        return None
    cls = _main_class(qualname) if module_name == main_alias() else _lookup(module_name, qualname)
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return None
    base = next(b for b in cls.__mro__ if b.__module__ == "builtins")
    try:
        exc = base.__new__(cls, *args)
    except (TypeError, ValueError):  # a builtin base that wants other arguments (a layout of its own)
        return None
    BaseException.args.__set__(exc, args)  # type: ignore[attr-defined]
    namespace = BaseException.__dict__["__dict__"].__get__(exc)
    for key, val in attributes.items():
        if type(key) is str and key.isidentifier():
            namespace[key] = val
    namespace["remote_traceback"] = traceback_text
    return exc


def ship_order(classes: List[type]) -> List[Tuple[str, type]]:
    """
    (module name, class) for each module among C{classes}, once each, by name: what the client
    ships; a class of C{__main__} (or of a client's C{__main__} module on an engine) travels as
    its own source, so each is one item, named C{'module:qualname'} of its top-level class.
    """
    seen: Dict[str, type] = {}
    for kind in classes:
        if kind.__module__ == "__main__" or kind.__module__.startswith(MAIN_PREFIX):
            seen.setdefault(kind.__module__ + ":" + kind.__qualname__.partition(".")[0], kind)
        else:
            seen.setdefault(kind.__module__, kind)
    return sorted(seen.items())
