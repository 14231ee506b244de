"""Writing joined rows: Parquet (the default) or a ROOT TTree, always through a temporary name.

A sink is opened with the output schema, takes chunks, and on `commit` writes the metadata and renames the
temporary file onto the final name, so a reader (or a crashed run) never sees a partial output. `abort`
removes the temporary file. A Parquet sink can also hand each block of bytes to an observer as it is
written (the file is written front to back, never rewritten), so that a caller can upload the output while
the rest of it is still being joined; a ROOT file is rewritten in place (uproot updates its headers), so
its sink has no observer.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from joiner.errors import SchemaError

METADATA_KEY = "servicex_joiner"
RUNS_KEY = "servicex_joiner.runs"
ROOT_TREE_NAME = "servicex"

OBSERVED_BLOCK_BYTES = 1024 * 1024  # what an observer is handed at a time (the last block may be shorter)

OutputObserver = Callable[[bytes], None]
"""Receives the output's bytes in order, block by block, as they are written (Parquet only)."""


class Sink(Protocol):
    def write(self, table: pa.Table) -> None: ...

    def commit(self, metadata: Mapping[str, Any]) -> int: ...

    def abort(self) -> None: ...


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding: flat integers and booleans (keys, counters, flags repeat).

    Measured floats (momenta, weights, scores) almost never repeat: a dictionary for them is built and
    then abandoned for every page, which costs about a fifth of the write time and makes files larger.
    """
    return [field.name for field in schema if pa.types.is_integer(field.type) or pa.types.is_boolean(field.type)]


class _ObservedFile(io.RawIOBase):
    """A local file being written that also hands every block to an observer, in order."""

    def __init__(self, path: Path, observer: OutputObserver) -> None:
        super().__init__()
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close(), with the writer
        self._observer = observer

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        block = bytes(data)
        written = self._file.write(block)
        self._observer(block)
        return written

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        super().close()
        self._file.close()


class ParquetSink:
    """Parquet with zstd compression; the join metadata goes into the file's key-value metadata.

    With an `observer`, every block written goes to it as well (after the local write): at `commit` it
    has seen exactly the bytes of the final file.
    """

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        *,
        runs: list[dict[str, Any]] | None = None,
        observer: OutputObserver | None = None,
    ) -> None:
        self.path = path
        self._tmp = _temporary(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._schema = schema
        self._file = _ObservedFile(self._tmp, observer) if observer is not None else None
        # Parquet writes every page header on its own (hundreds of small writes a file); buffered here, the
        # observed file (Python, under the GIL, beside an upload thread) is called once per megabyte.
        self._buffered = (
            pa.BufferedOutputStream(pa.PythonFile(self._file, mode="w"), buffer_size=OBSERVED_BLOCK_BYTES)
            if self._file is not None
            else None
        )
        self._writer = pq.ParquetWriter(
            self._buffered if self._buffered is not None else self._tmp,
            schema,
            compression="zstd",
            use_dictionary=dictionary_columns(schema),
        )
        self._runs = runs
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._writer.write_table(table.cast(self._schema) if table.schema != self._schema else table)
        self._rows += table.num_rows

    def commit(self, metadata: Mapping[str, Any]) -> int:
        extra = {METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str)}
        if self._runs is not None:
            extra[RUNS_KEY] = json.dumps(self._runs, default=float)
        self._writer.add_key_value_metadata(extra)
        self._writer.close()
        if self._buffered is not None:
            self._buffered.close()  # the last block to the observed file, which it closes
        if self._file is not None:
            self._file.close()
        os.replace(self._tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        with contextlib.suppress(OSError, pa.ArrowException):
            self._writer.close()
        if self._buffered is not None:
            with contextlib.suppress(OSError, ValueError, pa.ArrowException):
                self._buffered.close()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        self._tmp.unlink(missing_ok=True)


def _is_number(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_boolean(data_type))


def fits_a_ttree(data_type: pa.DataType) -> bool:
    """Whether uproot can write a column of this type: a number, or a list of numbers (not lists of lists,
    records or strings, which xAOD files hold: `AnalysisJetsAuxDyn.NumTrkPt500`, element links)."""
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return _is_number(data_type.value_type)
    return _is_number(data_type)


class RootSink:
    """A TTree named `servicex` written with uproot, NanoAOD-style (`nJet`, `Jet_pt`).

    ROOT has no nulls: a missing list is written empty, a missing number as NaN (floats) or 0 (integers);
    the `<friend>_matched` flags tell them apart from real values.
    """

    def __init__(self, path: Path, schema: pa.Schema, *, runs: list[dict[str, Any]] | None = None) -> None:
        unwritable = [f"{field.name} ({field.type})" for field in schema if not fits_a_ttree(field.type)]
        if unwritable:  # refused before any row is read: uproot would fail only at the end, cryptically
            raise SchemaError(
                f"ROOT output cannot hold {len(unwritable)} column(s): {', '.join(unwritable[:10])}"
                f"{' ...' if len(unwritable) > 10 else ''}. A TTree written with uproot takes numbers and lists "
                "of numbers; ask for Parquet output (ServiceX: result_format parquet) or leave these columns out"
            )
        self.path = path
        self._tmp = _temporary(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._schema = schema
        self._chunks: list[pa.Table] = []
        self._runs = runs

    def write(self, table: pa.Table) -> None:
        self._chunks.append(table)

    def commit(self, metadata: Mapping[str, Any]) -> int:
        import awkward as ak
        import uproot

        table = pa.concat_tables(self._chunks) if self._chunks else self._schema.empty_table()
        branches: dict[str, Any] = {}
        collections: dict[str, dict[str, Any]] = {}
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            array = ak.from_arrow(column, highlevel=True)
            array = _fill_nulls(array, column.type)
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                prefix, _, field = name.partition("_")
                if field:
                    collections.setdefault(prefix, {})[field] = array
                    continue
            branches[name] = array
        _leave_list_counters_to_uproot(branches)
        for prefix, fields in collections.items():
            counts = [ak.num(a) for a in fields.values()]
            if all(bool(ak.all(c == counts[0])) for c in counts[1:]):
                branches.pop("n" + prefix, None)
                branches[prefix] = ak.zip(fields)
            else:  # lengths differ (e.g. emptied missing rows): separate branches with their own counters
                for field, array in fields.items():
                    branches[f"{prefix}_{field}"] = array
        with uproot.recreate(self._tmp) as handle:
            handle.mktree(
                ROOT_TREE_NAME,
                {k: v.type.content for k, v in branches.items()},
                field_name=nanoaod_field_name,
                counter_name=nanoaod_counter_name,
            )
            if table.num_rows:
                handle[ROOT_TREE_NAME].extend(branches)
            if self._runs:
                _write_runs(handle, self._runs)
            handle["servicex_joiner_metadata"] = json.dumps(metadata, sort_keys=True, default=str)
        os.replace(self._tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        self._tmp.unlink(missing_ok=True)


RUNS_TREE_NAME = "Runs"


def _leave_list_counters_to_uproot(branches: dict[str, Any]) -> None:
    """Drop the counter of each list of its own (`PSWeight`'s `nPSWeight`, `LHEScaleSumw_`'s): uproot writes
    it from the list itself, and one given as well, after the list, makes it fail."""
    for name, values in list(branches.items()):
        if values.ndim > 1:
            branches.pop(nanoaod_counter_name(name), None)


def _write_runs(handle: Any, runs: list[dict[str, Any]]) -> None:
    """The primary file's `Runs` tree (genEventSumw, LHEScaleSumw, ...: what MC is normalised with), one entry
    per run as it was read, beside the joined tree (the Parquet sink keeps it in the file's metadata).

    Numbers come back from the metadata as 64-bit; a branch a TTree cannot hold is left out.
    """
    import awkward as ak

    array = ak.Array(runs)
    fields = {
        name: array[name]
        for name in array.fields
        if fits_a_ttree(ak.to_arrow(array[name], extensionarray=False).type)
    }
    _leave_list_counters_to_uproot(fields)
    if fields:
        handle.mktree(RUNS_TREE_NAME, {k: v.type.content for k, v in fields.items()},
                      counter_name=nanoaod_counter_name)
        handle[RUNS_TREE_NAME].extend(fields)


def nanoaod_field_name(outer: str, inner: str) -> str:
    """uproot's branch name of a collection field, NanoAOD-style: `Jet`, `pt` -> `Jet_pt`."""
    return inner if outer == "" else outer + "_" + inner


def nanoaod_counter_name(counted: str) -> str:
    """uproot's counter branch of a collection, NanoAOD-style: `Jet` -> `nJet`."""
    return "n" + counted


def _fill_nulls(array: Any, data_type: pa.DataType) -> Any:
    import awkward as ak
    import numpy as np

    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return ak.fill_none(array, [], axis=0)
    if pa.types.is_floating(data_type):
        return ak.fill_none(array, np.nan)
    if pa.types.is_boolean(data_type):
        return ak.fill_none(array, False)
    return ak.fill_none(array, 0)


def open_sink(
    path: Path,
    schema: pa.Schema,
    *,
    root: bool,
    runs: list[dict[str, Any]] | None,
    observer: OutputObserver | None = None,
) -> Sink:
    """A sink for `path`; `observer` sees a Parquet output's bytes as they are written (ignored for ROOT)."""
    return RootSink(path, schema, runs=runs) if root else ParquetSink(path, schema, runs=runs, observer=observer)


def read_join_metadata(path: str | Path) -> dict[str, Any]:
    """The join metadata of an output Parquet file (spec hash, inputs, keys, row counts, key digest)."""
    raw = pq.read_metadata(path).metadata or {}
    value = raw.get(METADATA_KEY.encode())
    result: dict[str, Any] = json.loads(value) if value else {}
    return result


def read_runs(path: str | Path) -> list[dict[str, Any]] | None:
    """The primary file's `Runs` tree (genEventSumw, ...) carried in an output's metadata, if it had one."""
    raw = pq.read_metadata(path).metadata or {}
    value = raw.get(RUNS_KEY.encode())
    return json.loads(value) if value else None
