"""What a Triton model offers, and whether one inference entry of a join spec fits it.

`ModelInfo` is the server's model metadata and configuration reduced to what the columns need (tensor
names, datatypes, per-row dims, `max_batch_size`); `plan_entry` checks one `InferenceSpec` against it and
returns the resolved `EntryPlan` (numpy dtypes, output widths and column names, batch size) or raises a
`ModelMismatchError` that lists every problem at once. Dims follow Triton's rule (DESIGN §5): with
`max_batch_size` > 0 the batch dimension is implicit (`dims: [3]` is `[batch, 3]`). Talks to no server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from joiner.spec import InferenceSpec
from transformer.inference.errors import ModelMismatchError

EVENT_LEVEL = "event"

# Triton datatypes that columns can be cast to, and their numpy types (BYTES and BF16 are not columns).
TRITON_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of a model; `dims` are per row (the batch dimension removed)."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """A served model as the columns see it."""

    name: str
    versions: tuple[str, ...]
    platform: str
    max_batch_size: int
    inputs: Mapping[str, TensorInfo]
    outputs: Mapping[str, TensorInfo]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], config: Mapping[str, Any], *, server: str) -> ModelInfo:
        """Build from Triton's model metadata and model configuration (both as JSON-like mappings).

        Args:
            metadata: `GET /v2/models/<m>` (or the gRPC ModelMetadata as JSON: int64 dims as strings).
            config: `GET /v2/models/<m>/config` (the gRPC answer's `config` member).
            server: the server's address, for messages.

        Returns:
            The model's tensors with per-row dims.

        Raises:
            ModelMismatchError: the model does not batch (no `max_batch_size` and no variable first dim).
        """
        name = str(metadata.get("name", config.get("name", "?")))
        max_batch_size = int(config.get("max_batch_size", 0))

        def tensors(items: Sequence[Mapping[str, Any]]) -> dict[str, TensorInfo]:
            found = {}
            for item in items:
                shape = tuple(int(d) for d in item.get("shape", ()))
                if max_batch_size > 0:
                    dims = shape[1:]
                elif shape and shape[0] == -1:
                    dims = shape[1:]  # no implicit batch dim, but an explicit variable first dim batches
                else:
                    raise ModelMismatchError(
                        f"model {name!r} on {server} does not batch (max_batch_size 0 and tensor "
                        f"{item.get('name')!r} has fixed shape {list(shape)}); inference columns need a "
                        "batch dimension"
                    )
                found[str(item["name"])] = TensorInfo(str(item["name"]), str(item["datatype"]), dims)
            return found

        return cls(
            name=name,
            versions=tuple(str(v) for v in metadata.get("versions", ())),
            platform=str(metadata.get("platform", "")),
            max_batch_size=max_batch_size,
            inputs=tensors(metadata.get("inputs", ())),
            outputs=tensors(metadata.get("outputs", ())),
        )


@dataclass(frozen=True)
class InputPlan:
    """How one input tensor is built: columns stacked as features, cast to the model's dtype."""

    tensor: str
    columns: tuple[str, ...]
    datatype: str
    dtype: np.dtype[Any]
    row_shape: tuple[int, ...]  # () for a scalar per row, (k,) for k stacked columns


@dataclass(frozen=True)
class OutputPlan:
    """How one output tensor becomes columns: width 1 -> `column`, width k -> `column_0..k-1`."""

    tensor: str
    column: str
    datatype: str
    dtype: np.dtype[Any]
    width: int

    @property
    def columns(self) -> tuple[str, ...]:
        """The new column names, in order."""
        if self.width == 1:
            return (self.column,)
        return tuple(f"{self.column}_{i}" for i in range(self.width))


@dataclass(frozen=True)
class EntryPlan:
    """One inference entry resolved against its model."""

    model: str
    version: str | None
    level: str
    inputs: tuple[InputPlan, ...]
    outputs: tuple[OutputPlan, ...]
    batch_size: int

    @property
    def output_columns(self) -> tuple[str, ...]:
        """Every column this entry adds, in order."""
        return tuple(c for o in self.outputs for c in o.columns)


DEFAULT_BATCH_SIZE = 1024  # for a model without max_batch_size (explicit variable batch dim)


def plan_entry(entry: InferenceSpec, info: ModelInfo, *, server: str) -> EntryPlan:
    """Check one inference entry against the served model and resolve it.

    Args:
        entry: the spec's entry.
        info: the served model.
        server: the server's address, for messages.

    Returns:
        The plan: input dtypes and shapes, output widths and column names, batch size.

    Raises:
        ModelMismatchError: listing every mismatch (names, dtypes, shapes, version, batch size).
    """
    problems: list[str] = []
    if entry.version is not None and info.versions and entry.version not in info.versions:
        problems.append(f"version {entry.version} is not served (available: {', '.join(info.versions)})")

    unknown_in = [t for t in entry.inputs if t not in info.inputs]
    if unknown_in:
        problems.append(f"input tensor(s) {unknown_in} not in the model (its inputs: {sorted(info.inputs)})")
    missing_in = [t for t in info.inputs if t not in entry.inputs]
    if missing_in:
        problems.append(f"the model's input tensor(s) {missing_in} are not given in the spec's inputs")
    unknown_out = [t for t in entry.outputs if t not in info.outputs]
    if unknown_out:
        problems.append(f"output tensor(s) {unknown_out} not in the model (its outputs: {sorted(info.outputs)})")

    inputs: list[InputPlan] = []
    for tensor, columns in entry.inputs.items():
        if tensor not in info.inputs:
            continue
        tinfo = info.inputs[tensor]
        dtype = TRITON_DTYPES.get(tinfo.datatype)
        if dtype is None:
            problems.append(f"input {tensor!r} has datatype {tinfo.datatype}: columns cannot be cast to it")
            continue
        row_shape = _input_row_shape(tinfo.dims, len(columns))
        if row_shape is None:
            problems.append(
                f"input {tensor!r} has dims {list(tinfo.dims)} per row but the spec stacks "
                f"{len(columns)} column(s) {list(columns)}: expected dims [{len(columns)}]"
                + (" (or [] / [1])" if len(columns) == 1 else "")
            )
            continue
        inputs.append(InputPlan(tensor, tuple(columns), tinfo.datatype, dtype, row_shape))

    outputs: list[OutputPlan] = []
    for tensor, column in entry.outputs.items():
        if tensor not in info.outputs:
            continue
        tinfo = info.outputs[tensor]
        dtype = TRITON_DTYPES.get(tinfo.datatype)
        if dtype is None:
            problems.append(f"output {tensor!r} has datatype {tinfo.datatype}, which is not a numeric column")
            continue
        width = _output_width(tinfo.dims)
        if width is None:
            problems.append(
                f"output {tensor!r} has dims {list(tinfo.dims)} per row: only [] or [k] with a fixed k map to columns"
            )
            continue
        outputs.append(OutputPlan(tensor, column, tinfo.datatype, dtype, width))

    if info.max_batch_size > 0:
        batch_size = entry.batch_size or info.max_batch_size
        if batch_size > info.max_batch_size:
            problems.append(f"batch_size {batch_size} exceeds the model's max_batch_size {info.max_batch_size}")
    else:
        batch_size = entry.batch_size or DEFAULT_BATCH_SIZE

    if problems:
        version = f" version {entry.version}" if entry.version else ""
        raise ModelMismatchError(
            f"inference spec does not match model {entry.model!r}{version} on {server}: " + "; ".join(problems)
        )
    return EntryPlan(
        model=entry.model,
        version=entry.version,
        level=entry.level,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        batch_size=batch_size,
    )


def _input_row_shape(dims: tuple[int, ...], n_columns: int) -> tuple[int, ...] | None:
    if len(dims) == 0:
        return () if n_columns == 1 else None
    if len(dims) == 1 and dims[0] in (n_columns, -1):
        return (n_columns,)
    return None


def _output_width(dims: tuple[int, ...]) -> int | None:
    if len(dims) == 0:
        return 1
    if len(dims) == 1 and dims[0] >= 1:
        return dims[0]
    return None
