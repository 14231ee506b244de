"""Shared helpers of the inference tests: the example model's numpy reference and NanoAOD-style tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[2]
JET_MLP = REPO / "examples" / "models" / "jet_mlp"
JET_LIST = pa.list_(pa.field("item", pa.float32(), nullable=False))


def jet_mlp_reference(features: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The example model computed in numpy: sigmoid(relu(x @ W1 + b1) @ W2 + b2), float32, shape [n]."""
    weights = np.load(JET_MLP / "weights.npz")
    x = np.asarray(features, dtype=np.float32)
    hidden = np.maximum(x @ weights["W1"] + weights["b1"], np.float32(0))
    logits = hidden @ weights["W2"] + weights["b2"]
    scores: np.ndarray[Any, Any] = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    return scores[:, 0]


def jagged(
    counts: np.ndarray[Any, Any], values: np.ndarray[Any, Any], valid: np.ndarray[Any, Any] | None = None
) -> pa.Array:
    """A `list<float not null>` column from per-row counts and flat values (null rows where not valid)."""
    counts = np.asarray(counts, dtype=np.int64)
    if valid is not None:
        counts = np.where(valid, counts, 0)
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    mask = None if valid is None else pa.array(~np.asarray(valid))
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(np.asarray(values, dtype=np.float32)), type=JET_LIST, mask=mask
    )


def random_jets(n_events: int, seed: int = 7, mean_jets: float = 5.0) -> pa.Table:
    """A table of `n_events` events with Poisson jet counts: Jet_pt, Jet_eta, Jet_phi, MET_pt, MET_phi."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(mean_jets, n_events)
    total = int(counts.sum())
    return pa.table(
        {
            "nJet": pa.array(counts.astype(np.int32)),
            "Jet_pt": jagged(counts, rng.exponential(40.0, total) + 15.0),
            "Jet_eta": jagged(counts, rng.uniform(-2.5, 2.5, total)),
            "Jet_phi": jagged(counts, rng.uniform(-np.pi, np.pi, total)),
            "MET_pt": pa.array(rng.exponential(30.0, n_events).astype(np.float32)),
            "MET_phi": pa.array(rng.uniform(-np.pi, np.pi, n_events).astype(np.float32)),
        }
    )


def jet_features(table: pa.Table) -> np.ndarray[Any, Any]:
    """(Jet_pt, Jet_eta, Jet_phi) per jet of the non-null rows, [n_jets, 3] float32."""
    return np.stack(
        [table.column(c).combine_chunks().flatten().to_numpy() for c in ("Jet_pt", "Jet_eta", "Jet_phi")],
        axis=1,
    )
