"""Gathering rows of a dataset by (file, entry) into a requested order, with nulls for missing rows.

The rows a join needs from the other side are grouped by file and read in entry windows no longer than
the chunk size, so memory stays bounded however the rows are spread; each window is read once and the
needed rows taken from it with Arrow's `take`. One more `take`, with null indices, puts the rows into the
order of the rows they join and leaves nulls (at the list level for jagged columns) where a row is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from joiner.sources import StorageOptions, TableSource, open_source
from joiner.spec import FileFormat


class SourcePool:
    """Opens each file of a dataset once per task and hands the open source back on later calls."""

    def __init__(
        self, paths: Sequence[str], *, tree: str, file_format: FileFormat | None, storage_options: StorageOptions | None
    ) -> None:
        self.paths = list(paths)
        self._tree = tree
        self._format = file_format
        self._options = storage_options
        self._open: dict[int, TableSource] = {}

    def source(self, position: int) -> TableSource:
        if position not in self._open:
            self._open[position] = open_source(
                self.paths[position], tree=self._tree, file_format=self._format, storage_options=self._options
            )
        return self._open[position]


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
    window: int,
    cut: str | None = None,
) -> Gathered:
    """Read `columns` and the key columns at the given rows, returned in the given order."""
    count = len(entries)
    order = np.lexsort((entries, file_positions))
    sorted_files = file_positions[order]
    sorted_entries = entries[order]
    tables: list[pa.Table] = []
    key_parts: list[list[npt.NDArray[np.integer]]] = []
    cut_parts: list[npt.NDArray[np.bool_]] = []
    boundaries = np.flatnonzero(np.diff(sorted_files)) + 1
    for group in np.split(np.arange(count), boundaries):
        if not len(group):
            continue
        source = pool.source(int(sorted_files[group[0]]))
        wanted = sorted_entries[group]
        position = 0
        while position < len(wanted):
            start = int(wanted[position])
            end = int(np.searchsorted(wanted, start + window, side="left"))
            stop = int(wanted[end - 1]) + 1
            rows = wanted[position:end] - start
            table = source.read_table(columns, start, stop)
            tables.append(table.take(pa.array(rows)) if len(rows) != stop - start else table)
            keys = source.read_keys(key_columns, start, stop)
            key_parts.append([k[rows] for k in keys])
            if cut is not None:
                cut_parts.append(source.cut_mask(cut, start, stop)[rows])
            position = end
    if tables:
        combined = pa.concat_tables(tables, promote_options="permissive")
        keys_sorted = [np.concatenate([p[i] for p in key_parts]) for i in range(len(key_columns))]
    else:
        combined = pool.source(0).read_table(columns, 0, 0) if pool.paths else pa.table({})
        keys_sorted = [np.zeros(0, dtype=np.int64) for _ in key_columns]
    # back from (file, entry) order to the order asked for
    inverse = np.empty(count, dtype=np.int64)
    inverse[order] = np.arange(count, dtype=np.int64)
    passes = (
        np.concatenate(cut_parts)[inverse]
        if cut is not None and cut_parts
        else (np.zeros(0, dtype=bool) if cut is not None else None)
    )
    return Gathered(combined.take(pa.array(inverse)), [k[inverse] for k in keys_sorted], passes)


def place(table: pa.Table, targets: npt.NDArray[np.int64], length: int) -> pa.Table:
    """Rows of `table` moved to positions `targets` of a table of `length` rows; other rows are null."""
    index = np.full(length, -1, dtype=np.int64)
    index[targets] = np.arange(len(targets), dtype=np.int64)
    missing = index < 0
    if not missing.any():
        return table.take(pa.array(index))
    return table.take(pa.array(index, mask=missing))
