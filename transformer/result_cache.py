"""The shared result cache: one transformed file's output, reused by any later request of any user.

Owns the cache key and the cache entries. A key is the sha256 of a canonical JSON document holding
everything the output depends on: the join spec's canonical form without `primary.files`, the input file's
identity (logical path without replica or xcache prefix, size, ROOT UUID or ETag), the role of the file in
the join, the content-addressed names of the key-index fragments the join used, the inference models
(name and version), the output format and the engine's output format version. Any change to one of them is
another key, so a changed input or spec never hits.

An entry is first a **reference**, then, once reused, a **copy**. A computed result is entered as a small
JSON object `results/v<N>/<sha256>.ref` naming the object already stored in the request's bucket, its ETag,
size and counts: a result that is never asked for again costs the store no second copy of its bytes. The
first hit copies the referenced object into the new request's bucket and then promotes the entry: a
server-side copy into the cache bucket as `results/v<N>/<sha256>` (`.parquet` for Parquet output) carrying
the counts as user metadata, which outlives the request bucket it came from. A reference is honoured only
while its object still has the recorded ETag and size (the copy itself is conditional on that ETag), so a
deleted request bucket or a rewritten object is a miss, never a wrong hit.

Writes are atomic and race-safe: each is one PUT or one server-side copy (the store makes the new object
visible whole or not at all), and writers of the same key write equivalent entries (last one wins). Cache
trouble never fails a file: a failed lookup or write is logged and the file is computed as usual. It does
not compute identities itself (the caller passes them) and does not retry.
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
REFERENCE_SUFFIX = ".ref"
_META_KEY = "sxj-key"
_META_COUNTS = "sxj-counts"


@dataclass(frozen=True)
class CacheKey:
    """A result's cache key: the digest and the object name in the cache bucket."""

    digest: str
    object_name: str
    document: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def reference_name(self) -> str:
        """The name of the entry's reference object (before the entry is promoted to a copy)."""
        return RESULTS_PREFIX + self.digest + REFERENCE_SUFFIX


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
    """A cache entry found for a key: where its bytes are now.

    `bucket`/`name` is the cache's own copy for a promoted entry, or the referenced object in an earlier
    request's bucket (then `etag` is the ETag the reference recorded, and `promoted` is False).
    """

    key: CacheKey
    size: int
    counts: ResultCounts
    bucket: str
    name: str
    etag: str | None = None
    promoted: bool = True


class ResultCache:
    """Result entries in the cache bucket of the object store.

    Args:
        store: the object store.
        bucket: the cache bucket (`JOINER_CACHE_BUCKET`, shared with the key-index fragments).
    """

    def __init__(self, store: S3Store, bucket: str) -> None:
        self.store = store
        self.bucket = bucket

    def lookup(self, key: CacheKey) -> CachedResult | None:
        """The entry for `key`, or None (absent, not a complete entry of this key, or a stale reference).

        Raises:
            StorageError: the store could not be asked (the caller may retry or compute).
        """
        info: ObjectInfo | None = self.store.stat(self.bucket, key.object_name)
        if info is not None:
            counts = self._promoted_counts(key, info)
            if counts is not None:
                return CachedResult(key, info.size, counts, self.bucket, key.object_name)
        data = self.store.get_bytes(self.bucket, key.reference_name)
        if data is None:
            return None
        try:
            reference = _Reference.from_bytes(data, key)
        except ValueError as error:
            log.warning("cache reference %s: %s; ignoring it", key.reference_name, error)
            return None
        target = self.store.stat(reference.bucket, reference.name)
        if target is None or target.etag != reference.etag or target.size != reference.size:
            log.info("cache reference %s names s3://%s/%s, which is gone or rewritten; ignoring it",
                     key.reference_name, reference.bucket, reference.name)
            return None
        return CachedResult(key, reference.size, reference.counts, reference.bucket, reference.name,
                            etag=reference.etag, promoted=False)

    @staticmethod
    def _promoted_counts(key: CacheKey, info: ObjectInfo) -> ResultCounts | None:
        if info.metadata.get(_META_KEY) != key.digest or _META_COUNTS not in info.metadata:
            log.warning("cache object %s has no or other key metadata; ignoring it", key.object_name)
            return None
        try:
            return ResultCounts.from_metadata(info.metadata[_META_COUNTS])
        except ValueError as error:
            log.warning("cache object %s: %s; ignoring it", key.object_name, error)
            return None

    def deliver(self, cached: CachedResult, bucket: str, name: str) -> int | None:
        """Server-side copy of a cached result into `bucket` as `name`; returns the copy's size.

        A referenced object is copied only if it still has the recorded ETag. A reference to the very object
        asked for (a redelivered file whose first attempt stored and entered its result) needs no copy.

        Returns:
            The stored size, or None if the entry vanished or changed meanwhile (a cache clean, a deleted
            request bucket): compute instead.

        Raises:
            StorageError: the copy failed (retryable).
        """
        if (cached.bucket, cached.name) == (bucket, name):
            info = self.store.stat(bucket, name)
            return info.size if info is not None and info.etag == cached.etag else None
        return self.store.copy(cached.bucket, cached.name, bucket, name, source_etag=cached.etag)

    def promote(self, cached: CachedResult, bucket: str, name: str) -> bool:
        """Turn a referenced entry that was just delivered (into `name` of `bucket`) into the cache's own copy.

        Returns:
            True if the copy was written; False if it was not needed or could not be written (logged).
        """
        if cached.promoted:
            return False
        return self._copy_in(cached.key, bucket, name, cached.counts)

    def publish(self, key: CacheKey, bucket: str, name: str, counts: ResultCounts) -> bool:
        """Enter a stored result (object `name` of `bucket`) into the cache under `key`, as a reference.

        Returns:
            True if the entry was written; False if it could not be (logged; the file is not affected).
        """
        try:
            info = self.store.stat(bucket, name)
            if info is None or info.etag is None:
                log.warning("s3://%s/%s vanished (or has no ETag) before it entered the result cache", bucket, name)
                return False
            reference = _Reference(bucket, name, info.etag, info.size, counts)
            self.store.put_bytes(self.bucket, key.reference_name, reference.to_bytes(key))
        except StorageError as error:
            log.warning("could not enter s3://%s/%s into the result cache as %s: %s", bucket, name,
                        key.reference_name, error)
            return False
        return True

    def _copy_in(self, key: CacheKey, bucket: str, name: str, counts: ResultCounts) -> bool:
        metadata = {_META_KEY: key.digest, _META_COUNTS: counts.to_metadata()}
        try:
            size = self.store.copy(bucket, name, self.bucket, key.object_name, metadata=metadata)
        except StorageError as error:
            log.warning("could not copy s3://%s/%s into the result cache as %s: %s", bucket, name,
                        key.object_name, error)
            return False
        if size is None:
            log.warning("s3://%s/%s vanished before it was copied into the result cache", bucket, name)
            return False
        return True


@dataclass(frozen=True)
class _Reference:
    """The body of a reference entry: where an earlier request stored the result, and what it held."""

    bucket: str
    name: str
    etag: str
    size: int
    counts: ResultCounts

    def to_bytes(self, key: CacheKey) -> bytes:
        document = {
            "key": key.digest, "bucket": self.bucket, "name": self.name, "etag": self.etag, "size": self.size,
            "counts": json.loads(self.counts.to_metadata()),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, key: CacheKey) -> _Reference:
        """Parse `to_bytes`'s document of `key`; raises ValueError for anything else."""
        try:
            document = json.loads(data)
            if document["key"] != key.digest:
                raise ValueError(f"it belongs to key {document['key']!r}")
            counts = ResultCounts.from_metadata(json.dumps(document["counts"]))
            return cls(str(document["bucket"]), str(document["name"]), str(document["etag"]),
                       int(document["size"]), counts)
        except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"unreadable reference: {error!r}") from None
