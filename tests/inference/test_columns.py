"""Arrow columns to tensors and back (no server): flattening, nulls, counts, width-k outputs, types."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from joiner.spec import InferenceSpec
from transformer.inference.columns import empty_results, gather, scatter
from transformer.inference.errors import InferenceInputError
from transformer.inference.model_check import ModelInfo, plan_entry

from .helpers import JET_LIST, jagged

SERVER = "grpc://triton:8001"


def make_plan(level: str, columns: list[str], out_width: int = 1, dtype: str = "FP32") -> Any:
    shape_out = [-1, out_width]
    metadata = {
        "name": "m",
        "versions": ["1"],
        "inputs": [{"name": "X", "datatype": dtype, "shape": [-1, len(columns)]}],
        "outputs": [{"name": "Y", "datatype": "FP32", "shape": shape_out}],
    }
    info = ModelInfo.from_metadata(metadata, {"max_batch_size": 64}, server=SERVER)
    column = "Jet_y" if level != "event" else "y"
    entry = InferenceSpec(model="m", level=level, inputs={"X": columns}, outputs={"Y": column})
    return plan_entry(entry, info, server=SERVER)


@st.composite
def jet_tables(draw: st.DrawFn) -> tuple[pa.Table, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    n = draw(st.integers(0, 30))
    counts = np.array(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), dtype=np.int64)
    valid_a = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    valid_b = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    total = int(counts.sum())
    a = np.arange(total, dtype=np.float32)
    b = np.arange(total, dtype=np.float32) * 10
    # a null row of Jet_a keeps its values (if any) behind the null, as a left join may leave them
    table = pa.table(
        {"Jet_a": jagged(counts, a, valid_a | (counts == 0) & valid_a), "Jet_b": jagged(counts, b, valid_b)}
    )
    return table, counts, valid_a & valid_b


@settings(max_examples=60, deadline=None)
@given(jet_tables())
def test_object_level_round_trip(case: tuple[pa.Table, np.ndarray[Any, Any], np.ndarray[Any, Any]]) -> None:
    table, counts, valid = case
    plan = make_plan("Jet", ["Jet_a", "Jet_b"], out_width=2)
    gathered = gather(table, plan)
    x = gathered.tensors["X"]
    assert x.shape == (int(counts[valid].sum()), 2)
    # "model": y = (a + b, a - b) per object
    out = scatter(gathered, plan, {"Y": np.stack([x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]], axis=1)})
    assert [name for name, _ in out] == ["Jet_y_0", "Jet_y_1"]
    y0 = out[0][1]
    assert y0.type == JET_LIST
    assert len(y0) == table.num_rows
    a_lists = table.column("Jet_a").to_pylist()
    b_lists = table.column("Jet_b").to_pylist()
    for row, result in enumerate(y0.to_pylist()):
        if not valid[row]:
            assert result is None
        else:
            assert result == [pa_ + pb for pa_, pb in zip(a_lists[row], b_lists[row], strict=True)]


def test_event_level_nulls_and_cast() -> None:
    table = pa.table(
        {
            "MET_pt": pa.array([1.0, None, 3.0, 4.0], pa.float32()),
            "nJet": pa.array([2, 1, None, 0], pa.int32()),
        }
    )
    plan = make_plan("event", ["MET_pt", "nJet"], dtype="FP64")
    gathered = gather(table, plan)
    np.testing.assert_array_equal(gathered.tensors["X"], [[1.0, 2.0], [4.0, 0.0]])
    assert gathered.tensors["X"].dtype == np.float64
    ((name, column),) = scatter(gathered, plan, {"Y": gathered.tensors["X"][:, :1] * 2})
    assert name == "y"
    assert column.to_pylist() == [2.0, None, None, 8.0]
    assert column.type == pa.float32()


def test_empty_table_and_empty_collections() -> None:
    plan = make_plan("Jet", ["Jet_a"])
    for counts in ([], [0, 0, 0]):
        table = pa.table({"Jet_a": jagged(np.array(counts), np.array([], dtype=np.float32))})
        gathered = gather(table, plan)
        assert gathered.n_items == 0
        ((_, column),) = scatter(gathered, plan, empty_results(plan))
        assert column.type == JET_LIST
        assert column.to_pylist() == [[] for _ in counts]


def test_counts_must_agree() -> None:
    table = pa.table({"Jet_a": jagged(np.array([2, 1]), np.zeros(3)), "Jet_b": jagged(np.array([1, 2]), np.zeros(3))})
    with pytest.raises(InferenceInputError, match="different numbers of Jet objects"):
        gather(table, make_plan("Jet", ["Jet_a", "Jet_b"]))


def test_missing_and_wrong_kind_columns() -> None:
    table = pa.table({"Jet_a": jagged(np.array([1]), np.zeros(1)), "MET_pt": pa.array([1.0], pa.float32())})
    with pytest.raises(InferenceInputError, match=r"\['Jet_b'\] are not among the joined columns"):
        gather(table, make_plan("Jet", ["Jet_a", "Jet_b"]))
    with pytest.raises(InferenceInputError, match="runs per event but column 'Jet_a'"):
        gather(table, make_plan("event", ["Jet_a"]))
    renamed = table.rename_columns(["Jet_a", "Jet_b"])
    renamed = renamed.set_column(1, "Jet_b", pa.array([1.0], pa.float32()))
    with pytest.raises(InferenceInputError, match="'Jet_b' is float, not a list column"):
        gather(renamed, make_plan("Jet", ["Jet_a", "Jet_b"]))


def test_chunked_and_large_list_columns() -> None:
    large = pa.large_list(pa.field("item", pa.float32(), nullable=False))
    part1 = pa.array([[1.0, 2.0], []], large)
    part2 = pa.array([[3.0]], large)
    table = pa.table({"Jet_a": pa.chunked_array([part1, part2])})
    plan = make_plan("Jet", ["Jet_a"])
    gathered = gather(table, plan)
    ((_, column),) = scatter(gathered, plan, {"Y": gathered.tensors["X"] + 1})
    assert pa.types.is_large_list(column.type)
    assert column.to_pylist() == [[2.0, 3.0], [], [4.0]]
