"""
srpy's wire format for values: marshal, made safe to extend and registered as a Pyro5 serializer.

Why marshal: measured on this kind of machine it is the fastest of Pyro5's serializers, and it is the
only one that keeps C{bytes}, C{tuple}, C{set}, C{frozenset} and C{complex} as they are. Nothing is
ever unpickled. Types marshal does not know but that have an exact textual form (C{datetime},
C{date}, C{time}, C{timedelta}, C{Decimal}, C{UUID}, C{array}, C{bytearray}, exceptions) travel as
tagged tuples (marshal itself would turn every buffer into plain C{bytes}; an aware C{datetime} or
C{time} arrives with a fixed-offset C{datetime.timezone} for its offset); numpy arrays and
numpy scalars travel as tagged tuples too, built by L{srpy.arrays} (imported, with numpy, only
when one is sent or arrives: srpy works without numpy); so do pandas DataFrame, Series and
Index, built by L{srpy.frames} (imported, with pandas, the same way); records (dataclass
instances, enum members, named tuples) and user exceptions keep their types, their classes
travelling by reference and resolved only from modules already imported (L{srpy.records}, loaded
on the first one); other subclasses of tuple, list, dict, int, float, complex, str and bytes travel
as their base type, as with Pyro5's serpent. Anything else is refused with a L{SerializationError}
naming its type.

The contracts, and where each one lives:
 - B{Can it travel} is whether L{dumps} accepts it: callers that only ask (the engine's
   C{inspect}, function shipping, the scheduler) call L{dumps}, so no second check can disagree.
 - B{Does marshal write it as exactly itself} decides whether L{dumps} sends plain marshal (the
   common case: one C{marshal.dumps} and a check) or the tagged encoding: L{_marshal_exact}.
 - B{What comes out of the wire is plain data, bounded by its size} holds for every reader of
   srpy's format, whoever sent it: the engine reading calls, the client reading replies, an engine
   reading a peer. L{loads} runs L{check_marshal} on every message (marshal trusts the sizes
   it reads), then builds only marshal's own types and srpy's tagged ones. Pyro5's plain marshal
   format (read by srpy's daemon, and before the handshake) gets the same L{check_marshal}.

The type codes of marshal's format are not written here: they are learnt at import time from what
marshal itself writes for one sample of each type srpy carries (L{_learn_layouts}), so a code this
module has not seen (a code object, C{Ellipsis}, a type a later Python adds) is refused on reading
and never taken for exact on sending.

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
import enum
import itertools
import marshal
import mmap
import struct
import sys
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from Pyro5 import serializers as _pyro_serializers

from . import errors, wire

#: the serializer id srpy's format uses in Pyro5 message headers (Pyro5's own use 1-4)
SERIALIZER_ID = 83
#: its name in Pyro5's serializer registry
SERIALIZER_NAME = "srpy"

_MARK = "\x00srpy-tagged\x00"   # first item of a message whose value holds tagged items
_TAG = "\x00srpy\x00"           # first item of one tagged item: (_TAG, kind, payload)
#: the types marshal writes as themselves that hold no other value
_SCALARS = frozenset((type(None), bool, int, float, complex, str, bytes))
_CONTAINERS = frozenset((list, tuple, set, frozenset, dict))
#: every type marshal writes as itself (and reads back as itself): all srpy lets out of marshal
_PLAIN = _SCALARS | _CONTAINERS
_MAX_DEPTH = 200
#: marshal format written: version 2 has no reference table, which costs 4x on lists of tuples
_VERSION = 2
_SMALL = 32  # a nesting level of up to this many items is checked item by item, a larger one at C speed
_SMALL_DATA = 512  # marshal data up to this size: its value is checked, not the data (L{_marshal_exact})


def dumps(value: Any) -> bytes:
    """
    Serialize C{value}; raise L{SerializationError} naming what cannot travel. marshal writes it
    as it is when it holds only types marshal writes as themselves (L{_marshal_exact}); otherwise
    the tagged encoding takes over. Every buffer travels inside the message (L{dumps_with_buffers}
    leaves the large ones beside it).
    """
    kind = type(value)
    if kind in _SCALARS:  # a plain scalar: marshal writes it as it is
        return marshal.dumps(value, _VERSION)
    collecting = _collecting.buffers
    if collecting is not None:  # called inside a dumps_with_buffers (an exception's repr check): all in here
        _collecting.buffers = None
        try:
            return dumps(value)
        finally:
            _collecting.buffers = collecting
    if kind is Encoded:
        return dumps(value.value)
    data = _plain(value)
    return data if data is not None else _tagged_message(value)


def dumps_with_buffers(value: Any) -> Tuple[bytes, List[Tuple[memoryview, str]]]:
    """
    L{dumps}, but each large buffer in C{value} (at least L{BUFFER_MIN} bytes: a bytes,
    bytearray, memoryview or array.array, a numpy array's data) is left out of the message, which
    names it by its place in the list returned beside it: C{(message, [(buffer, kind), ...])}.
    Each buffer is a flat byte view of the value's own memory (no copy); C{kind} says what the
    receiver reads it into: C{"b"} bytes, C{"w"} a bytearray (a bytearray value), C{"m"} new
    writable memory (numpy data, an array.array: L{srpy.wire.new_memory}). The
    wire sends them raw after the message (L{srpy.wire}'s C{SRAW}), L{loads} takes them back.

    >>> message, buffers = dumps_with_buffers({"big": b"x" * BUFFER_MIN, "small": b"y"})
    >>> [(len(view), kind) for view, kind in buffers]
    [(65536, 'b')]
    >>> loads(message, [b"x" * BUFFER_MIN]) == {"big": b"x" * BUFFER_MIN, "small": b"y"}
    True
    """
    kind = type(value)
    if kind in _SCALARS and (kind is not bytes or len(value) < BUFFER_MIN):
        return marshal.dumps(value, _VERSION), []
    if kind is Encoded:
        return value.message, value.buffers
    if kind not in _SCALARS:
        data = _plain(value, BUFFER_MIN)
        if data is not None:
            return data, []
    buffers: List[Tuple[memoryview, str]] = []
    _collecting.buffers = buffers
    try:
        return _tagged_message(value), buffers
    finally:
        _collecting.buffers = None


class Encoded:
    """
    A value serialized now (L{dumps_with_buffers}), to be sent as it is later: an engine method
    that must know whether its result can travel returns one, so it is not serialized twice. Its
    buffers are views of the value's memory: it keeps the value.

    @ivar value: the value; C{message}, C{buffers}: what L{dumps_with_buffers} made of it.
    @raise SerializationError: the value cannot travel.
    """

    __slots__ = ("value", "message", "buffers")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.message, self.buffers = dumps_with_buffers(value)


def _plain(value: Any, buffer_min: int = 0) -> Optional[bytes]:
    """
    marshal's own output for C{value} when it reads back as exactly C{value} (and, given
    C{buffer_min}, holds no bytes of that size, which go beside the message), else None.
    """
    kind = type(value)
    # a user tuple shaped like srpy's own message mark would be read back as that mark: it goes tagged;
    # so does a value with a numpy array near its top (a call's variables): marshal would copy the
    # whole buffer into plain bytes first, only for the exactness check to throw them away
    if (kind is tuple and len(value) == 2 and _is_text(value[0], _MARK)) or _bulk_near_top(value, buffer_min):
        return None
    try:
        data = marshal.dumps(value, _VERSION)
    except (ValueError, MemoryError):
        # a type marshal cannot write, or nested too deeply, or (MemoryError) a set whose items
        # marshal to the same bytes but do not compare (two complex NaNs: marshal sorts set items):
        # the tagged encoding encodes or reports it
        return None
    if not data:
        return None
    if not buffer_min or len(data) < buffer_min:  # too short to hold a buffer that goes beside it
        return data if _marshal_exact(value, data) else None
    # no byte string at all, or only short ones (proofs in that order: the first is cheap on bulk numbers)
    if _exact_by_data(data, len(data) // 1024 + 16) or _exact_by_value(value, buffer_min):
        return data
    return None


def _tagged_message(value: Any) -> bytes:
    try:
        return marshal.dumps((_MARK, _encode(value, "value")), _VERSION)
    except RecursionError:
        raise errors.SerializationError("cannot send a value nested this deeply (or one that contains "
                                        "itself): flatten it first") from None


#: buffers of at least this many bytes go beside the message in L{dumps_with_buffers} (a smaller
#: one costs less to copy into the message than a read and a write of its own on the socket): the
#: wire's own threshold, which its readers hold bytearray and memory buffers to
BUFFER_MIN = wire.BLOB_MIN
#: the buffer list of the L{dumps_with_buffers} running in this thread (None: buffers go in the message)
class _Collecting(threading.local):
    buffers: Optional[List[Tuple[memoryview, str]]] = None  # the default of every thread


_collecting = _Collecting()


def _beside(view: Any, kind: str, inband: Callable[[], Any]) -> Any:
    """
    The place of buffer C{view} (a flat byte view) in the message: a tagged reference to it in the
    buffer list of the L{dumps_with_buffers} that runs (C{kind}: what is built of it there),
    or C{inband()}, the value that carries it inside the message.
    """
    buffers = _collecting.buffers
    if buffers is None:
        return inband()
    buffers.append((view, kind))
    return (_TAG, "buffer", len(buffers) - 1)


#: a list of at least this many numpy arrays alike travels as one block (L{srpy.arrays.encode_many})
_MANY_ARRAYS = 8


def _data_beside(tagged: Tuple[str, Any]) -> Tuple[str, Any]:
    """An array's (or a block of arrays') C{(tag, payload)}, its data beside the message if large."""
    tag, payload = tagged
    if tag != "npscalar" and len(payload[3]) >= BUFFER_MIN:  # its data: a flat uint8 view of the array's memory
        data = payload[3]
        payload = payload[:3] + (_beside(memoryview(data), "m", lambda: data),)
    return tag, payload


def _flat(buffer: Any) -> memoryview:
    """A flat byte view of C{buffer}'s memory (contiguous) or of a compact copy of it (with gaps)."""
    view = memoryview(buffer)
    return view.cast("B") if view.c_contiguous else memoryview(view.tobytes())


#: how many items of a value L{_bulk_near_top} looks at, breadth first (a call's variables are a few levels down)
_LOOK_AHEAD = 64


def _bulk_near_top(value: Any, buffer_min: int) -> bool:
    """
    True if one of the first L{_LOOK_AHEAD} items of C{value}, breadth first, is a numpy value,
    a buffer marshal would flatten (bytearray, memoryview, array.array), or (given C{buffer_min})
    bytes of that size: values that go tagged anyway, so marshal's copy of their data would be
    thrown away.
    """
    queue = [value]
    numpy_loaded = "numpy" in sys.modules
    for item in queue:  # items appended while it runs: breadth first
        kind = type(item)
        if kind in _SCALARS:
            if buffer_min and kind is bytes and len(item) >= buffer_min:
                return True
            continue
        if kind is tuple or kind is list:
            queue += item[:_LOOK_AHEAD]
        elif kind is dict:
            queue += itertools.islice(item.values(), _LOOK_AHEAD)
        elif kind in _FLATTENED or (numpy_loaded and kind.__module__ == "numpy"):
            return True
        if len(queue) > _LOOK_AHEAD:
            return False
    return False


#: buffers marshal writes as plain bytes (never exact: they travel tagged)
_FLATTENED = frozenset((bytearray, memoryview, array.array))


def loads(data: bytes, buffers: Optional[List[Any]] = None) -> Any:
    """
    Deserialize what L{dumps} made, from any peer: L{check_marshal} first, so that data that is
    not what it claims costs no more memory than its size and builds only plain data (then
    srpy's tagged kinds). Engines reading calls and clients reading replies run the same checks.

    @param buffers: the buffers that came beside the message (L{dumps_with_buffers}), as bytes
        or bytearray; each is used once, as it is (no copy: a numpy array received in a
        bytearray is a view of it).
    @raise ValueError: for anything that L{dumps} did not make (and nothing else).
    """
    if not data or _LAYOUTS[data[0]] != len(data):  # else the data is one number, None or bool: nothing to bound
        check_marshal(data)
    try:
        value = marshal.loads(data)
    except (EOFError, TypeError) as exc:  # marshal's other complaints are ValueErrors already
        raise ValueError("bad marshal data (%s)" % exc) from None
    if type(value) is tuple and len(value) == 2 and value[0] == _MARK:
        try:
            return _decode(value[1], {_BUFFERS: buffers} if buffers else {})
        except RecursionError:
            raise ValueError("bad srpy data (tagged values nested too deeply)") from None
        except (ArithmeticError, TypeError) as exc:
            # what a decoder makes of a payload of the right type but the wrong content (Decimal's
            # InvalidOperation, a timedelta's OverflowError, an unhashable item of a tagged set):
            # every reader expects one ValueError for bad data
            raise ValueError("bad srpy data (%s: %s)" % (type(exc).__name__, _clip(str(exc)))) from None
    return value


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_text(item: Any, text: str) -> bool:
    """C{item == text} for a str C{item} only (a user object's own C{__eq__} is never asked)."""
    return type(item) is str and item == text


# -- does marshal write the value as exactly itself? ------------------------------------------------
# marshal writes its own types exactly and refuses every other type, with two exceptions: any
# object with a buffer (bytearray, array, memoryview, numpy arrays, ...) it writes as bytes, and
# a few objects srpy does not carry (code, Ellipsis, StopIteration) it writes as themselves.
# So a value is exact when it holds only the types in _PLAIN. Two proofs of that, each sound on
# its own: marshal's output holds no byte string and no code this module does not know (cheap on
# runs of numbers, which it skips at C speed; it gives up after a few steps on item-heavy data),
# or the value's own types, walked one nesting level at a time (the definition; cheap on
# item-heavy data). The property tests in tests/codec/test_codec.py check that they agree.

def _marshal_exact(value: Any, data: bytes) -> bool:
    """
    True when C{data}, marshal's output for C{value}, reads back as exactly C{value}. The data's
    proof is tried first only on data longer than L{_SMALL_DATA}: on less (a call's arguments),
    the value's costs less (0.5 us against 1.4 us for a small call), and either answer is the same.
    """
    if len(data) > _SMALL_DATA and _exact_by_data(data, len(data) // 1024 + 16):
        return True
    return _exact_by_value(value)


def _exact_by_data(data: bytes, budget: int) -> bool:
    """
    True when C{data} (written by marshal, so well formed) holds only items of types that read
    back as themselves and no byte string; False when it holds something else, or when that
    takes more than C{budget} steps to tell (a run of fixed-size items, such as numbers, is one
    step).
    """
    end = len(data)
    pos = 0
    layouts = _EXACT_LAYOUTS
    unpack = _INT32.unpack_from
    while pos < end:  # the branches in order of how often srpy's own (version 2) data meets them
        budget -= 1
        if budget < 0:
            return False
        layout = layouts[data[pos]]
        if layout > 0:
            pos += layout
            if pos < end and layouts[data[pos]] == layout:
                pos = _past_run(data, pos, layout)
        elif layout == _LEN4:
            pos += 5 + unpack(data, pos + 1)[0]
        elif layout == _COUNT4:
            pos += 5
        elif layout == _LEN1:
            pos += 2 + data[pos + 1]
        elif layout == _COUNT1:
            pos += 2
        elif layout == _LONG:
            pos += 5 + _DIGIT_SIZE * abs(unpack(data, pos + 1)[0])
        elif layout == _TEXT2:
            pos += 2 + data[pos + 1]
            pos += 1 + data[pos]
        else:  # a byte string (bytes, or a buffer marshal flattened) or a code srpy does not carry
            return False
    return True


def _exact_by_value(value: Any, buffer_min: int = 0) -> bool:
    """
    True when C{value} holds only objects of the types marshal writes as themselves (L{_PLAIN}),
    walked one nesting level at a time: a small level item by item, a large one at C speed
    (C{set(map(type, level))}), as calls' arguments are small and bulk data is wide. Given
    C{buffer_min}, also False when it holds bytes of that size or more.
    """
    kind = type(value)
    if kind in _SCALARS:
        return not buffer_min or kind is not bytes or len(value) < buffer_min
    if kind is dict:
        level: Any = [*value, *value.values()]
    elif kind in _CONTAINERS:
        level = value
    else:
        return False
    for _ in range(_MAX_DEPTH):
        if len(level) > _SMALL:
            kinds = set(map(type, level))
            if buffer_min and bytes in kinds and max(len(item) for item in level if type(item) is bytes) >= buffer_min:
                return False
            if kinds <= _SCALARS:
                return True
            if not kinds <= _PLAIN:
                return False
            if dict not in kinds:
                if not kinds.isdisjoint(_SCALARS):
                    level = [item for item in level if type(item) not in _SCALARS]
                level = list(itertools.chain.from_iterable(level))
                continue
        nested: List[Any] = []
        for item in level:
            kind = type(item)
            if kind in _SCALARS or (kind in _CONTAINERS and not item):  # an empty one: a call's {} of variables
                if buffer_min and kind is bytes and len(item) >= buffer_min:
                    return False
                continue
            if kind is dict:
                nested += item  # its keys
                nested += item.values()
            elif kind in _CONTAINERS:
                nested += item
            else:
                return False
        if not nested:
            return True
        level = nested
    return False


# -- what comes out of the wire: plain data, bounded by its size -------------------------------------

def check_marshal(data: bytes) -> None:
    """
    Refuse marshal data that would make C{marshal.loads} reserve far more memory than the data's
    size, or build anything but plain data. marshal trusts the item counts it reads: five bytes
    announcing a tuple of 2**31 items make it allocate (and fill) 16 GiB before it notices that
    the items are missing. This walks the data's type codes without building anything and checks
    that the containers together announce no more items than there are bytes, that no integer is
    longer than the data, and that every code is one marshal writes for None, bool, int, float,
    complex, str, bytes, tuple, list, dict, set or frozenset (no code object, no Ellipsis, no
    type this module has not learnt: L{_learn_layouts}). Whatever else is wrong is left to
    C{marshal.loads}, which reports it without reserving memory first.

    >>> check_marshal(marshal.dumps([1, (2.5, "three"), {4: b"five"}]))
    >>> check_marshal(b"(" + (2 ** 31 - 1).to_bytes(4, "little"))
    Traceback (most recent call last):
    ...
    ValueError: bad marshal data (containers announce more items than the data holds)
    >>> check_marshal(marshal.dumps(compile("1", "", "eval")))
    Traceback (most recent call last):
    ...
    ValueError: bad marshal data (type code ... is not plain data: srpy reads None, bool, numbers, ...)

    @raise ValueError: the data announces more than it holds, or holds something but plain data.
    """
    end = len(data)
    pos = total = 0
    layouts = _LAYOUTS
    unpack = _INT32.unpack_from
    while pos < end:  # the branches in order of how often srpy's own (version 2) data meets them
        layout = layouts[data[pos]]
        if layout > 0:
            pos += layout
            if pos < end and layouts[data[pos]] == layout:
                pos = _past_run(data, pos, layout)
        elif layout == _LEN4:
            if pos + 5 > end:
                return  # marshal.loads stops here with its own error
            count = unpack(data, pos + 1)[0]
            if count < 0:
                return
            pos += 5 + count
        elif layout == _COUNT4:
            if pos + 5 > end:
                return
            count = unpack(data, pos + 1)[0]
            if count < 0:
                return
            total += count
            if total > end:
                raise ValueError("bad marshal data (containers announce more items than the data holds)")
            pos += 5
        elif layout == _LEN1:
            if pos + 1 >= end:
                return
            pos += 2 + data[pos + 1]
        elif layout == _COUNT1:
            if pos + 1 >= end:
                return
            total += data[pos + 1]
            if total > end:
                raise ValueError("bad marshal data (containers announce more items than the data holds)")
            pos += 2
        elif layout == _LONG:
            if pos + 5 > end:
                return
            count = abs(unpack(data, pos + 1)[0])
            if _DIGIT_SIZE * count > end - pos - 5:
                raise ValueError("bad marshal data (an integer longer than the data)")
            pos += 5 + _DIGIT_SIZE * count
        elif layout == _TEXT2:
            if pos + 1 >= end:
                return
            pos += 2 + data[pos + 1]
            if pos >= end:
                return
            pos += 1 + data[pos]
        else:
            raise ValueError("bad marshal data (type code %#04x is not plain data: srpy reads None, bool, numbers, "
                             "str, bytes, tuple, list, dict, set and frozenset)" % data[pos])


def _past_run(data: bytes, pos: int, size: int) -> int:
    """Where the run of fixed-size (C{size}) items that starts at C{pos} ends, found at C speed."""
    codes = _FIXED_RUNS[size]
    while True:
        window = data[pos:pos + size * _RUN_WINDOW:size]
        same = len(window) - len(window.lstrip(codes))
        pos += same * size
        if same < _RUN_WINDOW:
            return pos


# -- marshal's layouts, learnt from marshal itself ----------------------------------------------------
# A marshalled item is a type code (one byte, with marshal's reference flag set on items it may
# refer back to) and, by code: a fixed number of bytes; a 1- or 4-byte length and that many bytes;
# a 1- or 4-byte count and that many items; a digit count and digits; two short texts (complex
# numbers in the old versions). Which code has which layout is learnt here, at import time, from
# what marshal writes for samples of every type srpy carries, in every version it can write: the
# codes are CPython's to choose (they changed in versions 3 and 4), and a code learnt this way
# cannot be one marshal writes for code objects or any type srpy does not carry.

_INT32 = struct.Struct("<i")
_REFUSED, _LEN1, _LEN4, _COUNT1, _COUNT4, _LONG, _TEXT2 = 0, -1, -2, -3, -4, -5, -6  # > 0: a fixed size
_RUN_WINDOW = 256


def _fresh(text: str) -> str:
    """A str equal to C{text} that is not interned (marshal gives interned strings codes of their own)."""
    return "".join(list(text))


def _learn_layouts() -> Tuple[List[int], Set[int], int, int]:
    """
    (layout of every code, the codes of byte strings, marshal's reference flag, bytes per digit
    of a long integer), from what marshal writes for samples of the types srpy carries. A code
    whose samples disagree on its layout is left unknown, so it is refused: an unforeseen layout
    makes srpy refuse data loudly, never read it unchecked.
    """
    flag = marshal.dumps(1, marshal.version)[0] ^ marshal.dumps(1, 0)[0]  # small ints are shared: flagged
    if bin(flag).count("1") > 1:
        flag = 0
    layouts: Dict[int, int] = {}
    clashes: Set[int] = set()
    byte_strings: Set[int] = set()
    digit_sizes: Set[int] = set()

    def learn(code: int, layout: int) -> None:
        code &= ~flag
        if layouts.setdefault(code, layout) != layout:
            clashes.add(code)

    def learn_text(data: bytes, payload: bytes) -> None:
        if len(payload) < 256 and data[1:] == bytes([len(payload)]) + payload:
            learn(data[0], _LEN1)
        elif data[1:] == _INT32.pack(len(payload)) + payload:
            learn(data[0], _LEN4)

    for version in range(marshal.version + 1):
        def dump(value: Any) -> bytes:
            return marshal.dumps(value, version)

        for samples in ((None,), (True,), (False,), (0, -1, 2 ** 31 - 1, -2 ** 31), (0.0, -1.5e300, float("nan")),
                        (0j, complex(-1.5e300, 2.5e-300))):
            forms = [dump(sample) for sample in samples]
            if isinstance(samples[0], float) and all(data[1] == len(data) - 2 for data in forms):
                learn(forms[0][0], _LEN1)  # a float as text
            elif isinstance(samples[0], complex) and all(3 + data[1] + data[2 + data[1]] == len(data) for data in forms):
                learn(forms[0][0], _TEXT2)  # a complex as two texts
            elif len({len(data) for data in forms}) == 1 and len({data[0] & ~flag for data in forms}) == 1:
                learn(forms[0][0], len(forms[0]))
        for text in ("ab", "ab" * 200, "\xe9a", "\xe9a" * 200, "\U0001f600a"):
            payload = text.encode("utf-8", "surrogatepass")
            learn_text(dump(_fresh(text)), payload)
            learn_text(dump(sys.intern(_fresh(text))), payload)
        for blob in (b"ab", b"ab" * 200):
            data = dump(blob)
            learn_text(data, blob)
            byte_strings.add(data[0] & ~flag)
        for number in (2 ** 40, -2 ** 40, 7 ** 100):
            data = dump(number)
            digits = abs(_INT32.unpack_from(data, 1)[0])
            if (len(data) - 5) % digits == 0:
                learn(data[0], _LONG)
                digit_sizes.add((len(data) - 5) // digits)
        for count in (0, 3, 300):  # items of 5 bytes each (the size of a small int, learnt above)
            for container in (tuple, list, set, frozenset):
                data = dump(container(range(count)))
                if len(data) == 5 + 5 * count and _INT32.unpack_from(data, 1)[0] == count:
                    learn(data[0], _COUNT4)
                elif len(data) == 2 + 5 * count and data[1] == count:
                    learn(data[0], _COUNT1)
        for mapping in ({}, {1: 2}):  # a dict is its code, its keys and values, then an end code
            data = dump(mapping)
            if len(data) == 2 + 10 * len(mapping):
                learn(data[0], 1)
                learn(data[-1], 1)
        shared = _fresh("ab")
        once, twice = dump([shared]), dump([shared, shared])
        if len(twice) > len(once) and twice[len(once)] & ~flag not in layouts:  # a reference to an earlier item
            learn(twice[len(once)], len(twice) - len(once))
    table = [_REFUSED] * 256
    for code, layout in layouts.items():
        if code not in clashes:
            table[code] = table[code | flag] = layout
    digit_size = digit_sizes.pop() if len(digit_sizes) == 1 else 0
    if not digit_size:
        table = [_REFUSED if layout == _LONG else layout for layout in table]
    return table, byte_strings, flag, digit_size


_LAYOUTS, _BYTE_STRINGS, _REF_FLAG, _DIGIT_SIZE = _learn_layouts()
#: the layouts L{_exact_by_data} steps over: those of L{_LAYOUTS} but byte strings (bytes or a flattened buffer?)
_EXACT_LAYOUTS = [_REFUSED if code & ~_REF_FLAG in _BYTE_STRINGS else layout for code, layout in enumerate(_LAYOUTS)]
#: for each fixed size, the codes of that size (a run of them is skipped at C speed)
_FIXED_RUNS: Dict[int, bytes] = {}
for _code, _layout in enumerate(_LAYOUTS):
    if _layout > 0:
        _FIXED_RUNS[_layout] = _FIXED_RUNS.get(_layout, b"") + bytes([_code])
del _code, _layout


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
    L{RemoteSystemExit} for C{SystemExit}, srpy's own errors as themselves, an exception class of a
    module already imported here as itself (L{srpy.records.exception}), else L{RemoteError}.
    The engine's traceback text lands in C{remote_traceback}.
    """
    classname = str(data.get("__class__", "builtins.Exception"))
    args = data.get("args") or ()
    args = tuple(args) if isinstance(args, (list, tuple)) else (args,)
    attrs = data.get("attributes")
    attrs = dict(attrs) if isinstance(attrs, dict) else {}
    tb = attrs.pop("_pyroTraceback", None)
    tb_text = attrs.pop("srpy_traceback", None) or ("".join(map(str, tb)) if isinstance(tb, (list, tuple)) else tb)
    module, _, name = classname.rpartition(".")
    exc = _known_exception(module, name, args, tb_text)
    if exc is None and module not in ("builtins", "srpy.errors"):
        # a user exception class imported here comes back as itself, built without its code
        exc = _records().exception(module, name, args, attrs, tb_text)
        if exc is not None:
            return exc
    if exc is None:
        message = str(args[0]) if len(args) == 1 else ", ".join(str(a) for a in args)
        exc = errors.RemoteError(classname, message, tb_text)
    for key, val in attrs.items():
        try:
            setattr(exc, key, val)
        except (AttributeError, TypeError):  # a key that is no attribute name, or a read-only one
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
    # the ISO text has no room for C{fold} (which of two equal wall times, at a clock change): a
    # time with fold 1 travels as (text, 1), which only a peer that knows fold reads
    (datetime.datetime, lambda v: _tagged("datetime", (v.isoformat(), 1) if v.fold else v.isoformat())),
    (datetime.date, lambda v: _tagged("date", v.isoformat())),
    (datetime.time, lambda v: _tagged("time", (v.isoformat(), 1) if v.fold else v.isoformat())),
    (datetime.timedelta, lambda v: _tagged("timedelta", (v.days, v.seconds, v.microseconds))),
    (decimal.Decimal, lambda v: _tagged("decimal", str(v))),
    (uuid.UUID, lambda v: _tagged("uuid", v.hex)),
    (array.array, lambda v: _tagged("array", (v.typecode, _beside(memoryview(v).cast("B"), "m", v.tobytes)
                                              if len(v) * v.itemsize >= BUFFER_MIN else v.tobytes()))),
    (bytearray, lambda v: _beside(memoryview(v), "w", lambda: _tagged("bytearray", bytes(v)))
     if len(v) >= BUFFER_MIN else _tagged("bytearray", bytes(v))),
    # a memoryview travels as the bytes it shows (nothing on the other side could share its memory)
    (memoryview, lambda v: _beside(_flat(v), "b", v.tobytes) if v.nbytes >= BUFFER_MIN else v.tobytes()),
    (BaseException, lambda v: _tagged("exception", _encoded_exception(v))),
]


def _encoded_exception(exc: BaseException) -> Dict[str, Any]:
    """L{exception_to_dict}, its arguments and attributes encoded (a Decimal or a record among them travels too)."""
    data = exception_to_dict(exc)
    data["args"] = _encode(data["args"], "the exception's arguments")
    data["attributes"] = {key: _encode(val, ("the exception's attributes", key))
                          for key, val in data["attributes"].items()}
    return data


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
    if len(parts) != 2 or parts[0] not in _ARRAY_CODES or type(parts[1]) not in (bytes, bytearray, mmap.mmap):
        raise ValueError("bad srpy data (a tagged array that is not a type code and bytes)")
    value = array.array(parts[0])
    value.frombytes(parts[1])  # ValueError for a length that is no multiple of the item size
    return value


_ARRAY_CODES = frozenset(array.typecodes)


def _folded(kind: Any, tag: str) -> Callable[[Any], Any]:
    """The decoder of a tagged C{datetime} or C{time}: its ISO text, or (text, 1) for one with fold 1."""
    def decode(payload: Any) -> Any:
        if type(payload) is tuple and len(payload) == 2 and type(payload[1]) is int and payload[1] == 1:
            return kind.fromisoformat(_expect(payload[0], str, tag)).replace(fold=1)
        return kind.fromisoformat(_expect(payload, str, tag))
    return decode

_DECODERS: Dict[str, Callable[[Any], Any]] = {
    "datetime": _folded(datetime.datetime, "datetime"),
    "date": lambda p: datetime.date.fromisoformat(_expect(p, str, "date")),
    "time": _folded(datetime.time, "time"),
    "timedelta": _timedelta,
    "decimal": lambda p: decimal.Decimal(_expect(p, str, "decimal")),
    "uuid": lambda p: uuid.UUID(hex=_expect(p, str, "uuid")),
    "array": _array,
    "bytearray": lambda p: bytearray(_expect(p, bytes, "bytearray")),
    # numpy arrays and scalars: srpy.arrays (and numpy) are imported only when one arrives
    "ndarray": lambda p: _arrays().decode_array(p),
    "npscalar": lambda p: _arrays().decode_scalar(p),
    "ndarrays": lambda p: _arrays().decode_many(p),
}
#: tagged kinds L{srpy.records} writes and reads (dataclass, enum member, Flag combination, named tuple)
_RECORD_KINDS = frozenset(("dataclass", "enum", "flag", "namedtuple"))


_FRAME_TAGS = frozenset(("pdframe", "pdseries", "pdindex"))


# srpy.arrays, srpy.frames and srpy.records are imported on their first use (with numpy or pandas),
# then kept here: an import statement run for every array of a map costs more than decoding it
_arrays_module: Any = None
_frames_module: Any = None
_records_module: Any = None


def _arrays() -> Any:
    global _arrays_module
    if _arrays_module is None:
        from . import arrays
        _arrays_module = arrays
    return _arrays_module


def _frames() -> Any:
    global _frames_module
    if _frames_module is None:
        from . import frames
        _frames_module = frames
    return _frames_module


def _records() -> Any:
    global _records_module
    if _records_module is None:
        from . import records
        _records_module = records
    return _records_module


#: tagged kinds whose payload holds encoded values: (payload type, what to build from the decoded items)
_TAGGED_CONTAINERS: Dict[str, Tuple[type, Callable[[Any], Any]]] = {
    "tuple": (tuple, tuple), "set": (tuple, set), "frozenset": (tuple, frozenset), "dict": (list, dict),
}


def _encode(value: Any, where: Any) -> Any:
    """
    C{value} with every item marshal cannot carry as it is tagged. C{where} says where C{value}
    sits in what is sent (L{_where}), for the error that names what cannot travel.
    """
    kind = type(value)
    if kind in _SCALARS:
        if kind is bytes and len(value) >= BUFFER_MIN:
            return _beside(memoryview(value), "b", lambda: value)
        return value
    if kind is list:
        if len(value) >= _MANY_ARRAYS and type(value[0]).__module__ == "numpy":
            many = _arrays().encode_many(value)
            if many is not None:
                return _tagged(*_data_beside(many))
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
    if kind.__module__ == "numpy":  # numpy arrays and scalars (np.float64 is a float: before _BASE_COPIES)
        return _tagged(*_data_beside(_arrays().encode(value, where, _where)))
    if kind.__module__ == "pandas" or kind.__module__[:7] == "pandas.":  # DataFrame, Series, Index (not Timestamp)
        found = _frames().encode(value, where, _encode, _where)
        if found is not None:
            return _tagged(*found)
    # records (srpy/records.py, loaded on the first one): dataclasses, enum members, named tuples
    if isinstance(value, enum.Enum) or hasattr(kind, "__dataclass_fields__") \
            or (isinstance(value, tuple) and hasattr(kind, "_fields")):
        record = _records().encode(value, where, _encode, _tagged, _ITEM)
        if record is not None:
            return record
    for base, encoder in _ENCODERS:
        if isinstance(value, base):
            return encoder(value)
    for base, copy in _BASE_COPIES:
        if isinstance(value, base):
            return _encode(copy(value), where)
    raise errors.SerializationError(
        "cannot send a value of type %r (at %s): srpy carries None, bool, numbers, str, bytes, "
        "bytearray, tuple, list, dict, set, frozenset, datetime, Decimal, UUID, array and numpy arrays. Convert it "
        "to one of those first, or keep it on the engine and send only what you need back"
        % (_type_name(kind), _where(where)))


#: for each base type whose subclasses travel as it: the exact copy of an instance, made by the base
#: type's own code (C{str(value)} would call a subclass's C{__str__}, C{tuple(value)} its C{__iter__})
_BASE_COPIES: Tuple[Tuple[type, Callable[[Any], Any]], ...] = (
    (int, int.__pos__), (float, float.__pos__), (complex, complex.__pos__), (str, str.__str__),
    (bytes, lambda v: bytes.__getitem__(v, slice(None))), (tuple, lambda v: tuple.__getitem__(v, slice(None))),
    (list, list.copy), (dict, dict.copy), (set, set.copy), (frozenset, frozenset.copy),
)


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


def _decode(value: Any, done: Dict[Any, Any]) -> Any:
    """
    The value L{_encode} stood for. C{done} maps each container already decoded (by id) to its
    result: marshal shares repeated items, and 100 bytes of tuples that each hold the previous
    one twice would otherwise take 2**n steps to walk.
    """
    kind = type(value)
    if kind in _SCALARS:
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


def _decode_item(kind: Any, payload: Any, done: Dict[Any, Any]) -> Any:
    """One tagged item: a container of encoded values, or a value rebuilt from its plain payload."""
    if kind == "buffer":  # a value of its own: bytes or a bytearray, never raw memory (only arrays are built on it)
        found = _buffer(payload, done)
        return found if type(found) in (bytes, bytearray) else bytes(found)
    slot = _BUFFER_SLOTS.get(kind) if type(kind) is str else None
    if slot is not None and type(payload) is tuple and len(payload) > slot and type(payload[slot]) is tuple:
        # the data of an array came beside the message
        payload = payload[:slot] + (_buffer(_reference(payload[slot]), done),) + payload[slot + 1:]
    container = _TAGGED_CONTAINERS.get(kind) if type(kind) is str else None
    if container is not None:
        items = [_decode(v, done) for v in _expect(payload, container[0], kind)]
        if kind == "dict":
            if any(type(pair) is not tuple or len(pair) != 2 for pair in items):
                raise ValueError("bad srpy data (a tagged dict that is not a list of pairs)")
        return container[1](items)
    if kind == "exception":  # its arguments and attributes are encoded values
        data = dict(_expect(payload, dict, kind))
        data["args"] = _decode(data.get("args", ()), done)
        if type(data.get("attributes")) is dict:
            data["attributes"] = {key: _decode(val, done) for key, val in data["attributes"].items()}
        return exception_from_dict(data)
    if kind in _FRAME_TAGS:  # pandas values: srpy.frames (and pandas) are imported only when one arrives
        return _frames().decode(kind, payload, lambda v: _decode(v, done))
    decoder = _DECODERS.get(kind) if type(kind) is str else None
    if decoder is None and kind in _RECORD_KINDS:
        return _records().decode(kind, payload, lambda v: _decode(v, done))
    if decoder is None:
        raise ValueError("bad srpy data (unknown tagged kind %r)" % (kind,))
    return decoder(payload)


#: where the buffers that came beside the message are, and which were used, in L{_decode}'s C{done}
#: (whose other keys are ids)
_BUFFERS, _USED = "buffers", "used"
#: tagged kinds whose payload is a tuple that may hold a reference to such a buffer, and where
_BUFFER_SLOTS = {"ndarray": 3, "ndarrays": 3, "array": 1}


def _reference(item: Any) -> Any:
    """The index a tagged buffer reference C{item} names."""
    if len(item) != 3 or not _is_text(item[0], _TAG) or item[1] != "buffer":
        raise ValueError("bad srpy data (an array whose data is neither bytes nor a buffer reference)")
    return item[2]


def _buffer(index: Any, done: Dict[Any, Any]) -> Any:
    """The buffer number C{index} of those beside the message; each may be used once."""
    buffers = done.get(_BUFFERS) or ()
    if type(index) is not int or not 0 <= index < len(buffers):
        raise ValueError("bad srpy data (a reference to buffer %s of the %d beside the message)"
                         % (_clip(repr(index)), len(buffers)))
    used = done.setdefault(_USED, set())
    if index in used:
        raise ValueError("bad srpy data (buffer %d used twice)" % index)
    used.add(index)
    return buffers[index]


# -- Pyro5 registration --------------------------------------------------------------------------

# -- what a json caller can receive ------------------------------------------------------------

#: types json carries as they are, and types Pyro5's json serializer sends as text or a list
_JSON_SCALARS = (type(None), bool, int, float, str)
_JSON_AS_TEXT = {"datetime.datetime", "datetime.date", "decimal.Decimal", "uuid.UUID", "array.array"}


def json_unfit(value: Any, depth: int = 0) -> Optional[Tuple[str, Any]]:
    """
    C{(where, part)} for the first part of C{value} that a json caller cannot receive as it is
    (Pyro5's json serializer would send an object as a dict of its attributes); None if all can.
    The contract of what travels to the Jython client (L{srpy.calls} refuses the rest).
    """
    if isinstance(value, _JSON_SCALARS) or depth > 64:  # deeper: left to the serializer
        return None
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, _JSON_SCALARS):
                return "[%r] (a key)" % (key,), key
        items: Any = value.items()
    elif isinstance(value, (list, tuple, set)):
        items = enumerate(value)
    else:
        kind = type(value)
        return None if "%s.%s" % (kind.__module__, kind.__qualname__) in _JSON_AS_TEXT else ("", value)
    for key, item in items:
        if not isinstance(item, _JSON_SCALARS):
            found = json_unfit(item, depth + 1)
            if found is not None:
                return "[%r]%s" % (key, found[0]), found[1]
    return None



class WireFormat:
    """srpy's serializer in the shape a L{srpy.wire.Connection} wants (the client's and the peers')."""

    serializer_id = SERIALIZER_ID

    @staticmethod
    def dumps_call(obj: str, method: str, args: Any, kwargs: Any) -> bytes:
        return dumps((obj, method, tuple(args), kwargs or {}))

    @staticmethod
    def dumps_call_with_buffers(obj: str, method: str, args: Any, kwargs: Any) -> Tuple[bytes, List[Tuple[memoryview, str]]]:
        """The call, its large buffers beside it (L{dumps_with_buffers}): the connection sends them raw after it."""
        return dumps_with_buffers((obj, method, tuple(args), kwargs or {}))

    loads = staticmethod(loads)

    @staticmethod
    def exception(value: Any) -> BaseException:
        if isinstance(value, BaseException):
            return value
        if isinstance(value, dict):
            return exception_from_dict(value)
        return errors.RemoteError("unknown", repr(value))


#: the one L{WireFormat}
WIRE_FORMAT = WireFormat()


class SrpySerializer(_pyro_serializers.SerializerBase):
    """srpy's format as a Pyro5 serializer, so a Pyro5 daemon reads and writes it."""

    serializer_id = SERIALIZER_ID

    def dumpsCall(self, obj: str, method: str, vargs: Any, kwargs: Any) -> bytes:
        return dumps((obj, method, tuple(vargs), dict(kwargs)))

    def dumps(self, data: Any) -> bytes:
        return dumps(data)

    def loadsCall(self, data: Any) -> Tuple[str, str, Any, Any]:
        obj, method, vargs, kwargs = loads(self._convertToBytes(data))
        return obj, method, vargs, kwargs

    def loads(self, data: Any) -> Any:
        return loads(self._convertToBytes(data))

    @classmethod
    def register_type_replacement(cls, object_type: type, replacement_function: Any) -> None:
        """Pyro5 asks this for every registered object; srpy never sends proxies as values."""


def register() -> None:
    """Make Pyro5 (client and daemon side) understand srpy's format. Idempotent."""
    from . import _pyro5  # the engine side only: it loads Pyro5's server
    _pyro5.register_serializer(SrpySerializer(), SERIALIZER_NAME)
