"""NanoAOD-like ROOT files and friends of them, for the demo, tests and benchmarks.

Files look like CMS NanoAOD to the reader: tree `Events`, key branches `run`/`luminosityBlock`/`event`
(events numbered within lumi blocks, not in order), jagged collections (`nJet`, `Jet_pt`, ...) with Poisson
multiplicities, flat branches, LZMA compression. Friends carry columns that are deterministic functions of
the event key and the Jet count (`friend_values`), so a test can check every joined value without reading
the primary again. Friend kinds: aligned (same files, same order), reordered (same files, shuffled),
regrouped (rows of all primary files shuffled over N files), each optionally with a fraction of events
dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import numpy.typing as npt

from joiner.writing import nanoaod_counter_name, nanoaod_field_name

EVENTS_PER_LUMI = 1_000
BASKET_ENTRIES = 20_000  # events per basket, of the order CMS NanoAOD uses
FIRST_EVENT = 100_000_000


def write_tree(path: Path, tree: str, columns: dict[str, Any], *, compression: Any = None) -> None:
    """Write flat and jagged awkward columns NanoAOD-style (jagged `X_y` grouped as collection `X`)."""
    import uproot

    collections: dict[str, dict[str, Any]] = {}
    branches: dict[str, Any] = {}
    for name, values in columns.items():
        array = values if isinstance(values, ak.Array) else ak.Array(values)
        if array.ndim > 1 and "_" in name:
            prefix, field = name.split("_", 1)
            collections.setdefault(prefix, {})[field] = array
        elif name.startswith("n") and name[1:] in {n.split("_", 1)[0] for n in columns if "_" in n}:
            continue  # counters are written by uproot for the collection
        else:
            branches[name] = array
    for prefix, fields in collections.items():
        branches[prefix] = ak.zip(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    with uproot.recreate(path, compression=compression or uproot.LZMA(4)) as handle:
        handle.mktree(
            tree,
            {k: v.type.content for k, v in branches.items()},
            field_name=nanoaod_field_name,
            counter_name=nanoaod_counter_name,
        )
        total = len(next(iter(branches.values()))) if branches else 0
        for start in range(0, max(total, 1), BASKET_ENTRIES):
            handle[tree].extend({k: v[start : start + BASKET_ENTRIES] for k, v in branches.items()})


@dataclass(frozen=True)
class KeyBlock:
    """Key columns and Jet counts of a set of events."""

    run: npt.NDArray[np.uint32]
    luminosityBlock: npt.NDArray[np.uint32]  # noqa: N815 - the NanoAOD branch name
    event: npt.NDArray[np.uint64]
    n_jet: npt.NDArray[np.uint32]

    def __len__(self) -> int:
        return len(self.event)

    def take(self, rows: npt.NDArray[np.int64]) -> KeyBlock:
        return KeyBlock(self.run[rows], self.luminosityBlock[rows], self.event[rows], self.n_jet[rows])


def make_keys(n_events: int, *, first_index: int, run: int, seed: int) -> KeyBlock:
    """Keys of events `first_index ...`: lumi blocks of 1000 events, event numbers shuffled within a block."""
    rng = np.random.default_rng(seed)
    index = np.arange(first_index, first_index + n_events, dtype=np.int64)
    lumi = (index // EVENTS_PER_LUMI + 1).astype(np.uint32)
    within = index % EVENTS_PER_LUMI
    scramble = (within * 7919 + (index // EVENTS_PER_LUMI) * 104729) % EVENTS_PER_LUMI
    event = (FIRST_EVENT + (index // EVENTS_PER_LUMI) * EVENTS_PER_LUMI + scramble).astype(np.uint64)
    n_jet = rng.poisson(5.0, n_events).astype(np.uint32)
    return KeyBlock(np.full(n_events, run, dtype=np.uint32), lumi, event, n_jet)


def _jagged(counts: npt.NDArray[np.integer], values: npt.NDArray[Any]) -> ak.Array:
    return ak.unflatten(values, counts.astype(np.int64))


def generate_nanoaod(
    path: Path, n_events: int, *, first_index: int = 0, run: int = 1, seed: int = 1, compression: Any = None
) -> KeyBlock:
    """Write one NanoAOD-like file of `n_events` events; returns its keys."""
    rng = np.random.default_rng(seed + 7 * first_index)
    keys = make_keys(n_events, first_index=first_index, run=run, seed=seed + first_index)
    n_jet = keys.n_jet
    n_muon = rng.poisson(1.5, n_events).astype(np.uint32)
    n_electron = rng.poisson(1.0, n_events).astype(np.uint32)
    total_jets, total_muons, total_electrons = int(n_jet.sum()), int(n_muon.sum()), int(n_electron.sum())
    columns: dict[str, Any] = {
        "run": keys.run,
        "luminosityBlock": keys.luminosityBlock,
        "event": keys.event,
        "Jet_pt": _jagged(n_jet, (rng.exponential(30.0, total_jets) + 15.0).astype(np.float32)),
        "Jet_eta": _jagged(n_jet, rng.uniform(-4.7, 4.7, total_jets).astype(np.float32)),
        "Jet_phi": _jagged(n_jet, rng.uniform(-np.pi, np.pi, total_jets).astype(np.float32)),
        "Jet_mass": _jagged(n_jet, rng.exponential(8.0, total_jets).astype(np.float32)),
        "Jet_btagDeepFlavB": _jagged(n_jet, rng.uniform(0, 1, total_jets).astype(np.float32)),
        "Jet_jetId": _jagged(n_jet, rng.integers(0, 7, total_jets).astype(np.int32)),
        "Muon_pt": _jagged(n_muon, (rng.exponential(20.0, total_muons) + 3.0).astype(np.float32)),
        "Muon_eta": _jagged(n_muon, rng.uniform(-2.4, 2.4, total_muons).astype(np.float32)),
        "Muon_phi": _jagged(n_muon, rng.uniform(-np.pi, np.pi, total_muons).astype(np.float32)),
        "Muon_charge": _jagged(n_muon, rng.choice([-1, 1], total_muons).astype(np.int32)),
        "Electron_pt": _jagged(n_electron, (rng.exponential(20.0, total_electrons) + 5.0).astype(np.float32)),
        "Electron_eta": _jagged(n_electron, rng.uniform(-2.5, 2.5, total_electrons).astype(np.float32)),
        "MET_pt": rng.exponential(40.0, n_events).astype(np.float32),
        "MET_phi": rng.uniform(-np.pi, np.pi, n_events).astype(np.float32),
        "PV_npvs": rng.poisson(30, n_events).astype(np.int32),
        "genWeight": rng.normal(1.0, 0.1, n_events).astype(np.float32),
        "HLT_IsoMu24": rng.uniform(0, 1, n_events) < 0.3,
    }
    write_tree(path, "Events", columns, compression=compression)
    return keys


def friend_values(keys: KeyBlock) -> dict[str, Any]:
    """Friend columns as functions of the key and Jet count: 4 flat columns and 1 jagged (`Jet_sf`)."""
    event = keys.event.astype(np.int64)
    base = (event % 997).astype(np.float32) / np.float32(997.0)
    jets = int(keys.n_jet.sum())
    local = (np.arange(jets) - np.repeat(np.cumsum(keys.n_jet) - keys.n_jet, keys.n_jet)).astype(np.float32)
    return {
        "weight_up": (1.0 + base).astype(np.float32),
        "weight_down": (1.0 - base).astype(np.float32),
        "sys_index": (event % 13).astype(np.int32),
        "mva_score": (base * base).astype(np.float64),
        "Jet_sf": _jagged(keys.n_jet, np.repeat(1.0 + base, keys.n_jet).astype(np.float32) + local * 0.01),
    }


def write_friend(path: Path, keys: KeyBlock, *, tree: str = "Friends", compression: Any = None) -> None:
    """A friend file holding `keys` (in the order given) and their `friend_values`."""
    columns: dict[str, Any] = {"run": keys.run, "luminosityBlock": keys.luminosityBlock, "event": keys.event}
    columns.update(friend_values(keys))
    write_tree(path, tree, columns, compression=compression)


def generate_friends(
    primaries: Sequence[KeyBlock],
    directory: Path,
    *,
    kind: str,
    n_files: int = 3,
    drop_fraction: float = 0.0,
    seed: int = 2,
    compression: Any = None,
) -> list[Path]:
    """Friend files of one kind (aligned, reordered, regrouped) for the given primary files' keys."""
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    if kind in ("aligned", "reordered"):
        for number, keys in enumerate(primaries):
            rows = np.arange(len(keys))
            if drop_fraction:
                rows = rows[rng.uniform(0, 1, len(rows)) >= drop_fraction]
            if kind == "reordered":
                rows = rng.permutation(rows)
            path = directory / f"{kind}_{number}.root"
            write_friend(path, keys.take(rows.astype(np.int64)), compression=compression)
            paths.append(path)
        return paths
    if kind != "regrouped":
        raise ValueError(f"unknown friend kind {kind!r}")
    merged = KeyBlock(
        np.concatenate([k.run for k in primaries]),
        np.concatenate([k.luminosityBlock for k in primaries]),
        np.concatenate([k.event for k in primaries]),
        np.concatenate([k.n_jet for k in primaries]),
    )
    rows = rng.permutation(len(merged))
    if drop_fraction:
        rows = rows[rng.uniform(0, 1, len(rows)) >= drop_fraction]
    for number, part in enumerate(np.array_split(rows, n_files)):
        path = directory / f"regrouped_{number}.root"
        write_friend(path, merged.take(part.astype(np.int64)), compression=compression)
        paths.append(path)
    return paths


def generate_dataset(
    directory: Path, *, n_files: int, events_per_file: int, seed: int = 1, compression: Any = None
) -> tuple[list[Path], list[KeyBlock]]:
    """`n_files` NanoAOD-like files with consecutive, disjoint events."""
    paths, keys = [], []
    for number in range(n_files):
        path = directory / f"nano_{number}.root"
        keys.append(
            generate_nanoaod(
                path, events_per_file, first_index=number * events_per_file, seed=seed, compression=compression
            )
        )
        paths.append(path)
    return paths, keys
