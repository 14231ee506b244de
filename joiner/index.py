"""Key indexes: per file, the sorted key columns with their entry numbers.

A dataset's index is a list of fragments, one per file, in the spec's file order. A fragment holds the
file's keys sorted lexicographically with the entry number of each, the first/last key in entry order (for
aligned detection), its min/max key (to find the fragments that overlap a primary file's keys), and the
file's identity. Fragments serialise to Parquet and are cached under content-addressed names
(`fragment_name`) in any `FragmentStore`: the object store in a ServiceX deployment, a local directory for
the command line. A fragment is written as one object, so a reader never sees half of one; builders that
race produce identical bytes. The format carries a version: a new version never reads an old index.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import json
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from joiner.arrow_arrays import arrow_to_numpy, numpy_to_arrow
from joiner.errors import InputFileError
from joiner.keys import KeyPacker, column_ranges, lexicographic_order, union_ranges
from joiner.merge import match_keys, sort_packed
from joiner.sources import FileIdentity, StorageOptions, TableSource, file_identity, open_source, source_format
from joiner.spec import DuplicatePolicy, FileFormat, How, KeyBranches
from joiner.threads import thread_count

INDEX_FORMAT_VERSION = 1
_META_KEY = b"servicex_joiner.index"
KeyTuple = tuple[int, ...]
DEFAULT_KEY_CHUNK = 2_000_000


class FragmentStore(Protocol):
    """Where fragments are cached: bytes under a name. `put` must write the object whole (atomically)."""

    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, data: bytes) -> None: ...


def fragment_name(
    identity: FileIdentity, tree: str | None, key_columns: Sequence[str], key_branches: KeyBranches | None = None
) -> str:
    """Content-addressed cache name of a file's fragment: changes with the file, tree, key or format.

    It names the key columns with the branch names each may have (`key_branches`), not the branches a
    file turns out to have: which of them a file has follows from its content, which its identity stands
    for. The name is thus known from the file's header alone, and a cached fragment is found without
    reading the file's tree.
    """
    choices = key_branches or KeyBranches.named(key_columns)
    document = json.dumps(
        {
            "version": INDEX_FORMAT_VERSION,
            "file": identity.as_dict(),
            "tree": tree,
            "key": [[name, list(choices.candidates(name))] for name in key_columns],
        },
        sort_keys=True,
    )
    return f"index/v{INDEX_FORMAT_VERSION}/{hashlib.sha256(document.encode()).hexdigest()}.parquet"


@dataclass(frozen=True)
class KeyFragment:
    """The index of one file (see module docstring)."""

    identity: FileIdentity
    tree: str | None
    key_columns: tuple[str, ...]
    num_entries: int
    keys: list[npt.NDArray[np.integer]]
    entries: npt.NDArray[np.int64]
    first_key: KeyTuple | None
    last_key: KeyTuple | None

    @property
    def min_key(self) -> KeyTuple | None:
        return tuple(int(c[0]) for c in self.keys) if self.num_entries else None

    @property
    def max_key(self) -> KeyTuple | None:
        return tuple(int(c[-1]) for c in self.keys) if self.num_entries else None

    @property
    def content_name(self) -> str:
        """A name for what the fragment holds: the file's identity, the tree and the branches read.

        What a result cache keys on; it is the fragment's cache name only where the key columns are
        branches of those names.
        """
        return fragment_name(self.identity, self.tree, self.key_columns)

    def overlaps(self, low: KeyTuple, high: KeyTuple) -> bool:
        if not self.num_entries:
            return False
        assert self.min_key is not None
        assert self.max_key is not None
        return not (self.max_key < low or self.min_key > high)

    def rows_between(self, low: KeyTuple, high: KeyTuple) -> tuple[int, int]:
        """The sorted-row slice whose keys lie in [low, high].

        A binary search over the sorted columns, comparing key tuples as Python integers (the order the
        fragment is sorted in, for any mix of widths and signs): a few dozen element reads, where packing
        the fragment's keys to search them cost a pass over all of them for every chunk of a primary file
        and every fragment its keys overlap (a regrouped friend's every file).
        """
        if not self.overlaps(low, high):
            return 0, 0

        def key_at(row: int) -> KeyTuple:
            return tuple(int(column[row]) for column in self.keys)

        rows = range(self.num_entries)
        return bisect.bisect_left(rows, low, key=key_at), bisect.bisect_right(rows, high, key=key_at)

    def to_bytes(self) -> bytes:
        """Serialise as Parquet with the fragment's facts in the schema metadata."""
        columns: dict[str, Any] = {
            name: numpy_to_arrow(col) for name, col in zip(self.key_columns, self.keys, strict=True)
        }
        columns["__entry__"] = numpy_to_arrow(self.entries, type=pa.int64())
        table = pa.table(columns)
        meta = {
            "version": INDEX_FORMAT_VERSION,
            "identity": self.identity.as_dict(),
            "tree": self.tree,
            "key_columns": list(self.key_columns),
            "num_entries": self.num_entries,
            "first_key": list(self.first_key) if self.first_key is not None else None,
            "last_key": list(self.last_key) if self.last_key is not None else None,
        }
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
        # The key columns are sorted, so their deltas are small: delta encoding halves the object and a
        # dictionary (Parquet's default), built and then abandoned for unique keys, would be most of the
        # write. The entry numbers are in key order: shuffled, but no wider than the file's entry count,
        # which delta encoding packs to that many bits; zstd then finds the runs of a file written in
        # nearly key order (an aligned friend's fragment shrinks 20-fold). Both are half the CPU of zstd
        # over plain int64. Readers decode either encoding: the format is unchanged.
        integer_keys = [name for name in self.key_columns if pa.types.is_integer(table.schema.field(name).type)]
        delta = dict.fromkeys([*integer_keys, "__entry__"], "DELTA_BINARY_PACKED")
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd", use_dictionary=False, column_encoding=delta or None)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyFragment:
        """Read a serialised fragment; raises ValueError for another format version or a damaged object.

        Read with `ParquetFile`, not `pq.read_table`, which imports `pyarrow.dataset` (a quarter second per
        process) even for bytes in memory.
        """
        try:
            table = pq.ParquetFile(io.BytesIO(data)).read()
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"damaged index fragment: {error}") from None
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ValueError("not an index fragment (no metadata)")
        meta = json.loads(raw)
        if meta.get("version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"index format version {meta.get('version')} is not {INDEX_FORMAT_VERSION}")
        key_columns = tuple(meta["key_columns"])
        keys = [arrow_to_numpy(table.column(name)) for name in key_columns]
        identity = FileIdentity(**meta["identity"])
        return cls(
            identity=identity,
            tree=meta["tree"],
            key_columns=key_columns,
            num_entries=int(meta["num_entries"]),
            keys=keys,
            entries=arrow_to_numpy(table.column("__entry__")).astype(np.int64),
            first_key=tuple(meta["first_key"]) if meta["first_key"] is not None else None,
            last_key=tuple(meta["last_key"]) if meta["last_key"] is not None else None,
        )


def build_fragment(source: TableSource, key_columns: Sequence[str], *, chunk: int = DEFAULT_KEY_CHUNK) -> KeyFragment:
    """Read only the key columns of a file (in chunks) and sort them."""
    n = source.num_entries
    parts: list[list[npt.NDArray[np.integer]]] = []
    for start in range(0, n, chunk):
        parts.append(source.read_keys(key_columns, start, min(n, start + chunk)))
    if parts:
        keys = [np.concatenate([p[i] for p in parts]) for i in range(len(key_columns))]
    else:
        keys = source.read_keys(key_columns, 0, 0)
    order = sort_order(keys)
    sorted_keys = [column[order] for column in keys]
    first = tuple(int(c[0]) for c in keys) if n else None
    last = tuple(int(c[-1]) for c in keys) if n else None
    return KeyFragment(
        identity=source.identity(),
        tree=source.tree,
        key_columns=tuple(source.key_branch_names(key_columns)),  # the branches read
        num_entries=n,
        keys=sorted_keys,
        entries=order.astype(np.int64),
        first_key=first,
        last_key=last,
    )


def has_repeated_keys(
    source: TableSource, key_columns: Sequence[str], *, chunk: int = DEFAULT_KEY_CHUNK
) -> bool | None:
    """Whether some key occurs twice in one file, holding only its packed keys (8 bytes an entry).

    The check a file's own duplicates need when nothing else needs its sorted keys (every friend aligned,
    or none): each chunk of keys is packed over its own ranges as it is read, then re-expressed over the
    ranges of the whole file, sorted in place and compared with its neighbour. So the memory it takes is a
    third of a `build_fragment`, and a file's key columns never sit in memory whole.

    Returns:
        True or False; None when the keys need more than 64 bits (`build_fragment` answers then).
    """
    n = source.num_entries
    if n < 2:
        return False
    packed = np.empty(n, dtype=np.uint64)
    packers: list[tuple[int, int, KeyPacker]] = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        keys = source.read_keys(key_columns, start, stop)
        ranges = column_ranges(keys)
        assert ranges is not None  # a non-empty chunk
        packer = KeyPacker(tuple(ranges))
        if not packer.fits:
            return None
        packed[start:stop] = packer.pack(keys)
        packers.append((start, stop, packer))
    whole = union_ranges(*(list(packer.ranges) for _, _, packer in packers))
    assert whole is not None
    layout = KeyPacker(tuple(whole))
    if not layout.fits:
        return None
    for start, stop, packer in packers:
        packer.repack(packed[start:stop], layout)
    packed.sort()
    return bool(np.any(packed[1:] == packed[:-1]))


def sort_order(keys: Sequence[npt.NDArray[np.integer]]) -> npt.NDArray[np.int64]:
    """Stable lexicographic order of key tuples, through a packed uint64 sort when the ranges allow."""
    n = len(keys[0]) if keys else 0
    ranges = column_ranges(keys)
    if ranges is None:
        return np.zeros(0, dtype=np.int64)
    packer = KeyPacker(tuple(ranges))
    row_bits = max(int(n - 1).bit_length(), 1)
    if packer.total_bits + row_bits <= 64:
        return sort_packed(packer.pack(keys), row_bits, threads=thread_count())[1]
    if packer.fits:
        return np.argsort(packer.pack(keys), kind="stable").astype(np.int64)
    return lexicographic_order(keys).astype(np.int64)


def key_bounds(keys: Sequence[npt.NDArray[np.integer]]) -> tuple[KeyTuple, KeyTuple] | None:
    """Lexicographic min and max key tuple of some rows (None when empty)."""
    if not len(keys) or not len(keys[0]):
        return None
    ranges = column_ranges(keys)
    assert ranges is not None
    packer = KeyPacker(tuple(ranges))
    if packer.fits:
        packed = packer.pack(keys)
        low, high = int(np.argmin(packed)), int(np.argmax(packed))
    else:
        order = lexicographic_order(keys)
        low, high = int(order[0]), int(order[-1])
    return tuple(int(c[low]) for c in keys), tuple(int(c[high]) for c in keys)


@dataclass(frozen=True)
class Candidates:
    """Friend rows that may match a chunk: their keys, which file (position in the dataset) and entry."""

    keys: list[npt.NDArray[np.integer]]
    file_positions: npt.NDArray[np.int64]
    entries: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class DatasetIndex:
    """The index of a dataset: one fragment per file, in the spec's file order."""

    name: str
    paths: list[str]
    fragments: list[KeyFragment]
    file_format: FileFormat | None = None
    tree: str | None = None
    key_branches: KeyBranches | None = None

    def candidates(self, keys: Sequence[npt.NDArray[np.integer]]) -> Candidates:
        """All rows of overlapping fragments whose keys lie within the min/max key of `keys`."""
        bounds = key_bounds(keys)
        key_parts: list[list[npt.NDArray[np.integer]]] = []
        positions, entries = [], []
        if bounds is not None:
            low, high = bounds
            for position, fragment in enumerate(self.fragments):
                start, stop = fragment.rows_between(low, high)
                if stop <= start:
                    continue
                key_parts.append([c[start:stop] for c in fragment.keys])
                positions.append(np.full(stop - start, position, dtype=np.int64))
                entries.append(fragment.entries[start:stop])
        if not key_parts:
            return Candidates(
                [np.zeros(0, dtype=c.dtype) for c in keys], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            )
        merged_keys = [np.concatenate([p[i] for p in key_parts]) for i in range(len(keys))]
        return Candidates(merged_keys, np.concatenate(positions), np.concatenate(entries))

    def aligned_fragment(self, num_entries: int, first: KeyTuple | None, last: KeyTuple | None) -> int | None:
        """Position of a fragment with the same entry count and first/last key (an aligned friend file)."""
        if first is None:
            return None
        for position, fragment in enumerate(self.fragments):
            if fragment.num_entries == num_entries and fragment.first_key == first and fragment.last_key == last:
                return position
        return None

    def origin(self, candidates: Candidates) -> Callable[[npt.NDArray[np.int64]], list[str]]:
        """Maps candidate rows to 'file (entry N)' strings, for duplicate-key messages."""

        def describe(rows: npt.NDArray[np.int64]) -> list[str]:
            return [
                f"{self.paths[int(candidates.file_positions[r])]} (entry {int(candidates.entries[r])})" for r in rows
            ]

        return describe

    def check_duplicates(self, policy: DuplicatePolicy) -> None:
        """Refuse keys present twice anywhere in the dataset (unless `duplicates: first`).

        A key can repeat only inside one fragment (as neighbours: its keys are sorted) or between
        fragments whose key ranges overlap. So the fragments are taken in groups that overlap, and only a
        group of several, or a fragment with equal neighbours, is merged and checked, naming the keys and
        their files. A friend in the primary's file layout (aligned, reordered: each file its own range of
        events) is then checked in one pass over its keys, without a copy of the whole index or its sort.
        """
        if policy is DuplicatePolicy.FIRST:
            return
        for group in self._overlapping_groups():
            if len(group) == 1 and not equal_neighbours(self.fragments[group[0]].keys).any():
                continue
            members = [(p, self.fragments[p]) for p in group]
            rows = Candidates(
                [np.concatenate([f.keys[i] for _, f in members]) for i in range(len(members[0][1].keys))],
                np.concatenate([np.full(f.num_entries, p, dtype=np.int64) for p, f in members]),
                np.concatenate([f.entries for _, f in members]),
            )
            match_keys(
                [np.zeros(0, dtype=c.dtype) for c in rows.keys],
                rows.keys,
                How.INNER,
                duplicates=policy,
                right_name=f"dataset {self.name!r}",
                right_origin=self.origin(rows),
            )

    def _overlapping_groups(self) -> list[list[int]]:
        """Positions of the non-empty fragments, in groups whose [min, max] key ranges overlap (by chains)."""
        spans = sorted(
            (fragment.min_key, fragment.max_key, position)
            for position, fragment in enumerate(self.fragments)
            if fragment.num_entries
        )
        groups: list[list[int]] = []
        reach: KeyTuple | None = None
        for low, high, position in spans:
            assert low is not None
            assert high is not None
            if reach is not None and low <= reach:
                groups[-1].append(position)
                reach = max(reach, high)
            else:
                groups.append([position])
                reach = high
        return groups


def equal_neighbours(keys: Sequence[npt.NDArray[np.integer]]) -> npt.NDArray[np.bool_]:
    """For sorted key columns, whether each row's key equals the next row's (one flag fewer than rows)."""
    equal = np.ones(max(len(keys[0]) - 1, 0), dtype=bool)
    for column in keys:
        equal &= column[1:] == column[:-1]
    return equal


def load_fragment(
    path: str,
    *,
    tree: str,
    key_columns: Sequence[str],
    file_format: FileFormat | None,
    store: FragmentStore | None,
    storage_options: StorageOptions | None = None,
    key_branches: KeyBranches | None = None,
) -> KeyFragment:
    """The fragment of one file: from the store when cached under its content address, else built."""
    job = _FragmentJob.open(path, tree, key_columns, file_format, storage_options, key_branches)
    return job.cached(store) or job.build(store)


LEASE_SECONDS = 120.0  # a lease older than this is a builder that died: build the fragment anyway
LEASE_POLL_SECONDS = 0.02  # the first wait for a fragment another builder holds; each next one is longer
LEASE_POLL_MAX_SECONDS = 1.0  # a long build is asked after at most once a second (each ask: two GETs)
_LEASE_TOKEN = secrets.token_hex(4)


def _held_by_another(lease: bytes) -> bool:
    """Whether a lease object is another live builder's: recent, not failed, not this process's own."""
    try:
        document = json.loads(lease)
        age = time.time() - float(document["time"])
        owner, failed = document.get("owner"), bool(document.get("failed", False))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False  # unreadable: nobody's
    return 0 <= age < LEASE_SECONDS and not failed and owner != _owner()


def _owner() -> str:
    """This process's name on its leases (a forked child is another owner: its pid differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_LEASE_TOKEN}"


class _Writes:
    """Store writes (fragments, leases) sent on background threads while the next fragment is built.

    A store round trip costs milliseconds against S3; done inline they add up over a dataset's files.
    `wait` returns once every write has landed and raises the first error, so a built index is also a
    stored one.
    """

    def __init__(self, store: FragmentStore | None, threads: int = 2) -> None:
        self.store = store
        background = store is not None and threads > 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="index-writes") if background else None
        self._pending: list[Future[None]] = []

    def put(self, name: str, data: bytes) -> None:
        if self.store is None:
            return
        if self._pool is None:
            self.store.put(name, data)
        else:
            self._pending.append(self._pool.submit(self.store.put, name, data))

    def wait(self, *, raise_errors: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        errors = [error for error in (f.exception() for f in self._pending) if error is not None]
        if errors and raise_errors:
            raise errors[0]


@dataclass(frozen=True)
class _FragmentJob:
    """One file's fragment to find or build: the file, its identity and the fragment's content address.

    Only the file's header is read to address it (`file_identity`); its tree is opened only to build.
    """

    path: str
    tree: str | None  # None for Parquet: the file is the table
    key_columns: Sequence[str]
    file_format: FileFormat | None
    storage_options: StorageOptions | None
    key_branches: KeyBranches | None
    identity: FileIdentity
    name: str

    @classmethod
    def open(
        cls,
        path: str,
        tree: str,
        key_columns: Sequence[str],
        file_format: FileFormat | None,
        storage_options: StorageOptions | None,
        key_branches: KeyBranches | None = None,
    ) -> _FragmentJob:
        table = None if source_format(path, file_format) is FileFormat.PARQUET else tree
        identity = file_identity(path, storage_options, file_format=file_format)
        name = fragment_name(identity, table, key_columns, key_branches)
        return cls(path, table, key_columns, file_format, storage_options, key_branches, identity, name)

    def cached(self, store: FragmentStore | None) -> KeyFragment | None:
        """The fragment stored under this address, if it is one of the file as it is now."""
        if store is None:
            return None
        data = store.get(self.name)
        if data is None:
            return None
        try:
            fragment = KeyFragment.from_bytes(data)
        except ValueError:
            return None  # an older or damaged object: rebuild and overwrite
        return fragment if fragment.identity == self.identity else None

    def build(self, store: FragmentStore | None, writes: _Writes | None = None) -> KeyFragment:
        try:
            source = open_source(self.path, tree=self.tree or "", file_format=self.file_format,
                                 storage_options=self.storage_options, key_branches=self.key_branches)
            fragment = build_fragment(source, self.key_columns)
        except BaseException:
            # others waiting on this lease build (and report) it themselves instead of waiting it out
            self.write_lease(store, failed=True)
            raise
        if store is not None:  # serialised only for a store to keep, under the address of what was read
            name = self.name
            if fragment.identity != self.identity:  # the file was replaced since its header was read
                name = fragment_name(fragment.identity, self.tree, self.key_columns, self.key_branches)
            (writes or _Writes(store, threads=0)).put(name, fragment.to_bytes())
        return fragment

    def write_lease(self, store: FragmentStore | None, writes: _Writes | None = None, *, failed: bool = False) -> None:
        """Announce (or, `failed`, withdraw) this process's build of the fragment: a small object beside it."""
        lease = {"time": time.time(), "owner": _owner(), "failed": failed}
        (writes or _Writes(store, threads=0)).put(self.name + ".lease", json.dumps(lease).encode())

    def take_lease(self, store: FragmentStore | None, writes: _Writes | None = None) -> bool:
        """Announce that this process builds the fragment, unless another one announced it recently.

        A lease is a small object beside the fragment. Two builders that race past each other's lease both
        build (identical bytes); a builder that dies leaves a lease that goes stale after LEASE_SECONDS.
        """
        if store is None:
            return True
        lease = self.lease(store)
        if lease is not None and _held_by_another(lease):
            return False
        self.write_lease(store, writes=writes)
        return True

    def lease(self, store: FragmentStore | None) -> bytes | None:
        """The lease object beside the fragment, as stored now (None: nobody announced a build)."""
        return None if store is None else store.get(self.name + ".lease")

    def await_or_build(self, store: FragmentStore | None) -> KeyFragment:
        """The fragment another process is building: wait for it, or build it once its lease is stale.

        The waits grow from LEASE_POLL_SECONDS to LEASE_POLL_MAX_SECONDS: a fragment that is nearly done
        (the common case when workers start together) is picked up within tens of milliseconds, while a
        long build is not asked after more than once a second by each worker waiting for it.
        """
        delay = LEASE_POLL_SECONDS
        while True:
            fragment = self.cached(store)
            if fragment is not None:
                return fragment
            if self.take_lease(store):
                return self.build(store)
            time.sleep(delay)
            delay = min(delay * 1.5, LEASE_POLL_MAX_SECONDS)


@contextlib.contextmanager
def _naming_the_dataset(name: str) -> Iterator[None]:
    """An unreadable file of a friend dataset: the error names the dataset too."""
    try:
        yield
    except InputFileError as error:
        raise type(error)(f"friend dataset {name!r}: {error.reason}", path=error.path, tree=error.tree) from None


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset whose key index is wanted: its name, its files (in the spec's order) and how to read them.

    `key_branches` says where the files keep the key columns (default: branches named as the columns).
    """

    name: str
    paths: Sequence[str]
    tree: str
    file_format: FileFormat | None = None
    key_branches: KeyBranches | None = None


@dataclass
class _Claimed:
    """A dataset after the first pass: the fragments in hand, and the positions another builder holds."""

    dataset: DatasetFiles
    fragments: dict[int, KeyFragment] = field(default_factory=dict)
    leased_elsewhere: dict[int, _FragmentJob] = field(default_factory=dict)  # jobs hold no open file


def build_dataset_index(
    name: str,
    paths: Sequence[str],
    *,
    tree: str,
    key_columns: Sequence[str],
    file_format: FileFormat | None = None,
    store: FragmentStore | None = None,
    storage_options: StorageOptions | None = None,
    shuffle_seed: int | None = None,
    key_branches: KeyBranches | None = None,
) -> DatasetIndex:
    """The index of one dataset (`build_dataset_indexes` for a single one)."""
    dataset = DatasetFiles(name, list(paths), tree, file_format, key_branches)
    return build_dataset_indexes(
        [dataset], key_columns=key_columns, store=store, storage_options=storage_options, shuffle_seed=shuffle_seed
    )[name]


def build_dataset_indexes(
    datasets: Sequence[DatasetFiles],
    *,
    key_columns: Sequence[str],
    store: FragmentStore | None = None,
    storage_options: StorageOptions | None = None,
    shuffle_seed: int | None = None,
) -> dict[str, DatasetIndex]:
    """Fragments of every file of `datasets`, shared out among workers that build them at the same time.

    Files are visited in a shuffled order; a fragment that is cached is loaded, one that another worker
    holds a lease on is left for the end, and the others are leased and built. At the end the left-over
    fragments are awaited (or built, if their builder's lease went stale). N workers starting together on a
    new dataset thus read its friend keys about once in all, not N times.

    The datasets a file joins against are built together: every dataset's free fragments are built before
    any other builder's are awaited, so a worker that finished its share of the first friend goes on with
    the second instead of waiting for the first's last fragment.
    """
    writes = _Writes(store)
    claimed: list[_Claimed] = []
    try:
        for dataset in datasets:
            claimed.append(_claim_and_build(dataset, key_columns, store, storage_options, shuffle_seed, writes))
    except BaseException:
        writes.wait(raise_errors=False)  # the error in hand is the one to report
        raise
    writes.wait()
    indexes: dict[str, DatasetIndex] = {}
    for part in claimed:
        dataset, fragments = part.dataset, part.fragments
        for position, job in part.leased_elsewhere.items():
            with _naming_the_dataset(dataset.name):
                fragments[position] = job.await_or_build(store)
        indexes[dataset.name] = DatasetIndex(
            dataset.name, list(dataset.paths), [fragments[p] for p in range(len(dataset.paths))],
            dataset.file_format, dataset.tree, dataset.key_branches,
        )
    return indexes


LOOKUP_THREADS = 8  # files whose header and cached fragment are fetched at once (round trips, not CPU)


def _look_up(
    dataset: DatasetFiles,
    position: int,
    key_columns: Sequence[str],
    store: FragmentStore | None,
    storage_options: StorageOptions | None,
) -> tuple[_FragmentJob, KeyFragment | None]:
    job = _FragmentJob.open(dataset.paths[position], dataset.tree, key_columns, dataset.file_format,
                            storage_options, dataset.key_branches)
    return job, job.cached(store)


def _claim_and_build(
    dataset: DatasetFiles,
    key_columns: Sequence[str],
    store: FragmentStore | None,
    storage_options: StorageOptions | None,
    shuffle_seed: int | None,
    writes: _Writes,
) -> _Claimed:
    """The first pass over one dataset: load what is cached, build what nobody holds, note the rest.

    Each file's header (for its fragment's address) and cached fragment are fetched on LOOKUP_THREADS
    threads, ahead of the builds: they are round trips (a remote friend's header, an object-store GET),
    which in series would make a warm index of a thousand files cost a thousand of each. The builds and
    their leases go in the shuffled order, one at a time, each after a fresh look at its lease: a lease
    another builder holds is awaited at the end; one no longer held (its build ended or failed, perhaps
    after this file's lookup) sends this builder to the cache again before it builds.
    """
    claimed = _Claimed(dataset)
    order = list(range(len(dataset.paths)))
    random.Random(shuffle_seed).shuffle(order)
    with ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="index-lookups") as pool:
        lookups = pool.map(lambda p: _look_up(dataset, p, key_columns, store, storage_options), order)
        try:
            for position in order:
                with _naming_the_dataset(dataset.name):
                    job, fragment = next(lookups)
                    if fragment is None:
                        lease = job.lease(store)
                        if lease is not None and _held_by_another(lease):
                            claimed.leased_elsewhere[position] = job
                            continue
                        if lease is not None:
                            fragment = job.cached(store)
                    if fragment is None:
                        job.write_lease(store, writes)
                        fragment = job.build(store, writes)
                    claimed.fragments[position] = fragment
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the error is reported now, not after every lookup
            raise
    return claimed
