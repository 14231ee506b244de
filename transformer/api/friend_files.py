"""Finding a spec's friend files and their sizes for the code generator's limits (`FileResolver`).

Local paths (a deployment may allow a shared filesystem) are globbed and stat'ed; `s3://` paths go to the
object store of the settings (globs are listed); `https://` files answer a HEAD request. `root://` files
are counted but not sized: the code generator has no XRootD client. A file that is certainly missing is
reported (`FileNotFoundError`); anything merely unreachable leaves the size unknown, so that a slow or
absent server never blocks a request at submission (the worker reports such a file when it reads it).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os

import httpx

from transformer.codegen import FoundFile, is_glob
from transformer.errors import StorageError
from transformer.storage.s3 import S3Store

log = logging.getLogger(__name__)


class RemoteFileResolver:
    """Resolves local, `s3://`, `https://` and `root://` friend entries.

    Args:
        store: the object store for `s3://` entries, or None (then their sizes are unknown).
        timeout_s: timeout of one HEAD request.
    """

    def __init__(self, store: S3Store | None, *, timeout_s: float = 5.0) -> None:
        self.store = store
        self.timeout_s = timeout_s

    def resolve(self, pattern: str) -> list[FoundFile]:
        """The files of one `files` entry (see `transformer.codegen.FileResolver`)."""
        if pattern.startswith("s3://"):
            return self._s3(pattern)
        if pattern.startswith(("https://", "http://")):
            return [FoundFile(pattern, self._http_size(pattern))]
        if "://" in pattern:
            return [FoundFile(pattern, None)]
        return self._local(pattern)

    def _local(self, pattern: str) -> list[FoundFile]:
        if is_glob(pattern):
            paths = sorted(glob.glob(pattern))
            if not paths:
                raise FileNotFoundError("no local file matches")
        else:
            paths = [pattern]
        found = []
        for path in paths:
            try:
                found.append(FoundFile(path, os.stat(path).st_size))
            except FileNotFoundError:
                raise FileNotFoundError("no such local file") from None
            except OSError as error:
                log.info("cannot stat friend file %s: %s", path, error)
                found.append(FoundFile(path, None))
        return found

    def _s3(self, pattern: str) -> list[FoundFile]:
        if self.store is None:
            return [FoundFile(pattern, None)]
        bucket, _, key = pattern.removeprefix("s3://").partition("/")
        try:
            if is_glob(key):
                prefix = key[: min(key.index(c) for c in "*?[" if c in key)]
                names = [n for n in self.store.list_names(bucket, prefix) if fnmatch.fnmatchcase(n, key)]
                if not names:
                    raise FileNotFoundError(f"no object of bucket {bucket!r} matches")
                return [FoundFile(f"s3://{bucket}/{n}", self.store.size(bucket, n)) for n in sorted(names)]
            size = self.store.size(bucket, key)
        except StorageError as error:
            log.info("cannot size friend file %s: %s", pattern, error)
            return [FoundFile(pattern, None)]
        if size is None:
            raise FileNotFoundError("no such object")
        return [FoundFile(pattern, size)]

    def _http_size(self, url: str) -> int | None:
        try:
            response = httpx.head(url, follow_redirects=True, timeout=self.timeout_s)
        except httpx.HTTPError as error:
            log.info("cannot size friend file %s: %s", url, error)
            return None
        if response.status_code in (404, 410):
            raise FileNotFoundError(f"HTTP {response.status_code}")
        length = response.headers.get("content-length")
        if response.is_success and length is not None and length.isdigit():
            return int(length)
        return None
