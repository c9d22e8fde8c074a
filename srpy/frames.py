"""
pandas DataFrame, Series and Index in srpy's value format (L{srpy.codec}).

L{srpy.codec} imports this module only when it meets a value whose type comes from pandas, or a
frame tag to read, so srpy imports and works without pandas; this module imports neither codec
nor pandas at import time: codec hands it its own C{encode}/C{decode} callbacks for what sits
inside (numpy arrays, which L{srpy.arrays} carries, and labels, which are any value srpy carries).

The payloads, plain data only (never pickle, never dtype text that is evaluated):
 - a DataFrame, tag L{FRAME_TAG}: C{(columns, index, [column, ...])}: C{columns} and C{index}
   are index payloads, one column payload per column, in order;
 - a Series, tag L{SERIES_TAG}: C{(name, index, column)};
 - an Index, tag L{INDEX_TAG}: an index payload, one of
   C{("index", name, column, freq)} (any flat Index; C{freq} the freqstr of a DatetimeIndex or
   TimedeltaIndex, or None), C{("range", name, start, stop, step)} (a RangeIndex) and
   C{("multi", names, (level index payload, ...), (codes array, ...))} (a MultiIndex: its
   levels and codes exactly, unused levels included);
 - a column payload is C{(kind, ...)}: C{("numpy", array)} (bool, int, uint, float, complex and
   naive datetime64/timedelta64, any unit); C{("tz", utc datetime64 array, zone)} with C{zone}
   C{("utc",)}, C{("zone", key)} (a zoneinfo key), C{("offset", seconds, name)} (a
   C{datetime.timezone}), C{("pytz", key)}, C{("pytz-offset", minutes)}, C{("dateutil", key)}
   (a zone file, by its key below the zoneinfo folder), C{("dateutil-utc",)} or
   C{("dateutil-offset", seconds, name or None)};
   C{("category", codes array, categories index payload, ordered)};
   C{("masked", values array, mask array)} (Int8..UInt64, Float32/64, boolean: the values under
   the mask are 0); C{("string", storage, na, items)} (StringDtype, C{na} "NA" or "nan");
   C{("object", items)} (an object column whose items are all str or None); in an index of
   dtype object, C{("labels", items)}: labels are any values srpy carries (codec encodes each).

Reading checks every part's type and that every column is as long as the index before pandas
builds anything; a zone name must look like a zoneinfo key (no path) and is read only by the
library it came from (C{zoneinfo}, C{pytz.timezone}, C{dateutil.tz.gettz}).
Anything else is one C{ValueError} ("bad srpy data ...").
"""

import datetime
import re
from typing import Any, Callable, List, Optional, Tuple

from . import errors

#: the tags of a DataFrame, a Series and an Index
FRAME_TAG = "pdframe"
SERIES_TAG = "pdseries"
INDEX_TAG = "pdindex"
TAGS = frozenset((FRAME_TAG, SERIES_TAG, INDEX_TAG))
#: nesting of index payloads (a MultiIndex's levels, a categorical's categories)
MAX_DEPTH = 8
#: the most items a RangeIndex used as a MultiIndex level or as categories may declare beyond the
#: codes that use it (pandas builds its values, so the message must pay for them)
MIN_RANGE_LIMIT = 2 ** 16
#: a zoneinfo key ("Europe/Paris", "Etc/GMT+3"): no "..", no leading "/"
_ZONE_KEY = re.compile(r"(?!.*\.\.)[A-Za-z0-9_+\-][A-Za-z0-9_+\-/.]{0,63}\Z")
#: a pandas frequency string ("D", "3h", "W-SUN", "QE-DEC", "15min")
_FREQ = re.compile(r"[0-9]{0,9}[A-Za-z][A-Za-z0-9\-]{0,15}\Z")
_NUMPY_KINDS = frozenset("biufcmM")

Encode = Callable[[Any, Any], Any]
Decode = Callable[[Any], Any]


class _Refused(Exception):
    """Why a pandas value cannot travel (L{encode} adds its type and place)."""


def encode(value: Any, where: Any, encode_item: Encode, where_text: Callable[[Any], str]) -> Optional[Tuple[str, Any]]:
    """
    C{(tag, payload)} for a pandas DataFrame, Series or Index C{value}; None for any other
    pandas value (a C{Timestamp} is a datetime: codec carries it as one). C{encode_item(v, where)}
    is codec's encoder for what sits inside; C{where_text(where)} writes a place, for the error.

    @raise SerializationError: a column or index of a dtype that does not travel (period,
        interval, sparse, pyarrow-backed, an object column with an item that is not str or None).
    """
    import pandas
    try:
        if isinstance(value, pandas.DataFrame):
            columns = [_column(value.iloc[:, i], "column %d (%r)" % (i, value.columns[i]), encode_item, where)
                       for i in range(value.shape[1])]
            return FRAME_TAG, (_index(value.columns, "the columns", encode_item, where, 0),
                               _index(value.index, "the index", encode_item, where, 0), columns)
        if isinstance(value, pandas.Series):
            return SERIES_TAG, (encode_item(value.name, where), _index(value.index, "the index", encode_item, where, 0),
                                _column(value, "the values", encode_item, where))
        if isinstance(value, pandas.Index):
            return INDEX_TAG, _index(value, "the index", encode_item, where, 0)
    except _Refused as exc:
        raise errors.SerializationError("cannot send a value of type %r (at %s): %s" % (
            "pandas." + type(value).__qualname__, where_text(where), exc)) from None
    return None


def _index(index: Any, what: str, encode_item: Encode, where: Any, depth: int) -> tuple:
    import numpy
    import pandas
    if depth > MAX_DEPTH:
        raise _Refused("%s nests more than %d levels" % (what, MAX_DEPTH))
    if isinstance(index, pandas.MultiIndex):
        return ("multi", encode_item(tuple(index.names), where),
                tuple(_index(level, "%s level %d" % (what, n), encode_item, where, depth + 1)
                      for n, level in enumerate(index.levels)),
                tuple(encode_item(_numpy_array(codes), where) for codes in index.codes))
    if type(index) is pandas.RangeIndex:
        return ("range", encode_item(index.name, where), index.start, index.stop, index.step)
    freq = getattr(index, "freqstr", None) if isinstance(index, (pandas.DatetimeIndex, pandas.TimedeltaIndex)) else None
    if isinstance(index.dtype, numpy.dtype) and index.dtype.kind == "O":
        # labels, not data: any value srpy carries (codec encodes each)
        column: tuple = ("labels", encode_item(index.tolist(), where))
    else:
        column = _column(index, what, encode_item, where, depth)
    return ("index", encode_item(index.name, where), column, freq)


def _numpy_array(values: Any) -> Any:
    import numpy
    return numpy.ascontiguousarray(numpy.asarray(values))


def _column(values: Any, what: str, encode_item: Encode, where: Any, depth: int = 0) -> tuple:
    """The column payload of a Series or Index C{values}."""
    import numpy
    import pandas
    dtype = values.dtype
    if isinstance(dtype, numpy.dtype):
        if dtype.kind in _NUMPY_KINDS:
            return ("numpy", encode_item(_numpy_array(values.to_numpy()), where))
        if dtype.kind == "O":
            items = values.tolist()
            for item in items:
                if item is not None and type(item) is not str:
                    raise _Refused("%s has dtype object and holds a %s: srpy carries object columns of str "
                                   "(or None) only; convert it (astype) first" % (what, type(item).__name__))
            return ("object", items)
        raise _Refused("%s has dtype %s, which does not travel" % (what, dtype))
    if isinstance(dtype, pandas.DatetimeTZDtype):
        utc = values.array.tz_convert(None)  # the instants, naive in UTC, in the column's unit
        return ("tz", encode_item(_numpy_array(utc), where), _zone(dtype.tz, what))
    if isinstance(dtype, pandas.CategoricalDtype):
        return ("category", encode_item(_numpy_array(values.array.codes), where),
                _index(dtype.categories, "the categories of " + what, encode_item, where, depth + 1),
                bool(dtype.ordered))
    array = values.array
    if isinstance(array, (pandas.arrays.IntegerArray, pandas.arrays.FloatingArray, pandas.arrays.BooleanArray)):
        mask = _numpy_array(array.isna())
        data = array.to_numpy(dtype=dtype.numpy_dtype, na_value=dtype.numpy_dtype.type(0))
        return ("masked", encode_item(_numpy_array(data), where), encode_item(mask, where))
    if isinstance(dtype, pandas.StringDtype):
        na_value = dtype.na_value
        na = "NA" if na_value is pandas.NA else "nan" if isinstance(na_value, float) and na_value != na_value else None
        if na is None or dtype.storage not in ("python", "pyarrow"):
            raise _Refused("%s has a string dtype srpy does not know (%r)" % (what, dtype))
        return ("string", dtype.storage, na, [None if pandas.isna(item) else str(item) for item in array])
    raise _Refused("%s has dtype %s, which does not travel; srpy carries numeric, bool, datetime (with "
                   "time zone), timedelta, categorical, str and the nullable dtypes" % (what, dtype))


def _zone(tz: Any, what: str) -> tuple:
    if tz is datetime.timezone.utc:
        return ("utc",)
    if isinstance(tz, datetime.timezone):
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        return ("offset", offset.days * 86400 + offset.seconds, name)
    origin = type(tz).__module__.partition(".")[0]
    if origin == "pytz":
        return _pytz_zone(tz, what)
    if origin == "dateutil":
        return _dateutil_zone(tz, what)
    key = getattr(tz, "key", None)  # zoneinfo.ZoneInfo
    if type(key) is str and _ZONE_KEY.match(key):
        return ("zone", key)
    raise _Refused("%s has time zone %r: srpy carries zoneinfo, pytz and dateutil zones and fixed offsets "
                   "(datetime.timezone) only" % (what, tz))


def _pytz_zone(tz: Any, what: str) -> tuple:
    """A pytz zone by its name (C{pytz.utc} too), or a C{pytz.FixedOffset} by its minutes."""
    name = getattr(tz, "zone", None)
    if type(name) is str and _ZONE_KEY.match(name):
        return ("pytz", name)
    minutes = getattr(tz, "_minutes", None)  # pytz._FixedOffset, whose zone is None
    if type(minutes) is int and -1440 < minutes < 1440:
        return ("pytz-offset", minutes)
    raise _Refused("%s has the pytz time zone %r, which srpy cannot name" % (what, tz))


def _dateutil_zone(tz: Any, what: str) -> tuple:
    """A dateutil zone: a zone file by its key (relative to a zoneinfo folder), tzutc, or a tzoffset."""
    from dateutil import tz as dateutil_tz  # there: the zone is one of its own

    if isinstance(tz, dateutil_tz.tzutc):
        return ("dateutil-utc",)
    if isinstance(tz, dateutil_tz.tzoffset):
        offset = tz.utcoffset(None)
        name = tz.tzname(None)
        return ("dateutil-offset", offset.days * 86400 + offset.seconds, name if type(name) is str else None)
    filename = getattr(tz, "_filename", None)
    if isinstance(tz, dateutil_tz.tzfile) and type(filename) is str:
        key = filename
        for folder in dateutil_tz.TZPATHS:  # gettz gives the file's path: the receiver looks the key up in its own
            prefix = folder.rstrip("/") + "/"
            if filename.startswith(prefix):
                key = filename[len(prefix):]
                break
        if _ZONE_KEY.match(key):
            return ("dateutil", key)
    raise _Refused("%s has the dateutil time zone %r, which srpy cannot name (only zone files, tzutc and "
                   "tzoffset travel; tzlocal is this machine's)" % (what, tz))


# -- reading ------------------------------------------------------------------------------------

def _bad(text: str) -> ValueError:
    return ValueError("bad srpy data (%s)" % text)


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ValueError("a pandas value arrived, but pandas is not installed here: install pandas where "
                         "it is received, or send plain data (frame.to_dict())") from None
    return pandas


def decode(tag: str, payload: Any, decode_item: Decode) -> Any:
    """
    The DataFrame, Series or Index a payload of tag C{tag} stands for. C{decode_item} is codec's
    decoder for what sits inside (run on the whole payload first; the result is then checked).

    @raise ValueError: "bad srpy data ...", for a payload L{encode} did not write.
    """
    pandas = _pandas()
    payload = decode_item(payload)
    try:
        if tag == FRAME_TAG:
            if type(payload) is not tuple or len(payload) != 3 or type(payload[2]) is not list:
                raise _bad("a tagged DataFrame that is not (columns, index, [column, ...])")
            columns = _read_index(payload[0], 0)
            index = _read_index(payload[1], 0)
            arrays = [_read_column(c, 0) for c in payload[2]]
            if len(arrays) != len(columns) or any(len(a) != len(index) for a in arrays):
                raise _bad("a DataFrame of %d labels and %d rows whose columns disagree" % (len(columns), len(index)))
            # each column a Series of its own dtype first: pandas would take an object array of str for str
            frame = pandas.DataFrame({n: pandas.Series(a, index=index, dtype=a.dtype, copy=False)
                                      for n, a in enumerate(arrays)}, index=index, copy=False)
            frame.columns = columns
            return frame
        if tag == SERIES_TAG:
            if type(payload) is not tuple or len(payload) != 3:
                raise _bad("a tagged Series that is not (name, index, column)")
            index = _read_index(payload[1], 0)
            values = _read_column(payload[2], 0)
            if len(values) != len(index):
                raise _bad("a Series of %d values on an index of %d" % (len(values), len(index)))
            return pandas.Series(values, index=index, name=payload[0], dtype=values.dtype, copy=False)
        if tag == INDEX_TAG:
            return _read_index(payload, 0)
    except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError, NotImplementedError) as exc:
        if str(exc).startswith("bad srpy data"):
            raise
        raise _bad("a pandas value pandas cannot build: %s" % str(exc)[:160]) from None
    raise _bad("unknown pandas tag %r" % (tag,))


def _array(value: Any, kinds: str, what: str) -> Any:
    import numpy
    if type(value) is not numpy.ndarray or value.ndim != 1 or value.dtype.kind not in kinds:
        raise _bad("%s that is not a flat numpy array of kind %s" % (what, "/".join(kinds)))
    return value


def _read_index(payload: Any, depth: int, range_limit: Optional[int] = None) -> Any:
    """
    The index a payload stands for. C{range_limit}: the most items a RangeIndex may declare (one
    costs nothing alone, but pandas builds the values of a MultiIndex level or of categories).
    """
    pandas = _pandas()
    if depth > MAX_DEPTH:
        raise _bad("a pandas index nested more than %d levels" % MAX_DEPTH)
    if type(payload) is not tuple or not payload or type(payload[0]) is not str:
        raise _bad("a pandas index that is not a tagged tuple")
    form = payload[0]
    if form == "range" and len(payload) == 5 and all(type(n) is int for n in payload[2:]) and payload[4] != 0:
        index = pandas.RangeIndex(payload[2], payload[3], payload[4], name=payload[1])
        if range_limit is not None and len(index) > range_limit:
            raise _bad("a RangeIndex of %d items as a level or categories (at most %d here)"
                       % (len(index), range_limit))
        return index
    if form == "index" and len(payload) == 4 and (payload[3] is None or (
            type(payload[3]) is str and _FREQ.match(payload[3]))):
        values = _read_column(payload[2], depth)
        index = pandas.Index(values, dtype=values.dtype, name=payload[1], copy=False)
        if payload[3] is not None:
            if not isinstance(index, (pandas.DatetimeIndex, pandas.TimedeltaIndex)):
                raise _bad("a frequency on an index that is not of dates or durations")
            index.freq = payload[3]  # pandas checks the dates conform to it (ValueError)
        return index
    if form == "multi" and len(payload) == 4 and type(payload[1]) is tuple and type(payload[2]) is tuple \
            and type(payload[3]) is tuple and len(payload[1]) == len(payload[2]) == len(payload[3]) > 0:
        codes = [_array(c, "iu", "a MultiIndex's codes") for c in payload[3]]
        if len({len(c) for c in codes}) != 1:
            raise _bad("a MultiIndex whose levels' codes differ in length")
        limit = max(len(codes[0]), MIN_RANGE_LIMIT)
        levels = [_read_index(level, depth + 1, limit) for level in payload[2]]
        return pandas.MultiIndex(levels=levels, codes=codes, names=list(payload[1]), verify_integrity=True)
    raise _bad("a pandas index described as %r" % (form[:20],))


def _read_column(payload: Any, depth: int) -> Any:
    """The numpy array or pandas extension array a column payload stands for."""
    pandas = _pandas()
    import numpy
    if type(payload) is not tuple or not payload or type(payload[0]) is not str:
        raise _bad("a pandas column that is not a tagged tuple")
    kind, size = payload[0], len(payload)
    if kind == "numpy" and size == 2:
        return _array(payload[1], "".join(_NUMPY_KINDS), "a numpy column")
    if kind == "object" and size == 2 and type(payload[1]) is list:
        if any(item is not None and type(item) is not str for item in payload[1]):
            raise _bad("an object column holding something other than str or None")
        column = numpy.empty(len(payload[1]), dtype=object)
        column[:] = payload[1]
        return column
    if kind == "labels" and size == 2 and type(payload[1]) is list:
        column = numpy.empty(len(payload[1]), dtype=object)
        column[:] = payload[1]
        return column
    if kind == "tz" and size == 3:
        utc = _array(payload[1], "M", "a time-zone column")
        tz = _read_zone(payload[2])
        return pandas.DatetimeIndex(utc).tz_localize("UTC").tz_convert(tz).array
    if kind == "category" and size == 4 and type(payload[3]) is bool:
        codes = _array(payload[1], "iu", "a categorical's codes")
        categories = _read_index(payload[2], depth + 1, max(len(codes), MIN_RANGE_LIMIT))
        dtype = pandas.CategoricalDtype(categories, ordered=payload[3])
        return pandas.Categorical.from_codes(codes, dtype=dtype)
    if kind == "masked" and size == 3:
        values = _array(payload[1], "iufb", "a nullable column's values")
        mask = _array(payload[2], "b", "a nullable column's mask")
        if len(values) != len(mask):
            raise _bad("a nullable column of %d values and %d mask flags" % (len(values), len(mask)))
        if not values.dtype.isnative:
            raise _bad("a nullable column whose values are not in this machine's byte order")
        cls = {"b": pandas.arrays.BooleanArray, "f": pandas.arrays.FloatingArray}.get(
            values.dtype.kind, pandas.arrays.IntegerArray)
        return cls(values, mask)
    if kind == "string" and size == 4 and payload[1] in ("python", "pyarrow") and payload[2] in ("NA", "nan") \
            and type(payload[3]) is list:
        if any(item is not None and type(item) is not str for item in payload[3]):
            raise _bad("a string column holding something other than str or None")
        dtype = pandas.StringDtype(payload[1], na_value=pandas.NA if payload[2] == "NA" else numpy.nan)
        try:
            return pandas.array(payload[3], dtype=dtype)
        except ImportError:  # pyarrow storage where pyarrow is not installed
            raise _bad("a string column stored by pyarrow, which is not installed here") from None
    raise _bad("a pandas column of kind %r" % (kind[:20],))


def _read_zone(zone: Any) -> Any:
    if type(zone) is tuple and zone == ("utc",):
        return datetime.timezone.utc
    if type(zone) is tuple and len(zone) == 3 and zone[0] == "offset" and type(zone[1]) is int \
            and -86400 < zone[1] < 86400 and type(zone[2]) is str and len(zone[2]) <= 64:
        offset = datetime.timedelta(seconds=zone[1])
        return datetime.timezone(offset) if zone[2] == datetime.timezone(offset).tzname(None) \
            else datetime.timezone(offset, zone[2])
    if type(zone) is tuple and len(zone) == 2 and zone[0] == "zone" and type(zone[1]) is str \
            and _ZONE_KEY.match(zone[1]):
        import zoneinfo
        try:
            return zoneinfo.ZoneInfo(zone[1])
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            raise _bad("a time zone %r not known here" % (zone[1],)) from None
    if type(zone) is tuple and len(zone) == 2 and zone[0] in ("pytz", "pytz-offset"):
        return _read_pytz_zone(zone)
    if type(zone) is tuple and zone and zone[0] in ("dateutil", "dateutil-utc", "dateutil-offset"):
        return _read_dateutil_zone(zone)
    raise _bad("a time zone described as %r" % (str(zone)[:40],))


def _read_pytz_zone(zone: tuple) -> Any:
    kind, value = zone
    if not (kind == "pytz" and type(value) is str and _ZONE_KEY.match(value)) \
            and not (kind == "pytz-offset" and type(value) is int and -1440 < value < 1440):
        raise _bad("a pytz time zone described as %r" % (str(zone)[:40],))
    try:
        import pytz
    except ImportError:
        raise _bad("a pytz time zone (%s), and pytz is not installed here" % (value,)) from None
    if kind == "pytz-offset":
        return pytz.FixedOffset(value)
    try:
        return pytz.timezone(value)
    except pytz.UnknownTimeZoneError:
        raise _bad("a pytz time zone %r not known here" % (value,)) from None


def _read_dateutil_zone(zone: tuple) -> Any:
    try:
        from dateutil import tz as dateutil_tz
    except ImportError:
        raise _bad("a dateutil time zone, and dateutil is not installed here") from None
    if zone == ("dateutil-utc",):
        return dateutil_tz.tzutc()
    if len(zone) == 3 and zone[0] == "dateutil-offset" and type(zone[1]) is int and -86400 < zone[1] < 86400 \
            and (zone[2] is None or (type(zone[2]) is str and len(zone[2]) <= 64)):
        return dateutil_tz.tzoffset(zone[2], zone[1])
    if len(zone) == 2 and zone[0] == "dateutil" and type(zone[1]) is str and _ZONE_KEY.match(zone[1]):
        found = dateutil_tz.gettz(zone[1])
        if not isinstance(found, dateutil_tz.tzfile):  # gettz also reads TZ strings and falls back to UTC
            raise _bad("a dateutil time zone %r not known here" % (zone[1],))
        return found
    raise _bad("a dateutil time zone described as %r" % (str(zone)[:40],))
