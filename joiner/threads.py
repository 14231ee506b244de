"""One pool of threads per process for the engine's parallel work: basket decompression and row copies.

numpy, Arrow, awkward's kernels and the LZMA/zlib/zstd decompressors release the GIL, so threads use
every core of a worker. The pool belongs to the process that made it: threads do not survive a fork, so a
forked child (the command's worker processes, the worker's transform process) makes its own.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor


@functools.cache
def _pool_of(pid: int) -> ThreadPoolExecutor:
    del pid  # the cache key only
    return ThreadPoolExecutor(max_workers=thread_count(), thread_name_prefix="joiner")


def thread_pool() -> ThreadPoolExecutor:
    """This process's pool."""
    return _pool_of(os.getpid())


def thread_count() -> int:
    """How many threads the pool runs."""
    return max(2, os.cpu_count() or 1)
