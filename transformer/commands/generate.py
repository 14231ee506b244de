"""`servicex-joiner generate`: NanoAOD-like files (and friends) for tests, benchmarks and trying things out."""

from __future__ import annotations

import argparse
from pathlib import Path

from joiner.datagen import generate_dataset, generate_friends


def run(args: argparse.Namespace) -> int:
    """Handler of `servicex-joiner generate`."""
    out = Path(args.output)
    paths, keys = generate_dataset(out, n_files=args.files, events_per_file=args.events, seed=args.seed)
    for path in paths:
        print(path)
    if args.friends:
        for kind, drop in (("aligned", 0.0), ("reordered", 0.1), ("regrouped", 0.1)):
            for path in generate_friends(keys, out, kind=kind, drop_fraction=drop, seed=args.seed + 1):
                print(path)
    return 0
