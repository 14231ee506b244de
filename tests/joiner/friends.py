"""Friend files built from real NanoAOD with uproot: aligned copies, shuffles, regroupings, gaps, faults.

Friend columns are functions of the primary's own values (`sf = 2 * MET_pt`, `Jet_sf = Jet_pt / 2`), so
a test checks every joined value against the primary row it sits on.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from joiner.datagen import write_tree

KEYS = ["run", "luminosityBlock", "event"]


def read_primary(path: Path, columns: list[str] | None = None) -> ak.Array:
    names = KEYS + (columns or ["Jet_pt", "MET_pt"])
    return uproot.open(path)["Events"].arrays(names)


def friend_columns(events: ak.Array) -> dict[str, ak.Array]:
    return {
        "run": events.run,
        "luminosityBlock": events.luminosityBlock,
        "event": events.event,
        "sf": events.MET_pt * 2,
        "Jet_sf": events.Jet_pt * 0.5,
    }


def write_friend(path: Path, events: ak.Array, *, tree: str = "Friends") -> Path:
    write_tree(path, tree, friend_columns(events), compression=uproot.ZLIB(1))
    return path


def aligned(primary: Path, out: Path) -> Path:
    return write_friend(out / "aligned.root", read_primary(primary))


def shuffled(primary: Path, out: Path, *, seed: int = 0, drop: float = 0.0) -> Path:
    events = read_primary(primary)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(events))
    if drop:
        rows = rows[: round(len(rows) * (1 - drop))]
    return write_friend(out / f"shuffled_{seed}_{drop}.root", events[rows])


def regrouped(primaries: list[Path], out: Path, *, n_files: int = 3, seed: int = 1, drop: float = 0.0) -> list[Path]:
    events = ak.concatenate([read_primary(p) for p in primaries])
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(events))
    if drop:
        rows = rows[: round(len(rows) * (1 - drop))]
    return [
        write_friend(out / f"regrouped_{seed}_{i}.root", events[part])
        for i, part in enumerate(np.array_split(rows, n_files))
    ]


def with_duplicate(primary: Path, out: Path) -> Path:
    events = read_primary(primary)
    rows = np.concatenate([np.arange(len(events)), [3]])
    return write_friend(out / "duplicate.root", events[rows])


def tampered(primary: Path, out: Path, *, row: int = 5) -> Path:
    """An aligned friend whose key at one row was changed (another event's number)."""
    events = read_primary(primary)
    columns = friend_columns(events)
    event = np.asarray(columns["event"]).copy()
    event[row] = event[row] + 1_000_000
    columns["event"] = ak.Array(event)
    path = out / "tampered.root"
    write_tree(path, "Friends", columns, compression=uproot.ZLIB(1))
    return path
