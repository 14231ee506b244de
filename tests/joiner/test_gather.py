"""`take_rows` (the engine's row copy) against Arrow's own take, with nulls and several chunks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from joiner.gather import take_rows

lists = st.lists(st.lists(st.floats(allow_nan=False, width=32), max_size=4), min_size=1, max_size=20)


@settings(max_examples=80, deadline=None)
@given(st.lists(lists, min_size=1, max_size=3), st.data(), st.booleans())
def test_take_rows_equals_arrow_take(chunks, data, large) -> None:
    list_type = (pa.large_list if large else pa.list_)(pa.field("item", pa.float32(), nullable=False))
    jagged = pa.chunked_array([pa.array(c, type=list_type) for c in chunks], type=list_type)
    flat = pa.chunked_array([pa.array(np.arange(len(c), dtype=np.int32)) for c in chunks])
    table = pa.table({"flat": flat, "jagged": jagged})
    total = table.num_rows
    index = np.array(data.draw(st.lists(st.integers(-1, total - 1), max_size=30)), dtype=np.int64)
    got = take_rows(table, index)
    expected = table.take(pa.array(index, mask=index < 0))
    assert got.column("jagged").to_pylist() == expected.column("jagged").to_pylist()
    assert got.column("flat").to_pylist() == expected.column("flat").to_pylist()
    assert got.schema == table.schema


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), min_size=1, max_size=12), min_size=1,
             max_size=3),
    st.integers(0, 3),
    st.data(),
)
def test_numeric_columns_with_nulls_and_offsets_keep_their_values_and_nulls(chunks, cut, data) -> None:
    # a column that has nulls of its own, several chunks, and a sliced (offset) first chunk
    arrays = [pa.array(c, type=pa.int64()) for c in chunks]
    arrays[0] = arrays[0].slice(min(cut, len(arrays[0]) - 1))
    table = pa.table({"x": pa.chunked_array(arrays, type=pa.int64()),
                      "y": pa.chunked_array([a.cast(pa.float64()) for a in arrays])})
    index = np.array(data.draw(st.lists(st.integers(-1, table.num_rows - 1), max_size=30)), dtype=np.int64)
    got = take_rows(table, index)
    expected = table.take(pa.array(index, mask=index < 0))
    assert got.column("x").to_pylist() == expected.column("x").to_pylist()
    assert got.column("y").to_pylist() == expected.column("y").to_pylist()
    assert got.column("x").null_count == expected.column("x").null_count


def test_rows_of_an_empty_table_are_all_null() -> None:
    # a chunk whose friend rows are all missing gathers from an empty table
    list_type = pa.list_(pa.field("item", pa.float32(), nullable=False))
    table = pa.table({"x": pa.array([], pa.float32()), "n": pa.array([], pa.int32()),
                      "v": pa.array([], list_type)})
    got = take_rows(table, np.full(3, -1, dtype=np.int64))
    assert got.num_rows == 3 and all(got.column(c).null_count == 3 for c in table.column_names)
    assert got.schema == table.schema


def test_several_tables_taken_together_equal_each_taken_alone() -> None:
    from joiner.gather import take_rows_many

    list_type = pa.list_(pa.field("item", pa.float32(), nullable=False))
    left = pa.table({"a": pa.array(np.arange(6, dtype=np.int32)),
                     "v": pa.array([[1.0], [], [2.0, 3.0], [4.0], [], [5.0]], list_type)})
    right = pa.table({"b": pa.array(np.linspace(0, 1, 4, dtype=np.float32))})
    rows_left, rows_right = np.array([5, 0, 2], dtype=np.int64), np.array([3, -1, 0], dtype=np.int64)
    got_left, got_right = take_rows_many([(left, rows_left), (right, rows_right)])
    assert got_left.equals(take_rows(left, rows_left)) and got_right.equals(take_rows(right, rows_right))
    assert got_right.column("b").to_pylist() == [1.0, None, 0.0]
    identity = take_rows_many([(left, np.arange(6, dtype=np.int64))])[0]
    assert identity is left  # every row in order: nothing is copied
