"""The shared result cache: one transformed file's output, reused by any later request of any user.

Owns the cache key and the cache objects. A key is the sha256 of a canonical JSON document holding
everything the output depends on: the join spec's canonical form without `primary.files`, the input file's
identity (logical path without replica or xcache prefix, size, ROOT UUID or ETag), the role of the file in
the join, the content-addressed names of the key-index fragments the join used, the inference models
(name and version), the output format and the engine's output format version. Any change to one of them is
another key, so a changed input or spec never hits. Objects live in the cache bucket under
`results/v<N>/<sha256>` (`.parquet` for Parquet output), carrying the file's counts as user metadata.

Writes are atomic and race-safe: a result enters the cache as one server-side copy of the object already
stored in the request's bucket (the store makes the new object visible whole or not at all), and writers of
the same key write equivalent objects (last one wins). A hit is served by a server-side copy into the new
request's bucket. Cache trouble never fails a file: a failed lookup or write is logged and the file is
computed as usual. It does not compute identities itself (the caller passes them) and does not retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformer.errors import StorageError
from transformer.storage.s3 import ObjectInfo, S3Store

log = logging.getLogger(__name__)

# Raised whenever the same key would now give other output bytes, so that no entry written before is served:
# 2: ROOT outputs carry the primary's Runs tree.
RESULT_FORMAT_VERSION = 2
RESULTS_PREFIX = f"results/v{RESULT_FORMAT_VERSION}/"
_META_KEY = "sxj-key"
_META_COUNTS = "sxj-counts"


@dataclass(frozen=True)
class CacheKey:
    """A result's cache key: the digest and the object name in the cache bucket."""

    digest: str
    object_name: str
    document: Mapping[str, Any] = field(compare=False, repr=False)


def result_key(
    *,
    spec_canonical: str,
    input_identity: Mapping[str, Any],
    role: str,
    fragments: Mapping[str, Sequence[str]],
    models: Sequence[Mapping[str, Any]],
    output_format: str,
    parquet: bool,
    engine_version: str,
) -> CacheKey:
    """The cache key of one file's output (see the module docstring for what goes in).

    Args:
        spec_canonical: `JoinSpec.canonical_json(without_primary_files=True)`.
        input_identity: `{"path": logical path, "size": bytes, "uuid": ROOT UUID or ETag}`.
        role: the file's role in the join (`primary`, `right`, `anti`).
        fragments: per dataset used through its key index, the names of its fragments in order.
        models: per inference model, at least its name and the version that answers.
        output_format: the result format (`parquet`, `root-file`).
        parquet: whether the object is Parquet (its name then ends in `.parquet`).
        engine_version: the version of the code that writes outputs.
    """
    document = {
        "version": RESULT_FORMAT_VERSION,
        "engine": engine_version,
        "spec": spec_canonical,
        "input": dict(input_identity),
        "role": role,
        "fragments": {name: list(names) for name, names in sorted(fragments.items())},
        "models": [dict(m) for m in models],
        "format": output_format,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return CacheKey(digest, RESULTS_PREFIX + digest + (".parquet" if parquet else ""), document)


@dataclass(frozen=True)
class ResultCounts:
    """What the report and the metrics need of a file, stored with its cached output."""

    events_out: int
    events_in: int
    matched: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)

    def to_metadata(self) -> str:
        """Compact JSON for the object's user metadata (ASCII)."""
        return json.dumps(
            {"out": self.events_out, "in": self.events_in, "matched": self.matched, "unmatched": self.unmatched},
            sort_keys=True, separators=(",", ":"),
        )

    @classmethod
    def from_metadata(cls, text: str) -> ResultCounts:
        """Parse `to_metadata`'s text; raises ValueError for anything else."""
        try:
            data = json.loads(text)
            return cls(
                events_out=int(data["out"]),
                events_in=int(data["in"]),
                matched={str(k): int(v) for k, v in dict(data["matched"]).items()},
                unmatched={str(k): int(v) for k, v in dict(data["unmatched"]).items()},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"unreadable cache counts {text!r}: {error}") from None


@dataclass(frozen=True)
class CachedResult:
    """A cache entry found for a key."""

    key: CacheKey
    size: int
    counts: ResultCounts


class ResultCache:
    """Result objects in the cache bucket of the object store.

    Args:
        store: the object store.
        bucket: the cache bucket (`JOINER_CACHE_BUCKET`, shared with the key-index fragments).
    """

    def __init__(self, store: S3Store, bucket: str) -> None:
        self.store = store
        self.bucket = bucket

    def lookup(self, key: CacheKey) -> CachedResult | None:
        """The entry for `key`, or None (absent, or not a complete entry of this key).

        Raises:
            StorageError: the store could not be asked (the caller may retry or compute).
        """
        info: ObjectInfo | None = self.store.stat(self.bucket, key.object_name)
        if info is None:
            return None
        if info.metadata.get(_META_KEY) != key.digest or _META_COUNTS not in info.metadata:
            log.warning("cache object %s has no or other key metadata; ignoring it", key.object_name)
            return None
        try:
            counts = ResultCounts.from_metadata(info.metadata[_META_COUNTS])
        except ValueError as error:
            log.warning("cache object %s: %s; ignoring it", key.object_name, error)
            return None
        return CachedResult(key, info.size, counts)

    def deliver(self, cached: CachedResult, bucket: str, name: str) -> int | None:
        """Server-side copy of a cached result into `bucket` as `name`; returns the copy's size.

        Returns:
            The stored size, or None if the entry vanished meanwhile (a cache clean): compute instead.

        Raises:
            StorageError: the copy failed (retryable).
        """
        return self.store.copy(self.bucket, cached.key.object_name, bucket, name)

    def publish(self, key: CacheKey, bucket: str, name: str, counts: ResultCounts) -> bool:
        """Enter a stored result (object `name` of `bucket`) into the cache under `key`.

        Returns:
            True if the entry was written; False if it could not be (logged; the file is not affected).
        """
        metadata = {_META_KEY: key.digest, _META_COUNTS: counts.to_metadata()}
        try:
            size = self.store.copy(bucket, name, self.bucket, key.object_name, metadata=metadata)
        except StorageError as error:
            log.warning("could not enter s3://%s/%s into the result cache as %s: %s", bucket, name,
                        key.object_name, error)
            return False
        if size is None:
            log.warning("s3://%s/%s vanished before it entered the result cache", bucket, name)
            return False
        return True
