"""Write `weights.npz` for the example `jet_mlp` model: a small, deterministic MLP.

The weights are drawn once from a fixed seed and committed, so the served model, the tests' numpy
reference and the benchmarks always agree. Run it again only to reproduce the committed file:

    python examples/models/jet_mlp/make_weights.py

Layout (float32): `W1` [3, 16], `b1` [16], `W2` [16, 1], `b2` [1];
score = sigmoid(relu(x @ W1 + b1) @ W2 + b2) with x = (Jet_pt, Jet_eta, Jet_phi).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 20240605
HIDDEN = 16


def make_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """Draw the weights. Input scales keep pt (GeV, ~10-200), eta and phi (~±3) in a useful range.

    Args:
        seed: seed of numpy's PCG64 generator.

    Returns:
        The arrays `W1`, `b1`, `W2`, `b2` as float32.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    scale = np.array([[1.0 / 50.0], [1.0 / 2.0], [1.0 / 2.0]])
    w1 = rng.normal(0.0, 1.0, size=(3, HIDDEN)) * scale
    b1 = rng.normal(0.0, 0.5, size=HIDDEN)
    w2 = rng.normal(0.0, 1.0 / np.sqrt(HIDDEN), size=(HIDDEN, 1))
    b2 = rng.normal(0.0, 0.1, size=1)
    return {
        "W1": w1.astype(np.float32),
        "b1": b1.astype(np.float32),
        "W2": w2.astype(np.float32),
        "b2": b2.astype(np.float32),
    }


def main() -> None:
    """Write weights.npz next to this script."""
    target = Path(__file__).resolve().parent / "weights.npz"
    np.savez(target, **make_weights())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
