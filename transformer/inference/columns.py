"""Arrow columns to model tensors and back: flatten, stack, cast; unflatten with the same counts.

Event level: each input column is a primitive array (one value per event, possibly null). Object level
(`level: Jet`): each input column is a list column (`Jet_pt`: `list<float not null>`), and all columns of
one tensor set must have the same number of objects in every event. A row with a null in any input (a
left-joined friend without a match, a list null at the list level) gets null outputs: a null value per
event, a null list per object. Pure data handling: no server, no spec parsing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from joiner.arrow_arrays import arrow_to_numpy, numpy_to_arrow
from transformer.inference.errors import InferenceInputError
from transformer.inference.model_check import EVENT_LEVEL, EntryPlan, InputPlan, OutputPlan


@dataclass(frozen=True)
class Gathered:
    """The model inputs of one table: tensors over the items (events or objects) of the valid rows."""

    n_rows: int
    valid: np.ndarray[Any, np.dtype[np.bool_]]  # per table row: every input present
    counts: np.ndarray[Any, np.dtype[np.int64]] | None  # objects per valid row (object level), else None
    list_type: pa.DataType | None  # the input list type to mirror (object level)
    tensors: dict[str, np.ndarray[Any, Any]]  # tensor name -> [n_items, *row_shape], model dtype

    @property
    def n_items(self) -> int:
        """Rows sent to the model: valid events, or objects in valid events."""
        return int(self.valid.sum()) if self.counts is None else int(self.counts.sum())


def gather(table: pa.Table, plan: EntryPlan) -> Gathered:
    """Build the input tensors of `plan` from `table`'s columns.

    Args:
        table: the joined rows (NanoAOD-style flat column names).
        plan: the resolved inference entry.

    Returns:
        The tensors, with the row validity and (object level) the counts to unflatten with.

    Raises:
        InferenceInputError: a column is missing, of the wrong kind, or its counts differ from another's.
    """
    names = [c for i in plan.inputs for c in i.columns]
    missing = [c for c in dict.fromkeys(names) if c not in table.column_names]
    if missing:
        raise InferenceInputError(
            f"model {plan.model!r}: input column(s) {missing} are not among the joined columns "
            "(add them to the primary's or a friend's columns)"
        )
    arrays = {c: _combined(table.column(c)) for c in dict.fromkeys(names)}
    n_rows = table.num_rows
    valid = np.ones(n_rows, dtype=np.bool_)
    for array in arrays.values():
        if array.null_count:
            valid &= arrow_to_numpy(array.is_valid())

    if plan.level == EVENT_LEVEL:
        for name, array in arrays.items():
            if not _is_primitive(array.type):
                raise InferenceInputError(
                    f"model {plan.model!r} runs per event but column {name!r} is {array.type}; "
                    f"use level: <collection> for per-object columns"
                )
        values = {name: _take_valid(array, valid) for name, array in arrays.items()}
        tensors = {i.tensor: _stack(i, values, n=int(valid.sum())) for i in plan.inputs}
        return Gathered(n_rows, valid, None, None, tensors)

    counts_by: dict[str, np.ndarray[Any, np.dtype[np.int64]]] = {}
    flat: dict[str, np.ndarray[Any, Any]] = {}
    list_type: pa.DataType | None = None
    for name, array in arrays.items():
        if not (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
            raise InferenceInputError(
                f"model {plan.model!r} runs per {plan.level} object but column {name!r} is {array.type}, "
                "not a list column"
            )
        if not _is_primitive(array.type.value_type):
            raise InferenceInputError(f"model {plan.model!r}: column {name!r} holds {array.type.value_type}")
        list_type = list_type or array.type
        kept = array if array.null_count == 0 and bool(valid.all()) else array.filter(numpy_to_arrow(valid))
        counts_by[name] = arrow_to_numpy(pc.list_value_length(kept)).astype(np.int64)
        values = kept.flatten()
        if values.null_count:
            raise InferenceInputError(f"model {plan.model!r}: column {name!r} has null elements inside lists")
        flat[name] = arrow_to_numpy(values)
    first, *others = counts_by
    counts = counts_by[first]
    for name in others:
        if not np.array_equal(counts_by[name], counts):
            row = int(np.flatnonzero(counts_by[name] != counts)[0])
            raise InferenceInputError(
                f"model {plan.model!r}: columns {first!r} and {name!r} have different numbers of "
                f"{plan.level} objects ({counts[row]} vs {counts_by[name][row]} in event {row} of those "
                "with inputs)"
            )
    n_items = int(counts.sum())
    tensors = {i.tensor: _stack(i, flat, n=n_items) for i in plan.inputs}
    return Gathered(n_rows, valid, counts, list_type, tensors)


def scatter(
    gathered: Gathered, plan: EntryPlan, results: dict[str, np.ndarray[Any, Any]]
) -> list[tuple[str, pa.Array]]:
    """Turn the model's outputs over all items into the new columns.

    Args:
        gathered: what `gather` built (validity and counts).
        plan: the resolved inference entry.
        results: output tensor name -> array of `n_items` rows (any trailing shape of the output's width).

    Returns:
        (column name, array) per new column, in the plan's order; one entry per table row each.
    """
    columns: list[tuple[str, pa.Array]] = []
    invalid = ~gathered.valid
    has_nulls = bool(invalid.any())
    for out in plan.outputs:
        data = np.asarray(results[out.tensor]).reshape(gathered.n_items, out.width)
        if data.dtype != out.dtype:
            data = data.astype(out.dtype)
        for j, name in enumerate(out.columns):
            values = np.ascontiguousarray(data[:, j])
            if gathered.counts is None:
                columns.append((name, _event_column(values, gathered.valid, has_nulls)))
            elif gathered.counts is not None and gathered.list_type is not None:
                mask = invalid if has_nulls else None
                columns.append(
                    (
                        name,
                        _object_column(values, gathered.counts, gathered, gathered.list_type, out, mask=mask),
                    )
                )
    return columns


def empty_results(plan: EntryPlan) -> dict[str, np.ndarray[Any, Any]]:
    """Outputs for zero items (no request is sent)."""
    return {o.tensor: np.empty((0, o.width), dtype=o.dtype) for o in plan.outputs}


def arrow_type(out: OutputPlan) -> pa.DataType:
    """The Arrow type of one value of `out`."""
    return pa.from_numpy_dtype(out.dtype)


def _combined(column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    return column.combine_chunks()


def _is_primitive(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_boolean(data_type))


def _take_valid(array: pa.Array, valid: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    kept = array if bool(valid.all()) else array.filter(numpy_to_arrow(valid))
    values: np.ndarray[Any, Any] = arrow_to_numpy(kept)
    return values


def _stack(plan: InputPlan, values: dict[str, np.ndarray[Any, Any]], *, n: int) -> np.ndarray[Any, Any]:
    if plan.row_shape == ():
        return np.ascontiguousarray(values[plan.columns[0]], dtype=plan.dtype).reshape(n)
    stacked = np.empty((n, len(plan.columns)), dtype=plan.dtype)
    for j, name in enumerate(plan.columns):
        stacked[:, j] = values[name]
    return stacked


def _event_column(values: np.ndarray[Any, Any], valid: np.ndarray[Any, Any], has_nulls: bool) -> pa.Array:
    if not has_nulls:
        return numpy_to_arrow(values)
    full = np.zeros(valid.shape[0], dtype=values.dtype)
    full[valid] = values
    return numpy_to_arrow(full, mask=~valid)


def _object_column(
    values: np.ndarray[Any, Any],
    valid_counts: np.ndarray[Any, Any],
    gathered: Gathered,
    list_type: pa.DataType,
    out: OutputPlan,
    *,
    mask: np.ndarray[Any, Any] | None,
) -> pa.Array:
    counts = np.zeros(gathered.n_rows, dtype=np.int64)
    counts[gathered.valid] = valid_counts
    large = pa.types.is_large_list(list_type)
    offsets = np.zeros(gathered.n_rows + 1, dtype=np.int64 if large else np.int32)
    np.cumsum(counts, out=offsets[1:])
    item = list_type.value_field.with_type(arrow_type(out)).with_nullable(False)
    out_type = pa.large_list(item) if large else pa.list_(item)
    cls = pa.LargeListArray if large else pa.ListArray
    null_mask = None if mask is None else numpy_to_arrow(mask)
    return cls.from_arrays(numpy_to_arrow(offsets), numpy_to_arrow(values), type=out_type, mask=null_mask)


def column_names(plans: Sequence[EntryPlan]) -> list[str]:
    """Every column the plans add, in order."""
    return [c for p in plans for c in p.output_columns]
