"""Uploading a result while it is being written: the object's parts go up as the Parquet file grows.

A file's upload otherwise starts only when the join has written its last byte, and ServiceX's contract puts
it on the path to the acknowledgement (the next file may not start before it). Streaming it hides most of it
behind the rest of the write (and, for files of several chunks, behind the join of the later chunks):
what is left after the join is the last part and the completion of the upload.

Owns the hand-over between the writer (the engine, through `joiner.writing.OutputObserver`) and one upload
thread that runs `minio.Minio.put_object` on a pipe of unknown length: minio sends each part of `part_size`
once the pipe holds it, and one plain PUT when the whole output fits in one part.
Streaming is only ever an optimisation: the local file is written in full either way, and whatever goes
wrong on the way (the store fails, the writer fails, the buffer fills up because the store is slower than
the join) abandons the upload (an unfinished multipart upload is aborted, so no object appears) and
`finish` answers None, for the caller to upload the local file as before. The writer never blocks on the
store.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import BinaryIO, cast

from transformer.errors import StorageError
from transformer.storage.s3 import S3Store

log = logging.getLogger(__name__)

PART_BYTES = 5 * 1024 * 1024  # S3's smallest part: the smallest tail left after the write
MAX_BUFFERED_BYTES = 64 * 1024 * 1024  # beyond this the store is too slow: give up streaming, upload the file
ABANDON_WAIT_S = 5.0


class _AbandonedError(IOError):
    """Raised to the upload thread's reader when the stream is given up (the upload is aborted)."""


class _BytePipe:
    """A bounded in-memory pipe: one writer appends blocks, one reader takes them by size.

    `read(n)` blocks until `n` bytes are buffered or the pipe is closed, and returns them as one `bytes`
    (minio joins what `read` returns into a part: whole parts avoid its repeated concatenation).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._blocks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._closed = False
        self._failure: str | None = None
        self._wanted = 0  # what the waiting reader needs: it is woken only when it can go on
        self._changed = threading.Condition()

    @property
    def failure(self) -> str | None:
        """Why the pipe was given up, or None."""
        return self._failure

    def write(self, block: bytes) -> None:
        """Append a block; past the limit the pipe is given up instead (the writer never waits)."""
        with self._changed:
            if self._failure is not None or self._closed:
                return
            if self._buffered + len(block) > self._limit:
                self._give_up(f"more than {self._limit} bytes waiting for the object store")
                return
            self._blocks.append(block)
            self._buffered += len(block)
            if self._buffered >= self._wanted:
                self._changed.notify_all()

    def close(self) -> None:
        """No more blocks: the reader gets the rest, then end of file."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def fail(self, reason: str) -> None:
        """Give up: the reader raises, buffered blocks are dropped."""
        with self._changed:
            self._give_up(reason)

    def _give_up(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
        self._blocks.clear()
        self._buffered = 0
        self._changed.notify_all()

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left with -1): fewer only at the end of the stream."""
        with self._changed:
            self._wanted = self._limit if size < 0 else size
            while self._failure is None and not self._closed and (size < 0 or self._buffered < size):
                self._changed.wait()
            self._wanted = 0
            if self._failure is not None:
                raise _AbandonedError(self._failure)
            wanted = self._buffered if size < 0 else min(size, self._buffered)
            taken: list[bytes] = []
            count = 0
            while count < wanted:
                block = self._blocks.popleft()
                if count + len(block) > wanted:
                    cut = wanted - count
                    self._blocks.appendleft(block[cut:])
                    block = block[:cut]
                taken.append(block)
                count += len(block)
            self._buffered -= count
            return b"".join(taken)


class StreamingUpload:
    """One object of a bucket, uploaded from the bytes handed to `write` while they are produced.

    Args:
        store: the object store.
        bucket: the target bucket (created if missing, as `S3Store.upload_file` does).
        name: the object name; a complete upload replaces any earlier object of that name.
        part_size: bytes per part (at least S3's 5 MiB); an output no larger goes up in one PUT.
        max_buffered: bytes that may wait for the store before streaming is given up (more than a part,
            or streaming gives up at once).
    """

    def __init__(
        self,
        store: S3Store,
        bucket: str,
        name: str,
        *,
        part_size: int = PART_BYTES,
        max_buffered: int = MAX_BUFFERED_BYTES,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.name = name
        self.part_size = max(PART_BYTES, part_size)
        self._pipe = _BytePipe(max_buffered)
        self._written = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._upload, name=f"upload-{name[:40]}", daemon=True)
        self._thread.start()

    def write(self, block: bytes) -> None:
        """The next bytes of the output (the engine's `OutputObserver`)."""
        self._written += len(block)
        self._pipe.write(block)

    def abandon(self, reason: str) -> None:
        """Give the upload up (the output failed, or will be stored otherwise); nothing is left behind.

        No object can appear after this: minio writes one only after the end of the stream, which a given-up
        pipe never reaches. The upload thread is given a moment to abort its multipart upload, not waited
        for: a store that hangs must not hold the file's failure report.
        """
        self._pipe.fail(reason)
        self._thread.join(ABANDON_WAIT_S)

    def finish(self) -> int | None:
        """Wait for the upload to complete; the stored object's size, or None if streaming failed.

        None means that no object was written by this upload (its reason is logged): store the local file.
        """
        self._pipe.close()
        self._thread.join()
        if self._error is not None:
            log.warning("streamed upload of %s failed (%s): uploading the file instead", self.name, self._error)
            return None
        if self._pipe.failure is not None:
            log.info("streamed upload of %s given up (%s): uploading the file instead", self.name, self._pipe.failure)
            return None
        try:
            size = self.store.size(self.bucket, self.name)
        except StorageError as error:
            log.warning("cannot read back the streamed object %s (%s): uploading the file instead", self.name, error)
            return None
        if size != self._written:
            log.warning("streamed object %s holds %s bytes, not %d: uploading the file instead", self.name, size,
                        self._written)
            return None
        return size

    def _upload(self) -> None:
        try:
            self.store.ensure_bucket(self.bucket)
            # one part at a time, in this thread: the writer produces them one after another, and each goes
            # up faster than the next is written, so parallel part uploads would only add threads
            self.store.client.put_object(
                self.bucket, self.name, cast(BinaryIO, self._pipe), length=-1, part_size=self.part_size,
                num_parallel_uploads=1,
            )
        except _AbandonedError:
            pass  # minio aborted its multipart upload; the pipe holds the reason
        except Exception as error:  # noqa: BLE001 - any failure only means: upload the file instead
            self._error = error
            self._pipe.fail(f"the upload failed: {error}")

    def __repr__(self) -> str:
        return f"StreamingUpload(s3://{self.bucket}/{self.name}, {self._written} bytes so far)"
