"""Entry of `servicex-joiner worker`: the fork server is started before anything else is imported.

A worker's first file waits for two sets of imports: the consumer's own (pika, pydantic settings, urllib3:
about 0.25 s) and the fork server's (the engine: numpy, awkward, pyarrow, uproot, minio: about 0.75 s),
from which the transform process is forked. Started from `transformer.worker`, the fork server began
importing only once the consumer had finished; started here, first, the two run side by side (the pod's
start-up is shorter by the consumer's imports). The facility settings shipped with the generated code are
applied before, since the fork server and its children take this process's environment as it is then.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer.facility_settings import apply_facility_settings
from transformer.supervise import start_fork_server

# Imported once by the fork server, so that a new transform process starts warm.
CHILD_PRELOAD = (
    "transformer.task", "transformer.index_memory", "transformer.result_cache", "joiner.engine", "joiner.index",
    "joiner.spec", "uproot", "awkward", "pyarrow.parquet", "minio",
)


def run_from_args(args: argparse.Namespace) -> int:
    """Start the fork server, then run the worker (`transformer.worker.run_from_args`)."""
    apply_facility_settings(Path(args.spec).parent)
    start_fork_server(CHILD_PRELOAD)
    from transformer.worker import run_from_args as run_worker_from_args

    return run_worker_from_args(args)
