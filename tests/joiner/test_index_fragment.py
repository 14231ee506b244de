"""A key-index fragment reads back as it was built, whatever the order of the file's entries, and the
entry numbers of a file written in nearly key order (the common case: an aligned friend) take little room
in the stored object that every worker fetches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import uproot

from joiner.datagen import generate_dataset, generate_friends
from joiner.index import KeyFragment, build_fragment
from joiner.sources import open_source

KEYS = ["run", "luminosityBlock", "event"]


def _fragment(path: Path) -> KeyFragment:
    return build_fragment(open_source(str(path), tree="Friends"), KEYS)


def test_fragments_read_back_as_built_and_one_in_file_order_is_small(tmp_path: Path) -> None:
    # generated NanoAOD-like keys (as the benchmarks use): the real test files have too few events for sizes
    _, keys = generate_dataset(tmp_path, n_files=1, events_per_file=20_000, compression=uproot.ZLIB(1))
    aligned = generate_friends(keys, tmp_path, kind="aligned", n_files=1, compression=uproot.ZLIB(1))
    reordered = generate_friends(keys, tmp_path, kind="reordered", n_files=1, compression=uproot.ZLIB(1))
    in_order, shuffled = _fragment(aligned[0]), _fragment(reordered[0])
    stored = {}
    for name, fragment in (("in order", in_order), ("shuffled", shuffled)):
        data = fragment.to_bytes()
        back = KeyFragment.from_bytes(data)
        assert back.identity == fragment.identity and back.num_entries == fragment.num_entries
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(back.keys, fragment.keys, strict=True))
        assert back.entries.dtype == np.int64 and np.array_equal(back.entries, fragment.entries)
        stored[name] = len(data)
    assert not np.array_equal(shuffled.entries, np.sort(shuffled.entries))
    # shuffled entry numbers cost about their width in bits; in (nearly) file order they compress away
    assert stored["in order"] < stored["shuffled"] / 4, stored
