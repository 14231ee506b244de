"""Sort-merge matching of two key sets: which left row goes with which right row.

Both sides are concatenated and sorted once. When the packed key and a row number fit together in 64 bits,
that sort is numpy's SIMD sort of plain uint64 values (the row number rides in the low bits and breaks
ties: left before right, then by position), otherwise a stable argsort of the packed key, or a lexicographic
sort when even the key alone needs more than 64 bits. In sorted order a matched pair is two neighbours with
equal keys, one from each side, so every join kind, and the detection of duplicate keys, is a few vector
passes over the sorted array. Nothing here reads files or touches columns other than the key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from joiner.errors import DuplicateKeyError
from joiner.keys import ColumnRange, KeyPacker, _offset_uint64, column_ranges, key_tuples, union_ranges
from joiner.spec import DuplicatePolicy, How

IndexArray = npt.NDArray[np.int64]
Keys = Sequence[npt.NDArray[np.integer]]
OriginOf = Callable[[npt.NDArray[np.int64]], list[str]]
MAX_DUPLICATES_SHOWN = 10


@dataclass(frozen=True)
class Match:
    """Row pairs of a join. `-1` marks the side a row is missing from (left/right/outer joins)."""

    left_rows: IndexArray
    right_rows: IndexArray

    def __len__(self) -> int:
        return len(self.left_rows)

    @property
    def matched(self) -> int:
        return int(np.count_nonzero((self.left_rows >= 0) & (self.right_rows >= 0)))


@dataclass(frozen=True)
class _Sorted:
    """Both sides' rows in key order: combined row numbers (`< n_left` is left) and run boundaries."""

    rows: IndexArray
    equal_to_next: npt.NDArray[np.bool_]


def _sort_both(left: Keys, right: Keys) -> _Sorted:
    n_left, n_right = len(left[0]), len(right[0])
    total = n_left + n_right
    ranges = union_ranges(column_ranges(left), column_ranges(right))
    if ranges is None or total == 0:
        return _Sorted(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    packer = KeyPacker(tuple(ranges))
    side_row_bits = max(int(max(n_left, n_right) - 1).bit_length(), 1)
    if packer.total_bits + side_row_bits <= 64:
        return _sort_two_stage(packer.pack(left), packer.pack(right), packer.total_bits, side_row_bits)
    if packer.fits:
        packed = np.concatenate([packer.pack(left), packer.pack(right)])
        rows = np.argsort(packed, kind="stable").astype(np.int64)
        sorted_keys = packed[rows]
        return _Sorted(rows, sorted_keys[1:] == sorted_keys[:-1])
    columns = [_concat_offsets(lc, rc, rng) for lc, rc, rng in zip(left, right, ranges, strict=True)]
    rows = np.lexsort(tuple(reversed(columns))).astype(np.int64)
    equal = np.ones(max(total - 1, 0), dtype=bool)
    for column in columns:
        ordered = column[rows]
        equal &= ordered[1:] == ordered[:-1]
    return _Sorted(rows, equal)


def _sort_side(packed: npt.NDArray[np.uint64], row_bits: int) -> tuple[npt.NDArray[np.uint64], IndexArray]:
    """Sort one side by key with its row numbers riding in the low bits: keys and rows in key order."""
    composite = packed << np.uint64(row_bits)
    composite |= np.arange(len(packed), dtype=np.uint64)
    composite.sort()
    rows = (composite & np.uint64((1 << row_bits) - 1)).astype(np.int64)
    return composite >> np.uint64(row_bits), rows


def _sort_two_stage(
    left: npt.NDArray[np.uint64], right: npt.NDArray[np.uint64], key_bits: int, row_bits: int
) -> _Sorted:
    """Each side sorted with its rows in the low bits, then both merged by one more sort of key + side bit.

    Keys of up to 63 bits with a side bit sort as plain uint64: numpy's fastest path. When the key needs
    all 64 bits, the merge falls back to a stable argsort of the concatenated sorted keys.
    """
    n_left = len(left)
    left_keys, left_rows = _sort_side(left, row_bits)
    right_keys, right_rows = _sort_side(right, row_bits)
    if key_bits < 64:
        merged = np.concatenate([left_keys << np.uint64(1), (right_keys << np.uint64(1)) | np.uint64(1)])
        merged.sort()
        is_right = (merged & np.uint64(1)).astype(bool)
        keys = merged >> np.uint64(1)
    else:
        both = np.concatenate([left_keys, right_keys])
        order = np.argsort(both, kind="stable")
        is_right = order >= n_left
        keys = both[order]
    # the k-th left entry in merged order is the k-th smallest left key, and likewise on the right
    rows = np.empty(len(keys), dtype=np.int64)
    rows[~is_right] = left_rows
    rows[is_right] = right_rows + n_left
    return _Sorted(rows, keys[1:] == keys[:-1])


def _concat_offsets(
    left: npt.NDArray[np.integer], right: npt.NDArray[np.integer], rng: ColumnRange
) -> npt.NDArray[np.uint64]:
    return np.concatenate([_offset_uint64(left, rng.low), _offset_uint64(right, rng.low)])


def _duplicate_positions(order: _Sorted, n_left: int) -> npt.NDArray[np.int64]:
    """Positions (in sorted order) of rows whose key equals the previous row's on the same side."""
    if len(order.rows) < 2:
        return np.zeros(0, dtype=np.int64)
    is_left = order.rows < n_left
    same_side = is_left[1:] == is_left[:-1]
    return (np.flatnonzero(order.equal_to_next & same_side) + 1).astype(np.int64)


def _raise_duplicates(name: str, keys: Keys, rows: npt.NDArray[np.int64], total: int, origin: OriginOf | None) -> None:
    shown = rows[:MAX_DUPLICATES_SHOWN]
    files = origin(shown) if origin is not None else [name] * len(shown)
    tuples = key_tuples(keys, shown)
    grouped: dict[tuple[int, ...], list[str]] = {}
    for key, file in zip(tuples, files, strict=True):
        grouped.setdefault(key, []).append(file)
    raise DuplicateKeyError(name, list(grouped.items()), total=total)


def match_keys(
    left: Keys,
    right: Keys,
    how: How,
    *,
    duplicates: DuplicatePolicy = DuplicatePolicy.ERROR,
    left_name: str = "left",
    right_name: str = "right",
    left_origin: OriginOf | None = None,
    right_origin: OriginOf | None = None,
) -> Match:
    """Pair rows of `left` and `right` with equal keys.

    Args:
        left, right: key columns (same number, most significant first) of each side.
        how: inner and left keep left order; anti keeps left rows without a partner; right keeps right
            order; outer is left's rows in order followed by right-only rows in right order.
        duplicates: `error` refuses a key present twice on one side (naming it and its files, via the
            origin callables); `first` keeps the first row of each key (lowest position) and drops the rest.

    Returns:
        Row pairs, `-1` where a side has no row.
    """
    n_left, n_right = len(left[0]), len(right[0])
    order = _sort_both(left, right)
    dup_positions = _duplicate_positions(order, n_left)
    dropped_left = np.zeros(0, dtype=np.int64)
    dropped_right = np.zeros(0, dtype=np.int64)
    if len(dup_positions):
        dup_rows = order.rows[dup_positions]
        left_dups = np.sort(dup_rows[dup_rows < n_left])
        right_dups = np.sort(dup_rows[dup_rows >= n_left] - n_left)
        if duplicates is DuplicatePolicy.ERROR:
            if len(left_dups):
                rows = _duplicate_rows(order, dup_positions, n_left, left=True)
                _raise_duplicates(left_name, left, rows, len(left_dups), left_origin)
            rows = _duplicate_rows(order, dup_positions, n_left, left=False)
            _raise_duplicates(right_name, right, rows, len(right_dups), right_origin)
        keep = np.ones(len(order.rows), dtype=bool)
        keep[dup_positions] = False
        rows = order.rows[keep]
        # two neighbours in the kept order are equal iff they were in one run of equal keys
        run_id = np.concatenate([[0], np.cumsum(~order.equal_to_next)])[keep]
        order = _Sorted(rows, run_id[1:] == run_id[:-1])
        dropped_left, dropped_right = left_dups, right_dups

    pairs = np.flatnonzero(order.equal_to_next)
    # after de-duplication a run holds at most one row per side, left first
    matched_left = order.rows[pairs]
    matched_right = order.rows[pairs + 1] - n_left
    partner_of_left = np.full(n_left, -1, dtype=np.int64)
    partner_of_left[matched_left] = matched_right
    partner_of_right = np.full(n_right, -1, dtype=np.int64)
    partner_of_right[matched_right] = matched_left

    left_all = _without(np.arange(n_left, dtype=np.int64), dropped_left)
    right_all = _without(np.arange(n_right, dtype=np.int64), dropped_right)
    if how is How.INNER:
        rows_left = left_all[partner_of_left[left_all] >= 0]
        return Match(rows_left, partner_of_left[rows_left])
    if how is How.LEFT:
        return Match(left_all, partner_of_left[left_all])
    if how is How.ANTI:
        rows_left = left_all[partner_of_left[left_all] < 0]
        return Match(rows_left, np.full(len(rows_left), -1, dtype=np.int64))
    if how is How.RIGHT:
        return Match(partner_of_right[right_all], right_all)
    only_right = right_all[partner_of_right[right_all] < 0]
    return Match(
        np.concatenate([left_all, np.full(len(only_right), -1, dtype=np.int64)]),
        np.concatenate([partner_of_left[left_all], only_right]),
    )


def _duplicate_rows(order: _Sorted, dup_positions: npt.NDArray[np.int64], n_left: int, left: bool) -> IndexArray:
    """Rows of one side involved in duplicates: each duplicate and the row it repeats."""
    involved = np.union1d(order.rows[dup_positions], order.rows[dup_positions - 1])
    if left:
        return involved[involved < n_left].astype(np.int64)
    return (involved[involved >= n_left] - n_left).astype(np.int64)


def _without(rows: npt.NDArray[np.int64], dropped: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    if len(dropped) == 0:
        return rows
    keep = np.ones(len(rows), dtype=bool)
    keep[dropped] = False
    return rows[keep]


def keys_equal(a: Keys, b: Keys) -> bool:
    """Whether two key sets are the same rows in the same order (the aligned-friend check)."""
    if len(a) != len(b) or (len(a) and len(a[0]) != len(b[0])):
        return False
    return all(_columns_equal(x, y) for x, y in zip(a, b, strict=True))


def _columns_equal(x: npt.NDArray[np.integer], y: npt.NDArray[np.integer]) -> bool:
    if x.dtype == y.dtype or (x.dtype.kind == y.dtype.kind):
        return bool(np.array_equal(x, y))
    # signed vs unsigned: equal only where both are non-negative and equal
    return bool(np.array_equal(x.astype(np.int64), y.astype(np.int64)) and (x >= 0).all())


def mismatched_rows(a: Keys, b: Keys) -> npt.NDArray[np.int64]:
    """Row numbers where two equally long key sets differ."""
    differ = np.zeros(len(a[0]), dtype=bool)
    for x, y in zip(a, b, strict=True):
        differ |= x.astype(np.int64) != y.astype(np.int64) if x.dtype != y.dtype else x != y
    return np.flatnonzero(differ).astype(np.int64)
