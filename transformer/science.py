"""The science-container entry (DESIGN.md §3, mode a): one input file in, exactly one output file out.

ServiceX's own sidecar runs `python /generated/transform_single_file.py <input> <output> <format>` through
its `watch.sh`, then uploads `<output>` and reports. This module is that entry (and the `servicex-joiner
transform` subcommand): it runs the same engine call as the worker, prints the line the sidecar's stats
parser reads (`Transform stats: Total Events: N, resulting file size B`) and exits 0, or prints the error
and exits 1. `SCRIPT_TEXT` is the script the code generator ships next to `join_spec.json`. It does not
upload or report (the sidecar does).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from joiner.engine import OutputFormat
from joiner.errors import JoinError
from joiner.spec import load_spec
from transformer.errors import TransformerError
from transformer.facility_settings import apply_facility_settings
from transformer.locations import AllowedLocations
from transformer.settings import Settings, get_settings
from transformer.task import SUPPORTED_FORMATS, build_producers

log = logging.getLogger(__name__)

SCRIPT_NAME = "transform_single_file.py"
SPEC_NAME = "join_spec.json"
STATS_LINE = "Transform stats: Total Events: {events}, resulting file size {size}"

SCRIPT_TEXT = '''\
#!/usr/bin/env python3
"""servicex-joiner science entry: join one input file on the event key (spec: join_spec.json beside this).

Usage: python transform_single_file.py <input> <output> [parquet|root-file]
"""
import os
import sys

from transformer.science import main

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(main(sys.argv[1:], spec_path=os.path.join(here, "join_spec.json")))
'''


def transform(
    input_path: str,
    output_path: Path,
    result_format: str,
    *,
    spec_path: str | Path,
    settings: Settings,
) -> tuple[int, int]:
    """Join one file as the worker would and write `output_path`; return (events, bytes written).

    Raises:
        JoinError: the engine refused the file or the spec.
        TransformerError: a format this transformer cannot write, a friend outside the allowed
            locations, or the object store (index cache) unreachable.
        OSError: the file could not be read or written.
    """
    from joiner.engine import join_file

    output_format: OutputFormat | None = SUPPORTED_FORMATS.get(result_format)
    if output_format is None:
        from transformer.errors import UnsupportedFormatError

        raise UnsupportedFormatError(result_format, tuple(SUPPORTED_FORMATS))
    spec = load_spec(spec_path)
    allowed = AllowedLocations(settings.worker.allowed_locations)
    for friend in spec.friends:
        allowed.check_all(friend.files)
    fragment_store = None
    storage_options = None
    if settings.object_store.configured:
        from transformer.storage.s3 import S3FragmentStore, S3Store, s3_storage_options

        fragment_store = S3FragmentStore(S3Store(settings.object_store), settings.worker.cache_bucket)
        storage_options = s3_storage_options(settings.object_store)
    result = join_file(
        spec,
        input_path,
        Path(output_path),
        output_format=output_format,
        fragment_store=fragment_store,
        producers=build_producers(spec, settings.inference.triton_url),
        chunk_entries=settings.worker.chunk_entries,
        storage_options=storage_options,
        path_check=allowed,
    )
    return int(result.events_out), int(Path(result.output_path).stat().st_size)


def main(
    argv: Sequence[str],
    *,
    spec_path: str | Path,
    settings: Settings | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the entry with the sidecar's arguments `<input> <output> [<format>]`; return the exit code."""
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog=SCRIPT_NAME)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("format", nargs="?", default="parquet")
    args = parser.parse_args(list(argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings is None:
        # the facility's settings shipped by the code generator, where the pod's environment has none
        apply_facility_settings(Path(spec_path).parent)
    try:
        events, size = transform(
            args.input,
            Path(args.output),
            args.format,
            spec_path=spec_path,
            settings=settings or get_settings(),
        )
    except (JoinError, TransformerError, OSError) as error:
        print(f"Transform failed for {args.input}: {type(error).__name__}: {error}", file=out, flush=True)
        return 1
    print(STATS_LINE.format(events=events, size=size), file=out, flush=True)
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    """Entry of the `transform` subcommand."""
    argv = [args.input, args.output, args.format]
    return main(argv, spec_path=args.spec)
