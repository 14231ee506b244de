"""`servicex-joiner demo`: make a small NanoAOD-like dataset with friends, join it, show where it went.

Everything is generated locally (no download, no server): two primary files, an aligned friend with
systematic weights and a regrouped friend (rows shuffled over three files, 10% of events missing) with a
per-jet scale factor. The join writes one Parquet file per primary file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from joiner.datagen import generate_dataset, generate_friends


def write_demo_inputs(directory: Path, events: int) -> Path:
    """Generate the demo dataset and its spec; returns the spec's path."""
    data = directory / "data"
    per_file = max(1, events // 2)
    _, keys = generate_dataset(data, n_files=2, events_per_file=per_file, seed=1)
    generate_friends(keys, data, kind="aligned", seed=2)
    generate_friends(keys, data, kind="regrouped", n_files=3, drop_fraction=0.1, seed=3)
    spec = {
        "primary": {"files": ["data/nano_*.root"], "columns": ["Jet_pt", "Jet_eta", "Muon_pt", "MET_pt"]},
        "key": "cms",
        "friends": [
            {
                "name": "syst",
                "files": ["data/aligned_*.root"],
                "tree": "Friends",
                "columns": ["weight_up", "weight_down"],
                "how": "left",
            },
            {
                "name": "jetsf",
                "files": ["data/regrouped_*.root"],
                "tree": "Friends",
                "columns": ["Jet_sf"],
                "how": "left",
            },
        ],
    }
    path = directory / "demo_spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(args: argparse.Namespace) -> int:
    """Handler of `servicex-joiner demo`."""
    from transformer.commands import join

    directory = Path(args.output).resolve()
    print(f"generating {args.events:,} NanoAOD-like events with two friends in {directory}/data ...")
    spec_path = write_demo_inputs(directory, args.events)
    print(f"join spec: {spec_path}")
    output = directory / "joined"
    code = join.run(
        argparse.Namespace(
            spec=str(spec_path),
            output=str(output),
            workers=None,
            format="parquet",
            chunk_entries=None,
            index_cache=str(directory / "index-cache"),
            no_progress=False,
        )
    )
    if code == 0:
        print(f"joined Parquet written to {output}")
        print(f"open it with: python -c \"import awkward as ak; print(ak.from_parquet('{output}').fields)\"")
    return code
