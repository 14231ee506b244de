"""What crosses the boundary between the worker and its transform process, kept light to import.

Owns the job a file is sent as (`FileJob`), the outcome that comes back (`FileOutcome`, `CacheUse`), the
result formats the transform process writes, and `make_runner`, the factory the transform process calls
once to build its handler (`transformer.task.JobRunner`). The worker's own process imports only this (not
the engine, storage or inference), so that it starts fast and its transform process's fork server starts
importing the heavy modules at once, beside it. Reading the spec file once per worker lives here too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from joiner.errors import JoinError
from joiner.spec import parse_spec_text
from transformer.models import NO_OBJECT, FileStatus, ResultFormat, TransformTask
from transformer.settings import Settings

RESULT_FORMATS: tuple[str, ...] = (ResultFormat.PARQUET.value, ResultFormat.ROOT_FILE.value)


class CacheUse(StrEnum):
    """What the result cache did for one file."""

    OFF = "off"  # not asked (no cache, volume output, or a model version that cannot be named)
    HIT = "hit"  # served by a copy of a cached result
    MISS = "miss"  # computed (and entered into the cache)


@dataclass(frozen=True)
class FileOutcome:
    """What became of one input file: everything the worker needs for the report and the metrics."""

    status: FileStatus
    file_path: str
    object_name: str
    total_bytes: int = 0
    total_events: int = 0
    seconds: float = 0.0
    reason: str | None = None
    reason_kind: str | None = None  # short label for metrics: spec, location, input, join, format, ...
    events_in: int = 0
    matched: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    cache: CacheUse = CacheUse.OFF
    cache_key: str | None = None

    @classmethod
    def failure(cls, path: str, reason: str, kind: str, started: float) -> FileOutcome:
        """A failure outcome (no object)."""
        return cls(
            status=FileStatus.FAILURE,
            file_path=path,
            object_name=NO_OBJECT,
            reason=reason,
            reason_kind=kind,
            seconds=time.monotonic() - started,
        )


@dataclass(frozen=True)
class FileJob:
    """Everything the transform process needs for one file (picklable)."""

    task: TransformTask
    spec_text: str | None
    spec_error: str | None
    settings: Settings
    output_dir: str | None = None


def load_spec_text(path: str | Path) -> tuple[str | None, str | None]:
    """Read and validate a spec file once: (normalised JSON text, None) or (None, the error message)."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        return None, f"cannot read the join spec {path}: {error.strerror or error}"
    try:
        spec = parse_spec_text(text, source=str(path))
    except JoinError as error:
        return None, str(error)
    return spec.model_dump_json(), None


def make_runner() -> Callable[[FileJob], FileOutcome]:
    """The transform process's handler (imports the engine, storage and inference in that process)."""
    from transformer.process_memory import keep_freed_memory
    from transformer.task import JobRunner

    keep_freed_memory()  # it serves file after file
    return JobRunner()
