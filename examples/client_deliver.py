"""Join columns onto NanoAOD through ServiceX with the servicex client, and read the result back.

Usage:
    python examples/client_deliver.py --spec SPEC.yaml --backend NAME FILE [FILE ...]

SPEC.yaml is a join spec (see the README); the FILEs are the primary dataset (URLs the ServiceX deployment
can read, such as root:// or https://). The servicex client finds its `servicex.yaml` (or `.servicex`) in
the working directory or above, or take one with `--config`. The ServiceX deployment must register the
`join` code generator (our Helm chart's values). Right and outer joins become more than one sample; the
loader reads them back as one array.

Example:
    python examples/client_deliver.py --backend af --spec examples/jet_mlp.yaml \\
        root://eospublic.cern.ch//eos/opendata/cms/.../nano_1.root
"""

from __future__ import annotations

import argparse
import sys

from servicex import dataset, deliver

from transformer.client.loader import load_joined
from transformer.client.samples import join_request, sample_names


def main(argv: list[str] | None = None) -> int:
    """Deliver one join and print what came back."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="primary files (URLs)")
    parser.add_argument("--spec", required=True, help="join spec, YAML or JSON")
    parser.add_argument("--backend", default=None, help="endpoint name in servicex.yaml (default: its first)")
    parser.add_argument("--config", default=None, help="path of servicex.yaml (default: searched for)")
    parser.add_argument("--name", default="joined", help="sample name (default: joined)")
    parser.add_argument("--ignore-cache", action="store_true", help="submit again even if cached")
    args = parser.parse_args(argv)

    request = join_request(
        args.spec, dataset.FileList(args.files), name=args.name, ignore_local_cache=args.ignore_cache
    )
    delivered = deliver(request, config_path=args.config, servicex_name=args.backend)
    names = sample_names(args.spec, args.name)
    for name in names:
        print(f"{name}: {len(delivered[name])} file(s)")
        for path in delivered[name]:
            print(f"  {path}")
    events = load_joined(delivered, names=names)
    print(f"{len(events)} joined events; columns: {', '.join(events.fields)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
