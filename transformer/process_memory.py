"""Freed memory kept for the next file, in the processes that join one file after another.

glibc's malloc hands a freed block above its (sliding) mmap threshold straight back to the kernel, and trims
the heap's free top beyond twice that threshold. A join allocates and frees the same tens of megabytes for
every file (decompressed baskets, key columns, gathered columns, the output's pages), so every file faulted
the same pages in again: about 80 MB a file of NanoAOD-like input, 0.2 CPU-s in the kernel over ten files
for one process, twice that per process with two workers on two cores (BENCHMARKS.md). Fixed thresholds keep
freed blocks of up to 32 MiB in the heap and up to 256 MiB of free heap top, for the next file to reuse.

The price: a process's resident size stays near its peak between files instead of falling back; its memory
limit must allow that peak anyway. `JOINER_KEEP_FREED_MEMORY=false` leaves malloc as it is. Other C
libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

KEEP_VARIABLE = "JOINER_KEEP_FREED_MEMORY"
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set this process's malloc to keep freed memory for reuse; True if it was set.

    Call once, early, in a process that will join several files (the worker's transform process, the
    `join` command and its pool processes). Unless `JOINER_KEEP_FREED_MEMORY` is false.
    """
    if os.environ.get(KEEP_VARIABLE, "true").strip().lower() in {"0", "false", "no", "off"}:
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        log.debug("malloc did not take the thresholds; freed memory goes back to the system as before")
    return done
