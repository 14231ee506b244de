"""One input file of a join spec, end to end: read, join every friend, add produced columns, write.

This is the single seam between the engine and everything that runs it (the local command, the ServiceX
worker, the science container): they call `join_file` and get a `FileResult` back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from joiner.arrow_arrays import arrow_to_numpy, numpy_to_arrow
from joiner.errors import SpecError
from joiner.gather import SourcePool, gather, place, take_rows
from joiner.index import (
    DatasetFiles,
    DatasetIndex,
    FragmentStore,
    KeyFragment,
    KeyTuple,
    build_dataset_index,
    build_dataset_indexes,
    build_fragment,
    equal_neighbours,
    has_repeated_keys,
)
from joiner.integrity import KeyDigest, verify_collection_lengths, verify_keys
from joiner.merge import keys_equal, match_keys, partner_of_entries
from joiner.plan import JoinPlan, SidePlan, collection_of, is_list_type, leave_out, make_plan, non_null_elements
from joiner.sources import TableSource, expand_paths, logical_path, open_source
from joiner.spec import DuplicatePolicy, FriendSpec, How, JoinSpec
from joiner.writing import OutputObserver, fits_a_ttree, open_sink


class OutputFormat(StrEnum):
    """What a joined file is written as (ServiceX's `result_format` names)."""

    PARQUET = "parquet"
    ROOT = "root-file"


class Role(StrEnum):
    """Which side of the spec an input file belongs to (DESIGN §4, per-file decomposition)."""

    PRIMARY = "primary"  # a primary file: inner/left (and the left half of outer) over all friends
    RIGHT = "right"  # a friend file of a right join: left(F, P)
    ANTI = "anti"  # a friend file of an outer join: friend rows that have no primary row


class ColumnProducer(Protocol):
    """Adds columns to joined rows (Triton inference). Runs on every chunk after the joins."""

    def __call__(self, table: pa.Table) -> pa.Table:
        """Return `table` with the produced columns appended (same rows, same order)."""

    def describe(self) -> Mapping[str, Any]:
        """What went into the columns (model name, version, server), for the output's metadata."""


@dataclass(frozen=True)
class FileResult:
    """What one input file produced: counts for the App's report and the command's summary."""

    input_path: str
    output_path: Path
    output_format: OutputFormat
    events_in: int
    events_out: int
    output_bytes: int
    matched: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


PathCheck = Callable[[str], None]

DEFAULT_CHUNK_ENTRIES = 250_000


def infer_role(spec: JoinSpec, input_path: str) -> Role:
    """The role of an input file: a friend file of a right/outer join, else a primary file."""
    outer_like = [f for f in spec.friends if f.how in (How.RIGHT, How.OUTER)]
    if not outer_like:
        return Role.PRIMARY
    friend = outer_like[0]
    in_friend = _listed(input_path, friend.files)
    if friend.how is How.RIGHT:
        if not in_friend and _listed(input_path, spec.primary.files):
            raise SpecError(
                f"{input_path} is a primary file, but a right join runs over the friend's files "
                f"(friend {friend.name!r}); submit the friend files as the dataset"
            )
        return Role.RIGHT
    return Role.ANTI if in_friend else Role.PRIMARY


def _listed(path: str, patterns: Sequence[str]) -> bool:
    import fnmatch

    bare = logical_path(path)
    return any(bare == logical_path(p) or fnmatch.fnmatchcase(bare, logical_path(p)) for p in patterns)


@dataclass
class _Counts:
    events_in: int = 0
    events_out: int = 0
    matched: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add_time(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - since)
        return now


@dataclass
class _Rows:
    """The rows joined so far in one chunk: their table, keys and entry numbers in the input file."""

    table: pa.Table
    keys: list[npt.NDArray[np.integer]]
    entries: npt.NDArray[np.int64]

    def take(self, rows: npt.NDArray[np.int64]) -> _Rows:
        if len(rows) == len(self.entries) and (len(rows) == 0 or bool(np.all(rows == np.arange(len(rows))))):
            return self
        return _Rows(take_rows(self.table, rows), [k[rows] for k in self.keys], self.entries[rows])


@dataclass(frozen=True)
class _Partners:
    """Where each entry of the primary file finds its friend row: dataset file position and entry (-1: none).

    Matched once per file, from the file's sorted key fragment against the friend's sorted key index, so
    neither side is sorted again and a friend's index is scanned once per file, not once per chunk.
    """

    file_positions: npt.NDArray[np.int64]
    entries: npt.NDArray[np.int64]


def resolve_friend_indexes(
    spec: JoinSpec,
    *,
    fragment_store: FragmentStore | None = None,
    storage_options: Mapping[str, Any] | None = None,
    path_check: PathCheck | None = None,
) -> dict[str, DatasetIndex]:
    """Key indexes of every friend dataset (cached fragments where the store has them), built together."""
    datasets = []
    for friend in spec.friends:
        paths = expand_paths(friend.files, storage_options)
        if path_check is not None:
            for path in paths:
                path_check(path)
        datasets.append(
            DatasetFiles(friend.name, paths, spec.friend_tree(friend), friend.format, spec.key_branches(friend))
        )
    return build_dataset_indexes(
        datasets, key_columns=spec.key_columns, store=fragment_store, storage_options=storage_options
    )


def resolve_primary_index(
    spec: JoinSpec,
    *,
    fragment_store: FragmentStore | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> DatasetIndex:
    """Key index of the primary dataset (right/outer joins reach the primary from the friend's files)."""
    if not spec.primary.files:
        raise SpecError(
            "primary.files is required for right and outer joins (and for local runs): the friend's rows are "
            "joined to the primary through the primary's key index; through ServiceX, use a FileList dataset "
            "and the client's sample helper"
        )
    paths = expand_paths(spec.primary.files, storage_options)
    return build_dataset_index(
        "primary",
        paths,
        tree=spec.primary_tree,
        key_columns=spec.key_columns,
        file_format=None,
        store=fragment_store,
        storage_options=storage_options,
        key_branches=spec.key_branches(),
    )


def join_file(
    spec: JoinSpec,
    input_path: str,
    output_path: Path,
    *,
    role: Role | None = None,
    output_format: OutputFormat = OutputFormat.PARQUET,
    fragment_store: FragmentStore | None = None,
    producers: Sequence[ColumnProducer] = (),
    chunk_entries: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    path_check: PathCheck | None = None,
    indexes: Mapping[str, DatasetIndex] | None = None,
    output_observer: OutputObserver | None = None,
) -> FileResult:
    """Join one input file of `spec` and write the result to `output_path` (atomically).

    Args:
        spec: the validated join spec.
        input_path: a primary file (inner/left/outer-left part) or, for right/outer joins, a friend file.
        output_path: where the output goes; written under a temporary name and renamed at the end.
        role: which part this file is; by default inferred from the spec's file lists.
        output_format: Parquet, or a ROOT TTree named `servicex`.
        fragment_store: cache of key-index fragments (content addressed), shared across tasks.
        producers: column producers (Triton inference) applied to every joined chunk.
        chunk_entries: entries per chunk; bounds memory.
        storage_options: fsspec options for remote friends (s3 credentials).
        path_check: called with every friend path before it is read; raises to refuse a location.
        indexes: prebuilt dataset indexes by name ("primary" or a friend's name), already checked for
            duplicates; built here (and checked) when absent.
        output_observer: sees a Parquet output's bytes in order as they are written (so that they can be
            uploaded meanwhile); when the call returns it has seen the whole file. Not used for ROOT.

    Raises:
        JoinError subclasses for anything wrong with the inputs (permanent for this file).
    """
    resolved_role = role if role is not None else infer_role(spec, input_path)
    runner = _FileJoin(
        spec,
        input_path,
        role=resolved_role,
        fragment_store=fragment_store,
        producers=producers,
        chunk=chunk_entries or DEFAULT_CHUNK_ENTRIES,
        storage_options=storage_options,
        path_check=path_check,
        indexes=dict(indexes or {}),
    )
    return runner.run(output_path, output_format, output_observer)


class _FileJoin:
    """The work of one `join_file` call (see its docstring); one method per step."""

    def __init__(
        self,
        spec: JoinSpec,
        input_path: str,
        *,
        role: Role,
        fragment_store: FragmentStore | None,
        producers: Sequence[ColumnProducer],
        chunk: int,
        storage_options: Mapping[str, Any] | None,
        path_check: PathCheck | None,
        indexes: dict[str, DatasetIndex],
    ) -> None:
        self.spec = spec
        self.input_path = input_path
        self.role = role
        self.store = fragment_store
        self.producers = list(producers)
        self.chunk = max(1, chunk)
        self.options = storage_options
        self.path_check = path_check
        self.indexes = indexes
        self.keys = list(spec.key_columns)
        self.output_format = OutputFormat.PARQUET  # set by run(): the columns a pattern takes depend on it
        self.left_out: list[str] = []
        self.counts = _Counts()
        self.inputs: list[dict[str, Any]] = []
        self.paths_taken: dict[str, set[str]] = {}
        self.partners: dict[str, _Partners] = {}
        self.fragment: KeyFragment | None = None  # the primary file's sorted keys, while a merge may need them
        self.primary_source: TableSource | None = None
        self.drop: npt.NDArray[np.bool_] | None = None

    # -- set-up -------------------------------------------------------------------------------------
    def _friend_index(self, friend: FriendSpec) -> DatasetIndex:
        if friend.name not in self.indexes:
            built = resolve_friend_indexes(
                self.spec.model_copy(update={"friends": [friend]}),
                fragment_store=self.store,
                storage_options=self.options,
                path_check=self.path_check,
            )[friend.name]
            built.check_duplicates(self.spec.duplicates)
            self.indexes[friend.name] = built
        elif self.path_check is not None:
            for path in self.indexes[friend.name].paths:
                self.path_check(path)
        return self.indexes[friend.name]

    def _primary_index(self) -> DatasetIndex:
        if "primary" not in self.indexes:
            built = resolve_primary_index(self.spec, fragment_store=self.store, storage_options=self.options)
            built.check_duplicates(self.spec.duplicates)
            self.indexes["primary"] = built
        return self.indexes["primary"]

    def _for_the_output(self, plan: JoinPlan) -> JoinPlan:
        """A ROOT TTree holds numbers and lists of numbers: what else a pattern matched is left out."""
        if self.output_format is OutputFormat.ROOT:
            plan, self.left_out = leave_out(plan, self.spec, fits_a_ttree)
        return plan

    def _pool(self, index: DatasetIndex) -> SourcePool:
        return SourcePool(
            index.paths,
            tree=index.tree or self.spec.default_tree,
            file_format=index.file_format,
            storage_options=self.options,
            window=self.chunk,
            key_branches=index.key_branches,
        )

    def _own_fragment(self, source: TableSource, dataset: str) -> KeyFragment:
        """This file's key fragment: from its dataset's index when that was built already, else read."""
        return self._cached_fragment(source, dataset) or build_fragment(source, self.keys)

    def _cached_fragment(self, source: TableSource, dataset: str) -> KeyFragment | None:
        """This file's fragment in its dataset's index, if that index was built already."""
        index = self.indexes.get(dataset)
        if index is not None:
            identity = source.identity()
            for fragment in index.fragments:
                if fragment.identity == identity and fragment.tree == source.tree:
                    return fragment
        return None

    def _end_keys(self, source: TableSource) -> tuple[KeyTuple | None, KeyTuple | None]:
        """The keys of a file's first and last entries (what aligned detection compares)."""
        n = source.num_entries
        if n == 0:
            return None, None
        first = source.read_keys(self.keys, 0, 1)
        last = source.read_keys(self.keys, n - 1, n)
        return tuple(int(c[0]) for c in first), tuple(int(c[0]) for c in last)

    def _own_duplicates(self, fragment: KeyFragment, name: str) -> npt.NDArray[np.bool_] | None:
        """Entries of this file that repeat an earlier key: refused, or (duplicates: first) dropped."""
        if fragment.num_entries < 2:
            return None
        repeats = np.flatnonzero(equal_neighbours(fragment.keys)) + 1
        if not len(repeats):
            return None
        if self.spec.duplicates is DuplicatePolicy.ERROR:
            DatasetIndex(name, [name], [fragment]).check_duplicates(DuplicatePolicy.ERROR)  # raises, naming them
        drop = np.zeros(fragment.num_entries, dtype=bool)
        drop[fragment.entries[repeats]] = True
        return drop

    # -- the run --------------------------------------------------------------------------------------
    def run(self, output_path: Path, output_format: OutputFormat, observer: OutputObserver | None = None) -> FileResult:
        started = time.perf_counter()
        self.output_format = output_format
        if self.role is Role.PRIMARY:
            chunks, schema, runs = self._primary_chunks()
        else:
            chunks, schema, runs = self._friend_file_chunks()
        for producer in self.producers:
            # the produced columns join the schema; a producer answers an empty table without a request
            schema = producer(schema.empty_table()).schema
        sink = open_sink(output_path, schema, root=output_format is OutputFormat.ROOT, runs=runs, observer=observer)
        digest = KeyDigest()
        try:
            for table in chunks:
                mark = time.perf_counter()
                produced = table
                for producer in self.producers:
                    produced = producer(produced)
                table = produced  # noqa: PLW2901 - the chunk with its produced columns replaces the chunk
                mark = self.counts.add_time("infer", mark)
                digest.update([arrow_to_numpy(table.column(k)) for k in self.keys])
                sink.write(table)
                self.counts.events_out += table.num_rows
                self.counts.add_time("write", mark)
                del table, produced  # not alive while the next chunk is read: one chunk in memory at a time
            mark = time.perf_counter()
            size = sink.commit(self._metadata(digest))
            self.counts.add_time("write", mark)
        except BaseException:
            sink.abort()
            raise
        self.counts.seconds["total"] = time.perf_counter() - started
        return FileResult(
            input_path=self.input_path,
            output_path=output_path,
            output_format=output_format,
            events_in=self.counts.events_in,
            events_out=self.counts.events_out,
            output_bytes=size,
            matched=dict(self.counts.matched),
            unmatched=dict(self.counts.unmatched),
            seconds=dict(self.counts.seconds),
        )

    def _metadata(self, digest: KeyDigest) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "format_version": 1,
            # request-independent: the same output (e.g. a shared-cache copy) carries the same provenance
            "spec_hash": self.spec.spec_hash(without_primary_files=True),
            "role": self.role.value,
            "input": logical_path(self.input_path),
            "inputs": self.inputs,
            "key_columns": self.keys,
            "rows": {
                "in": self.counts.events_in,
                "out": self.counts.events_out,
                "matched": self.counts.matched,
                "unmatched": self.counts.unmatched,
            },
            "key_digest": digest.hexdigest(),
            "join_paths": {name: sorted(paths) for name, paths in self.paths_taken.items()},
            "producers": [dict(p.describe()) for p in self.producers],
        }
        if self.left_out:  # columns a pattern matched that this output format cannot hold
            metadata["left_out"] = self.left_out
        return metadata

    def _primary_chunks(self) -> tuple[Iterator[pa.Table], pa.Schema, list[dict[str, Any]] | None]:
        mark = time.perf_counter()
        source = open_source(
            self.input_path,
            tree=self.spec.primary_tree,
            storage_options=self.options,
            key_branches=self.spec.key_branches(),
        )
        self.inputs.append(source.identity().as_dict())
        friend_indexes = [self._friend_index(friend) for friend in self.spec.friends]
        pools = [self._pool(index) for index in friend_indexes]
        for index in friend_indexes:
            self.inputs.extend(f.identity.as_dict() for f in index.fragments)
        plan = self._for_the_output(make_plan(self.spec, source, [pool.source(0) for pool in pools]))
        fragment = self._cached_fragment(source, "primary")
        first, last = (fragment.first_key, fragment.last_key) if fragment is not None else self._end_keys(source)
        aligned = [index.aligned_fragment(source.num_entries, first, last) for index in friend_indexes]
        needs_merge = any(position is None for position in aligned)
        drop: npt.NDArray[np.bool_] | None = None
        # With every friend aligned only the file's own duplicates need its keys: a check on the packed
        # keys holds a third of the sorted fragment, so memory stays bounded by the chunk, not the file.
        if fragment is not None or needs_merge or has_repeated_keys(source, self.keys, chunk=self.chunk) is not False:
            fragment = fragment or build_fragment(source, self.keys)
            drop = self._own_duplicates(fragment, self.input_path)
        # the sorted keys stay only if a friend needs a merge: an aligned join keeps nothing per entry
        self.fragment = fragment if needs_merge else None
        self.primary_source, self.drop = source, drop
        self.counts.add_time("index", mark)
        for friend in self.spec.friends:
            self.counts.matched.setdefault(friend.name, 0)
            self.counts.unmatched.setdefault(friend.name, 0)
        return (
            self._iterate_primary(source, plan, friend_indexes, pools, aligned, drop),
            plan.schema(),
            (source.read_runs()),
        )

    def _iterate_primary(
        self,
        source: TableSource,
        plan: JoinPlan,
        friend_indexes: list[DatasetIndex],
        pools: list[SourcePool],
        aligned: list[int | None],
        drop: npt.NDArray[np.bool_] | None,
    ) -> Iterator[pa.Table]:
        total = source.num_entries
        schema = plan.schema()
        for start in range(0, total, self.chunk):
            stop = min(total, start + self.chunk)
            mark = time.perf_counter()
            keys = source.read_keys(self.keys, start, stop)
            table = source.read_table(plan.primary.read_names, start, stop)
            self.counts.events_in += stop - start
            keep = np.ones(stop - start, dtype=bool)
            if self.spec.primary.cut:
                keep &= source.cut_mask(self.spec.primary.cut, start, stop)
            if drop is not None:
                keep &= ~drop[start:stop]
            mark = self.counts.add_time("read", mark)
            rows = _Rows(
                _with_keys(table, self.keys, keys, plan.key_types), keys, np.arange(start, stop, dtype=np.int64)
            )
            if not keep.all():
                rows = rows.take(np.flatnonzero(keep).astype(np.int64))
            for friend, side, index, pool, position in zip(
                self.spec.friends, plan.friends, friend_indexes, pools, aligned, strict=True
            ):
                rows = self._join_friend(rows, friend, side, index, pool, position, keys, start, stop)
            self.counts.add_time("join", mark)
            yield rows.table.select(schema.names).cast(schema)
            del keys, table, rows, keep  # freed before the next chunk is read: one chunk in memory at a time

    def _join_friend(
        self,
        rows: _Rows,
        friend: FriendSpec,
        side: SidePlan,
        index: DatasetIndex,
        pool: SourcePool,
        aligned_position: int | None,
        chunk_keys: list[npt.NDArray[np.integer]],
        start: int,
        stop: int,
    ) -> _Rows:
        if aligned_position is not None:
            friend_source = pool.source(aligned_position)
            if keys_equal(chunk_keys, friend_source.read_keys(self.keys, start, stop)):
                columns = friend_source.read_table(side.read_names, start, stop)
                rows_in_chunk = (rows.entries - start).astype(np.int64)
                if len(rows_in_chunk) != stop - start:
                    columns = columns.take(numpy_to_arrow(rows_in_chunk))
                self.counts.matched[friend.name] += len(rows.entries)
                self.paths_taken.setdefault(friend.name, set()).add("aligned")
                return self._append(rows, side, friend, columns, np.ones(len(rows.entries), dtype=bool))
        self.paths_taken.setdefault(friend.name, set()).add("merge")
        partners = self._partners(friend, index)
        positions = partners.file_positions[rows.entries]
        if friend.how is How.INNER:
            found = np.flatnonzero(positions >= 0).astype(np.int64)
            rows = rows.take(found)
            positions = positions[found]
        matched = positions >= 0
        targets = np.flatnonzero(matched).astype(np.int64)
        gathered = gather(
            pool,
            positions[targets],
            partners.entries[rows.entries[targets]],
            columns=side.read_names,
            key_columns=self.keys,
        )
        verify_keys(friend.name, [k[targets] for k in rows.keys], gathered.keys)
        columns = place(gathered, targets, len(rows.entries))
        self.counts.matched[friend.name] += len(targets)
        self.counts.unmatched[friend.name] += len(rows.entries) - len(targets)
        return self._append(rows, side, friend, columns, matched)

    def _partners(self, friend: FriendSpec, index: DatasetIndex) -> _Partners:
        """This file's matches in one friend, found on first need (an aligned friend never needs them)."""
        if friend.name in self.partners:
            return self.partners[friend.name]
        if self.fragment is None:  # a friend that looked aligned is not, after all: read the keys again
            assert self.primary_source is not None  # set by _primary_chunks before any chunk is joined
            self.fragment = self._own_fragment(self.primary_source, "primary")
        keys, entries = self.fragment.keys, self.fragment.entries
        if self.drop is not None:
            kept = ~self.drop[entries]
            keys, entries = [k[kept] for k in keys], entries[kept]
        candidates = index.candidates(keys)
        right_rows = partner_of_entries(
            keys,
            entries,
            candidates.keys,
            self.fragment.num_entries,
            duplicates=self.spec.duplicates,
            left_name=self.input_path,
            right_name=f"friend {friend.name!r}",
            right_origin=index.origin(candidates),
        )
        missing = right_rows < 0
        if len(candidates):
            picked = np.maximum(right_rows, 0)
            file_positions = np.where(missing, -1, candidates.file_positions[picked])
            friend_entries = np.where(missing, -1, candidates.entries[picked])
        else:
            file_positions, friend_entries = right_rows, right_rows
        self.partners[friend.name] = _Partners(file_positions, friend_entries)
        return self.partners[friend.name]

    def _append(
        self, rows: _Rows, side: SidePlan, friend: FriendSpec, columns: pa.Table, matched: npt.NDArray[np.bool_]
    ) -> _Rows:
        table = rows.table
        for original, output in zip(side.read_names, side.output_names, strict=True):
            column = columns.column(original)
            if self.spec.fill_missing == "nan" and not matched.all() and is_list_type(column.type):
                column = _fill_nan_lists(column, table, original, matched)
            table = table.append_column(output, column)
        verify_collection_lengths(friend.name, table, side.output_names, matched, rows.keys)
        table = table.append_column(f"{friend.name}_matched", numpy_to_arrow(matched, type=pa.bool_()))
        return _Rows(table, rows.keys, rows.entries)

    # -- right and anti parts: the input is a file of the (single) friend ---------------------------------
    def _friend_file_chunks(self) -> tuple[Iterator[pa.Table], pa.Schema, list[dict[str, Any]] | None]:
        mark = time.perf_counter()
        (friend,) = self.spec.friends
        if self.path_check is not None:
            self.path_check(self.input_path)
        source = open_source(
            self.input_path,
            tree=self.spec.friend_tree(friend),
            file_format=friend.format_of(self.input_path),
            storage_options=self.options,
            key_branches=self.spec.key_branches(friend),
        )
        self.inputs.append(source.identity().as_dict())
        friend_index = self._friend_index(friend)
        primary_index = self._primary_index()
        self.inputs.extend(f.identity.as_dict() for f in primary_index.fragments)
        pool = self._pool(primary_index)
        plan = self._for_the_output(make_plan(self.spec, pool.source(0), [source]))
        del friend_index  # built for its duplicate check across the friend dataset
        fragment = self._own_fragment(source, friend.name)
        drop = self._own_duplicates(fragment, self.input_path)
        self.counts.matched.setdefault(friend.name, 0)
        self.counts.unmatched.setdefault(friend.name, 0)
        self.counts.add_time("index", mark)
        return self._iterate_friend_file(source, plan, friend, primary_index, pool, drop), plan.schema(), None

    def _iterate_friend_file(
        self,
        source: TableSource,
        plan: JoinPlan,
        friend: FriendSpec,
        primary_index: DatasetIndex,
        pool: SourcePool,
        drop: npt.NDArray[np.bool_] | None,
    ) -> Iterator[pa.Table]:
        (side,) = plan.friends
        schema = plan.schema()
        total = source.num_entries
        for start in range(0, total, self.chunk):
            stop = min(total, start + self.chunk)
            mark = time.perf_counter()
            keys = source.read_keys(self.keys, start, stop)
            friend_columns = source.read_table(side.read_names, start, stop)
            self.counts.events_in += stop - start
            mark = self.counts.add_time("read", mark)
            if drop is not None and drop[start:stop].any():
                keep = np.flatnonzero(~drop[start:stop]).astype(np.int64)
                keys = [k[keep] for k in keys]
                friend_columns = friend_columns.take(numpy_to_arrow(keep))
            candidates = primary_index.candidates(keys)
            match = match_keys(
                keys,
                candidates.keys,
                How.LEFT,
                duplicates=self.spec.duplicates,
                left_name=self.input_path,
                right_name="the primary dataset",
                right_origin=primary_index.origin(candidates),
            )
            matched = match.right_rows >= 0
            targets = np.flatnonzero(matched).astype(np.int64)
            picked = match.right_rows[targets]
            names = plan.primary.read_names if self.role is Role.RIGHT else [self.keys[0]]
            gathered = gather(
                pool,
                candidates.file_positions[picked],
                candidates.entries[picked],
                columns=names,
                key_columns=self.keys,
                cut=self.spec.primary.cut,
            )
            verify_keys("primary", [k[targets] for k in keys], gathered.keys)
            passing = None
            if gathered.passes_cut is not None and not gathered.passes_cut.all():
                # a primary row that fails the cut is no primary row at all
                passing = gathered.passes_cut
                matched[targets[~passing]] = False
                targets = targets[passing]
            if self.role is Role.ANTI:
                lonely = np.flatnonzero(~matched).astype(np.int64)
                keys = [k[lonely] for k in keys]
                friend_columns = friend_columns.take(numpy_to_arrow(lonely))
                primary_placed = _null_table(plan.primary, len(lonely))
                self.counts.unmatched[friend.name] += len(lonely)
            else:
                primary_placed = place(gathered, targets, len(matched), use=passing).select(plan.primary.read_names)
                self.counts.matched[friend.name] += len(targets)
                self.counts.unmatched[friend.name] += len(matched) - len(targets)
            table = _with_keys(primary_placed, self.keys, keys, plan.key_types)
            for original, output in zip(side.read_names, side.output_names, strict=True):
                table = table.append_column(output, friend_columns.column(original))
            if self.role is Role.RIGHT:
                verify_collection_lengths(friend.name, table, side.output_names, matched, keys)
            table = table.append_column(
                f"{friend.name}_matched", numpy_to_arrow(np.ones(table.num_rows, dtype=bool), type=pa.bool_())
            )
            self.counts.add_time("join", mark)
            yield table.select(schema.names).cast(schema)
            del keys, friend_columns, gathered, primary_placed, table  # one chunk in memory at a time


def _with_keys(
    table: pa.Table, names: Sequence[str], keys: Sequence[npt.NDArray[np.integer]], types: Sequence[pa.DataType]
) -> pa.Table:
    """`table` with the key columns in front (cast to the primary's key types)."""
    columns = [numpy_to_arrow(k, t) for k, t in zip(keys, types, strict=True)]
    result = pa.Table.from_arrays(columns, names=list(names))
    for name in table.column_names:
        if name not in names:
            result = result.append_column(name, table.column(name))
    return result


def _null_table(side: SidePlan, length: int) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.nulls(length, type=non_null_elements(t)) for t in side.types], names=list(side.read_names)
    )


def _fill_nan_lists(
    column: pa.ChunkedArray, table: pa.Table, original: str, matched: npt.NDArray[np.bool_]
) -> pa.ChunkedArray:
    """Unmatched rows of a jagged float column as NaN lists of the primary collection's length."""
    collection = collection_of(original)
    counts = arrow_to_numpy(table.column("n" + str(collection))).astype(np.int64)
    lengths = np.where(matched, 0, counts)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    value_type = column.type.value_type
    nan_lists = pa.ListArray.from_arrays(
        numpy_to_arrow(offsets), numpy_to_arrow(np.full(int(offsets[-1]), np.nan), type=value_type)
    )
    combined = column.combine_chunks()
    filled = pc.if_else(numpy_to_arrow(matched), combined, nan_lists.cast(combined.type))
    return pa.chunked_array([filled])
