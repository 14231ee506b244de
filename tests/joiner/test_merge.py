"""Sort-merge matching against a naive dictionary join, for every join kind (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from joiner.errors import DuplicateKeyError, KeyTypeError
from joiner.keys import KeyPacker, column_ranges, validate_key_array
from joiner.merge import match_keys
from joiner.spec import DuplicatePolicy, How

key_values = st.tuples(st.integers(0, 3), st.integers(0, 50), st.integers(0, 2**40))


def _columns(keys: list[tuple[int, int, int]]) -> list[np.ndarray]:
    if not keys:
        return [np.zeros(0, np.uint32), np.zeros(0, np.uint32), np.zeros(0, np.uint64)]
    run, lumi, event = zip(*keys, strict=True)
    return [np.array(run, np.uint32), np.array(lumi, np.uint32), np.array(event, np.uint64)]


def _naive(left: list[tuple[int, ...]], right: list[tuple[int, ...]], how: How) -> list[tuple[int, int]]:
    where_right = {k: i for i, k in enumerate(right)}
    where_left = {k: i for i, k in enumerate(left)}
    pairs = [(i, where_right.get(k, -1)) for i, k in enumerate(left)]
    if how is How.INNER:
        return [p for p in pairs if p[1] >= 0]
    if how is How.LEFT:
        return pairs
    if how is How.ANTI:
        return [p for p in pairs if p[1] < 0]
    if how is How.RIGHT:
        return [(where_left.get(k, -1), j) for j, k in enumerate(right)]
    return pairs + [(-1, j) for j, k in enumerate(right) if k not in where_left]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(key_values, unique=True, max_size=60),
    st.lists(key_values, unique=True, max_size=60),
    st.sampled_from(list(How)),
    st.randoms(use_true_random=False),
)
def test_match_equals_naive_join(left, right, how, random) -> None:
    # share some keys between the sides
    shared = [k for k in left if random.random() < 0.5]
    right = list(dict.fromkeys(right + shared))
    random.shuffle(right)
    match = match_keys(_columns(left), _columns(right), how)
    got = list(zip(match.left_rows.tolist(), match.right_rows.tolist(), strict=True))
    assert got == _naive(left, right, how)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-(2**62), 2**62), st.integers(-(2**62), 2**62)), unique=True, max_size=40))
def test_keys_wider_than_64_bits_use_the_lexicographic_path(keys) -> None:
    left = [np.array([k[0] for k in keys], np.int64), np.array([k[1] for k in keys], np.int64)]
    order = np.arange(len(keys))[::-1]
    right = [c[order] for c in left]
    match = match_keys(left, right, How.LEFT)
    assert (match.right_rows == np.argsort(order)).all()
    matched = match.right_rows >= 0
    assert matched.all()
    for column_left, column_right in zip(left, right, strict=True):
        assert (column_left[match.left_rows] == column_right[match.right_rows]).all()


def test_packing_uses_both_sides_ranges_and_keeps_order() -> None:
    left = [np.array([1, 1, 2], np.uint32), np.array([10, 11, 3], np.uint64)]
    right = [np.array([2, 7], np.uint32), np.array([3, 0], np.uint64)]
    ranges = column_ranges(left)
    assert ranges is not None
    packer = KeyPacker(tuple(r.union(o) for r, o in zip(ranges, column_ranges(right) or [], strict=True)))
    packed = packer.pack(left)
    assert packed.tolist() == sorted(packed.tolist())
    assert packer.pack(right)[0] == packed[2]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-(2**20), 2**20), st.integers(0, 2**30)), min_size=1, max_size=80),
       st.integers(1, 9))
def test_chunks_packed_apart_and_repacked_equal_the_whole_packed_at_once(keys, chunk) -> None:
    columns = [np.array([k[0] for k in keys], np.int64), np.array([k[1] for k in keys], np.uint32)]
    ranges = column_ranges(columns)
    assert ranges is not None
    whole = KeyPacker(tuple(ranges))
    packed = np.empty(len(keys), np.uint64)
    for start in range(0, len(keys), chunk):
        part = [c[start : start + chunk] for c in columns]
        part_ranges = column_ranges(part)
        assert part_ranges is not None
        own = KeyPacker(tuple(part_ranges))
        packed[start : start + chunk] = own.pack(part)
        own.repack(packed[start : start + chunk], whole)
    assert packed.tolist() == whole.pack(columns).tolist()


def test_duplicates_are_refused_with_keys_and_origins() -> None:
    left = _columns([(1, 1, 5), (1, 1, 6)])
    right = _columns([(1, 1, 5), (1, 1, 7), (1, 1, 5)])
    with pytest.raises(DuplicateKeyError) as caught:
        match_keys(
            left,
            right,
            How.LEFT,
            right_name="friend 'sys'",
            right_origin=lambda rows: [f"f.root (entry {r})" for r in rows],
        )
    message = str(caught.value)
    assert "(1, 1, 5)" in message
    assert "f.root (entry 0)" in message
    assert "f.root (entry 2)" in message
    assert caught.value.total == 1


def test_duplicates_first_keeps_the_lowest_position() -> None:
    left = _columns([(1, 1, 5), (1, 1, 6)])
    right = _columns([(1, 1, 7), (1, 1, 5), (1, 1, 5)])
    match = match_keys(left, right, How.LEFT, duplicates=DuplicatePolicy.FIRST)
    assert match.right_rows.tolist() == [1, -1]


def test_signed_and_unsigned_keys_join() -> None:
    left = [np.array([1, 2, 3], np.int32)]
    right = [np.array([3, 1], np.uint64)]
    match = match_keys(left, right, How.LEFT)
    assert match.right_rows.tolist() == [1, -1, 0]


@pytest.mark.parametrize("values", [np.array([1.0, 2.0]), np.array([True, False]), np.array([[1], [2]])])
def test_non_integer_keys_are_refused(values) -> None:
    with pytest.raises(KeyTypeError, match="event"):
        validate_key_array("event", values, where="x.root")


def test_negative_keys_are_refused_naming_the_entry() -> None:
    # an unsigned event number that went through a signed column (a DataFrame) comes back negative; as a key
    # it would match nothing, silently: it is refused, with the value and its entry in the file
    with pytest.raises(KeyTypeError, match=r"'event' in x.root holds a negative value \(-5 at entry 12\)"):
        validate_key_array("event", np.array([3, 4, -5, 6], np.int64), where="x.root", first_row=10)
    assert validate_key_array("event", np.array([0, 2**62], np.int64), where="x.root").tolist() == [0, 2**62]
    # a key column the spec names itself (not an experiment's counter) may hold any integers
    assert validate_key_array("cell", np.array([-3, 4], np.int64), where="x.root").tolist() == [-3, 4]


def test_large_random_join_matches_searchsorted() -> None:
    rng = np.random.default_rng(5)
    n = 200_000
    event = rng.choice(10**9, n, replace=False).astype(np.uint64)
    left = [np.full(n, 1, np.uint32), (event // 1000).astype(np.uint32), event]
    rows = rng.permutation(n)[: n * 9 // 10]
    right = [c[rows] for c in left]
    match = match_keys(left, right, How.INNER)
    assert len(match) == len(rows)
    assert (left[2][match.left_rows] == right[2][match.right_rows]).all()
    assert (np.diff(match.left_rows) > 0).all()


@pytest.mark.parametrize("right_sorted", [True, False])
@pytest.mark.parametrize("how", [How.INNER, How.LEFT, How.OUTER])
def test_large_sides_sorted_on_threads_match_like_a_dictionary(right_sorted, how) -> None:
    # above PARALLEL_SORT_ROWS one side is sorted in parts on threads and merged; the result must not change
    rng = np.random.default_rng(7)
    n = (1 << 20) * 3
    lumi = (np.arange(n) // 1000).astype(np.uint32)
    event = rng.permutation(n).astype(np.uint64)
    left = [np.ones(n, np.uint32), lumi, event]
    right_rows = rng.permutation(n)[: n * 9 // 10]
    if right_sorted:
        right_rows = np.sort(right_rows)  # lumi ascending, events shuffled: not in key order either...
        order = np.lexsort((event[right_rows], lumi[right_rows]))
        right_rows = right_rows[order]  # ...until sorted by key, like a key index
    right = [c[right_rows] for c in left]
    match = match_keys(left, right, how)
    position_in_right = np.full(n, -1, dtype=np.int64)
    position_in_right[right_rows] = np.arange(len(right_rows))
    expected_left = np.arange(n) if how is not How.INNER else np.flatnonzero(position_in_right >= 0)
    assert np.array_equal(match.left_rows[: len(expected_left)], expected_left)
    assert np.array_equal(match.right_rows[: len(expected_left)], position_in_right[expected_left])
    assert len(match) == len(expected_left)  # outer: every right key is also on the left


def test_partner_of_entries_maps_a_sorted_key_index_to_entries() -> None:
    from joiner.index import sort_order
    from joiner.merge import partner_of_entries

    rng = np.random.default_rng(3)
    n = 5000
    keys = [np.ones(n, np.uint32), np.zeros(n, np.uint32), rng.permutation(n).astype(np.uint64) * 3]
    entries = sort_order(keys)
    index_keys = [k[entries] for k in keys]
    right = [k[::2] for k in index_keys]  # every other key, sorted
    partner = partner_of_entries(index_keys, entries, right, n)
    for entry in range(0, n, 97):
        row = int(partner[entry])
        found = [r for r in range(len(right[0])) if right[2][r] == keys[2][entry]]
        assert row == (found[0] if found else -1)
