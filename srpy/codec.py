"""
srpy's wire format for values: marshal, made safe to extend and registered as a Pyro5 serializer.

Why marshal: measured on this kind of machine it is the fastest of Pyro5's serializers, and it is the
only one that keeps C{bytes}, C{tuple}, C{set}, C{frozenset} and C{complex} as they are. Nothing is
ever unpickled. Types marshal does not know but that have an exact textual form (C{datetime},
C{date}, C{time}, C{timedelta}, C{Decimal}, C{UUID}, C{array}, C{bytearray}, exceptions) travel as
tagged tuples (marshal itself would turn every buffer into plain C{bytes});
subclasses of tuple, list, dict, int, float and str (named tuples, enums) travel as their base type,
as with Pyro5's serpent. Anything else is refused with a L{SerializationError} naming its type.

The common case costs one C{marshal.dumps} after a type check of the containers' items (at C speed
for containers of plain values): values are only walked when they hold something marshal would
refuse or change, and on the receiving side only when the sender marked the message as holding
tagged values.

>>> loads(dumps({'a': (1, 2.5, b'raw'), 'b': {3, 4}}))
{'a': (1, 2.5, b'raw'), 'b': {3, 4}}
>>> import datetime
>>> loads(dumps([datetime.date(2009, 5, 1)]))
[datetime.date(2009, 5, 1)]
>>> import array
>>> loads(dumps([bytearray(b'ab'), array.array('d', [1.5])]))
[bytearray(b'ab'), array('d', [1.5])]
>>> dumps(object())
Traceback (most recent call last):
...
srpy.errors.SerializationError: cannot send a value of type 'object' (at value): ...
"""

import array
import builtins
import datetime
import decimal
import itertools
import marshal
import struct
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from Pyro5 import serializers as _pyro_serializers

from . import errors

#: the serializer id srpy's format uses in Pyro5 message headers (Pyro5's own use 1-4)
SERIALIZER_ID = 83
#: its name in Pyro5's serializer registry
SERIALIZER_NAME = "srpy"

_MARK = "\x00srpy-tagged\x00"   # first item of a message whose value holds tagged items
_TAG = "\x00srpy\x00"           # first item of one tagged item: (_TAG, kind, payload)
_NATIVE = (type(None), bool, int, float, complex, str, bytes)
_MARSHAL_SAFE = frozenset(_NATIVE)
_MARSHAL_PLAIN = _MARSHAL_SAFE | {list, tuple, set, frozenset, dict}
_MAX_DEPTH = 200
#: marshal format written: version 2 has no reference table, which costs 4x on lists of tuples
_VERSION = 2
_SMALL = 32  # containers up to this size are checked item by item
_SMALL_DATA = 512  # marshal data up to this size: its value is checked, not the data


def dumps(value: Any) -> bytes:
    """
    Serialize C{value}; raise L{SerializationError} naming what cannot travel. marshal writes it
    as it is unless it holds a type marshal refuses (then the tagged encoding takes over) or a
    buffer other than C{bytes} (C{bytearray}, C{array}, ...), which marshal would silently write
    as bytes: L{_marshal_keeps} looks for those in the value, or, for data made mostly of runs of
    numbers (where that is much cheaper), a short walk over marshal's output finds no byte string.
    """
    kind = type(value)
    if kind in _MARSHAL_SAFE:  # a plain scalar: marshal writes it as it is
        return marshal.dumps(value, _VERSION)
    try:
        # a user tuple shaped like srpy's own message mark would be read back as that mark: escape it
        data = None if kind is tuple and len(value) == 2 and _is_text(value[0], _MARK) \
            else marshal.dumps(value, _VERSION)
    except (ValueError, MemoryError):
        # a type marshal cannot write, or nested too deeply, or (MemoryError) a set whose items
        # marshal to the same bytes but do not compare (two complex NaNs: marshal sorts set items):
        # the walk encodes or reports it
        data = None
    if data is not None:
        if len(data) <= _SMALL_DATA:  # a small value: the walk over the value is the cheaper one
            if _marshal_keeps(value):
                return data
        elif _walk_marshal(data, find_bytes=True, budget=len(data) // 1024 + 16) is False or _marshal_keeps(value):
            return data
    try:
        return marshal.dumps((_MARK, _encode(value, "value")), _VERSION)
    except RecursionError:
        raise errors.SerializationError("cannot send a value nested this deeply (or one that contains "
                                        "itself): flatten it first") from None


def _marshal_keeps(value: Any, depth: int = 0) -> bool:
    """
    True when C{value} holds only types marshal writes as themselves. marshal silently turns any
    other buffer (C{bytearray}, C{array}, C{memoryview}) into C{bytes}, so those must be walked.
    Small containers (a call's arguments, mostly) are checked item by item; large ones one nesting
    level at a time, at C speed (L{_marshal_keeps_wide}).
    """
    kind = type(value)
    if kind in _MARSHAL_SAFE:
        return True
    if kind not in _MARSHAL_PLAIN or depth > _MAX_DEPTH:
        return False
    if len(value) > _SMALL:
        return _marshal_keeps_wide(value)
    safe = _MARSHAL_SAFE
    if kind is dict:
        for key, item in value.items():
            if type(key) not in safe and not _marshal_keeps(key, depth + 1):
                return False
            if type(item) not in safe and (type(item) not in _MARSHAL_PLAIN or item) \
                    and not _marshal_keeps(item, depth + 1):
                return False
        return True
    for item in value:  # an empty container (a call's empty variables, mostly) needs no walk
        if type(item) not in safe and (type(item) not in _MARSHAL_PLAIN or item) \
                and not _marshal_keeps(item, depth + 1):
            return False
    return True


def _marshal_keeps_wide(value: Any) -> bool:
    """L{_marshal_keeps} for large containers: one nesting level at a time, C{set(map(type, level))}."""
    level: Any = (value,)
    for _ in range(_MAX_DEPTH):
        kinds = set(map(type, level))
        if kinds <= _MARSHAL_SAFE:
            return True
        if not kinds <= _MARSHAL_PLAIN:
            return False
        if dict in kinds:
            parts: List[Any] = []
            for item in level:
                if type(item) is dict:
                    parts += (item.keys(), item.values())
                elif type(item) not in _MARSHAL_SAFE:
                    parts.append(item)
            level = parts
        elif not kinds.isdisjoint(_MARSHAL_SAFE):
            level = [v for v in level if type(v) not in _MARSHAL_SAFE]
        level = list(itertools.chain.from_iterable(level))
    return False


def loads(data: bytes) -> Any:
    """
    Deserialize what L{dumps} made. The data is checked first (L{check_marshal}) unless it is a
    lone number or string, so a reply from a peer that is not what it claims costs no more memory
    than its size: clients bound what they accept as engines do.
    """
    if not data or _KINDS[data[0]] not in _SCALAR_KINDS:
        _walk_marshal(data)
    value = marshal.loads(data)
    if type(value) is tuple and len(value) == 2 and value[0] == _MARK:
        return _decode_tagged(value[1])
    return value


def loads_trusted(data: bytes) -> Any:
    """
    L{loads} without the check, for data from a peer that proved it holds the secret (the walk
    costs about 0.1-0.3 us per item on item-heavy data: 100,000 short tuples take 25 ms more).
    """
    value = marshal.loads(data)
    if type(value) is tuple and len(value) == 2 and value[0] == _MARK:
        return _decode_tagged(value[1])
    return value


def loads_untrusted(data: bytes) -> Any:
    """L{loads} for bytes from the wire: L{check_marshal} first, so garbage costs no more than its size."""
    _walk_marshal(data)  # check_marshal's walk
    value = marshal.loads(data)
    if type(value) is tuple and len(value) == 2 and value[0] == _MARK:
        return _decode_tagged(value[1])
    return value


def _decode_tagged(value: Any) -> Any:
    try:
        return _decode(value, {})
    except RecursionError:
        raise ValueError("bad srpy data (tagged values nested too deeply)") from None


def _is_text(item: Any, text: str) -> bool:
    """C{item == text} for a str C{item} only (a user object's own C{__eq__} is never asked)."""
    return type(item) is str and item == text


def check_marshal(data: bytes) -> None:
    """
    Refuse marshal data that would make C{marshal.loads} reserve far more memory than the data's
    size. marshal trusts the item counts it reads: five bytes announcing a tuple of 2**31 items
    make it allocate (and fill) 16 GiB before it notices that the items are missing. This walks
    the data's type codes without building anything and checks that the containers together
    announce no more items than there are bytes, that no integer is longer than the data, and
    that there is no code object (srpy never sends one). Whatever else is wrong is left to
    C{marshal.loads}, which reports it without reserving memory first.

    >>> check_marshal(marshal.dumps([1, (2.5, "three"), {4: b"five"}]))
    >>> check_marshal(b"(" + (2 ** 31 - 1).to_bytes(4, "little"))
    Traceback (most recent call last):
    ...
    ValueError: bad marshal data (containers announce more items than the data holds)

    @raise ValueError: the data announces more than it holds, or holds a code object.
    """
    _walk_marshal(data)


def _walk_marshal(data: bytes, find_bytes: bool = False, budget: int = -1) -> Optional[bool]:
    """
    L{check_marshal}'s walk over the type codes of C{data}. With C{find_bytes} (on data that
    marshal itself wrote), stop and return True at the first byte string or code object instead,
    False if there is none; None when the walk takes more than C{budget} steps (runs of fixed-size
    items, such as numbers, count one step each).
    """
    end = len(data)
    pos = total = 0
    kinds = _KINDS
    unpack = _INT32.unpack_from
    while pos < end:  # the branches in order of how often srpy's own (version 2) data meets them
        budget -= 1
        if budget == 0:
            return None
        kind = kinds[data[pos]]
        if kind == _LEN4 or kind == _BYTES:
            if find_bytes and kind == _BYTES:
                return True
            if pos + 5 > end:
                return find_bytes  # marshal.loads stops here with its own error
            count = unpack(data, pos + 1)[0]
            if count < 0:
                return find_bytes
            pos += 5 + count
        elif kind == _COUNTED:
            if pos + 5 > end:
                return find_bytes
            count = unpack(data, pos + 1)[0]
            if count < 0:
                return find_bytes
            total += count
            if total > end:
                raise ValueError("bad marshal data (containers announce more items than the data holds)")
            pos += 5
        elif kind > 0:  # fixed size; a run of fixed-size items of one size is skipped at C speed
            pos += kind
            if pos < end and kinds[data[pos]] == kind:
                codes = _FIXED_RUNS[kind]
                while True:
                    window = data[pos:pos + kind * _RUN_WINDOW:kind]
                    same = len(window) - len(window.lstrip(codes))
                    pos += same * kind
                    if same < _RUN_WINDOW:
                        break
        elif kind == _LEN1 or kind == _FLOAT_TEXT:
            if pos + 1 >= end:
                return find_bytes
            pos += 2 + data[pos + 1]
        elif kind == _SMALL_TUPLE:
            pos += 2
        elif kind == _UNKNOWN or pos + 5 > end or (find_bytes and kind == _CODE):
            return find_bytes
        elif kind == _LONG:
            count = abs(unpack(data, pos + 1)[0])
            if 2 * count > end - pos - 5:
                raise ValueError("bad marshal data (an integer longer than the data)")
            pos += 5 + 2 * count
        elif kind == _COMPLEX_TEXT:
            pos += 2 + data[pos + 1]
            if pos >= end:
                return find_bytes
            pos += 1 + data[pos]
        else:
            raise ValueError("bad marshal data (a code object: srpy refuses code)")
    return False


# check_marshal's table: for each first byte of a marshalled item (type code, with or without
# marshal's 0x80 reference flag), the item's whole size if fixed, or how to find it
_INT32 = struct.Struct("<i")
_UNKNOWN, _LEN1, _LEN4, _COUNTED, _LONG, _SMALL_TUPLE, _FLOAT_TEXT, _COMPLEX_TEXT, _CODE, _BYTES = range(0, -10, -1)
_KINDS = [_UNKNOWN] * 256
_FIXED_RUNS: Dict[int, bytes] = {}
_RUN_WINDOW = 256
for _kind, _codes in ((1, b"0NFTS.{"), (5, b"ir"), (9, b"Ig"), (17, b"y"), (_LEN1, b"zZ"), (_LEN4, b"aAut"), (_BYTES, b"s"),
                      (_COUNTED, b"([<>"), (_LONG, b"l"), (_SMALL_TUPLE, b")"), (_FLOAT_TEXT, b"f"),
                      (_COMPLEX_TEXT, b"x"), (_CODE, b"c")):
    for _code in _codes:
        _KINDS[_code] = _KINDS[_code | 0x80] = _kind
    if _kind > 0:
        _FIXED_RUNS[_kind] = _codes + bytes(code | 0x80 for code in _codes)
#: first codes of data L{loads} reads without the walk: marshal reserves nothing for them that the
#: data does not hold (a lone number, string or byte string)
_SCALAR_KINDS = frozenset((1, 5, 9, 17, _LEN1, _LEN4, _BYTES))


def exception_to_dict(exc: BaseException) -> Dict[str, Any]:
    """Describe an exception in the form Pyro5 uses on the wire (json callers get the same)."""
    attributes = {}
    for key, val in vars(exc).items():
        attributes[key] = _safe_or_repr(val)
    return {
        "__class__": type(exc).__module__ + "." + type(exc).__qualname__,
        "__exception__": True,
        "args": tuple(_safe_or_repr(a) for a in exc.args),
        "attributes": attributes,
    }


def exception_from_dict(data: Dict[str, Any]) -> BaseException:
    """
    Rebuild an exception described by L{exception_to_dict}: the builtin type where there is one,
    L{RemoteSystemExit} for C{SystemExit}, srpy's own errors as themselves, else L{RemoteError}.
    The engine's traceback text lands in C{remote_traceback}.
    """
    classname = str(data.get("__class__", "builtins.Exception"))
    args = tuple(data.get("args") or ())
    attrs = dict(data.get("attributes") or {})
    tb = attrs.pop("_pyroTraceback", None)
    tb_text = attrs.pop("srpy_traceback", None) or ("".join(tb) if isinstance(tb, (list, tuple)) else tb)
    module, _, name = classname.rpartition(".")
    exc = _known_exception(module, name, args, tb_text)
    if exc is None:
        message = str(args[0]) if len(args) == 1 else ", ".join(str(a) for a in args)
        exc = errors.RemoteError(classname, message, tb_text)
    for key, val in attrs.items():
        try:
            setattr(exc, key, val)
        except (AttributeError, TypeError):
            pass
    exc.remote_traceback = tb_text
    return exc


def _known_exception(module: str, name: str, args: tuple, tb_text: Any) -> Any:
    if module == "builtins" and name == "SystemExit":
        return errors.RemoteSystemExit(args[0] if args else None, tb_text)
    if module == "srpy.errors" and name == "RemoteSystemExit":
        return errors.RemoteSystemExit(None, tb_text)
    candidate = None
    if module == "builtins":
        candidate = getattr(builtins, name, None)
    elif module == "srpy.errors":
        candidate = getattr(errors, name, None)
    if not (isinstance(candidate, type) and issubclass(candidate, BaseException)):
        return None
    try:
        return candidate(*args)
    except Exception:  # a constructor that wants other arguments than it got
        exc = candidate.__new__(candidate)
        exc.args = args
        return exc


def _safe_or_repr(value: Any) -> Any:
    try:
        dumps(value)
        return value
    except (errors.SerializationError, ValueError, RecursionError):
        return repr(value)


# -- tagged values -------------------------------------------------------------------------------
# Inside a marked message, an item is tagged as (_TAG, kind, payload). User data can never be
# mistaken for that framing: a user tuple that looks like a tagged item travels as a tagged
# "tuple" itself, sets travel as tagged lists (marshal merges or refuses set items that write the
# same bytes, such as NaNs), and so does a dict whose keys would merge once encoded (two
# Decimal('NaN') keys, say). Each decoder accepts only the payload type its encoder writes, so a
# crafted message cannot make one reserve memory its size does not pay for (bytearray(10**9)).

def _tagged(kind: str, payload: Any) -> tuple:
    return (_TAG, kind, payload)


_ENCODERS: List[Tuple[type, Callable[[Any], tuple]]] = [
    (datetime.datetime, lambda v: _tagged("datetime", v.isoformat())),
    (datetime.date, lambda v: _tagged("date", v.isoformat())),
    (datetime.time, lambda v: _tagged("time", v.isoformat())),
    (datetime.timedelta, lambda v: _tagged("timedelta", (v.days, v.seconds, v.microseconds))),
    (decimal.Decimal, lambda v: _tagged("decimal", str(v))),
    (uuid.UUID, lambda v: _tagged("uuid", v.hex)),
    (array.array, lambda v: _tagged("array", (v.typecode, v.tobytes()))),
    (bytearray, lambda v: _tagged("bytearray", bytes(v))),
    (BaseException, lambda v: _tagged("exception", exception_to_dict(v))),
]


def _expect(payload: Any, kind: type, tag: str) -> Any:
    if type(payload) is not kind:
        raise ValueError("bad srpy data (a tagged %s holding %s)" % (tag, type(payload).__name__))
    return payload


def _timedelta(payload: Any) -> datetime.timedelta:
    parts = _expect(payload, tuple, "timedelta")
    if len(parts) != 3 or any(type(p) is not int for p in parts):
        raise ValueError("bad srpy data (a tagged timedelta that is not three integers)")
    return datetime.timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])


def _array(payload: Any) -> array.array:
    parts = _expect(payload, tuple, "array")
    if len(parts) != 2 or parts[0] not in _ARRAY_CODES or type(parts[1]) is not bytes:
        raise ValueError("bad srpy data (a tagged array that is not a type code and bytes)")
    return array.array(parts[0], parts[1])


_ARRAY_CODES = frozenset(array.typecodes)

_DECODERS: Dict[str, Callable[[Any], Any]] = {
    "datetime": lambda p: datetime.datetime.fromisoformat(_expect(p, str, "datetime")),
    "date": lambda p: datetime.date.fromisoformat(_expect(p, str, "date")),
    "time": lambda p: datetime.time.fromisoformat(_expect(p, str, "time")),
    "timedelta": _timedelta,
    "decimal": lambda p: decimal.Decimal(_expect(p, str, "decimal")),
    "uuid": lambda p: uuid.UUID(hex=_expect(p, str, "uuid")),
    "array": _array,
    "bytearray": lambda p: bytearray(_expect(p, bytes, "bytearray")),
    "exception": lambda p: exception_from_dict(_expect(p, dict, "exception")),
}
#: tagged kinds whose payload holds encoded values: (payload type, what to build from the decoded items)
_CONTAINERS: Dict[str, Tuple[type, Callable[[Any], Any]]] = {
    "tuple": (tuple, tuple), "set": (tuple, set), "frozenset": (tuple, frozenset), "dict": (list, dict),
}


def _encode(value: Any, where: Any) -> Any:
    """
    C{value} with every item marshal cannot carry as it is tagged. C{where} says where C{value}
    sits in what is sent (L{_where}), for the error that names what cannot travel.
    """
    kind = type(value)
    if kind in _NATIVE:
        return value
    if kind is list:
        return [_encode(v, (where, _ITEM)) for v in value]
    if kind is tuple:
        items = tuple(_encode(v, (where, _ITEM)) for v in value)
        # a user tuple shaped like a tagged item must not be read back as one
        return _tagged("tuple", items) if len(value) == 3 and _is_text(value[0], _TAG) else items
    if kind is set or kind is frozenset:  # a tuple: hashable, so a frozenset can be a dict key
        return _tagged(kind.__name__, tuple(_encode(v, (where, _ITEM)) for v in value))
    if kind is dict:
        pairs = [(_encode(k, (where, _KEY)), _encode(v, (where, k))) for k, v in value.items()]
        encoded = dict(pairs)
        return encoded if len(encoded) == len(pairs) else _tagged("dict", pairs)
    for base, encoder in _ENCODERS:
        if isinstance(value, base):
            return encoder(value)
    for base in (bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset):
        if isinstance(value, base):
            return _encode(base(value), where)
    raise errors.SerializationError(
        "cannot send a value of type %r (at %s): srpy carries None, bool, numbers, str, bytes, "
        "bytearray, tuple, list, dict, set, frozenset, datetime, Decimal, UUID and array. Convert it "
        "to one of those first, or keep it on the engine and send only what you need back"
        % (_type_name(kind), _where(where)))


def _where(where: Any) -> str:
    """The text of a place L{_encode} names: nested (parent, step) pairs, built only for an error."""
    steps = []
    while type(where) is tuple:
        where, step = where
        steps.append("[]" if step is _ITEM else " key" if step is _KEY else "[%s]" % _short_repr(step))
    return str(where) + "".join(reversed(steps))


_ITEM, _KEY = object(), object()  # steps of a place: an item of a sequence or set, a dict's key


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int too long to write as text (sys.get_int_max_str_digits)
        return "<int of about %d digits>" % int(value.bit_length() * 0.30103)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else kind.__module__ + "." + kind.__qualname__


def _decode(value: Any, done: Dict[int, Any]) -> Any:
    """
    The value L{_encode} stood for. C{done} maps each container already decoded (by id) to its
    result: marshal shares repeated items, and 100 bytes of tuples that each hold the previous
    one twice would otherwise take 2**n steps to walk.
    """
    kind = type(value)
    if kind in _NATIVE:
        return value
    key = id(value)
    if key in done:
        return done[key]
    if kind is tuple:
        if len(value) == 3 and _is_text(value[0], _TAG):
            result = _decode_item(value[1], value[2], done)
        else:
            result = tuple(_decode(v, done) for v in value)
    elif kind is list:
        result = [_decode(v, done) for v in value]
    elif kind is dict:
        result = {_decode(k, done): _decode(v, done) for k, v in value.items()}
    elif kind is set or kind is frozenset:
        result = kind(_decode(v, done) for v in value)
    else:
        result = value
    done[key] = result
    return result


def _decode_item(kind: Any, payload: Any, done: Dict[int, Any]) -> Any:
    """One tagged item: a container of encoded values, or a value rebuilt from its plain payload."""
    container = _CONTAINERS.get(kind) if type(kind) is str else None
    if container is not None:
        items = [_decode(v, done) for v in _expect(payload, container[0], kind)]
        if kind == "dict":
            if any(type(pair) is not tuple or len(pair) != 2 for pair in items):
                raise ValueError("bad srpy data (a tagged dict that is not a list of pairs)")
        return container[1](items)
    decoder = _DECODERS.get(kind) if type(kind) is str else None
    if decoder is None:
        raise ValueError("bad srpy data (unknown tagged kind %r)" % (kind,))
    return decoder(payload)


# -- Pyro5 registration --------------------------------------------------------------------------

class SrpySerializer(_pyro_serializers.SerializerBase):
    """srpy's format as a Pyro5 serializer, so a Pyro5 daemon reads and writes it."""

    serializer_id = SERIALIZER_ID

    def dumpsCall(self, obj: str, method: str, vargs: Any, kwargs: Any) -> bytes:
        return dumps((obj, method, tuple(vargs), dict(kwargs)))

    def dumps(self, data: Any) -> bytes:
        return dumps(data)

    def loadsCall(self, data: Any) -> Tuple[str, str, Any, Any]:
        obj, method, vargs, kwargs = loads_untrusted(self._convertToBytes(data))
        return obj, method, vargs, kwargs

    def loads(self, data: Any) -> Any:
        return loads_untrusted(self._convertToBytes(data))

    @classmethod
    def register_type_replacement(cls, object_type: type, replacement_function: Any) -> None:
        """Pyro5 asks this for every registered object; srpy never sends proxies as values."""


def register() -> None:
    """Make Pyro5 (client and daemon side) understand srpy's format. Idempotent."""
    from . import _pyro5  # the engine side only: it loads Pyro5's server
    _pyro5.register_serializer(SrpySerializer(), SERIALIZER_NAME)
