"""Integrity of joined rows: every gathered row must carry the key of the row it was joined to.

The merge decides pairs from the index; the gather reads rows from files. Comparing the keys read with
the rows against the keys they were paired with catches a stale index, a file changed after indexing, a
wrong entry number or a bug anywhere in between: the file is aborted with `KeyMismatchError` rather than
writing one row that mixes two events. Objects must not mix either: a friend's per-object column that joins a
primary collection by its NanoAOD name has one value per object (`verify_collection_lengths`).
`KeyDigest` fingerprints the key columns of an output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from joiner.arrow_arrays import arrow_to_numpy
from joiner.errors import CollectionLengthError, KeyMismatchError
from joiner.keys import key_tuples
from joiner.merge import mismatched_rows
from joiner.plan import collection_of, is_list_type

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


def verify_collection_lengths(
    friend: str,
    table: pa.Table,
    columns: Sequence[str],
    matched: npt.NDArray[np.bool_],
    keys: Sequence[npt.NDArray[np.integer]],
) -> None:
    """Raise CollectionLengthError if a friend's list column differs in length from its collection's counter.

    In NanoAOD naming a friend's `Jet_sf` beside the primary's `nJet` belongs to the `Jet` collection, and
    coffea reads it with `nJet`'s counts: a friend made for another object selection would either fail
    to load or, worse, pair each value with another jet. Only rows the friend matched are compared (its
    missing rows are nulls, or NaN lists of the collection's length).
    """
    counts_of: dict[str, npt.NDArray[np.integer]] = {}  # several columns of one collection share its counter
    for name in columns:
        collection = collection_of(name)
        counter = f"n{collection}"
        if collection is None or counter not in table.column_names or not is_list_type(table.schema.field(name).type):
            continue
        lengths = arrow_to_numpy(pc.fill_null(pc.list_value_length(table.column(name)), 0))
        if counter not in counts_of:
            counts_of[counter] = arrow_to_numpy(pc.fill_null(table.column(counter), 0))
        counts = counts_of[counter]
        bad = np.flatnonzero(matched & (lengths != counts))
        if len(bad):
            shown = bad[:MAX_SHOWN]
            examples = [
                (key, int(lengths[row]), int(counts[row]))
                for key, row in zip(key_tuples(keys, shown), shown, strict=True)
            ]
            raise CollectionLengthError(friend, name, counter, examples, total=len(bad))


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
