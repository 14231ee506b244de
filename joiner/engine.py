"""One input file of a join spec, end to end: read, join every friend, add produced columns, write.

This is the single seam between the engine and everything that runs it (the local command, the ServiceX
worker, the science container): they call `join_file` and get a `FileResult` back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from joiner.spec import JoinSpec


class OutputFormat(StrEnum):
    """What a joined file is written as (ServiceX's `result_format` names)."""

    PARQUET = "parquet"
    ROOT = "root-file"


class Role(StrEnum):
    """Which side of the spec an input file belongs to (DESIGN §4, per-file decomposition)."""

    PRIMARY = "primary"  # a primary file: inner/left (and the left half of outer) over all friends
    RIGHT = "right"  # a friend file of a right join: left(F, P)
    ANTI = "anti"  # a friend file of an outer join: friend rows that have no primary row


class ColumnProducer(Protocol):
    """Adds columns to joined rows (Triton inference). Runs on every chunk after the joins."""

    def __call__(self, table: pa.Table) -> pa.Table:
        """Return `table` with the produced columns appended (same rows, same order)."""

    def describe(self) -> Mapping[str, Any]:
        """What went into the columns (model name, version, server), for the output's metadata."""


@dataclass(frozen=True)
class FileResult:
    """What one input file produced: counts for the App's report and the command's summary."""

    input_path: str
    output_path: Path
    output_format: OutputFormat
    events_in: int
    events_out: int
    output_bytes: int
    matched: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


PathCheck = Callable[[str], None]
