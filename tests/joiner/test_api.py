"""`joiner.join` on arrays in memory: every kind against a naive join, with jagged columns."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import joiner
from joiner.errors import DuplicateKeyError, SchemaError, SpecError


def _events(keys: list[int], *, offset: float) -> ak.Array:
    counts = [k % 4 for k in keys]
    return ak.zip(
        {
            "run": np.ones(len(keys), np.uint32),
            "luminosityBlock": np.array([k // 100 for k in keys], np.uint32),
            "event": np.array(keys, np.uint64),
            "x": np.array([k + offset for k in keys], np.float64),
            "Jet_pt": ak.Array([[k + offset + j for j in range(c)] for k, c in zip(keys, counts, strict=True)]),
        },
        depth_limit=1,
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 500), unique=True, max_size=30),
    st.lists(st.integers(0, 500), unique=True, max_size=30),
    st.sampled_from(["inner", "left", "right", "outer"]),
)
def test_join_matches_a_naive_join_with_jagged_columns(left_keys, right_keys, how) -> None:
    primary = _events(left_keys, offset=0.0)
    friend = _events(right_keys, offset=0.5)
    out = joiner.join(primary, {"f": friend}, how=how, prefix={"f": "f_"})
    expected_keys = {
        "inner": [k for k in left_keys if k in right_keys],
        "left": left_keys,
        "right": right_keys,
        "outer": left_keys + [k for k in right_keys if k not in left_keys],
    }[how]
    assert out.event.tolist() == expected_keys
    for row in ak.to_list(out):
        key = row["event"]
        if key in left_keys:
            assert row["x"] == key and row["Jet_pt"] == [key + j for j in range(key % 4)]
        else:
            assert row["x"] is None and row["Jet_pt"] is None
        if key in right_keys:
            assert row["f_x"] == key + 0.5 and row["f_Jet_pt"] == [key + 0.5 + j for j in range(key % 4)]
            assert row["f_matched"] is True
        else:
            assert row["f_x"] is None and row["f_Jet_pt"] is None and row["f_matched"] is False


def test_friends_apply_in_order_and_arrow_in_arrow_out() -> None:
    primary = ak.to_arrow_table(_events([1, 2, 3, 4], offset=0.0), extensionarray=False)
    a = _events([1, 2, 3], offset=0.25)
    b = _events([2, 3, 4], offset=0.75)
    out = joiner.join(primary, {"a": a, "b": b}, how={"a": "inner", "b": "left"}, prefix={"a": "a_", "b": "b_"})
    assert isinstance(out, pa.Table)
    assert out.column("event").to_pylist() == [1, 2, 3]
    assert out.column("b_x").to_pylist() == [None, 2.75, 3.75]
    assert out.schema.field("event").type == pa.uint64()


def test_refusals() -> None:
    primary = _events([1, 2], offset=0)
    with pytest.raises(DuplicateKeyError):
        joiner.join(primary, {"f": _events([1, 1], offset=0)}, prefix={"f": "f_"})
    with pytest.raises(SchemaError, match="prefix"):
        joiner.join(primary, {"f": _events([1], offset=0)})
    with pytest.raises(SpecError, match="exactly one friend"):
        joiner.join(primary, {"a": primary, "b": primary}, how="outer", prefix={"a": "a_", "b": "b_"})
    with pytest.raises(SpecError, match="unknown key preset"):
        joiner.join(primary, {}, key="lhcb")
    first = joiner.join(primary, {"f": _events([1, 1], offset=0.5)}, prefix={"f": "f_"}, duplicates="first")
    assert first.f_x.tolist() == [1.5, None]
