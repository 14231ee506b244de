"""One file of a request, end to end: check, reuse a cached result or join (with replicas and retries), store.

Owns the policy for one input file: which replica to try next, what is permanent (reported as failure at
once) and what is transient (retried with bounded backoff, then reported as failure), when the shared
result cache is asked and fed (`transformer.result_cache`), and the outcome the worker reports to the App.
Its collaborators (the join function, the result sink, the fragment store, the key-index resolver, the
result cache, the column producers, the location check) are passed in, so tests hand it real or in-memory
parts. `JobRunner` builds the real collaborators from settings and runs job after job: it is the handler of
the worker's long-lived transform process, and keeps what later files reuse (loaded key indexes, clients,
Triton producers). This module never touches the broker or the App; the worker reports and acknowledges.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from joiner.engine import ColumnProducer, FileResult, OutputFormat, Role, infer_role
from joiner.errors import InputFileError, JoinError, SourceUnavailableError
from joiner.index import DatasetIndex
from joiner.sources import FileIdentity, file_identity, logical_path
from joiner.spec import JoinSpec, parse_spec_text
from transformer.errors import (
    PermanentFileError,
    StorageError,
    TransientError,
    UnsupportedFormatError,
)
from transformer.index_memory import IndexMemory
from transformer.job import CacheUse, FileJob, FileOutcome, load_spec_text
from transformer.locations import AllowedLocations, order_replicas
from transformer.models import FileStatus, ResultDestination, ResultFormat, TransformTask
from transformer.naming import object_name
from transformer.result_cache import CachedResult, CacheKey, ResultCounts, result_key
from transformer.settings import ObjectStoreSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

SUPPORTED_FORMATS: dict[str, OutputFormat] = {
    ResultFormat.PARQUET.value: OutputFormat.PARQUET,
    ResultFormat.ROOT_FILE.value: OutputFormat.ROOT,
}
__all__ = [  # the job types live in transformer.job; named here too for callers of this module
    "SUPPORTED_FORMATS", "CacheUse", "Collaborators", "FileJob", "FileOutcome", "JobRunner", "RetryPolicy",
    "build_collaborators", "build_producers", "load_spec_text", "run_job", "transform_file",
]


def _engine_version() -> str:
    try:
        return importlib.metadata.version("servicex-joiner")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


ENGINE_VERSION = _engine_version()


class FragmentStoreLike(Protocol):
    """The engine's `joiner.index.FragmentStore` protocol (content-addressed fragment cache)."""

    def get(self, name: str) -> bytes | None:
        """The bytes stored under `name`, or None."""

    def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name` in one complete write."""


class OutputStream(Protocol):
    """An object being stored while its output is written (`transformer.storage.streaming.StreamingUpload`)."""

    def write(self, block: bytes) -> None:
        """The output's next bytes."""

    def abandon(self, reason: str) -> None:
        """Give up; nothing is left stored."""

    def finish(self) -> int | None:
        """The stored size once the whole output is stored, or None: store the local file instead."""


class ResultSink(Protocol):
    """Where a finished output file goes (an S3 bucket, a shared volume)."""

    def store_file(self, local_path: Path, name: str) -> int:
        """Store `local_path` under `name`, replacing any earlier one; return the stored size."""

    def open_stream(self, name: str) -> OutputStream | None:
        """Start storing `name` from an output's bytes as they are written, or None if this sink cannot."""


class JoinFunction(Protocol):
    """`joiner.engine.join_file`."""

    def __call__(
        self,
        spec: JoinSpec,
        input_path: str,
        output_path: Path,
        *,
        role: Role | None = ...,
        output_format: OutputFormat = ...,
        fragment_store: Any = ...,
        producers: Sequence[ColumnProducer] = ...,
        chunk_entries: int | None = ...,
        storage_options: Mapping[str, Any] | None = ...,
        path_check: Callable[[str], None] | None = ...,
        indexes: Mapping[str, DatasetIndex] | None = ...,
        output_observer: Callable[[bytes], None] | None = ...,
    ) -> FileResult: ...


class IndexResolver(Protocol):
    """Gives the duplicate-checked dataset indexes a file of `spec` in `role` joins against."""

    def __call__(self, spec: JoinSpec, role: Role) -> Mapping[str, DatasetIndex]: ...


class ResultCacheLike(Protocol):
    """`transformer.result_cache.ResultCache`."""

    def lookup(self, key: CacheKey) -> CachedResult | None: ...

    def deliver(self, cached: CachedResult, bucket: str, name: str) -> int | None: ...

    def promote(self, cached: CachedResult, bucket: str, name: str) -> bool: ...

    def publish(self, key: CacheKey, bucket: str, name: str, counts: ResultCounts) -> bool: ...


@dataclass
class Collaborators:
    """The parts one file's transform uses.

    `result_cache` is used only with `result_bucket` (the bucket `sink` writes to): hits are server-side
    copies into it, and stored results enter the cache from it, through `background` when given (a
    runner of steps that may finish after the outcome is returned), else at once.
    """

    join: JoinFunction
    sink: ResultSink
    fragment_store: FragmentStoreLike | None = None
    producers: Sequence[ColumnProducer] = ()
    allowed: AllowedLocations | None = None
    storage_options: Mapping[str, Any] | None = None
    sleep: Callable[[float], None] = time.sleep
    indexes: IndexResolver | None = None
    result_cache: ResultCacheLike | None = None
    result_bucket: str | None = None
    identify: Callable[[str], FileIdentity] | None = None
    background: Callable[[Callable[[], None]], None] | None = None


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


class _GaveUpError(Exception):
    """A step kept failing transiently for all its tries (`kind`: the failure's metrics label)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _with_retries(
    step: Callable[[], T],
    *,
    what: str,
    kind: str,
    retry: RetryPolicy,
    sleep: Callable[[float], None],
    ids: tuple[str, int],
) -> T:
    """Run `step`, retrying transient failures with backoff; permanent ones propagate at once."""
    delays = retry.delays()
    last_error = ""
    for attempt in range(retry.attempts):
        try:
            return step()
        except (JoinError, PermanentFileError):
            raise
        except (TransientError, OSError) as error:
            last_error = f"{type(error).__name__}: {error}"
            if attempt + 1 < retry.attempts:
                log.warning(
                    "request_id=%s file_id=%s %s failed (try %d/%d), retrying in %.1f s: %s",
                    *ids, what, attempt + 1, retry.attempts, delays[attempt], last_error,
                )
                sleep(delays[attempt])
    raise _GaveUpError(f"{what} gave up after {retry.attempts} tries: {last_error}", kind)


@dataclass
class _Produced:
    """A replica turned into a result: a joined local file (maybe already streaming to the store), or a
    cache entry to copy."""

    path: str
    name: str
    key: CacheKey | None
    result: FileResult | None = None
    cached: CachedResult | None = None
    stream: OutputStream | None = None


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
    the file at once. With a result cache, a replica whose key (spec, input identity, index fragments,
    models, format) is cached is copied into the request's bucket instead of joined; a computed result
    enters the cache after it is stored. Transient errors (`TransientError`, or an `OSError` from the
    network) are retried with backoff, step by step: loading the key indexes, the join (or cache lookup),
    then storing (or copying) on its own (the joined file is kept meanwhile).

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

    cache = parts.result_cache if parts.result_bucket is not None else None
    bucket = parts.result_bucket or ""

    def retried(step: Callable[[], T], what: str, kind: str = "transient") -> T:
        return _with_retries(step, what=what, kind=kind, retry=retry, sleep=parts.sleep, ids=ids)

    try:
        role = infer_role(spec, first)
        mark = time.monotonic()
        indexes: Mapping[str, DatasetIndex] | None = None
        resolver = parts.indexes
        if resolver is not None:
            indexes = retried(lambda: resolver(spec, role), "loading the key indexes")
        index_seconds = time.monotonic() - mark

        def produce(use_cache: bool) -> _Produced:
            return _produce(
                task, spec, parts, replicas=replicas, output_format=output_format, scratch_dir=scratch_dir,
                chunk_entries=chunk_entries, role=role, indexes=indexes, cache=cache if use_cache else None,
            )

        produced = retried(lambda: produce(True), "the join")
        if produced.cached is not None and cache is not None:
            hit = produced.cached
            mark = time.monotonic()
            size = retried(lambda: cache.deliver(hit, bucket, produced.name), "copying the cached result",
                           "storage")
            if size is not None:
                log.info("request_id=%s file_id=%s result cache hit %s: copied %d bytes to %s",
                         *ids, hit.key.digest[:16], size, produced.name)
                if not hit.promoted:
                    _in_background(parts, functools.partial(_promote, cache, hit, bucket, produced.name, ids))
                counts = hit.counts
                return FileOutcome(
                    status=FileStatus.SUCCESS, file_path=produced.path, object_name=produced.name,
                    total_bytes=size, total_events=counts.events_out, events_in=counts.events_in,
                    seconds=time.monotonic() - started, matched=dict(counts.matched),
                    unmatched=dict(counts.unmatched),
                    stage_seconds={"index": index_seconds, "cache": time.monotonic() - mark},
                    cache=CacheUse.HIT, cache_key=hit.key.digest,
                )
            log.warning("request_id=%s file_id=%s cached result %s vanished before its copy; computing",
                        *ids, hit.key.object_name)
            key = produced.key
            produced = retried(lambda: produce(False), "the join")
            produced.key = key
    except (JoinError, PermanentFileError) as error:
        log.error("request_id=%s file_id=%s join refused: %s", *ids, error)
        return FileOutcome.failure(first, str(error), _kind_of(error), started)
    except _GaveUpError as error:
        return FileOutcome.failure(first, str(error), error.kind, started)

    result = produced.result
    if result is None:
        raise RuntimeError("a replica produced neither a joined file nor a cache entry")
    local = Path(result.output_path)
    seconds = dict(result.seconds)
    seconds["index"] = seconds.get("index", 0.0) + index_seconds

    def store() -> int:
        t0 = time.monotonic()
        size: int | None = None
        stream, produced.stream = produced.stream, None  # streamed once at most: a retry stores the file
        if stream is not None:
            size = stream.finish()  # what is left of an upload that ran while the file was written
        if size is None:
            size = parts.sink.store_file(local, produced.name)
        seconds["upload"] = seconds.get("upload", 0.0) + time.monotonic() - t0
        return size

    try:
        stored_size = retried(store, f"storing {produced.name}", "storage")
    except _GaveUpError as error:
        return FileOutcome.failure(produced.path, f"storing the result: {error}", error.kind, started)
    finally:
        if produced.stream is not None:
            produced.stream.abandon("the file was not stored")
        local.unlink(missing_ok=True)
    counts = ResultCounts(result.events_out, result.events_in, dict(result.matched), dict(result.unmatched))
    use = CacheUse.OFF
    if cache is not None and produced.key is not None:
        use = CacheUse.MISS
        key, name = produced.key, produced.name

        def enter() -> None:
            if cache.publish(key, bucket, name, counts):
                log.info("request_id=%s file_id=%s entered into the result cache as %s", *ids, key.reference_name)

        _in_background(parts, enter)
    return FileOutcome(
        status=FileStatus.SUCCESS,
        file_path=produced.path,
        object_name=produced.name,
        total_bytes=stored_size,
        total_events=result.events_out,
        events_in=result.events_in,
        seconds=time.monotonic() - started,
        matched=counts.matched,
        unmatched=counts.unmatched,
        stage_seconds=seconds,
        cache=use,
        cache_key=produced.key.digest if produced.key is not None else None,
    )


def _in_background(parts: Collaborators, step: Callable[[], None]) -> None:
    """Run a cache write after the file's object is stored: the report need not wait for it."""
    if parts.background is not None:
        parts.background(step)
    else:
        step()


def _promote(cache: ResultCacheLike, hit: CachedResult, bucket: str, name: str, ids: tuple[str, int]) -> None:
    if cache.promote(hit, bucket, name):
        log.info("request_id=%s file_id=%s result cache entry %s reused: copied into the cache", *ids,
                 hit.key.digest[:16])


def _produce(
    task: TransformTask,
    spec: JoinSpec,
    parts: Collaborators,
    *,
    replicas: Sequence[str],
    output_format: OutputFormat,
    scratch_dir: Path,
    chunk_entries: int | None,
    role: Role,
    indexes: Mapping[str, DatasetIndex] | None,
    cache: ResultCacheLike | None,
) -> _Produced:
    ids = (task.request_id, task.file_id)
    errors: list[str] = []
    unreachable = False  # a replica's server could not be reached: the file may be readable later
    for replica in replicas:
        name = object_name(replica, parquet=output_format is OutputFormat.PARQUET)
        key: CacheKey | None = None
        if cache is not None:
            try:
                key = cache_key_for(spec, replica, role, indexes, parts, task.result_format, output_format)
            except (InputFileError, SourceUnavailableError) as error:
                log.warning("request_id=%s file_id=%s replica %s unreadable: %s", *ids, replica, error)
                errors.append(str(error))
                unreachable = unreachable or isinstance(error, SourceUnavailableError)
                continue
            if key is not None:
                try:
                    cached = cache.lookup(key)
                except StorageError as error:
                    log.warning("request_id=%s file_id=%s result cache lookup failed, computing: %s", *ids, error)
                    cached = None
                if cached is not None:
                    return _Produced(replica, name, key, cached=cached)
                log.info("request_id=%s file_id=%s result cache miss %s", *ids, key.digest[:16])
        local = Path(scratch_dir) / name
        log.info("request_id=%s file_id=%s joining %s", *ids, replica)
        # a Parquet output is stored while it is written (a ROOT file is rewritten in place: stored after)
        stream = parts.sink.open_stream(name) if output_format is OutputFormat.PARQUET else None
        try:
            result = parts.join(
                spec,
                replica,
                local,
                role=role,
                output_format=output_format,
                fragment_store=parts.fragment_store,
                producers=parts.producers,
                chunk_entries=chunk_entries,
                storage_options=parts.storage_options,
                path_check=parts.allowed,
                indexes=indexes,
                output_observer=stream.write if stream is not None else None,
            )
        except BaseException as error:
            if stream is not None:
                stream.abandon(f"the join failed: {type(error).__name__}")
            if not isinstance(error, (InputFileError, SourceUnavailableError)) or _is_friend_problem(error, replica):
                raise  # a friend's trouble is every replica's: permanent, or retried as a whole if transient
            log.warning("request_id=%s file_id=%s replica %s unreadable: %s", *ids, replica, error)
            errors.append(str(error))
            unreachable = unreachable or isinstance(error, SourceUnavailableError)
            continue
        return _Produced(replica, name, key, result=result, stream=stream)
    message = f"none of the {len(replicas)} replica(s) could be read: " + " | ".join(errors)
    if unreachable:  # retried with backoff (an OSError), then reported as a failure
        raise SourceUnavailableError(message, path=replicas[0])
    raise InputFileError(message, path=replicas[0])


def _is_friend_problem(error: InputFileError | SourceUnavailableError, replica: str) -> bool:
    # A friend file that cannot be read fails every replica of the primary the same way: no point trying.
    return error.path is not None and error.path != replica


def model_versions(producers: Sequence[ColumnProducer]) -> list[dict[str, str]] | None:
    """Name and answering version of every inference model, or None when one cannot be named.

    A spec that pins a version names it; an unpinned one is answered by the highest version the server
    has (Triton's default policy), known once the producer has checked the server.
    """
    found: list[dict[str, str]] = []
    for producer in producers:
        description = producer.describe()
        models = description.get("models")
        if not isinstance(models, list):
            return None
        for model in models:
            version = model.get("version")
            if not version:
                available = [str(v) for v in model.get("available_versions") or []]
                numeric = [v for v in available if v.isdigit()]
                version = max(numeric, key=int) if numeric else None
            if not version:
                return None
            found.append({"model": str(model.get("model")), "version": str(version)})
    return found


def cache_key_for(
    spec: JoinSpec,
    replica: str,
    role: Role,
    indexes: Mapping[str, DatasetIndex] | None,
    parts: Collaborators,
    result_format: str,
    output_format: OutputFormat,
) -> CacheKey | None:
    """The result-cache key of one replica's output, or None when it cannot be keyed safely.

    Raises:
        InputFileError: the replica cannot be read (its identity is unknown).
    """
    if spec.friends and indexes is None:
        return None  # the fragments joined against are unknown
    models = model_versions(parts.producers)
    if models is None:
        return None
    identify = parts.identify or (lambda path: file_identity(path, parts.storage_options))
    identity = identify(replica)
    return result_key(
        spec_canonical=spec.canonical_json(without_primary_files=True),
        input_identity={**identity.as_dict(), "path": logical_path(replica)},
        role=role.value,
        fragments={name: [f.content_name for f in index.fragments] for name, index in (indexes or {}).items()},
        models=models,
        output_format=result_format,
        parquet=output_format is OutputFormat.PARQUET,
        engine_version=ENGINE_VERSION,
    )


# --------------------------------------------------------------------------------------------------------
# The transform process's handler: builds real collaborators from settings and runs file after file.


class JobRunner:
    """Runs jobs one after another in one process, keeping what the next file can reuse.

    The worker's transform process builds one (`transformer.supervise.Supervisor(JobRunner, ...)`) and
    calls it per file. It keeps the loaded key indexes (`IndexMemory`: reused while the friend files are
    unchanged, duplicate-checked once per load), the object-store clients and the Triton producers (by
    spec and server). Nothing it keeps outlives a change of the inputs: the indexes re-check the files'
    identities per file, and fsspec's listings are dropped before each file.
    """

    def __init__(self) -> None:
        self.index_memory = IndexMemory()
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="result-cache")
        self._stores: dict[ObjectStoreSettings, Any] = {}
        self._producers: dict[tuple[str, str | None], Sequence[ColumnProducer]] = {}
        self._specs: dict[str, JoinSpec] = {}
        self.files = 0

    def __call__(self, job: FileJob) -> FileOutcome:
        """Run one job (never raises for anything a file can do)."""
        self.files += 1
        return run_job(job, self)

    def spec(self, text: str) -> JoinSpec:
        """The parsed spec of a normalised spec text (parsed once)."""
        spec = self._specs.get(text)
        if spec is None:
            spec = parse_spec_text(text)
            self._specs = {text: spec}
        return spec

    def store(self, settings: ObjectStoreSettings) -> Any:
        """An `S3Store` for these settings (one client, reused)."""
        store = self._stores.get(settings)
        if store is None:
            from transformer.storage.s3 import S3Store

            store = S3Store(settings)
            self._stores[settings] = store
        return store

    def producers(self, spec_text: str, spec: JoinSpec, triton_url: str | None) -> Sequence[ColumnProducer]:
        """The spec's column producers (connected and checked once, then reused)."""
        slot = (spec_text, triton_url)
        producers = self._producers.get(slot)
        if producers is None:
            producers = build_producers(spec, triton_url)
            self._producers[slot] = producers
        return producers

    def background(self, step: Callable[[], None]) -> None:
        """Run `step` on the runner's background thread, after the current file's outcome if need be."""

        def guarded() -> None:
            try:
                step()
            except Exception:  # a background step must never take the process down
                log.exception("background step failed")

        self._background.submit(guarded)

    def forget_listings(self, storage_options: Mapping[str, Any] | None) -> None:
        """Drop fsspec's cached S3 listings, so that this file sees the friend datasets as they are now."""
        if storage_options is None or "s3fs" not in sys.modules:
            return
        import fsspec

        fsspec.filesystem("s3", **dict(storage_options)).invalidate_cache()

    def close(self) -> None:
        """Finish the background steps, close the producers' connections."""
        self._background.shutdown(wait=True)
        for producers in self._producers.values():
            for producer in producers:
                close = getattr(producer, "close", None)
                if callable(close):
                    close()
        self._producers.clear()


def run_job(job: FileJob, runner: JobRunner | None = None) -> FileOutcome:
    """Run one file with the real engine, storage and inference.

    Any unexpected exception is turned into a failure outcome (logged with its traceback), so a bug in
    one file's path is reported to the App rather than crashing the supervisor into redelivery loops.

    Args:
        job: the file and its context.
        runner: what earlier files left to reuse (a fresh one, closed afterwards, when None).
    """
    if runner is None:
        own = JobRunner()
        try:
            return run_job(job, own)
        finally:
            own.close()
    task = job.task
    started = time.monotonic()
    first = task.paths[0]
    if job.spec_text is None:
        return FileOutcome.failure(first, job.spec_error or "no join spec", "spec", started)
    try:
        spec = runner.spec(job.spec_text)
        parts = build_collaborators(job, spec, runner)
    except (JoinError, PermanentFileError) as error:
        return FileOutcome.failure(first, str(error), _kind_of(error), started)
    except TransientError as error:
        return FileOutcome.failure(first, f"cannot start: {error}", "transient", started)
    worker = job.settings.worker
    scratch = Path(tempfile.mkdtemp(prefix=f"sxj-{task.file_id}-", dir=worker.scratch_dir))
    try:
        runner.forget_listings(parts.storage_options)
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


def build_collaborators(job: FileJob, spec: JoinSpec, runner: JobRunner | None = None) -> Collaborators:
    """The real collaborators for one job: engine, S3 or volume sink, S3 fragment cache, key indexes kept
    in memory, the shared result cache (object-store results), producers."""
    from joiner.engine import join_file

    runner = runner or JobRunner()
    settings = job.settings
    store = None
    fragment_store: FragmentStoreLike | None = None
    storage_options = None
    if settings.object_store.configured:
        from transformer.storage.s3 import S3FragmentStore, s3_storage_options

        store = runner.store(settings.object_store)
        fragment_store = S3FragmentStore(store, settings.worker.cache_bucket)
        storage_options = s3_storage_options(settings.object_store)
    sink: ResultSink
    result_cache: ResultCacheLike | None = None
    result_bucket: str | None = None
    if job.task.result_destination is ResultDestination.VOLUME:
        from transformer.storage.local import LocalDirectorySink

        if job.output_dir is None:
            raise PermanentFileError("result_destination is volume but the worker has no --output-dir")
        sink = LocalDirectorySink(Path(job.output_dir))
    else:
        from transformer.storage.s3 import S3ResultSink

        if store is None:
            raise PermanentFileError("result_destination is object-store but MINIO_URL is not set")
        sink = S3ResultSink(store, job.task.request_id, stream=settings.worker.stream_uploads)
        if settings.worker.result_cache:
            from transformer.result_cache import ResultCache

            result_cache = ResultCache(store, settings.worker.cache_bucket)
            result_bucket = job.task.request_id
    allowed = AllowedLocations(settings.worker.allowed_locations)
    memory = runner.index_memory

    def resolve(spec: JoinSpec, role: Role) -> Mapping[str, DatasetIndex]:
        return memory.resolve(
            spec, role, fragment_store=fragment_store, storage_options=storage_options, path_check=allowed
        )

    return Collaborators(
        join=join_file,
        sink=sink,
        fragment_store=fragment_store,
        producers=runner.producers(job.spec_text or "", spec, settings.inference.triton_url),
        allowed=allowed,
        storage_options=storage_options,
        indexes=resolve,
        result_cache=result_cache,
        result_bucket=result_bucket,
        background=runner.background,
    )


def build_producers(spec: JoinSpec, triton_url: str | None) -> Sequence[ColumnProducer]:
    """The inference column producers of a spec (none without inference entries)."""
    if not spec.inference:
        return []
    try:
        from transformer.inference import build_producers as build  # type: ignore[attr-defined,unused-ignore]
    except ImportError as error:
        raise PermanentFileError(f"the spec asks for inference but it is not available: {error}") from error
    from transformer.inference import InferenceConfigError, ModelMismatchError

    try:
        producers: Sequence[ColumnProducer] = build(spec, triton_url)
    except (ModelMismatchError, InferenceConfigError) as error:
        # the worker checks this at start and stops; should the model change under a running worker,
        # its files fail with the reason rather than crash the transform process
        raise PermanentFileError(str(error)) from error
    return producers
