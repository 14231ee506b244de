"""`servicex-joiner cache clean`: keeps the shared cache bucket bounded by age and by size.

Owns the cleaning policy over the cache bucket (`JOINER_CACHE_BUCKET`): the result objects
(`results/`, `transformer.result_cache`) and the key-index fragments (`index/`, `S3FragmentStore`). First
every object older than `--max-age-days` goes, then the oldest ones until the rest fit in `--max-bytes`.
Run by the chart's CronJob. Safe beside running workers: every cache object can be rebuilt (a worker that
misses a result computes it, one that misses a fragment builds it), a delete of an object that is already
gone is no error, and an object rewritten since the listing (newer than listed) is kept. It never touches a
request's bucket, and reads settings only in `run_from_args`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from transformer.errors import StorageError
from transformer.result_cache import RESULTS_PREFIX
from transformer.storage.s3 import ObjectInfo, S3Store

log = logging.getLogger(__name__)

CACHE_PREFIXES = ("results/", "index/")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class CleanReport:
    """What a clean found and did."""

    scanned: int = 0
    scanned_bytes: int = 0
    deleted: list[ObjectInfo] = field(default_factory=list)
    kept_newer: int = 0  # rewritten after the listing: not deleted

    @property
    def deleted_bytes(self) -> int:
        """Bytes of the deleted (or, in a dry run, deletable) objects."""
        return sum(item.size for item in self.deleted)

    @property
    def remaining_bytes(self) -> int:
        """Bytes left in the cache after the clean (as listed)."""
        return self.scanned_bytes - self.deleted_bytes


def plan_clean(
    objects: Iterable[ObjectInfo], *, now: datetime, max_age_days: float | None, max_bytes: int | None
) -> list[ObjectInfo]:
    """The objects to delete: those older than `max_age_days`, then the oldest until under `max_bytes`.

    Pure: no I/O. Objects without a modification time count as the oldest.
    """
    ordered = sorted(objects, key=lambda item: (item.last_modified or _EPOCH, item.name))
    doomed: list[ObjectInfo] = []
    kept: list[ObjectInfo] = []
    cutoff = now - timedelta(days=max_age_days) if max_age_days is not None else None
    for item in ordered:
        if cutoff is not None and (item.last_modified or _EPOCH) < cutoff:
            doomed.append(item)
        else:
            kept.append(item)
    if max_bytes is not None:
        total = sum(item.size for item in kept)
        for item in kept:  # oldest first
            if total <= max_bytes:
                break
            doomed.append(item)
            total -= item.size
    return doomed


def clean_cache(
    store: S3Store,
    bucket: str,
    *,
    max_age_days: float | None,
    max_bytes: int | None,
    dry_run: bool = False,
    now: datetime | None = None,
    prefixes: Sequence[str] = CACHE_PREFIXES,
) -> CleanReport:
    """List the cache objects, plan, and delete (unless `dry_run`).

    Raises:
        StorageError: the store could not be listed or an object could not be deleted.
    """
    now = now or datetime.now(UTC)
    objects = [item for prefix in prefixes for item in store.iter_objects(bucket, prefix)]
    report = CleanReport(scanned=len(objects), scanned_bytes=sum(item.size for item in objects))
    for item in plan_clean(objects, now=now, max_age_days=max_age_days, max_bytes=max_bytes):
        if dry_run:
            log.info("would delete s3://%s/%s (%d bytes, modified %s)", bucket, item.name, item.size,
                     item.last_modified)
            report.deleted.append(item)
            continue
        current = store.stat(bucket, item.name)
        if current is None:  # gone meanwhile (another clean, or never complete): nothing to do
            continue
        if item.last_modified is not None and current.last_modified is not None and \
                current.last_modified > item.last_modified:
            report.kept_newer += 1  # a worker rewrote it after the listing: it is fresh
            continue
        store.remove(bucket, item.name)
        report.deleted.append(item)
        log.debug("deleted s3://%s/%s (%d bytes)", bucket, item.name, item.size)
    return report


def run_from_args(args: argparse.Namespace) -> int:
    """Entry of `servicex-joiner cache clean` (exit 0 done, 1 store trouble, 2 bad arguments)."""
    from transformer.settings import get_settings

    if args.max_age_days is None and args.max_bytes is None:
        log.error("cache clean needs --max-age-days and/or --max-bytes")
        return 2
    if (args.max_age_days is not None and args.max_age_days < 0) or (args.max_bytes is not None and args.max_bytes < 0):
        log.error("--max-age-days and --max-bytes must not be negative")
        return 2
    settings = get_settings()
    bucket = settings.worker.cache_bucket
    try:
        store = S3Store(settings.object_store)
        report = clean_cache(
            store, bucket, max_age_days=args.max_age_days, max_bytes=args.max_bytes, dry_run=args.dry_run
        )
    except StorageError as error:
        log.error("cache clean of bucket %s failed: %s", bucket, error)
        return 1
    results = sum(1 for item in report.deleted if item.name.startswith(RESULTS_PREFIX.split("/")[0]))
    verb = "would delete" if args.dry_run else "deleted"
    log.info(
        "cache bucket %s: %d objects (%d bytes) scanned; %s %d (%d results, %d index fragments; %d bytes); "
        "%d bytes remain; %d rewritten meanwhile and kept",
        bucket, report.scanned, report.scanned_bytes, verb, len(report.deleted), results,
        len(report.deleted) - results, report.deleted_bytes, report.remaining_bytes, report.kept_newer,
    )
    return 0
