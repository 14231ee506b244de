"""Event keys: validation of key columns and packing them into one sortable integer.

A key is a tuple of integer columns, most significant first (`run, luminosityBlock, event`). Sorting and
merging tuples is slow; sorting one uint64 is what numpy does fastest. `KeyPacker` maps every column onto
its value range (taken over *both* sides of a join, so that equal tuples give equal integers) and
concatenates the offsets bit by bit. The map is monotonic: lexicographic order of tuples is numeric order
of packed keys. When the ranges need more than 64 bits the packer says so and callers use a lexicographic
sort instead (`lexicographic_order`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from joiner.errors import KeyTypeError
from joiner.spec import PRESET_KEYS

# The experiments' event counters, the columns of the key presets: never negative. Other key columns (a
# key named in the spec) may hold any integers.
COUNTER_COLUMNS = frozenset(name for names in PRESET_KEYS.values() for name in names)

UInt64Array = npt.NDArray[np.uint64]
MAX_BITS = 64


def validate_key_array(
    name: str, values: object, *, where: str, first_row: int = 0, counter: bool | None = None
) -> npt.NDArray[np.integer]:
    """Return `values` as a 1-d integer numpy array, or raise KeyTypeError naming the column and file.

    Floating point, boolean, jagged or nullable columns are refused: a key must identify an event exactly.
    So are negative values of a `counter` (default: a column of a key preset, `COUNTER_COLUMNS`): run,
    luminosity block and event numbers never are, and a negative one is most often an unsigned 64-bit
    event number written as a signed integer (a friend tree made from a DataFrame), which would silently
    match nothing. `first_row` is the entry of `values[0]` in its file, for the message.
    """
    array = np.asarray(values)
    if array.dtype == object or array.ndim != 1:
        raise KeyTypeError(f"key column {name!r} in {where} is not a flat column of integers (dtype {array.dtype})")
    if array.dtype.kind not in "iu":
        raise KeyTypeError(f"key column {name!r} in {where} has type {array.dtype}; event keys must be integers")
    if counter is None:
        counter = name in COUNTER_COLUMNS
    if counter and array.dtype.kind == "i" and array.size and int(array.min()) < 0:
        row = int(np.argmax(array < 0))
        raise KeyTypeError(
            f"key column {name!r} in {where} holds a negative value ({int(array[row])} at entry {first_row + row}); "
            "event keys are non-negative (an unsigned event number written as a signed integer wraps to negative)"
        )
    return array


@dataclass(frozen=True)
class ColumnRange:
    """Smallest and largest value of one key column (Python ints: no overflow between int64/uint64)."""

    low: int
    high: int

    @property
    def bits(self) -> int:
        return int(self.high - self.low).bit_length()

    def union(self, other: ColumnRange) -> ColumnRange:
        return ColumnRange(min(self.low, other.low), max(self.high, other.high))


def column_ranges(keys: Sequence[npt.NDArray[np.integer]]) -> list[ColumnRange] | None:
    """Ranges of each key column, or None for empty columns."""
    if len(keys) == 0 or len(keys[0]) == 0:
        return None
    return [ColumnRange(int(column.min()), int(column.max())) for column in keys]


def union_ranges(*ranges: list[ColumnRange] | None) -> list[ColumnRange] | None:
    """Ranges that cover all of the given ones (None entries are ignored)."""
    present = [r for r in ranges if r is not None]
    if not present:
        return None
    merged = list(present[0])
    for other in present[1:]:
        merged = [a.union(b) for a, b in zip(merged, other, strict=True)]
    return merged


@dataclass(frozen=True)
class KeyPacker:
    """Packs key tuples into uint64 over fixed column ranges; `fits` says whether 64 bits suffice."""

    ranges: tuple[ColumnRange, ...]

    @property
    def total_bits(self) -> int:
        return sum(r.bits for r in self.ranges)

    @property
    def fits(self) -> bool:
        return self.total_bits <= MAX_BITS

    def pack(self, keys: Sequence[npt.NDArray[np.integer]]) -> UInt64Array:
        """Pack columns (values must lie in the ranges) into one uint64 per row.

        Each column is offset, shifted and merged in place (one scratch array), so that packing costs a few
        passes over the rows rather than a fresh array per step.
        """
        if not self.fits:
            raise ValueError(f"key ranges need {self.total_bits} bits; use lexicographic ordering")
        n = len(keys[0]) if keys else 0
        packed: UInt64Array | None = None
        scratch: UInt64Array | None = None
        shift = self.total_bits
        for column, rng in zip(keys, self.ranges, strict=True):
            shift -= rng.bits
            if rng.bits == 0:
                continue
            if packed is None:
                target = packed = np.empty(n, dtype=np.uint64)
            else:
                target = scratch = np.empty(n, dtype=np.uint64) if scratch is None else scratch
            _offset_into(column, rng.low, target)
            if shift:
                np.left_shift(target, np.uint64(shift), out=target)
            if target is not packed:
                np.bitwise_or(packed, target, out=packed)
        return np.zeros(n, dtype=np.uint64) if packed is None else packed

    def repack(self, packed: UInt64Array, layout: KeyPacker) -> None:
        """Re-express keys packed by this packer in `layout` (whose ranges cover this one's), in place.

        Lets keys be packed chunk by chunk, each over its own ranges, before the ranges of the whole are
        known: a column's offset moves by the difference of the two lows, all in unsigned arithmetic.
        """
        if layout.ranges == self.ranges:
            return
        if not layout.fits:
            raise ValueError(f"key ranges need {layout.total_bits} bits; use lexicographic ordering")
        scratch = np.empty(len(packed), dtype=np.uint64)
        result = np.zeros(len(packed), dtype=np.uint64)
        source_shift, target_shift = self.total_bits, layout.total_bits
        for own, target in zip(self.ranges, layout.ranges, strict=True):
            source_shift -= own.bits
            target_shift -= target.bits
            if target.bits == 0:
                continue
            np.right_shift(packed, np.uint64(source_shift), out=scratch)
            np.bitwise_and(scratch, np.uint64((1 << own.bits) - 1), out=scratch)
            if own.low != target.low:
                np.add(scratch, np.uint64(own.low - target.low), out=scratch)
            if target_shift:
                np.left_shift(scratch, np.uint64(target_shift), out=scratch)
            np.bitwise_or(result, scratch, out=result)
        packed[:] = result

    def pack_tuple(self, key: Sequence[int]) -> int:
        """Pack one key tuple (values may lie outside the ranges: then they are clamped to the edge)."""
        value = 0
        for part, rng in zip(key, self.ranges, strict=True):
            clamped = min(max(int(part), rng.low), rng.high)
            value = (value << rng.bits) | (clamped - rng.low)
        return value


def _offset_uint64(column: npt.NDArray[np.integer], low: int) -> UInt64Array:
    """`column - low` as uint64 without overflow for any signed or unsigned integer column."""
    out = np.empty(len(column), dtype=np.uint64)
    _offset_into(column, low, out)
    return out


def _offset_into(column: npt.NDArray[np.integer], low: int, out: UInt64Array) -> None:
    """Write `column - low` into `out` (uint64) in one pass, for any signed or unsigned integer column.

    Unsigned columns subtract in uint64; signed ones in int64, whose wrap-around difference read as uint64
    is exact because every value is at least `low` (the difference lies in [0, 2**64)).
    """
    if column.dtype.kind == "u":
        np.subtract(column, np.uint64(low), out=out, casting="unsafe")
    else:
        np.subtract(column, np.int64(low), out=out, casting="unsafe", dtype=np.int64)


def lexicographic_order(keys: Sequence[npt.NDArray[np.integer]]) -> npt.NDArray[np.intp]:
    """Stable row order sorting key tuples lexicographically (the >64-bit fallback)."""
    # np.lexsort sorts by the last key first: pass the least significant column first.
    return np.lexsort(tuple(reversed(list(keys))))


def key_tuples(keys: Sequence[npt.NDArray[np.integer]], rows: npt.NDArray[np.integer]) -> list[tuple[int, ...]]:
    """Key tuples of some rows, as Python ints (for error messages)."""
    return [tuple(int(column[row]) for column in keys) for row in rows]
