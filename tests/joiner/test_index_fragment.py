"""A key-index fragment reads back as it was built, whatever the order of the file's entries, and the
entry numbers of a file written in nearly key order (the common case: an aligned friend) take little room
in the stored object that every worker fetches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import uproot

from joiner.datagen import generate_dataset, generate_friends
from joiner.errors import DuplicateKeyError
from joiner.index import DatasetIndex, KeyFragment, build_fragment
from joiner.sources import FileIdentity, open_source
from joiner.spec import DuplicatePolicy

KEYS = ["run", "luminosityBlock", "event"]


def _fragment(path: Path) -> KeyFragment:
    return build_fragment(open_source(str(path), tree="Friends"), KEYS)


def test_fragments_read_back_as_built_and_one_in_file_order_is_small(tmp_path: Path) -> None:
    # generated NanoAOD-like keys (as the benchmarks use): the real test files have too few events for sizes
    _, keys = generate_dataset(tmp_path, n_files=1, events_per_file=20_000, compression=uproot.ZLIB(1))
    aligned = generate_friends(keys, tmp_path, kind="aligned", n_files=1, compression=uproot.ZLIB(1))
    reordered = generate_friends(keys, tmp_path, kind="reordered", n_files=1, compression=uproot.ZLIB(1))
    in_order, shuffled = _fragment(aligned[0]), _fragment(reordered[0])
    stored = {}
    for name, fragment in (("in order", in_order), ("shuffled", shuffled)):
        data = fragment.to_bytes()
        back = KeyFragment.from_bytes(data)
        assert back.identity == fragment.identity and back.num_entries == fragment.num_entries
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(back.keys, fragment.keys, strict=True))
        assert back.entries.dtype == np.int64 and np.array_equal(back.entries, fragment.entries)
        stored[name] = len(data)
    assert not np.array_equal(shuffled.entries, np.sort(shuffled.entries))
    # shuffled entry numbers cost about their width in bits; in (nearly) file order they compress away
    assert stored["in order"] < stored["shuffled"] / 4, stored


@pytest.mark.parametrize("wide", [False, True], ids=["packable", "signed, wider than 64 bits together"])
def test_rows_between_is_the_slice_of_keys_within_the_bounds(wide: bool) -> None:
    # what a chunk of a primary file takes from each fragment its keys overlap: every row with
    # low <= key <= high (lexicographically), and no other, for bounds inside, around and between keys
    rng = np.random.default_rng(11)
    n = 5_000
    if wide:
        columns = [rng.integers(-(2**62), 2**62, n, dtype=np.int64), rng.integers(0, 2**63, n, dtype=np.uint64)]
    else:
        columns = [np.ones(n, np.uint32), rng.integers(1, 50, n).astype(np.uint32),
                   rng.choice(10**9, n, replace=False).astype(np.uint64)]
    order = np.lexsort(columns[::-1])
    keys = [c[order] for c in columns]
    fragment = KeyFragment(
        identity=FileIdentity("f.root", 1, "uuid"), tree="Friends",
        key_columns=tuple(f"k{i}" for i in range(len(keys))), num_entries=n, keys=keys,
        entries=order.astype(np.int64), first_key=None, last_key=None,
    )
    as_tuples = [tuple(int(c[i]) for c in keys) for i in range(n)]
    probes = [as_tuples[i] for i in rng.integers(0, n, 40)] + [tuple(v + 1 for v in t) for t in as_tuples[:5]]
    probes += [tuple(int(c.min()) - 1 if c.dtype.kind == "i" else 0 for c in keys), as_tuples[-1]]
    for _ in range(60):
        low, high = sorted(probes[i] for i in rng.integers(0, len(probes), 2))
        start, stop = fragment.rows_between(low, high)
        inside = [i for i, key in enumerate(as_tuples) if low <= key <= high]
        assert (start, stop) == ((inside[0], inside[-1] + 1) if inside else (start, start))
    assert fragment.rows_between(as_tuples[-1], as_tuples[-1]) == (n - 1, n)


def _fragment_of(name: str, events: list[int]) -> KeyFragment:
    order = np.argsort(np.array(events, dtype=np.uint64), kind="stable")
    event = np.array(events, dtype=np.uint64)[order]
    keys = [np.ones(len(event), np.uint32), np.ones(len(event), np.uint32), event]
    return KeyFragment(
        identity=FileIdentity(name, 1, name), tree="Friends", key_columns=tuple(KEYS), num_entries=len(event),
        keys=keys, entries=order.astype(np.int64), first_key=None, last_key=None,
    )


def test_duplicates_are_found_within_a_fragment_and_across_any_that_overlap() -> None:
    # the check merges only fragments whose key ranges overlap (by chains) and a fragment with equal
    # neighbours; a key twice is still found wherever it is, with both of its files named
    def check(*fragments: KeyFragment) -> None:
        DatasetIndex("friend", [f.identity.path for f in fragments], list(fragments)).check_duplicates(
            DuplicatePolicy.ERROR
        )

    disjoint = [_fragment_of("a.root", [1, 2, 3]), _fragment_of("b.root", [10, 11]), _fragment_of("c.root", [4, 9])]
    check(*disjoint)
    check(_fragment_of("empty.root", []), *disjoint)
    with pytest.raises(DuplicateKeyError, match=r"a\.root \(entry 0\).*a\.root \(entry 3\)"):
        check(_fragment_of("a.root", [5, 6, 7, 5]), _fragment_of("b.root", [10, 11]))
    # a spans [1, 100]; b [10, 20] lies inside it, and c [30, 40] after b: c still meets a's 35
    wide, inner, later = _fragment_of("a.root", [1, 35, 100]), _fragment_of("b.root", [10, 20]), _fragment_of(
        "c.root", [30, 35, 40])
    with pytest.raises(DuplicateKeyError, match=r"35.*(a\.root.*c\.root|c\.root.*a\.root)"):
        check(later, inner, wide)
    DatasetIndex("friend", ["a.root", "b.root"], [_fragment_of("a.root", [1, 1]), _fragment_of("b.root", [1])]
                 ).check_duplicates(DuplicatePolicy.FIRST)
