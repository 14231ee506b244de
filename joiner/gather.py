"""Gathering rows of a dataset by (file, entry) into a requested order, with nulls for missing rows.

The rows a join needs from the other side are grouped by file and read in fixed entry windows (cached,
bounded in bytes), so memory stays bounded however the rows are spread; the needed rows are taken from
each window with Arrow's `take`. One more `take`, with null indices, puts the rows into the
order of the rows they join and leaves nulls (at the list level for jagged columns) where a row is missing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from joiner.sources import StorageOptions, TableSource, open_source
from joiner.spec import FileFormat


DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class Window:
    """Rows `start ... start + len` of one file: the requested columns, the key columns, the cut mask."""

    start: int
    table: pa.Table
    keys: list[npt.NDArray[np.integer]]
    passes_cut: npt.NDArray[np.bool_] | None

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes) + sum(int(k.nbytes) for k in self.keys)


class SourcePool:
    """The files of the other side of a join, each opened once per task, read in fixed entry windows.

    Windows lie on a fixed grid (`window` entries), so a window read for one chunk of the primary serves
    the next chunks too: a reordered friend is decompressed once, not once per chunk. Windows are kept in
    a least-recently-used cache bounded in bytes, so memory stays bounded whatever the input size.
    """

    def __init__(
        self,
        paths: Sequence[str],
        *,
        tree: str,
        file_format: FileFormat | None,
        storage_options: StorageOptions | None,
        window: int = 250_000,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.paths = list(paths)
        self.window = max(1, window)
        self._tree = tree
        self._format = file_format
        self._options = storage_options
        self._open: dict[int, TableSource] = {}
        self._cache: OrderedDict[tuple[int, int, tuple[str, ...], str | None], Window] = OrderedDict()
        self._cache_limit = cache_bytes
        self._cached_bytes = 0

    def source(self, position: int) -> TableSource:
        if position not in self._open:
            self._open[position] = open_source(
                self.paths[position], tree=self._tree, file_format=self._format, storage_options=self._options
            )
        return self._open[position]

    def read_window(
        self, position: int, number: int, columns: Sequence[str], key_columns: Sequence[str], cut: str | None
    ) -> Window:
        """Window `number` of file `position` (entries `number * window` up to the next window)."""
        cache_key = (position, number, tuple(columns), cut)
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        source = self.source(position)
        start = number * self.window
        stop = min(source.num_entries, start + self.window)
        window = Window(
            start,
            source.read_table(columns, start, stop),
            source.read_keys(key_columns, start, stop),
            source.cut_mask(cut, start, stop) if cut is not None else None,
        )
        self._cache[cache_key] = window
        self._cached_bytes += window.nbytes
        while self._cached_bytes > self._cache_limit and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.nbytes
        return window


@dataclass(frozen=True)
class Gathered:
    """Rows read for a set of (file, entry) pairs, in the order they were asked for."""

    table: pa.Table
    keys: list[npt.NDArray[np.integer]]
    passes_cut: npt.NDArray[np.bool_] | None


def gather(
    pool: SourcePool,
    file_positions: npt.NDArray[np.int64],
    entries: npt.NDArray[np.int64],
    *,
    columns: Sequence[str],
    key_columns: Sequence[str],
    cut: str | None = None,
) -> Gathered:
    """Read `columns` and the key columns at the given rows, returned in the given order."""
    count = len(entries)
    windows = entries // pool.window
    order = np.lexsort((entries, file_positions))
    sorted_files = file_positions[order]
    sorted_windows = windows[order]
    sorted_entries = entries[order]
    tables: list[pa.Table] = []
    key_parts: list[list[npt.NDArray[np.integer]]] = []
    cut_parts: list[npt.NDArray[np.bool_]] = []
    boundaries = np.flatnonzero((np.diff(sorted_files) != 0) | (np.diff(sorted_windows) != 0)) + 1
    for group in np.split(np.arange(count), boundaries):
        if not len(group):
            continue
        window = pool.read_window(
            int(sorted_files[group[0]]), int(sorted_windows[group[0]]), columns, key_columns, cut
        )
        rows = sorted_entries[group] - window.start
        whole = len(rows) == window.table.num_rows
        tables.append(window.table if whole else window.table.take(pa.array(rows)))
        key_parts.append(window.keys if whole else [k[rows] for k in window.keys])
        if window.passes_cut is not None:
            cut_parts.append(window.passes_cut if whole else window.passes_cut[rows])
    if tables:
        combined = pa.concat_tables(tables, promote_options="permissive")
        keys_sorted = [np.concatenate([p[i] for p in key_parts]) for i in range(len(key_columns))]
    else:
        combined = pool.source(0).read_table(columns, 0, 0) if pool.paths else pa.table({})
        keys_sorted = [np.zeros(0, dtype=np.int64) for _ in key_columns]
    # back from (file, entry) order to the order asked for
    inverse = np.empty(count, dtype=np.int64)
    inverse[order] = np.arange(count, dtype=np.int64)
    passes: npt.NDArray[np.bool_] | None = None
    if cut is not None:
        passes = np.concatenate(cut_parts)[inverse] if cut_parts else np.zeros(0, dtype=bool)
    return Gathered(combined.take(pa.array(inverse)), [k[inverse] for k in keys_sorted], passes)


def place(table: pa.Table, targets: npt.NDArray[np.int64], length: int) -> pa.Table:
    """Rows of `table` moved to positions `targets` of a table of `length` rows; other rows are null."""
    index = np.full(length, -1, dtype=np.int64)
    index[targets] = np.arange(len(targets), dtype=np.int64)
    missing = index < 0
    if not missing.any():
        return table.take(pa.array(index))
    return table.take(pa.array(index, mask=missing))
