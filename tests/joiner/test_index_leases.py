"""Workers building one dataset's key index at the same time share the work through leases in the store.

Another builder is played by lease objects written as another process would write them (a real second
process could not be made to hold its lease at a chosen moment); the fragments are real, from real files.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from joiner import index as index_module
from joiner.errors import InputFileError
from joiner.index import (
    LEASE_SECONDS,
    DatasetFiles,
    build_dataset_index,
    build_dataset_indexes,
    build_fragment,
    fragment_name,
)
from joiner.sources import file_identity, open_source
from joiner.spec import KeyBranches
from tests.joiner import friends
from transformer.commands.local_cache import LocalFragmentStore

KEYS = ["run", "luminosityBlock", "event"]


@pytest.fixture
def dataset(nano_dy: Path, tmp_path: Path) -> list[str]:
    return [str(p) for p in friends.regrouped([nano_dy], tmp_path / "friends", n_files=3)]


def _name(path: str) -> str:
    source = open_source(path, tree="Friends")
    return fragment_name(source.identity(), source.tree, KEYS)


def _lease(store: LocalFragmentStore, path: str, *, age: float = 0.0, failed: bool = False) -> None:
    lease = {"time": time.time() - age, "owner": "another-host:1:feedbeef", "failed": failed}
    store.put(_name(path) + ".lease", json.dumps(lease).encode())


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    built: list[str] = []

    def counting(source, key_columns, **kwargs):  # type: ignore[no-untyped-def]
        built.append(source.path)
        return build_fragment(source, key_columns, **kwargs)

    monkeypatch.setattr(index_module, "build_fragment", counting)
    return built


def _index(dataset: list[str], store: LocalFragmentStore):  # type: ignore[no-untyped-def]
    return build_dataset_index("sys", dataset, tree="Friends", key_columns=KEYS, store=store)


def test_a_fragment_another_worker_builds_is_awaited_not_built_again(
    dataset: list[str], tmp_path: Path, builds: list[str]
) -> None:
    store = LocalFragmentStore(tmp_path / "cache")
    busy = dataset[1]
    _lease(store, busy)
    fragment = build_fragment(open_source(busy, tree="Friends"), KEYS)
    other = threading.Timer(0.6, lambda: store.put(_name(busy), fragment.to_bytes()))  # the other worker ends
    other.start()
    try:
        index = _index(dataset, store)
    finally:
        other.join()
    assert sorted(builds) == sorted(p for p in dataset if p != busy)
    assert index.fragments[1].num_entries == fragment.num_entries
    assert index.paths == dataset


@pytest.mark.parametrize("lease", ["stale", "failed", "own"])
def test_a_dead_failed_or_own_lease_does_not_hold_the_build_up(
    dataset: list[str], tmp_path: Path, builds: list[str], lease: str
) -> None:
    store = LocalFragmentStore(tmp_path / "cache")
    for path in dataset:
        if lease == "stale":
            _lease(store, path, age=LEASE_SECONDS + 1)
        elif lease == "failed":
            _lease(store, path, failed=True)
        else:  # this process's own lease, e.g. from an attempt that hit a transient error: retried at once
            own = {"time": time.time(), "owner": index_module._owner()}
            store.put(_name(path) + ".lease", json.dumps(own).encode())
    started = time.monotonic()
    index = _index(dataset, store)
    assert time.monotonic() - started < LEASE_SECONDS / 4
    assert sorted(builds) == sorted(dataset)
    assert len(index.fragments) == len(dataset)


def test_a_second_worker_finds_every_fragment_cached_without_reading_a_tree(
    dataset: list[str], tmp_path: Path, builds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalFragmentStore(tmp_path / "cache")
    _index(dataset, store)
    builds.clear()
    opened: list[str] = []
    real_open = index_module.open_source

    def counting_open(path, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(path)
        return real_open(path, **kwargs)

    monkeypatch.setattr(index_module, "open_source", counting_open)
    index = _index(dataset, store)
    assert builds == [] and opened == []  # the files' headers alone address their cached fragments
    assert [f.identity for f in index.fragments] == [file_identity(path) for path in dataset]


def test_the_address_names_the_branches_the_key_may_have(dataset: list[str], tmp_path: Path) -> None:
    identity = file_identity(dataset[0])
    plain = fragment_name(identity, "Friends", KEYS)
    assert plain == fragment_name(identity, "Friends", KEYS, KeyBranches.named(KEYS))
    alternatives = KeyBranches((("run", ("runNumber", "run")), ("luminosityBlock", ("luminosityBlock",)),
                                ("event", ("eventNumber", "event"))))
    address = fragment_name(identity, "Friends", KEYS, alternatives)
    assert address != plain
    store = LocalFragmentStore(tmp_path / "cache")
    index = build_dataset_index("sys", dataset[:1], tree="Friends", key_columns=KEYS, store=store,
                                key_branches=alternatives)
    assert store.get(address) is not None and store.get(plain) is None
    assert index.fragments[0].key_columns == tuple(KEYS)  # the branches this file has


def test_fragments_are_stored_when_the_index_is_returned_and_a_failed_write_is_raised(
    dataset: list[str], tmp_path: Path
) -> None:
    # writes go out on background threads while the next file is read; the index is returned only once
    # every write has landed, and a write that failed is not swallowed
    class SlowStore(LocalFragmentStore):
        def put(self, name: str, data: bytes) -> None:
            time.sleep(0.2)
            super().put(name, data)

    store = SlowStore(tmp_path / "slow")
    _index(dataset, store)
    assert all(store.get(_name(path)) is not None for path in dataset)

    class BrokenStore(LocalFragmentStore):
        def put(self, name: str, data: bytes) -> None:
            if not name.endswith(".lease"):
                raise OSError("the object store refused the write")
            super().put(name, data)

    with pytest.raises(OSError, match="refused"):
        _index(dataset, BrokenStore(tmp_path / "broken"))


def test_the_free_fragments_of_every_dataset_are_built_before_another_builders_are_awaited(
    nano_dy: Path, tmp_path: Path, builds: list[str]
) -> None:
    # Two friends of one spec: another worker holds a fragment of the first. This worker builds all of the
    # second before it waits, so that two workers starting together share both friends' work; waiting on
    # the first friend's fragment before touching the second would have left one of them idle.
    first = [str(p) for p in friends.regrouped([nano_dy], tmp_path / "first", n_files=3, seed=1)]
    second = [str(p) for p in friends.regrouped([nano_dy], tmp_path / "second", n_files=3, seed=2)]
    store = LocalFragmentStore(tmp_path / "cache")
    busy = first[0]
    _lease(store, busy)
    fragment = build_fragment(open_source(busy, tree="Friends"), KEYS)
    second_built_before_the_wait_ended: list[bool] = []

    def other_worker() -> None:  # finishes its fragment once this worker has built the second friend (or 10 s)
        deadline = time.monotonic() + 10
        while not set(second) <= set(builds) and time.monotonic() < deadline:
            time.sleep(0.01)
        second_built_before_the_wait_ended.append(set(second) <= set(builds))
        store.put(_name(busy), fragment.to_bytes())

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        datasets = [DatasetFiles("first", first, "Friends"), DatasetFiles("second", second, "Friends")]
        indexes = build_dataset_indexes(datasets, key_columns=KEYS, store=store)
    finally:
        thread.join()
    assert second_built_before_the_wait_ended == [True]
    assert busy not in builds  # awaited, not built twice
    assert sorted(builds) == sorted(first[1:] + second)
    assert [index.paths for index in indexes.values()] == [first, second]
    assert indexes["first"].fragments[0].num_entries == fragment.num_entries


def test_a_fragment_whose_builder_fails_while_awaited_is_built_here(
    dataset: list[str], tmp_path: Path, builds: list[str]
) -> None:
    # the other worker holds the lease when this one gets there, then reports its build failed: this
    # worker opens the file again and builds the fragment itself instead of waiting for the lease to age
    store = LocalFragmentStore(tmp_path / "cache")
    busy = dataset[2]
    _lease(store, busy)
    other = threading.Timer(0.3, lambda: _lease(store, busy, failed=True))
    other.start()
    try:
        started = time.monotonic()
        index = _index(dataset, store)
    finally:
        other.join()
    assert time.monotonic() - started < LEASE_SECONDS / 4
    assert sorted(builds) == sorted(dataset)
    assert index.fragments[2].num_entries == build_fragment(open_source(busy, tree="Friends"), KEYS).num_entries
    assert store.get(_name(busy)) is not None


def test_cached_fragments_are_fetched_at_once_not_one_round_trip_after_another(
    nano_dy: Path, tmp_path: Path, builds: list[str]
) -> None:
    # A warm index of many files is one header read and one GET per file: round trips to a remote server
    # and the object store. Every GET here waits until all of them are in flight at once; fetched one
    # after another, the first would wait alone until the barrier gave up.
    paths = [str(p) for p in friends.regrouped([nano_dy], tmp_path / "friends", n_files=index_module.LOOKUP_THREADS)]
    store = LocalFragmentStore(tmp_path / "cache")
    _index(paths, store)
    builds.clear()
    together = threading.Barrier(len(paths), timeout=10)

    class RoundTripStore(LocalFragmentStore):
        def get(self, name: str) -> bytes | None:
            together.wait()
            return super().get(name)

    index = _index(paths, RoundTripStore(tmp_path / "cache"))
    assert builds == []
    assert [f.identity for f in index.fragments] == [file_identity(path) for path in paths]


@pytest.mark.parametrize("lease_age", [0.0, LEASE_SECONDS + 10], ids=["lease held", "lease aged out"])
def test_a_miss_fetched_before_another_worker_stored_the_fragment_is_not_built_again(
    nano_dy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lease_age: float
) -> None:
    # The cache is asked for every file first. While this worker builds its first fragment, another one
    # stores the others with their leases (as a worker that started earlier would). Those misses are no
    # longer true: a lease still held is awaited, and one aged out (a build that ended long ago) sends this
    # worker to the cache again. Either way the fragments come from the cache, not from a second build.
    paths = [str(p) for p in friends.regrouped([nano_dy], tmp_path / "friends", n_files=4)]
    store = LocalFragmentStore(tmp_path / "cache")
    stored_by_the_other = {path: build_fragment(open_source(path, tree="Friends"), KEYS) for path in paths}
    real_build = index_module.build_fragment
    built_here: list[str] = []

    def build_while_the_other_worker_finishes(source, key_columns, **kwargs):  # type: ignore[no-untyped-def]
        if not built_here:
            for path, fragment in stored_by_the_other.items():
                if path != source.path:
                    _lease(store, path, age=lease_age)
                    store.put(_name(path), fragment.to_bytes())
        built_here.append(source.path)
        return real_build(source, key_columns, **kwargs)

    monkeypatch.setattr(index_module, "build_fragment", build_while_the_other_worker_finishes)
    index = _index(paths, store)
    assert len(built_here) == 1
    assert [f.num_entries for f in index.fragments] == [f.num_entries for f in stored_by_the_other.values()]


def test_an_unreadable_friend_file_is_named_with_its_dataset(
    dataset: list[str], tmp_path: Path, builds: list[str]
) -> None:
    # the lookups run on threads; the error of the file that cannot be read still reaches the caller, with
    # the friend dataset's name and the file's path
    broken = tmp_path / "not_root.root"
    broken.write_bytes(b"this is not a ROOT file" * 100)
    paths = [*dataset, str(broken)]
    with pytest.raises(InputFileError, match=r"friend dataset 'sys': cannot open as a ROOT file") as caught:
        _index(paths, LocalFragmentStore(tmp_path / "cache"))
    assert caught.value.path == str(broken)


def test_a_failed_build_stops_the_lookups_still_queued(nano_dy: Path, tmp_path: Path) -> None:
    # The files' headers are readable but none holds the tree asked for: the first build fails. Its error
    # is raised then, and the lookups of the dataset's other files that have not started are dropped
    # instead of being made (each a round trip) before the error reaches the caller.
    paths = [str(p) for p in friends.regrouped([nano_dy], tmp_path / "friends", n_files=40)]
    asked: list[str] = []

    class RoundTripStore(LocalFragmentStore):
        def get(self, name: str) -> bytes | None:
            if not name.endswith(".lease"):
                time.sleep(0.2)  # a fragment's round trip; the first build fails within the next one
                asked.append(name)
            return super().get(name)

    with pytest.raises(InputFileError, match="no tree 'Missing'"):
        build_dataset_index("sys", paths, tree="Missing", key_columns=KEYS, store=RoundTripStore(tmp_path / "c"))
    assert len(asked) <= 2 * index_module.LOOKUP_THREADS < len(paths)  # those started before the error, no more
