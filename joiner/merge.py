"""Sort-merge matching of two key sets: which left row goes with which right row.

Both sides are concatenated and sorted once. When the packed key and a row number fit together in 64 bits,
that sort is numpy's SIMD sort of plain uint64 values (the row number rides in the low bits and breaks
ties: left before right, then by position), otherwise a stable argsort of the packed key, or a lexicographic
sort when even the key alone needs more than 64 bits. In sorted order a matched pair is two neighbours with
equal keys, one from each side, so every join kind, and the detection of duplicate keys, is a few vector
passes over the sorted array. Nothing here reads files or touches columns other than the key.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from joiner.errors import DuplicateKeyError
from joiner.keys import ColumnRange, KeyPacker, _offset_uint64, column_ranges, key_tuples, union_ranges
from joiner.spec import DuplicatePolicy, How
from joiner.threads import thread_count, thread_pool

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


def _sort_both(left: Keys, right: Keys, ranges: list[ColumnRange]) -> _Sorted:
    """Both sides in one key order (the general path, for keys too wide for the packed fast path)."""
    total = len(left[0]) + len(right[0])
    packer = KeyPacker(tuple(ranges))
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


PARALLEL_SORT_ROWS = 1 << 20  # below this one thread sorts a side


def is_sorted(packed: npt.NDArray[np.uint64]) -> bool:
    """Whether packed keys are in non-decreasing order (a key index, a primary written in key order)."""
    return len(packed) < 2 or bool(np.all(packed[1:] >= packed[:-1]))


def sort_packed(
    packed: npt.NDArray[np.uint64], row_bits: int, *, threads: int = 1
) -> tuple[npt.NDArray[np.uint64], IndexArray]:
    """Sort one side by key with its row numbers riding in the low bits: keys and rows in key order.

    Already sorted keys skip the sort: one pass to check.
    """
    ordered = _sort_side(packed, row_bits, threads=threads, already_sorted=is_sorted(packed))
    return ordered.keys, ordered.row_numbers()


@dataclass(frozen=True)
class _SortedSide:
    """One side in key order: packed keys and the row of each (`None`: the side was sorted already)."""

    keys: npt.NDArray[np.uint64]
    rows: IndexArray | None

    def rows_at(self, positions: IndexArray) -> IndexArray:
        return positions if self.rows is None else self.rows[positions]

    def row_numbers(self) -> IndexArray:
        return np.arange(len(self.keys), dtype=np.int64) if self.rows is None else self.rows


def _sort_side(packed: npt.NDArray[np.uint64], row_bits: int, *, threads: int, already_sorted: bool) -> _SortedSide:
    """Sort with the row number in the low bits (ties keep row order), as plain uint64: numpy's fastest sort.

    With `threads > 1` (the other side needs no sort) the side is cut into that many parts, sorted on the
    pool's threads (numpy releases the GIL), and the sorted parts merged by a stable sort, which for a few
    sorted runs is a linear merge (timsort).
    """
    if already_sorted:
        return _SortedSide(packed, None)
    composite = packed << np.uint64(row_bits)
    composite |= np.arange(len(packed), dtype=np.uint64)
    parts = min(threads, len(packed) // PARALLEL_SORT_ROWS)
    if parts > 1:
        bounds = np.linspace(0, len(packed), parts + 1).astype(np.int64)
        futures = [thread_pool().submit(composite[a:b].sort) for a, b in itertools.pairwise(bounds)]
        for future in futures:
            future.result()
        composite.sort(kind="stable")
    else:
        composite.sort()
    rows = np.bitwise_and(composite, np.uint64((1 << row_bits) - 1)).view(np.int64)  # row < 2**63: same bits
    composite >>= np.uint64(row_bits)
    return _SortedSide(composite, rows)


def _search_sorted(haystack: npt.NDArray[np.uint64], needles: npt.NDArray[np.uint64]) -> IndexArray:
    """`np.searchsorted` of sorted needles, in parts on the pool's threads (it releases the GIL)."""
    parts = min(thread_count(), len(needles) // PARALLEL_SORT_ROWS)
    if parts < 2:
        return np.searchsorted(haystack, needles).astype(np.int64, copy=False)
    bounds = np.linspace(0, len(needles), parts + 1).astype(np.int64)
    futures = [thread_pool().submit(np.searchsorted, haystack, needles[a:b]) for a, b in itertools.pairwise(bounds)]
    return np.concatenate([f.result() for f in futures]).astype(np.int64, copy=False)


@dataclass(frozen=True)
class _Side:
    """How one side of a match is named in errors."""

    name: str
    keys: Keys
    origin: OriginOf | None


def _dedupe_side(side: _SortedSide, policy: DuplicatePolicy, names: _Side) -> tuple[_SortedSide, IndexArray]:
    """Refuse or drop repeated keys of one sorted side (ties are in row order: the first row is kept)."""
    repeats = np.flatnonzero(side.keys[1:] == side.keys[:-1]) + 1
    if not len(repeats):
        return side, np.zeros(0, dtype=np.int64)
    if policy is DuplicatePolicy.ERROR:
        involved = np.union1d(side.rows_at(repeats), side.rows_at(repeats - 1)).astype(np.int64)
        _raise_duplicates(names.name, names.keys, involved, len(repeats), names.origin)
    keep = np.ones(len(side.keys), dtype=bool)
    keep[repeats] = False
    kept = _SortedSide(side.keys[keep], side.row_numbers()[keep])
    return kept, np.sort(side.rows_at(repeats))


def _pairs_packed(
    left: npt.NDArray[np.uint64],
    right: npt.NDArray[np.uint64],
    row_bits: int,
    policy: DuplicatePolicy,
    sides: tuple[_Side, _Side],
) -> tuple[IndexArray, IndexArray, IndexArray, IndexArray]:
    """The fast path: each side sorted as plain uint64 (SIMD), then a search of sorted keys in sorted keys."""
    left_sorted, right_sorted = is_sorted(left), is_sorted(right)
    if left_sorted or right_sorted:
        # at most one side needs a sort: it gets every thread
        threads = thread_count()
        left_side = _sort_side(left, row_bits, threads=threads, already_sorted=left_sorted)
        right_side = _sort_side(right, row_bits, threads=threads, already_sorted=right_sorted)
    else:
        # two independent sorts, and numpy releases the GIL while sorting: one thread each
        pending = thread_pool().submit(_sort_side, right, row_bits, threads=1, already_sorted=False)
        left_side = _sort_side(left, row_bits, threads=1, already_sorted=False)
        right_side = pending.result()
    left_side, dropped_left = _dedupe_side(left_side, policy, sides[0])
    right_side, dropped_right = _dedupe_side(right_side, policy, sides[1])
    if not len(left_side.keys) or not len(right_side.keys):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, dropped_left, dropped_right
    position = _search_sorted(right_side.keys, left_side.keys)
    np.minimum(position, len(right_side.keys) - 1, out=position)
    hit = right_side.keys[position] == left_side.keys
    hit_positions = np.flatnonzero(hit).astype(np.int64)
    return left_side.rows_at(hit_positions), right_side.rows_at(position[hit]), dropped_left, dropped_right


def _pairs_general(
    left: Keys, right: Keys, ranges: list[ColumnRange], policy: DuplicatePolicy, sides: tuple[_Side, _Side]
) -> tuple[IndexArray, IndexArray, IndexArray, IndexArray]:
    """Both sides in one stable order; a pair is two neighbours with equal keys, one from each side."""
    n_left = len(left[0])
    order = _sort_both(left, right, ranges)
    dup_positions = _duplicate_positions(order, n_left)
    dropped_left = np.zeros(0, dtype=np.int64)
    dropped_right = np.zeros(0, dtype=np.int64)
    if len(dup_positions):
        dup_rows = order.rows[dup_positions]
        left_dups = np.sort(dup_rows[dup_rows < n_left])
        right_dups = np.sort(dup_rows[dup_rows >= n_left] - n_left)
        if policy is DuplicatePolicy.ERROR:
            if len(left_dups):
                rows = _duplicate_rows(order, dup_positions, n_left, left=True)
                _raise_duplicates(sides[0].name, left, rows, len(left_dups), sides[0].origin)
            rows = _duplicate_rows(order, dup_positions, n_left, left=False)
            _raise_duplicates(sides[1].name, right, rows, len(right_dups), sides[1].origin)
        keep = np.ones(len(order.rows), dtype=bool)
        keep[dup_positions] = False
        # two neighbours in the kept order are equal iff they were in one run of equal keys
        run_id = np.concatenate([[0], np.cumsum(~order.equal_to_next)])[keep]
        order = _Sorted(order.rows[keep], run_id[1:] == run_id[:-1])
        dropped_left, dropped_right = left_dups, right_dups
    pairs = np.flatnonzero(order.equal_to_next)
    # after de-duplication a run holds at most one row per side, left first
    return order.rows[pairs], order.rows[pairs + 1] - n_left, dropped_left, dropped_right


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
    sides = (_Side(left_name, left, left_origin), _Side(right_name, right, right_origin))
    ranges = union_ranges(column_ranges(left), column_ranges(right))
    empty = np.zeros(0, dtype=np.int64)
    if ranges is None:
        matched_left, matched_right, dropped_left, dropped_right = empty, empty, empty, empty
    else:
        packer = KeyPacker(tuple(ranges))
        row_bits = max(int(max(n_left, n_right) - 1).bit_length(), 1)
        if packer.total_bits + row_bits <= 64:
            matched_left, matched_right, dropped_left, dropped_right = _pairs_packed(
                packer.pack(left), packer.pack(right), row_bits, duplicates, sides
            )
        else:
            matched_left, matched_right, dropped_left, dropped_right = _pairs_general(
                left, right, ranges, duplicates, sides
            )
    partner_of_left = np.full(n_left, -1, dtype=np.int64)
    partner_of_left[matched_left] = matched_right
    if how is How.LEFT and not len(dropped_left):
        return Match(np.arange(n_left, dtype=np.int64), partner_of_left)
    if how is How.INNER and not len(dropped_left):
        rows_left = np.flatnonzero(partner_of_left >= 0).astype(np.int64)  # left order, without a sort
        return Match(rows_left, partner_of_left[rows_left])
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


def partner_of_entries(
    left: Keys,
    left_entries: IndexArray,
    right: Keys,
    num_entries: int,
    *,
    duplicates: DuplicatePolicy = DuplicatePolicy.ERROR,
    left_name: str = "left",
    right_name: str = "right",
    right_origin: OriginOf | None = None,
) -> IndexArray:
    """For every entry of a file, the row of `right` with its key (-1: none), from the file's key index.

    `left` holds the file's keys in its index order (sorted: no sort is needed) and `left_entries` the entry
    of each; entries that are not listed (dropped duplicates) get -1. This is how a whole file is matched at
    once, so that each chunk only looks its entries up.
    """
    partner = np.full(num_entries, -1, dtype=np.int64)
    found = _partners_of_unique_sorted(left, right)
    if found is not None:
        partner[left_entries] = found
        return partner
    match = match_keys(
        left,
        right,
        How.LEFT,
        duplicates=duplicates,
        left_name=left_name,
        right_name=right_name,
        right_origin=right_origin,
    )
    # a left join lists every left row in order unless duplicates were dropped
    listed = left_entries if len(match.left_rows) == len(left_entries) else left_entries[match.left_rows]
    partner[listed] = match.right_rows
    return partner


def is_strictly_increasing(packed: npt.NDArray[np.uint64]) -> bool:
    """Sorted and free of repeats: one pass answers both questions a merge asks of a side."""
    return len(packed) < 2 or bool(np.all(packed[1:] > packed[:-1]))


def _partners_of_unique_sorted(left: Keys, right: Keys) -> IndexArray | None:
    """Each left row's row in `right` (-1: none), when both sides are sorted, repeat-free and packable.

    The common case of `partner_of_entries` (two key indexes, e.g. a file's against a friend's): with no
    sort and no duplicate to find, the match is one parallel search and one comparison. None when a side
    is unsorted, holds a repeated key, or the keys need more than 64 bits: the general merge takes those
    (and names the duplicates).
    """
    n_left, n_right = len(left[0]), len(right[0])
    if n_left == 0 or n_right == 0:
        return np.full(n_left, -1, dtype=np.int64)
    ranges = union_ranges(column_ranges(left), column_ranges(right))
    if ranges is None:
        return None
    packer = KeyPacker(tuple(ranges))
    if not packer.fits:
        return None
    left_packed, right_packed = packer.pack(left), packer.pack(right)
    if not (is_strictly_increasing(left_packed) and is_strictly_increasing(right_packed)):
        return None
    position = _search_sorted(right_packed, left_packed)
    np.minimum(position, n_right - 1, out=position)
    position[right_packed[position] != left_packed] = -1
    return position


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
