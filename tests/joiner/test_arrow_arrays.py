"""numpy <-> Arrow without pandas: the same arrays as `pa.array` / `to_numpy` (hypothesis), and a real join
that imports neither pandas nor `pyarrow.dataset`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from joiner.arrow_arrays import arrow_to_numpy, numpy_to_arrow
from tests.joiner import friends

REPO = Path(__file__).resolve().parents[2]
DTYPES = [np.dtype(t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")]
DTYPES += [np.dtype("float32"), np.dtype("float64"), np.dtype("bool")]
TARGETS = [None, *(pa.from_numpy_dtype(d) for d in DTYPES)]
ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, TypeError, ValueError)


@st.composite
def numpy_arrays(draw: st.DrawFn, dtype: np.dtype[Any] | None = None) -> np.ndarray[Any, Any]:
    """A 1-d array of `dtype` (or any of DTYPES), maybe a strided or offset slice of a larger one."""
    dtype = dtype if dtype is not None else draw(st.sampled_from(DTYPES))
    base = draw(hnp.arrays(dtype, st.integers(0, 70)))
    start = draw(st.integers(0, 3))
    step = draw(st.sampled_from([1, 1, 2, 3, -1]))
    return base[start::step]


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray[Any, Any], pa.DataType | None, np.ndarray[Any, Any] | None]:
    values = draw(numpy_arrays())
    target = draw(st.sampled_from(TARGETS))
    mask = None
    if draw(st.booleans()):
        wide = draw(hnp.arrays(np.bool_, 2 * len(values)))
        mask = wide[::2] if draw(st.booleans()) else np.ascontiguousarray(wide[: len(values)])
    return values, target, mask


def _outcome(build: Callable[[], pa.Array]) -> pa.Array | type[BaseException]:
    try:
        return build()
    except ERRORS as error:
        return type(error)


def _same_array(ours: pa.Array, theirs: pa.Array) -> None:
    assert ours.type == theirs.type
    ours.validate(full=True)  # buffers cover the length (a bool bitmap: len bits)
    assert ours.null_count == theirs.null_count
    if pa.types.is_floating(ours.type):  # NaN != NaN for `equals`: compare the bits
        bits = pa.int32() if ours.type.bit_width == 32 else pa.int64()
        assert ours.view(bits).equals(theirs.view(bits))
    else:
        assert ours.equals(theirs)


@settings(max_examples=600, deadline=None)
@given(cases())
def test_numpy_to_arrow_is_pa_array(case: tuple[np.ndarray[Any, Any], pa.DataType | None, Any]) -> None:
    values, target, mask = case
    ours = _outcome(lambda: numpy_to_arrow(values, type=target, mask=mask))
    theirs = _outcome(lambda: pa.array(values, type=target, mask=mask))
    if isinstance(theirs, pa.Array):
        assert isinstance(ours, pa.Array), ours
        _same_array(ours, theirs)
    else:
        assert ours is theirs  # the same refusal (a value the cast would truncate or overflow)


@pytest.mark.parametrize(
    ("values", "target"),
    [
        (np.array([1, 2**32 - 1], dtype=np.uint32), pa.int64()),
        (np.array([0, 1, 2], dtype=np.int64), pa.bool_()),
        (np.array([True, False, True]), None),
        (np.array([True, False] * 9)[3:], pa.int8()),
        (np.array([], dtype=np.float32), None),
        (np.array([], dtype=np.bool_), pa.float64()),
    ],
)
def test_numpy_to_arrow_targets_and_edges(values: np.ndarray[Any, Any], target: pa.DataType | None) -> None:
    _same_array(numpy_to_arrow(values, type=target), pa.array(values, type=target))
    mask = np.arange(len(values)) % 2 == 0
    _same_array(numpy_to_arrow(values, type=target, mask=mask), pa.array(values, type=target, mask=mask))


def test_numbers_are_not_copied() -> None:
    values = np.arange(10, dtype=np.int64)
    array = numpy_to_arrow(values)
    assert array.buffers()[1].address == values.ctypes.data


@pytest.mark.parametrize(
    ("values", "target"),
    [
        ([1, 2, None], None),  # not numpy
        (np.arange(6).reshape(2, 3)[0], pa.string()),  # a target `pa.array` converts itself
        (np.array([1.5, 2.5], dtype=np.float16), None),
        (np.array([1, 2], dtype=">i4"), None),  # byte-swapped: pa.array refuses it
        (np.array(["a", "b"]), None),
        (np.array([1, 2], dtype="datetime64[s]"), None),
        (np.ma.masked_array([1, 2, 3], mask=[False, True, False]), None),
    ],
)
def test_other_inputs_go_to_pa_array(values: Any, target: pa.DataType | None) -> None:
    ours = _outcome(lambda: numpy_to_arrow(values, type=target))
    theirs = _outcome(lambda: pa.array(values, type=target))
    if isinstance(theirs, pa.Array):
        assert isinstance(ours, pa.Array)
        assert ours.type == theirs.type
        assert ours.equals(theirs)
    else:
        assert ours is theirs


@st.composite
def arrow_arrays(draw: st.DrawFn) -> pa.Array | pa.ChunkedArray:
    """Numeric/bool Arrow arrays, maybe sliced (an offset), maybe with nulls, maybe in chunks."""
    dtype = draw(st.sampled_from(DTYPES))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        values = draw(numpy_arrays(dtype))
        mask = draw(hnp.arrays(np.bool_, len(values))) if draw(st.booleans()) else None
        array = pa.array(values, mask=mask)
        start = draw(st.integers(0, len(array)))
        parts.append(array.slice(start, draw(st.integers(0, len(array) - start))))
    if draw(st.booleans()):
        return pa.chunked_array(parts, type=parts[0].type)
    return parts[0]


@settings(max_examples=400, deadline=None)
@given(arrow_arrays())
def test_arrow_to_numpy_is_to_numpy(array: pa.Array | pa.ChunkedArray) -> None:
    theirs = array.to_numpy() if isinstance(array, pa.ChunkedArray) else array.to_numpy(zero_copy_only=False)
    ours = arrow_to_numpy(array)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)  # NaN where NaN


def test_arrow_to_numpy_of_no_chunks() -> None:
    ours = arrow_to_numpy(pa.chunked_array([], type=pa.uint32()))
    assert ours.dtype == np.uint32
    assert len(ours) == 0


_JOIN_WITHOUT_PANDAS = """
import json, sys
from pathlib import Path
from joiner.engine import OutputFormat, Role, join_file
from joiner.spec import parse_spec

class Store:  # a fragment store in memory: the second join reads the fragments back (from_bytes)
    def __init__(self):
        self.data = {}
    def get(self, name):
        return self.data.get(name)
    def put(self, name, data):
        self.data[name] = bytes(data)

spec = parse_spec(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
store = Store()
join_file(spec, spec.primary.files[0], out / "a.parquet", role=Role.PRIMARY, fragment_store=store)
join_file(spec, spec.primary.files[0], out / "b.root", role=Role.PRIMARY, fragment_store=store,
          output_format=OutputFormat.ROOT)
print(json.dumps({"pandas": "pandas" in sys.modules, "pyarrow.dataset": "pyarrow.dataset" in sys.modules}))
"""


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas is not installed: nothing imports it")
def test_a_join_imports_neither_pandas_nor_pyarrow_dataset(nano_dy: Path, tmp_path: Path) -> None:
    spec = {
        "primary": {"files": [str(nano_dy)], "columns": ["Jet_pt", "MET_pt"]},
        "friends": [
            {
                "name": name,
                "files": [str(path)],
                "tree": "Friends",
                "columns": ["sf", "Jet_sf"],
                "prefix": f"{name}_",
                "how": "left",
            }
            for name, path in (
                ("al", friends.aligned(nano_dy, tmp_path)),
                ("sh", friends.shuffled(nano_dy, tmp_path, drop=0.2)),
            )
        ],
    }
    done = subprocess.run(
        [sys.executable, "-c", _JOIN_WITHOUT_PANDAS, json.dumps(spec), str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "JOINER_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"pandas": False, "pyarrow.dataset": False}
