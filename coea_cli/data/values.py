"""Checks on every value a raw log brings in: ids, timestamps, ratings and text encoding.

Ids become text that round-trips exactly: integers of any width in decimal, text as is, bytes
when they are UTF-8, floats only when they hold an integer float64 represents exactly (within
2^53). Anything else (fractions, NaN, lists, structs, booleans, ...) is bad input: two ids
are never merged into one. Timestamps become int64 seconds since 1970 between the years 1900
and 9999. Each problem raises BadInput naming the file, the row (1 = first data row) or line
(1 = first line of the file) and the column.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from coea_cli.errors import BadInput

TIME_MIN = -2_208_988_800  # 1900-01-01T00:00:00Z
TIME_MAX = 253_402_300_799  # 9999-12-31T23:59:59Z
EXACT_FLOAT = 2**53  # float64 holds every integer up to this exactly


def check_utf8(path: Path, label: str | None = None, block: int = 1 << 24) -> None:
    """A text file must be UTF-8: the first bad byte's line is named. Reads in blocks cut at
    line ends (a newline byte never sits inside a UTF-8 sequence)."""
    label = label or str(path)
    line, rest = 1, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            data = rest + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            part, rest = data[:cut], data[cut:]
            try:
                part.decode("utf-8")
            except UnicodeDecodeError as e:
                at = line + part[: e.start].count(b"\n")
                raise BadInput(f"{label}: line {at}: not valid utf-8 text ({e.reason})") from None
            line += part.count(b"\n")
            if not chunk:
                return


def _row(mask) -> int:
    """1-based row of the first True in a boolean array."""
    return int(np.flatnonzero(np.asarray(mask))[0]) + 1


def _plain(col):
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return col.dictionary_decode() if pa.types.is_dictionary(col.type) else col


def ids(col, label: str, name: str) -> pa.Array:
    """An id column whose values turn into exact text (see the module docstring): integers
    stay integers (only the distinct ones become text, later), the rest becomes text."""
    col = _plain(col)
    t = col.type
    if col.null_count:
        row = _row(col.is_null().to_numpy(zero_copy_only=False))
        raise BadInput(f"{label}: row {row}: column {name}: missing value")
    if pa.types.is_integer(t):
        return col
    if pa.types.is_floating(t):
        return pc.cast(_integral(col, label, name), pa.int64())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        col = _utf8(col.cast(pa.binary()).view(pa.string()), label, name)
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        col = _utf8(col.cast(pa.string()), label, name)
    else:
        raise BadInput(f"{label}: column {name}: {t} values cannot be ids (use integers or text)")
    empty = pc.equal(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False)
    if empty.any():
        raise BadInput(f"{label}: row {_row(empty)}: column {name}: missing value (empty)")
    return col


def _integral(col, label: str, name: str):
    x = col.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(x) | (np.floor(x) != x) | (np.abs(x) > EXACT_FLOAT)
    if bad.any():
        r = _row(bad)
        raise BadInput(
            f"{label}: row {r}: column {name}: id {x[r - 1]!r} is not an integer float64 holds "
            "exactly (ids must be integers or text)"
        )
    return col


def _utf8(col: pa.Array, label: str, name: str) -> pa.Array:
    try:
        col.validate(full=True)
        return col
    except pa.ArrowInvalid:
        pass
    for r, value in enumerate(col.view(pa.binary()).to_pylist(), 1):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInput(
                f"{label}: row {r}: column {name}: not valid utf-8 text ({e.reason})"
            ) from None
    raise BadInput(f"{label}: column {name}: not valid utf-8 text")


def unique_ids(col, label: str, name: str) -> pa.Array:
    """The id column of an items or users table: exact text, each id once."""
    col = pc.cast(ids(col, label, name), pa.string())
    codes = pc.dictionary_encode(col).indices.to_numpy(zero_copy_only=False)
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    first = first[inverse]  # each row's first row with the same id
    repeat = first != np.arange(len(codes))
    if repeat.any():
        r = _row(repeat)
        raise BadInput(
            f"{label}: row {r}: column {name}: id {col[r - 1].as_py()!r} repeats row "
            f"{first[r - 1] + 1}"
        )
    return col


def timestamps(col, label: str, name: str) -> pa.Array:
    """Any integer, float, date, timestamp or ISO-string time column -> int64 seconds,
    finite and within the years 1900..9999."""
    col = _plain(col)
    t = col.type
    if col.null_count:
        row = _row(col.is_null().to_numpy(zero_copy_only=False))
        raise BadInput(f"{label}: row {row}: column {name}: missing timestamp")
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        x = col.to_numpy(zero_copy_only=False)
        seconds = np.floor(x) if pa.types.is_floating(t) else x
        return pa.array(in_range(seconds, label, name), pa.int64())
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        seconds = col.cast(pa.timestamp("s"), safe=False).cast(pa.int64())
        return pa.array(in_range(seconds.to_numpy(zero_copy_only=False), label, name))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.array(in_range(_parse_times(col, label, name), label, name))
    raise BadInput(f"{label}: column {name}: unsupported time type {t}")


def _parse_times(col, label: str, name: str) -> np.ndarray:
    """Text timestamps: all integers (seconds) or all ISO dates and times."""
    for target in (pa.int64(), pa.timestamp("s")):
        try:
            return col.cast(target).cast(pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    for r, v in enumerate(col.to_pylist(), 1):
        try:
            int(v)
        except ValueError:
            try:
                pa.scalar(v).cast(pa.timestamp("s"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise BadInput(
                    f"{label}: row {r}: column {name}: unparsable timestamp {v!r}"
                ) from None
    # Integers too large for int64, or integers mixed with dates: Python ints say which.
    values = [int(v) if v.strip().lstrip("+-").isdigit() else None for v in col.to_pylist()]
    for r, v in enumerate(values, 1):
        if v is None or not TIME_MIN <= v <= TIME_MAX:
            what = "mixes integers and dates" if v is None else f"timestamp {v} is out of range"
            raise BadInput(f"{label}: row {r}: column {name}: {what} (seconds since 1970)")
    return np.array(values, dtype=np.int64)


def in_range(seconds: np.ndarray, label: str, name: str) -> np.ndarray:
    """int64 seconds, every one finite and within the years 1900..9999."""
    x = np.asarray(seconds)
    if x.dtype.kind == "f":
        ok = np.isfinite(x) & (x >= TIME_MIN) & (x <= TIME_MAX)
    else:  # compare unsigned values without wrapping them into int64 first
        ok = (x >= TIME_MIN) & (x <= TIME_MAX) if x.dtype.kind == "i" else x <= TIME_MAX
    if not ok.all():
        r = _row(~ok)
        raise BadInput(
            f"{label}: row {r}: column {name}: timestamp {x[r - 1]} is not a finite time "
            "between the years 1900 and 9999 (seconds since 1970)"
        )
    return x.astype(np.int64)


def int_column(values: list[str], label: str, name: str) -> np.ndarray:
    """Text cells as int64; the first cell that is no int64 integer is named."""
    try:
        return np.array(values, dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    for r, v in enumerate(values, 1):
        try:
            np.int64(int(v))
        except (ValueError, OverflowError):
            raise BadInput(f"{label}: row {r}: column {name}: not an integer: {v!r}") from None
    raise BadInput(f"{label}: column {name}: not integers")


def ratings(col, label: str, name: str) -> pa.Array:
    """A rating column as float32; every rating present and finite."""
    col = _plain(col)
    if col.null_count:
        row = _row(col.is_null().to_numpy(zero_copy_only=False))
        raise BadInput(f"{label}: row {row}: column {name}: missing rating")
    try:
        x = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise BadInput(f"{label}: column {name}: not numeric ({col.type})") from None
    bad = ~np.isfinite(x) | (np.abs(x) > np.finfo(np.float32).max)
    if bad.any():
        r = _row(bad)
        raise BadInput(f"{label}: row {r}: column {name}: rating {x[r - 1]} is not finite")
    return pa.array(x.astype(np.float32))
