"""The S3-compatible object store (MinIO in ServiceX) through the `minio` client.

Owns: uploading result objects into a request's bucket, reading back their size, server-side copies (the
result cache), listing and deleting objects with their age and size (cache cleaning), and the
content-addressed key-index fragment cache (`S3FragmentStore`, the engine's `FragmentStore` protocol).
Every failure is translated into `StorageError` (retryable); a missing object is `None`, not an error. It
does not retry by itself (callers own the policy), apart from the HTTP pool's short connection retries.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.error import MinioException, S3Error

from transformer.errors import StorageError
from transformer.settings import ObjectStoreSettings

if TYPE_CHECKING:
    from transformer.storage.streaming import StreamingUpload

log = logging.getLogger(__name__)

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket"})
_CHANGED_CODES = frozenset({"PreconditionFailed"})  # a conditional copy whose source is no longer that object
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (MinioException, urllib3.exceptions.HTTPError, OSError)
_USER_META_PREFIX = "x-amz-meta-"
# results up to this size go up in one PUT; larger ones in parts of this size (three in flight: ~96 MB held)
SINGLE_PUT_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """What a stat or a listing tells of one object."""

    name: str
    size: int
    last_modified: datetime | None
    metadata: dict[str, str] = field(default_factory=dict)  # user metadata, lower-case names without prefix
    etag: str | None = None  # without quotes; changes whenever the object is rewritten with other bytes


_Result = TypeVar("_Result")


def _unless_missing(what: str, bucket: str, name: str, operation: Callable[[], _Result]) -> _Result | None:
    """Run one object operation: None when the object (or bucket) does not exist, StorageError otherwise."""
    try:
        return operation()
    except S3Error as error:
        if error.code in _MISSING_CODES:
            return None
        raise StorageError(f"{what} failed: {error}", bucket=bucket, name=name) from error
    except _NETWORK_ERRORS as error:
        raise StorageError(f"{what} failed: {error}", bucket=bucket, name=name) from error


def _user_metadata(headers: Mapping[str, Any] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in (headers or {}).items():
        lowered = str(key).lower()
        if lowered.startswith(_USER_META_PREFIX):
            found[lowered.removeprefix(_USER_META_PREFIX)] = str(value)
    return found


def _http_client(connect_timeout: float, read_timeout: float) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=16,  # the key index's lookups (8 threads) and writes, the upload and the result cache at once
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class S3Store:
    """A thin, error-translating wrapper around one `minio.Minio` client.

    Args:
        settings: the object-store settings (`MINIO_URL`, keys, `MINIO_ENCRYPT`).
        connect_timeout: seconds to open a connection.
        read_timeout: seconds to wait for a response.

    Raises:
        StorageError: when no object store is configured.
    """

    def __init__(
        self, settings: ObjectStoreSettings, *, connect_timeout: float = 5.0, read_timeout: float = 120.0
    ) -> None:
        if settings.url is None:
            raise StorageError("no object store configured: set MINIO_URL (host:port)")
        self.settings = settings
        self.client = Minio(
            settings.url,
            access_key=settings.access_key.get_secret_value() if settings.access_key else None,
            secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
            secure=settings.encrypt,
            region=settings.region,
            http_client=_http_client(connect_timeout, read_timeout),
        )
        self._known_buckets: set[str] = set()

    def ensure_bucket(self, bucket: str) -> None:
        """Create `bucket` unless it exists (safe when several workers race to create it)."""
        if bucket in self._known_buckets:
            return
        try:
            if not self.client.bucket_exists(bucket):
                try:
                    self.client.make_bucket(bucket)
                except S3Error as error:
                    if error.code not in _BUCKET_EXISTS_CODES:
                        raise
        except _NETWORK_ERRORS as error:
            raise StorageError(f"cannot create or check bucket: {error}", bucket=bucket) from error
        self._known_buckets.add(bucket)

    def upload_file(self, bucket: str, name: str, path: Path) -> int:
        """Upload a local file as one object (overwriting any previous one) and return the stored size.

        The size is read back from the store, so it is what a client downloading the object receives.
        """
        self.ensure_bucket(bucket)
        try:
            # one PUT up to SINGLE_PUT_BYTES: a multipart upload of a typical output costs the server
            # more work (parts, then their assembly) and the client more round trips
            self.client.fput_object(bucket, name, str(path), part_size=SINGLE_PUT_BYTES)
        except _NETWORK_ERRORS as error:
            raise StorageError(f"upload of {path} failed: {error}", bucket=bucket, name=name) from error
        size = self.size(bucket, name)
        if size is None:
            raise StorageError("object missing right after its upload", bucket=bucket, name=name)
        return size

    def size(self, bucket: str, name: str) -> int | None:
        """The size of an object, or None if it (or its bucket) does not exist."""
        info = self.stat(bucket, name)
        return None if info is None else info.size

    def get_bytes(self, bucket: str, name: str) -> bytes | None:
        """The whole object, or None if it (or its bucket) does not exist."""
        response = _unless_missing("read", bucket, name, lambda: self.client.get_object(bucket, name))
        if response is None:
            return None
        try:
            data: bytes = response.read()
        except _NETWORK_ERRORS as error:
            raise StorageError(f"read failed: {error}", bucket=bucket, name=name) from error
        finally:
            response.close()
            response.release_conn()
        return data

    def put_bytes(self, bucket: str, name: str, data: bytes) -> None:
        """Write one object in a single PUT: readers see the old object or the whole new one."""
        self.ensure_bucket(bucket)
        try:
            self.client.put_object(bucket, name, io.BytesIO(data), len(data))
        except _NETWORK_ERRORS as error:
            raise StorageError(f"write failed: {error}", bucket=bucket, name=name) from error

    def stat(self, bucket: str, name: str) -> ObjectInfo | None:
        """Size, age and user metadata of an object, or None if it (or its bucket) does not exist."""
        stat = _unless_missing("stat", bucket, name, lambda: self.client.stat_object(bucket, name))
        if stat is None:
            return None
        etag = str(stat.etag).strip('"') if stat.etag else None
        return ObjectInfo(name, int(stat.size or 0), stat.last_modified, _user_metadata(stat.metadata), etag)

    def copy(
        self,
        source_bucket: str,
        source_name: str,
        bucket: str,
        name: str,
        *,
        metadata: Mapping[str, str] | None = None,
        source_etag: str | None = None,
    ) -> int | None:
        """Server-side copy of one object (the bytes never leave the store); returns the copy's size.

        The copy appears whole or not at all, replacing any object of that name. With `metadata`, the
        copy carries exactly that user metadata (else the source's). With `source_etag`, the store copies
        only if the source still has that ETag (`x-amz-copy-source-if-match`), so a source rewritten since
        it was looked at is never copied under an old name.

        Returns:
            The stored size of the copy, or None when the source does not exist or no longer has
            `source_etag` (the target is untouched).
        """
        self.ensure_bucket(bucket)
        source = CopySource(source_bucket, source_name, match_etag=source_etag)
        options: dict[str, Any] = {}
        if metadata is not None:
            options = {"metadata": dict(metadata), "metadata_directive": REPLACE}
        what = f"copy from s3://{source_bucket}/{source_name}"

        def copy() -> object:
            try:
                return self.client.copy_object(bucket, name, source, **options)
            except S3Error as error:
                if error.code in _CHANGED_CODES:
                    return None
                raise

        if _unless_missing(what, bucket, name, copy) is None:
            return None
        return self.size(bucket, name)

    def iter_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under `prefix` with size and age (nothing if the bucket does not exist)."""
        try:
            if not self.client.bucket_exists(bucket):
                return
            for item in self.client.list_objects(bucket, prefix=prefix, recursive=True):
                if item.is_dir:
                    continue
                yield ObjectInfo(str(item.object_name), int(item.size or 0), item.last_modified)
        except _NETWORK_ERRORS as error:
            raise StorageError(f"listing failed: {error}", bucket=bucket) from error

    def remove(self, bucket: str, name: str) -> None:
        """Delete an object; an object (or bucket) that is already gone is no error."""
        _unless_missing("delete", bucket, name, lambda: self.client.remove_object(bucket, name))

    def list_names(self, bucket: str, prefix: str = "") -> list[str]:
        """Object names in a bucket under `prefix` (empty if the bucket does not exist)."""
        try:
            if not self.client.bucket_exists(bucket):
                return []
            objects = self.client.list_objects(bucket, prefix=prefix, recursive=True)
            return [str(o.object_name) for o in objects]
        except _NETWORK_ERRORS as error:
            raise StorageError(f"listing failed: {error}", bucket=bucket) from error


class S3ResultSink:
    """Stores result files as objects of bucket `<request_id>` (the ServiceX output layout).

    With `stream`, a result may be uploaded while it is written (`open_stream`).
    """

    def __init__(self, store: S3Store, bucket: str, *, stream: bool = True) -> None:
        self.store = store
        self.bucket = bucket
        self.stream = stream

    def store_file(self, local_path: Path, name: str) -> int:
        """Upload `local_path` as object `name`; returns the stored object's size."""
        return self.store.upload_file(self.bucket, name, local_path)

    def open_stream(self, name: str) -> StreamingUpload | None:
        """Start uploading object `name` from the bytes of an output as it is written (None: not streaming)."""
        if not self.stream:
            return None
        from transformer.storage.streaming import StreamingUpload

        return StreamingUpload(self.store, self.bucket, name)


class S3FragmentStore:
    """The engine's `FragmentStore` on S3: key-index fragments shared by every request and user.

    Names are content-addressed by the engine (friend path, size, ROOT UUID, tree, key columns, format
    version), so one name always holds the same bytes; concurrent builders writing the same name are
    harmless, and a PUT is atomic, so readers never see half a fragment.

    Args:
        store: the object store.
        bucket: the cache bucket (`JOINER_CACHE_BUCKET`).
        prefix: a folder inside the bucket for fragments.
    """

    def __init__(self, store: S3Store, bucket: str, prefix: str = "index/") -> None:
        self.store = store
        self.bucket = bucket
        self.prefix = prefix

    def get(self, name: str) -> bytes | None:
        """The fragment stored under `name`, or None."""
        return self.store.get_bytes(self.bucket, self.prefix + name)

    def put(self, name: str, data: bytes) -> None:
        """Store a fragment under `name` (one complete object write)."""
        self.store.put_bytes(self.bucket, self.prefix + name, data)


def s3_storage_options(settings: ObjectStoreSettings) -> dict[str, Any] | None:
    """fsspec/s3fs options for `s3://` friends, from the object-store settings (None if none configured)."""
    if settings.url is None:
        return None
    client_kwargs = {"endpoint_url": settings.endpoint_url, "region_name": settings.region}
    options: dict[str, Any] = {"client_kwargs": client_kwargs}
    if settings.access_key is not None and settings.secret_key is not None:
        options["key"] = settings.access_key.get_secret_value()
        options["secret"] = settings.secret_key.get_secret_value()
    return options
