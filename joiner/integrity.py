"""Integrity of joined rows: every gathered row must carry the key of the row it was joined to.

The merge decides pairs from the index; the gather reads rows from files. Comparing the keys read with
the rows against the keys they were paired with catches a stale index, a file changed after indexing, a
wrong entry number or a bug anywhere in between: the file is aborted with `KeyMismatchError` rather than
writing one row that mixes two events. `KeyDigest` fingerprints the key columns of an output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from joiner.errors import KeyMismatchError
from joiner.keys import key_tuples
from joiner.merge import mismatched_rows

MAX_SHOWN = 10


def verify_keys(
    friend: str, expected: Sequence[npt.NDArray[np.integer]], found: Sequence[npt.NDArray[np.integer]]
) -> None:
    """Raise KeyMismatchError if any row of `found` differs from `expected`."""
    if len(expected) and len(expected[0]) != len(found[0]):
        raise KeyMismatchError(friend, [], total=abs(len(expected[0]) - len(found[0])))
    bad = mismatched_rows(expected, found)
    if len(bad):
        shown = bad[:MAX_SHOWN]
        raise KeyMismatchError(
            friend, list(zip(key_tuples(expected, shown), key_tuples(found, shown), strict=True)), total=len(bad)
        )


class KeyDigest:
    """sha256 over the key columns of every output row, in output order (recorded in the metadata)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, keys: Sequence[npt.NDArray[np.integer]]) -> None:
        if not len(keys) or not len(keys[0]):
            return
        stacked = np.stack([np.asarray(k).astype(np.uint64) for k in keys], axis=1)
        self._hash.update(np.ascontiguousarray(stacked).tobytes())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
