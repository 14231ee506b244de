"""One file of a request, end to end: check, join (with replicas and retries), store the result.

Owns the policy for one input file: which replica to try next, what is permanent (reported as failure at
once) and what is transient (retried with bounded backoff, then reported as failure), and the outcome the
worker reports to the App. Its collaborators (the join function, the result sink, the fragment store, the
column producers, the location check) are passed in, so tests hand it real or in-memory parts.
`run_job` builds the real collaborators from settings: it is what the worker's child process runs. This
module never touches the broker or the App; the worker reports and acknowledges.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from joiner.engine import ColumnProducer, FileResult, OutputFormat
from joiner.errors import InputFileError, JoinError
from joiner.spec import JoinSpec, parse_spec_text
from transformer.errors import (
    PermanentFileError,
    TransientError,
    UnsupportedFormatError,
)
from transformer.locations import AllowedLocations, order_replicas
from transformer.models import NO_OBJECT, FileStatus, ResultDestination, ResultFormat, TransformTask
from transformer.naming import object_name
from transformer.settings import Settings

log = logging.getLogger(__name__)

SUPPORTED_FORMATS: dict[str, OutputFormat] = {
    ResultFormat.PARQUET.value: OutputFormat.PARQUET,
    ResultFormat.ROOT_FILE.value: OutputFormat.ROOT,
}


class FragmentStoreLike(Protocol):
    """The engine's `joiner.index.FragmentStore` protocol (content-addressed fragment cache)."""

    def get(self, name: str) -> bytes | None:
        """The bytes stored under `name`, or None."""

    def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name` in one complete write."""


class ResultSink(Protocol):
    """Where a finished output file goes (an S3 bucket, a shared volume)."""

    def store_file(self, local_path: Path, name: str) -> int:
        """Store `local_path` under `name`, replacing any earlier one; return the stored size."""


class JoinFunction(Protocol):
    """`joiner.engine.join_file`."""

    def __call__(
        self,
        spec: JoinSpec,
        input_path: str,
        output_path: Path,
        *,
        output_format: OutputFormat = ...,
        fragment_store: Any = ...,
        producers: Sequence[ColumnProducer] = ...,
        chunk_entries: int | None = ...,
        storage_options: Mapping[str, Any] | None = ...,
        path_check: Callable[[str], None] | None = ...,
    ) -> FileResult: ...


@dataclass
class Collaborators:
    """The parts one file's transform uses."""

    join: JoinFunction
    sink: ResultSink
    fragment_store: FragmentStoreLike | None = None
    producers: Sequence[ColumnProducer] = ()
    allowed: AllowedLocations | None = None
    storage_options: Mapping[str, Any] | None = None
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff for transient failures."""

    attempts: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0

    def delays(self) -> list[float]:
        """The waits between attempts (one fewer than attempts)."""
        waits, delay = [], self.backoff_s
        for _ in range(self.attempts - 1):
            waits.append(delay)
            delay = min(delay * 2, self.backoff_max_s)
        return waits


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


def _kind_of(error: BaseException) -> str:
    return {
        "SpecError": "spec",
        "DuplicateKeyError": "duplicate-keys",
        "KeyMismatchError": "key-mismatch",
        "MissingColumnError": "missing-column",
        "InputFileError": "input",
        "SchemaError": "schema",
        "KeyTypeError": "key-type",
        "LocationNotAllowedError": "location",
        "UnsupportedFormatError": "format",
    }.get(type(error).__name__, "join" if isinstance(error, JoinError) else "other")


def transform_file(
    task: TransformTask,
    spec: JoinSpec,
    parts: Collaborators,
    *,
    scratch_dir: Path,
    retry: RetryPolicy = RetryPolicy(),
    cache_prefixes: Sequence[str] = (),
    chunk_entries: int | None = None,
) -> FileOutcome:
    """Transform one input file of a request and store the result; never raises for a bad file.

    Replicas are tried in ServiceX's order; a replica that cannot be read (`InputFileError`) moves on to
    the next; any other engine error (duplicate keys, key mismatch, missing tree or column, bad spec) fails
    the file at once. Transient errors (`TransientError`, or an `OSError` from the network) are retried
    with backoff: the join as a whole, then the upload on its own (the joined file is kept meanwhile).

    Args:
        task: the task's kwargs.
        spec: the join spec.
        parts: the collaborators.
        scratch_dir: where output files are written before they are stored.
        retry: the policy for transient failures.
        cache_prefixes: xcache hosts for the input replicas (`CACHE_PREFIX`).
        chunk_entries: entries per chunk for the engine (bounds memory).

    Returns:
        The outcome: success with the object's name and size, or failure with the reason.
    """
    started = time.monotonic()
    replicas = order_replicas(task.paths, cache_prefixes)
    first = replicas[0]
    ids = (task.request_id, task.file_id)
    output_format = SUPPORTED_FORMATS.get(task.result_format)
    try:
        if output_format is None:
            raise UnsupportedFormatError(task.result_format, tuple(SUPPORTED_FORMATS))
        if parts.allowed is not None:
            for friend in spec.friends:
                parts.allowed.check_all(friend.files)
    except PermanentFileError as error:
        return FileOutcome.failure(first, str(error), _kind_of(error), started)

    delays = retry.delays()
    joined: tuple[str, str, FileResult, Path] | None = None
    last_error = ""
    for attempt in range(retry.attempts):
        try:
            joined = _join_first_readable(
                task, spec, parts, replicas=replicas, output_format=output_format,
                scratch_dir=scratch_dir, chunk_entries=chunk_entries,
            )
            break
        except (JoinError, PermanentFileError) as error:
            log.error("request_id=%s file_id=%s join refused: %s", *ids, error)
            return FileOutcome.failure(first, str(error), _kind_of(error), started)
        except (TransientError, OSError) as error:
            last_error = f"{type(error).__name__}: {error}"
            if attempt + 1 < retry.attempts:
                log.warning(
                    "request_id=%s file_id=%s transient failure (try %d/%d), retrying in %.1f s: %s",
                    *ids, attempt + 1, retry.attempts, delays[attempt], last_error,
                )
                parts.sleep(delays[attempt])
    if joined is None:
        reason = f"gave up after {retry.attempts} tries: {last_error}"
        return FileOutcome.failure(first, reason, "transient", started)

    path, name, result, local = joined
    stored_size: int | None = None
    try:
        for attempt in range(retry.attempts):
            try:
                t0 = time.monotonic()
                stored_size = parts.sink.store_file(local, name)
                result.seconds["upload"] = result.seconds.get("upload", 0.0) + time.monotonic() - t0
                break
            except (TransientError, OSError) as error:
                last_error = f"{type(error).__name__}: {error}"
                if attempt + 1 < retry.attempts:
                    log.warning(
                        "request_id=%s file_id=%s storing %s failed (try %d/%d), retrying in %.1f s: %s",
                        *ids, name, attempt + 1, retry.attempts, delays[attempt], last_error,
                    )
                    parts.sleep(delays[attempt])
    finally:
        local.unlink(missing_ok=True)
    if stored_size is None:
        reason = f"storing the result gave up after {retry.attempts} tries: {last_error}"
        return FileOutcome.failure(path, reason, "storage", started)
    return FileOutcome(
        status=FileStatus.SUCCESS,
        file_path=path,
        object_name=name,
        total_bytes=stored_size,
        total_events=result.events_out,
        events_in=result.events_in,
        seconds=time.monotonic() - started,
        matched=dict(result.matched),
        unmatched=dict(result.unmatched),
        stage_seconds=dict(result.seconds),
    )


def _join_first_readable(
    task: TransformTask,
    spec: JoinSpec,
    parts: Collaborators,
    *,
    replicas: Sequence[str],
    output_format: OutputFormat,
    scratch_dir: Path,
    chunk_entries: int | None,
) -> tuple[str, str, FileResult, Path]:
    errors: list[str] = []
    for replica in replicas:
        name = object_name(replica, parquet=output_format is OutputFormat.PARQUET)
        local = Path(scratch_dir) / name
        log.info("request_id=%s file_id=%s joining %s", task.request_id, task.file_id, replica)
        try:
            result = parts.join(
                spec,
                replica,
                local,
                output_format=output_format,
                fragment_store=parts.fragment_store,
                producers=parts.producers,
                chunk_entries=chunk_entries,
                storage_options=parts.storage_options,
                path_check=parts.allowed,
            )
        except InputFileError as error:
            if isinstance(error, JoinError) and _is_friend_problem(error, replica):
                raise
            log.warning("request_id=%s file_id=%s replica %s unreadable: %s", task.request_id, task.file_id,
                        replica, error)
            errors.append(str(error))
            continue
        return replica, name, result, Path(result.output_path)
    raise InputFileError(
        f"none of the {len(replicas)} replica(s) could be read: " + " | ".join(errors), path=replicas[0]
    )


def _is_friend_problem(error: InputFileError, replica: str) -> bool:
    # A friend file that cannot be read fails every replica of the primary the same way: no point trying.
    return error.path is not None and error.path != replica


# --------------------------------------------------------------------------------------------------------
# The child process's entry: builds real collaborators from settings and runs one file.


@dataclass(frozen=True)
class FileJob:
    """Everything the child process needs for one file (picklable)."""

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


def run_job(job: FileJob) -> FileOutcome:
    """Run one file with the real engine, storage and inference: what the worker's child process runs.

    Any unexpected exception is turned into a failure outcome (logged with its traceback), so a bug in
    one file's path is reported to the App rather than crashing the supervisor into redelivery loops.
    """
    task = job.task
    started = time.monotonic()
    first = task.paths[0]
    if job.spec_text is None:
        return FileOutcome.failure(first, job.spec_error or "no join spec", "spec", started)
    try:
        spec = parse_spec_text(job.spec_text)
        parts = build_collaborators(job, spec)
    except (JoinError, PermanentFileError) as error:
        return FileOutcome.failure(first, str(error), _kind_of(error), started)
    except TransientError as error:
        return FileOutcome.failure(first, f"cannot start: {error}", "transient", started)
    worker = job.settings.worker
    scratch = Path(tempfile.mkdtemp(prefix=f"sxj-{task.file_id}-", dir=worker.scratch_dir))
    try:
        return transform_file(
            task,
            spec,
            parts,
            scratch_dir=scratch,
            retry=RetryPolicy(worker.transient_attempts, worker.backoff_s, worker.backoff_max_s),
            cache_prefixes=worker.cache_prefix,
            chunk_entries=worker.chunk_entries,
        )
    except Exception as error:  # a bug must become a failure report, not a dead consumer
        log.exception("request_id=%s file_id=%s unexpected error", task.request_id, task.file_id)
        reason = f"internal error: {type(error).__name__}: {error}"
        return FileOutcome.failure(first, reason, "internal", started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build_collaborators(job: FileJob, spec: JoinSpec) -> Collaborators:
    """The real collaborators for one job: engine, S3 or volume sink, S3 fragment cache, producers."""
    from joiner.engine import join_file

    settings = job.settings
    store = None
    fragment_store: FragmentStoreLike | None = None
    storage_options = None
    if settings.object_store.configured:
        from transformer.storage.s3 import S3FragmentStore, S3Store, s3_storage_options

        store = S3Store(settings.object_store)
        fragment_store = S3FragmentStore(store, settings.worker.cache_bucket)
        storage_options = s3_storage_options(settings.object_store)
    sink: ResultSink
    if job.task.result_destination is ResultDestination.VOLUME:
        from transformer.storage.local import LocalDirectorySink

        if job.output_dir is None:
            raise PermanentFileError("result_destination is volume but the worker has no --output-dir")
        sink = LocalDirectorySink(Path(job.output_dir))
    else:
        from transformer.storage.s3 import S3ResultSink

        if store is None:
            raise PermanentFileError("result_destination is object-store but MINIO_URL is not set")
        sink = S3ResultSink(store, job.task.request_id)
    return Collaborators(
        join=join_file,
        sink=sink,
        fragment_store=fragment_store,
        producers=build_producers(spec, settings.inference.triton_url),
        allowed=AllowedLocations(settings.worker.allowed_locations),
        storage_options=storage_options,
    )


def build_producers(spec: JoinSpec, triton_url: str | None) -> Sequence[ColumnProducer]:
    """The inference column producers of a spec (none without inference entries)."""
    if not spec.inference:
        return []
    try:
        from transformer.inference import build_producers as build  # type: ignore[attr-defined,unused-ignore]
    except ImportError as error:
        raise PermanentFileError(f"the spec asks for inference but it is not available: {error}") from error
    producers: Sequence[ColumnProducer] = build(spec, triton_url)
    return producers
