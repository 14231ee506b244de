"""Dataset key indexes kept in memory by the long-lived transform process, across the files it serves.

Owns the decision whether an index loaded for an earlier file is still valid: an index is a list of
content-addressed fragments, so it stays valid exactly while the identities (path, size, ROOT UUID or ETag)
of its files do not change. Each file re-checks them cheaply: a local file by its `stat` (device, inode,
size, modification and change times, compared with the `stat` taken when its identity was read); any other
file by reading its identity again (a header read, not the index). A changed file or file list loads the
index again (from the fragment store: only changed fragments are rebuilt). The duplicate-key check across a
dataset runs once per load, never per file. It reads files and the fragment store only through the engine;
it writes nothing, and knows nothing of queues, storage clients or settings.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joiner.engine import Role, resolve_primary_index
from joiner.index import DatasetFiles, DatasetIndex, FragmentStore, build_dataset_indexes
from joiner.sources import expand_paths, file_identity
from joiner.spec import DuplicatePolicy, FileFormat, JoinSpec, KeyBranches

log = logging.getLogger(__name__)

Fingerprint = tuple[int, ...]
PRIMARY = "primary"


def local_fingerprint(path: str) -> Fingerprint | None:
    """A cheap change detector for a local file (None for URLs and files that cannot be stat'ed)."""
    if "://" in path and not path.startswith("file://"):
        return None
    try:
        st = os.stat(path.removeprefix("file://"))
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class _Entry:
    index: DatasetIndex
    fingerprints: list[Fingerprint | None]


@dataclass(frozen=True)
class _Dataset:
    name: str
    patterns: tuple[str, ...]
    tree: str
    file_format: FileFormat | None
    key_branches: KeyBranches


class IndexMemory:
    """Loaded dataset indexes, by dataset, reused while their files are unchanged.

    Args:
        max_datasets: how many dataset indexes to keep (least recently used ones are dropped).
    """

    def __init__(self, max_datasets: int = 8) -> None:
        self.max_datasets = max(1, max_datasets)
        self._entries: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self.loads = 0
        self.reuses = 0

    def resolve(
        self,
        spec: JoinSpec,
        role: Role,
        *,
        fragment_store: FragmentStore | None = None,
        storage_options: Mapping[str, Any] | None = None,
        path_check: Callable[[str], None] | None = None,
    ) -> dict[str, DatasetIndex]:
        """The indexes `join_file(..., indexes=...)` needs for a file of `spec` in `role`, duplicate-checked.

        Raises:
            JoinError: a friend file cannot be read, a key repeats, or the spec lacks `primary.files` for a
                right/outer part (as the engine raises them).
            LocationNotAllowedError (or whatever `path_check` raises): a friend file is not allowed.
            StorageError/OSError: the fragment store or a remote file could not be reached (retryable).
        """
        datasets = [
            _Dataset(friend.name, tuple(friend.files), spec.friend_tree(friend), friend.format,
                     spec.key_branches(friend))
            for friend in spec.friends
        ]
        if role is not Role.PRIMARY:
            if not spec.primary.files:
                resolve_primary_index(spec)  # raises the engine's SpecError naming what is missing
            datasets.append(_Dataset(PRIMARY, tuple(spec.primary.files), spec.primary_tree, None, spec.key_branches()))
        key_columns = tuple(spec.key_columns)
        found: dict[str, DatasetIndex] = {}
        wanted: list[tuple[tuple[Any, ...], _Dataset, list[str]]] = []
        for dataset in datasets:
            paths = expand_paths(dataset.patterns, storage_options)
            if path_check is not None:
                for path in paths:
                    path_check(path)
            slot = (dataset, tuple(paths), key_columns, spec.duplicates)
            entry = self._entries.get(slot)
            if entry is not None and self._still_valid(entry, dataset, storage_options):
                self._entries.move_to_end(slot)
                self.reuses += 1
                found[dataset.name] = entry.index
            else:
                wanted.append((slot, dataset, paths))
        if wanted:  # loaded together: builders share out the fragments of all of them before waiting
            found.update(self._load(wanted, key_columns, spec.duplicates, fragment_store, storage_options))
        return {dataset.name: found[dataset.name] for dataset in datasets}

    def _load(
        self,
        wanted: Sequence[tuple[tuple[Any, ...], _Dataset, list[str]]],
        key_columns: Sequence[str],
        duplicates: DuplicatePolicy,
        store: FragmentStore | None,
        options: Mapping[str, Any] | None,
    ) -> dict[str, DatasetIndex]:
        fingerprints = {  # before reading: a change made meanwhile shows at the next check
            dataset.name: [local_fingerprint(path) for path in paths] for _, dataset, paths in wanted
        }
        indexes = build_dataset_indexes(
            [DatasetFiles(dataset.name, paths, dataset.tree, dataset.file_format, dataset.key_branches)
             for _, dataset, paths in wanted],
            key_columns=key_columns, store=store, storage_options=options,
        )
        for slot, dataset, paths in wanted:
            index = indexes[dataset.name]
            index.check_duplicates(duplicates)
            self.loads += 1
            log.info("key index of %r loaded: %d files, %d entries (load %d, %d reuses so far)", dataset.name,
                     len(paths), sum(f.num_entries for f in index.fragments), self.loads, self.reuses)
            self._entries[slot] = _Entry(index, fingerprints[dataset.name])
            self._entries.move_to_end(slot)
            while len(self._entries) > self.max_datasets:
                self._entries.popitem(last=False)
        return indexes

    def _still_valid(self, entry: _Entry, dataset: _Dataset, options: Mapping[str, Any] | None) -> bool:
        for position, (path, fragment) in enumerate(zip(entry.index.paths, entry.index.fragments, strict=True)):
            now = local_fingerprint(path)
            if now is not None and now == entry.fingerprints[position]:
                continue
            identity = file_identity(path, options, file_format=dataset.file_format)
            if identity != fragment.identity:
                log.info("friend file %s changed (%s -> %s): reloading the key index of %r", path,
                         fragment.identity.as_dict(), identity.as_dict(), dataset.name)
                return False
            entry.fingerprints[position] = now
        return True
