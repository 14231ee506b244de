"""`servicex-joiner index`: build the key index of one friend dataset and write its fragments to a directory.

Useful to pre-build indexes before many workers start, or to inspect them (each fragment is a Parquet file
of sorted key columns with entry numbers).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from joiner.engine import resolve_friend_indexes
from joiner.errors import JoinError
from joiner.index import fragment_name
from joiner.spec import load_spec
from transformer.commands.local_cache import LocalFragmentStore


def run(args: argparse.Namespace) -> int:
    """Handler of `servicex-joiner index`."""
    try:
        spec = load_spec(args.spec)
        friends = [f for f in spec.friends if f.name == args.friend]
        if not friends:
            raise JoinError(f"no friend named {args.friend!r} in the spec ({[f.name for f in spec.friends]})")
        store = LocalFragmentStore(Path(args.output))
        index = resolve_friend_indexes(spec.model_copy(update={"friends": friends}), fragment_store=store)
        index[args.friend].check_duplicates(spec.duplicates)
    except JoinError as error:
        print(f"servicex-joiner: error: {error}", file=sys.stderr)
        return 2
    built = index[args.friend]
    for fragment in built.fragments:
        name = fragment_name(fragment.identity, fragment.tree, spec.key_columns, built.key_branches)
        print(
            f"{fragment.identity.path}: {fragment.num_entries} entries, keys {fragment.min_key}..{fragment.max_key}"
            f" -> {Path(args.output) / name}"
        )
    return 0
