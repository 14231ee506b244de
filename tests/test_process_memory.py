"""A process that joins file after file keeps the memory it freed for the next file (glibc's malloc)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, sys
import numpy as np
from transformer.process_memory import keep_freed_memory
kept = keep_freed_memory()
def faults_per_file():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):  # five "files", each allocating and freeing 24 MB of columns of 1 MB
        columns = [np.ones(131_072) for _ in range(24)]
        del columns
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_per_file()  # the first file faults its pages in either way
print(json.dumps({"kept": kept, "faults": faults_per_file()}))
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="only glibc's malloc is tuned")


def _run(env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, env=env)
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    base = {key: value for key, value in os.environ.items() if key != "JOINER_KEEP_FREED_MEMORY"}
    kept = _run(base)
    released = _run({**base, "JOINER_KEEP_FREED_MEMORY": "false"})
    assert kept["kept"] is True and released["kept"] is False
    pages = 24_000_000 // 4096
    assert isinstance(released["faults"], int) and released["faults"] >= 4 * pages  # each file faults anew
    assert isinstance(kept["faults"], int) and kept["faults"] < pages  # reused: no new pages
