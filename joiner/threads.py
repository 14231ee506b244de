"""One pool of threads per process for the engine's parallel work: basket decompression and row copies.

numpy, Arrow, awkward's kernels and the LZMA/zlib/zstd decompressors release the GIL, so threads use
every core a process is given. How many that is comes from `JOINER_THREADS` when it is set, else from the
CPUs the process may run on: its affinity and, in a container, its cgroup CPU quota, so that a transformer
pod limited to one CPU runs one thread instead of fighting its own throttling. The pool belongs to the
process that made it: threads do not survive a fork, so a forked child (the command's worker processes,
the worker's transform process) makes its own.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

THREADS_VARIABLE = "JOINER_THREADS"
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


@functools.cache
def _pool_of(pid: int) -> ThreadPoolExecutor:
    del pid  # the cache key only
    return ThreadPoolExecutor(max_workers=thread_count(), thread_name_prefix="joiner")


def thread_pool() -> ThreadPoolExecutor:
    """This process's pool."""
    return _pool_of(os.getpid())


def thread_count() -> int:
    """How many threads the pool runs: `JOINER_THREADS`, else the CPUs this process may use (at least 1)."""
    configured = os.environ.get(THREADS_VARIABLE, "").strip()
    if configured:
        try:
            value = int(configured)
        except ValueError:
            raise ValueError(f"{THREADS_VARIABLE}={configured!r} is not a whole number of threads") from None
        if value < 1:
            raise ValueError(f"{THREADS_VARIABLE}={configured!r}: at least one thread is needed")
        return value
    return available_cpus()


def available_cpus(cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota visible: the affinity stands
    return max(1, cpus)
