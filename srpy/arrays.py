"""
numpy arrays and numpy scalars in srpy's value format (L{srpy.codec}).

L{srpy.codec} imports this module only when it meets a numpy value to send or an array tag to
read, so srpy imports and works without numpy; this module does not import codec (codec hands
it the function that names a place, L{encode}'s C{where_text}).

The payloads, plain marshal data only:
 - an array, tag L{ARRAY_TAG}: C{(dtype description, shape, order, data)}: C{shape} a tuple of
   ints, C{order} C{"C"} or C{"F"} (a Fortran-ordered array keeps its order; a view with gaps
   is sent compactly, in C order), C{data} the array's raw bytes in that order.
 - a scalar (C{numpy.float64}, C{numpy.datetime64}, C{numpy.str_}, C{numpy.void}...), tag
   L{SCALAR_TAG}: C{(dtype description, data)}, C{data} its C{itemsize} raw bytes.

A dtype description is one of:
 - C{dtype.str} of a dtype without fields (C{'<f8'}, C{'>i4'}, C{'|b1'}, C{'<M8[ns]'},
   C{'<U5'}, C{'|S3'}, C{'|V8'}): byte order, kind, item size, datetime unit;
 - C{("rec", names, formats, offsets, titles, itemsize, aligned)} for a structured dtype: tuples
   of field names (str), of the fields' descriptions, of their offsets and of their titles (str or
   None), the item size and whether it is an aligned struct (so padding and offsets are exactly
   the sender's);
 - C{("sub", description, shape)} for a field that is itself an array (C{('c', '>f8', (2, 3))}).

Reading never evaluates anything: a description is checked to be made of str, int, bool and
tuples of the forms above (a simple one must match L{_SIMPLE} and be what C{numpy.dtype}
writes back for itself), with at most L{MAX_DEPTH} levels and L{MAX_FIELDS} fields in all and no
object kind anywhere; only then does C{numpy.dtype} build it. The shape, item size and data
length must agree exactly before anything is built, so a huge declared shape with few bytes is
refused at once, allocating nothing.

Copies. The payload's data is a flat C{uint8} view of the array's own memory (no C{tobytes}; a
view with gaps costs one compacting copy). Data of at least 64 KiB travels beside the message
(L{srpy.codec.dumps_with_buffers}): from that view to the socket, and from the socket into new
memory (L{srpy.wire.new_memory}: an anonymous mapping, not zeroed first) the received array is a
view of: no copy either side. Smaller data travels inside the
message: marshal copies it in, and on receipt C{numpy.frombuffer} wraps the bytes and one copy
makes them writable. A list of arrays alike is stacked into one block (L{encode_many}): one copy
to send, none to receive (each array a view of the block).

>>> import numpy
>>> kind, payload = encode(numpy.arange(3, dtype=">i2"), "value", str)
>>> kind, payload[:3], bytes(payload[3])
('ndarray', ('>i2', (3,), 'C'), b'\\x00\\x00\\x00\\x01\\x00\\x02')
>>> decode_array(('>i2', (3,), 'C', b'\\x00\\x00\\x00\\x01\\x00\\x02'))
array([0, 1, 2], dtype='>i2')
>>> decode_array(('<f8', (10 ** 9,), 'C', b''))
Traceback (most recent call last):
...
ValueError: bad srpy data (a numpy array of shape (1000000000,) and dtype <f8 declares 8000000000 bytes but holds 0)
"""

import mmap
import re
from typing import Any, Callable, Dict, List, Tuple

from . import errors

#: the tag of an array, of a scalar, and of a list of arrays alike (L{encode_many})
ARRAY_TAG = "ndarray"
SCALAR_TAG = "npscalar"
MANY_TAG = "ndarrays"
#: bounds on a received dtype description: nesting levels (structured inside structured, or a
#: sub-array field), fields in all, dimensions of a shape, size of one item, length of a field name
MAX_DEPTH = 16
MAX_FIELDS = 4096
MAX_DIMS = 64
MAX_ITEMSIZE = 2 ** 31
MAX_NAME = 1024
#: elements of a received array whose items take no bytes (a structured dtype with no fields):
#: their count cannot be held to the data's size
MAX_EMPTY_ITEMS = 2 ** 20
#: the fewest bytes an array of a block (L{encode_many}) holds: smaller ones travel one by one, so
#: that a block never builds more than a few bytes of objects per byte received
MANY_ITEM_MIN = 64
#: a simple dtype as C{dtype.str} writes it: byte order, kind (no 'O'), item size, datetime unit
_SIMPLE = re.compile(r"[<>|][biufcmMSUV][0-9]{1,10}(?:\[[0-9]{0,10}[A-Za-z]{1,2}\])?\Z")
_KINDS = frozenset("biufcmMSUV")  # numpy's kinds that travel (not O, nor T: StringDType holds objects)
#: descriptions already checked, each way (simple dtypes only; bounded: emptied when full)
_SENT: Dict[Any, str] = {}
_READ: Dict[str, Any] = {}
_CACHE_SIZE = 256


def encode(value: Any, where: Any, where_text: Callable[[Any], str]) -> Tuple[str, tuple]:
    """
    C{(tag, payload)} for a numpy array or scalar C{value} (codec tags it). C{where} is where it
    sits in what is sent; C{where_text(where)} writes it, for the error.

    @raise SerializationError: an object dtype, a numpy type that is neither C{numpy.ndarray}
        itself nor a scalar (C{numpy.matrix}, a ufunc), or a dtype numpy cannot rebuild from its
        description (a field title that is no str, a third-party dtype).
    """
    import numpy
    kind = type(value)
    try:
        if kind is numpy.ndarray:
            if value.flags.c_contiguous:
                order, flat = "C", value
            elif value.flags.f_contiguous:
                order, flat = "F", value.T  # the same memory, C-ordered
            else:  # a view with gaps: one compacting copy
                order, flat = "C", numpy.ascontiguousarray(value)
            description = _describe(value.dtype, [MAX_FIELDS])
            # marshal writes the array's own memory (a flat byte view of it: no tobytes copy)
            data = flat.reshape(-1).view(numpy.uint8) if value.dtype.itemsize and value.size else b""
            return ARRAY_TAG, (description, value.shape, order, data)
        if isinstance(value, numpy.generic):
            # numpy.str_('') has item size 0 yet writes 4 bytes
            return SCALAR_TAG, (_describe(value.dtype, [MAX_FIELDS]), value.tobytes() if value.dtype.itemsize else b"")
        raise _Refused("srpy carries numpy.ndarray itself and numpy scalars; convert it with numpy.asarray() first"
                       if isinstance(value, numpy.ndarray) else "srpy carries numpy arrays and numpy scalars only")
    except _Refused as exc:
        dtype = getattr(value, "dtype", None)
        raise errors.SerializationError("cannot send a value of type %r%s (at %s): %s" % (
            kind.__module__ + "." + kind.__qualname__,
            " with dtype %s" % (dtype,) if isinstance(dtype, numpy.dtype) else "", where_text(where), exc)) from None


def encode_many(values: List[Any]) -> Any:
    """
    C{(tag, payload)} for a list of arrays alike (the same dtype and shape, none empty, none
    0-d, none Fortran-ordered): C{(description, shape, count, data)}, their data stacked in one
    buffer, so a list of many small arrays (a map's) costs one item, not one per array. None for
    any other list (each of its items then travels on its own).
    """
    import numpy
    first = values[0]
    ndarray = numpy.ndarray
    if type(first) is not ndarray or not first.ndim or first.nbytes < MANY_ITEM_MIN or first.dtype.hasobject:
        return None
    dtype, shape = first.dtype, first.shape
    for value in values:
        if type(value) is not ndarray or value.shape != shape or (value.dtype is not dtype and value.dtype != dtype):
            return None
        flags = value.flags
        if flags.f_contiguous and not flags.c_contiguous:  # its order would be lost
            return None
    try:
        description = _describe(dtype, [MAX_FIELDS])
    except _Refused:
        return None  # said by name when the first one goes on its own
    stacked = numpy.empty((len(values),) + shape, dtype)  # stack() alone would make the byte order native
    numpy.stack(values, out=stacked)
    return MANY_TAG, (description, shape, len(values), stacked.reshape(-1).view(numpy.uint8))


def decode_many(payload: Any) -> List[Any]:
    """
    The list of arrays an L{encode_many} payload stands for: each writable, a view of one block
    of memory that holds them all.

    @raise ValueError: "bad srpy data ...", for a payload L{encode_many} did not write.
    """
    numpy = _numpy()
    if type(payload) is not tuple or len(payload) != 4:
        raise _bad("a tagged list of numpy arrays that is not (dtype, shape, count, data)")
    description, shape, count, data = payload
    if type(count) is not int or count < 1 or type(data) not in _DATA_TYPES:
        raise _bad("a tagged list of numpy arrays whose count is not a positive int or whose data is not bytes")
    _check_shape(shape, "a list of numpy arrays")
    dtype = parse_dtype(description)
    size = 1
    for step in shape:
        size *= step
    if dtype.subdtype is not None or size * dtype.itemsize < MANY_ITEM_MIN or not shape:
        # a block of arrays of a few bytes each would build far more objects than it holds bytes
        raise _bad("a list of numpy arrays of dtype %s and shape %r (of %d bytes each, at least %d in a block)"
                   % (_show(dtype), shape, size * dtype.itemsize, MANY_ITEM_MIN))
    if count * size * dtype.itemsize != len(data):
        raise _bad("a list of %d numpy arrays of shape %r and dtype %s declares %d bytes but holds %d"
                   % (count, shape, _show(dtype), count * size * dtype.itemsize, len(data)))
    raw = numpy.frombuffer(data, numpy.uint8)
    if type(data) is bytes:
        raw = raw.copy()  # bytes cannot be written
    try:
        return list(raw.view(dtype).reshape((count,) + shape))
    except (TypeError, ValueError) as exc:
        raise _bad("a list of numpy arrays numpy cannot build: %s" % exc) from None


#: what an array's data may arrive as: inside the message (bytes), or beside it, read into memory of
#: the receiver's own (L{srpy.wire.new_memory}: an anonymous mapping, or a bytearray)
_DATA_TYPES = (bytes, bytearray, mmap.mmap)


class _Refused(Exception):
    """Why a numpy value cannot travel (L{encode} adds its type and place)."""


def _describe(dtype: Any, fields_left: List[int]) -> Any:
    """The description of C{dtype} (see the module's docstring)."""
    cached = _SENT.get(dtype) if dtype.names is None and dtype.subdtype is None else None
    if cached is not None:
        return cached
    if dtype.kind == "T":
        raise _Refused("numpy's variable-width StringDType does not travel; use a fixed-width str dtype "
                       "(array.astype(str))")
    if dtype.hasobject or dtype.kind == "O":
        raise _Refused("its items are Python objects, which srpy does not carry inside arrays; "
                       "send a list, or an array of a numeric, str or bytes dtype")
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return ("sub", _describe(base, fields_left), tuple(shape))
    if dtype.names is not None:
        fields_left[0] -= len(dtype.names)
        if fields_left[0] < 0:
            raise _Refused("its structured dtype has more than %d fields" % MAX_FIELDS)
        formats, offsets, titles = [], [], []
        for name in dtype.names:
            field = dtype.fields[name]
            title = field[2] if len(field) > 2 else None
            if title is not None and type(title) is not str:
                raise _Refused("its structured dtype has a field whose title is a %s, not a str" % type(title).__name__)
            formats.append(_describe(field[0], fields_left))
            offsets.append(field[1])
            titles.append(title)
        return ("rec", tuple(dtype.names), tuple(formats), tuple(offsets), tuple(titles), dtype.itemsize,
                dtype.isalignedstruct)
    text = dtype.str
    rebuilt = _numpy_dtype(text) if dtype.kind in _KINDS and _SIMPLE.match(text) else None
    if rebuilt is None or rebuilt != dtype:
        raise _Refused("its dtype cannot be rebuilt from its description %r by numpy" % (text,))
    if len(_SENT) >= _CACHE_SIZE:
        _SENT.clear()
    _SENT[dtype] = text
    return text


def _numpy_dtype(text: str) -> Any:
    import numpy
    try:
        return numpy.dtype(text)
    except (TypeError, ValueError):
        return None


# -- reading ------------------------------------------------------------------------------------

def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ValueError("a numpy array or scalar arrived, but numpy is not installed here: install numpy "
                         "where it is received, or send lists (array.tolist())") from None
    return numpy


def _bad(text: str) -> ValueError:
    return ValueError("bad srpy data (%s)" % text)


def decode_array(payload: Any) -> Any:
    """
    The array an L{ARRAY_TAG} payload stands for: writable, its memory its own (a copy of data from
    the message, or the memory data beside the message was read into), with the sent
    dtype (byte order included), shape and order.

    @raise ValueError: "bad srpy data ...", for a payload L{encode} did not write.
    """
    numpy = _numpy()
    if type(payload) is not tuple or len(payload) != 4:
        raise _bad("a tagged numpy array that is not (dtype, shape, order, data)")
    description, shape, order, data = payload
    if type(order) is not str or order not in ("C", "F") or type(data) not in _DATA_TYPES:
        raise _bad("a tagged numpy array whose order is not 'C' or 'F' or whose data is not bytes")
    _check_shape(shape, "a numpy array")
    dtype = parse_dtype(description)
    if dtype.subdtype is not None:
        raise _bad("a numpy array whose dtype is a sub-array")
    count = 1
    for size in shape:
        count *= size
    if count * dtype.itemsize != len(data):
        raise _bad("a numpy array of shape %r and dtype %s declares %d bytes but holds %d"
                   % (shape, _show(dtype), count * dtype.itemsize, len(data)))
    try:
        if dtype.itemsize == 0:
            if count > MAX_EMPTY_ITEMS:
                raise _bad("a numpy array of %d items of no bytes each" % count)
            return numpy.zeros(shape, dtype, order=order)
        if type(data) is not bytes:  # data that came beside the message, read into this: the array's memory
            raw = numpy.frombuffer(data, numpy.uint8)
        else:
            # a read-only view of the received bytes (no copy), then the one copy into memory numpy
            # owns, the cheapest way to a writable array (bytes cannot be written): a copy of the raw
            # bytes (a memcpy, where numpy would copy a record field by field and drop its padding)
            raw = numpy.frombuffer(data, numpy.uint8).copy()
        return raw.view(dtype).reshape(shape, order=order)
    except (TypeError, ValueError) as exc:  # what numpy still refuses (a shape too big for its index type)
        raise _bad("a numpy array numpy cannot build: %s" % exc) from None


def decode_scalar(payload: Any) -> Any:
    """
    The numpy scalar an L{SCALAR_TAG} payload stands for, of its own numpy type.

    @raise ValueError: "bad srpy data ...", for a payload L{encode} did not write.
    """
    numpy = _numpy()
    if type(payload) is not tuple or len(payload) != 2 or type(payload[1]) is not bytes:
        raise _bad("a tagged numpy scalar that is not (dtype, data)")
    dtype = parse_dtype(payload[0])
    if dtype.subdtype is not None or len(payload[1]) != dtype.itemsize:
        raise _bad("a numpy scalar of dtype %s that holds %d bytes" % (_show(dtype), len(payload[1])))
    if dtype.itemsize == 0:  # numpy.str_(''), say
        return numpy.zeros(1, dtype)[0]
    # copied first: a structured scalar (numpy.void) indexes its array's memory
    return numpy.frombuffer(payload[1], dtype).copy()[0]


def _show(dtype: Any) -> str:
    return dtype.str if dtype.names is None else str(dtype)


def _check_shape(shape: Any, what: str) -> None:
    if type(shape) is not tuple or len(shape) > MAX_DIMS or any(
            type(size) is not int or not 0 <= size < 2 ** 62 for size in shape):
        raise _bad("%s whose shape is not a tuple of at most %d sizes" % (what, MAX_DIMS))


def parse_dtype(description: Any) -> Any:
    """
    The C{numpy.dtype} a received description (see the module's docstring) stands for, built
    only once the whole description is checked; never by evaluating text.

    @raise ValueError: "bad srpy data ...", for anything else, or one with an object kind.
    """
    if type(description) is str:
        dtype = _READ.get(description)
        if dtype is None:
            dtype = _parse(description, 0, [MAX_FIELDS])
            if len(_READ) >= _CACHE_SIZE:
                _READ.clear()
            _READ[description] = dtype
        return dtype
    return _parse(description, 0, [MAX_FIELDS])


def _parse(description: Any, depth: int, fields_left: List[int]) -> Any:
    numpy = _numpy()
    if depth > MAX_DEPTH:
        raise _bad("a numpy dtype nested more than %d levels deep" % MAX_DEPTH)
    kind = type(description)
    if kind is str:
        dtype = _numpy_dtype(description) if _SIMPLE.match(description) else None
        if dtype is None or dtype.str != description or dtype.names is not None or dtype.kind not in _KINDS:
            raise _bad("%r is not a numpy dtype srpy reads" % (description[:40],))
        return dtype
    if kind is not tuple or not description or type(description[0]) is not str:
        raise _bad("a numpy dtype described by a %s" % kind.__name__)
    form = description[0]
    if form == "sub" and len(description) == 3:
        _check_shape(description[2], "a sub-array field")
        base = _parse(description[1], depth + 1, fields_left)
        count = 1
        for size in description[2]:
            count *= size
        if count * base.itemsize > MAX_ITEMSIZE:
            raise _bad("a sub-array field of more than %d bytes" % MAX_ITEMSIZE)
        return _build(numpy, (base, description[2]))
    if form == "rec" and len(description) == 7:
        _, names, formats, offsets, titles, itemsize, aligned = description
        if (type(names) is not tuple or type(formats) is not tuple or type(offsets) is not tuple
                or type(titles) is not tuple or not len(names) == len(formats) == len(offsets) == len(titles)
                or type(aligned) is not bool
                or type(itemsize) is not int or not 0 <= itemsize <= MAX_ITEMSIZE):
            raise _bad("a structured numpy dtype that is not names, formats, offsets, item size and alignment")
        fields_left[0] -= len(names)
        if fields_left[0] < 0:
            raise _bad("a structured numpy dtype of more than %d fields" % MAX_FIELDS)
        if any(type(name) is not str or len(name) > MAX_NAME for name in names) or any(
                type(offset) is not int or not 0 <= offset <= MAX_ITEMSIZE for offset in offsets) or any(
                title is not None and (type(title) is not str or len(title) > MAX_NAME) for title in titles):
            raise _bad("a structured numpy dtype whose names or titles are not str or offsets not sizes")
        spec = {"names": list(names), "formats": [_parse(f, depth + 1, fields_left) for f in formats],
                "offsets": list(offsets), "itemsize": itemsize}
        if any(title is not None for title in titles):
            spec["titles"] = list(titles)
        return _build(numpy, spec, aligned)
    raise _bad("a numpy dtype described as %r" % (form[:20],))


def _build(numpy: Any, spec: Any, aligned: bool = False) -> Any:
    """numpy's dtype for a checked C{spec}; numpy's own refusals (overlapping fields...) as bad data."""
    try:
        dtype = numpy.dtype(spec, align=aligned)
    except (TypeError, ValueError, KeyError) as exc:
        raise _bad("a numpy dtype numpy refuses: %s" % str(exc)[:120]) from None
    if dtype.hasobject:  # cannot happen from checked parts; kept as the last word
        raise _bad("a numpy dtype with object fields")
    return dtype
