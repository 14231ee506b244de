"""Entry of `servicex-joiner worker`: the imports the consumer and the transform processes share come first,
then the zygote is forked, then the consumer goes on.

A worker's first file waits for two sets of imports: the consumer's (pydantic and the spec and settings
models, urllib3, pika: about 0.5 CPU-s) and the engine's (numpy, awkward, pyarrow, uproot, minio: about
1 CPU-s more), which the transform process needs. Nearly all of the consumer's imports are the engine's
too, so they are imported here once; then the zygote (`transformer.zygote`) is forked, a copy of this
process that imports only the engine's own modules, while this process imports the rest of the consumer
and connects to the broker. The transform process is forked from the zygote. (A separate fork server,
a fresh interpreter, imported the shared modules a second time: half a CPU-second per worker.)

Where the zygote cannot be forked (another thread already runs), multiprocessing's `forkserver` is
started instead, here too, so that its imports overlap the consumer's. The facility settings shipped
with the generated code are applied first, since the zygote and its children take this process's
environment as it is then.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from transformer.facility_settings import apply_facility_settings
from transformer.supervise import start_fork_server
from transformer.zygote import start_zygote

# Imported once by the zygote (or the fork server), so that a new transform process starts warm.
CHILD_PRELOAD = (
    "transformer.task", "transformer.index_memory", "transformer.result_cache", "joiner.engine", "joiner.index",
    "joiner.spec", "uproot", "awkward", "pyarrow.parquet", "minio",
)
# Imported before the zygote is forked: what the consumer needs that the transform process needs too.
SHARED_IMPORTS = ("transformer.job", "transformer.settings", "transformer.servicex", "transformer.models")


def run_from_args(args: argparse.Namespace) -> int:
    """Start the zygote (or the fork server), then run the worker (`transformer.worker.run_from_args`)."""
    apply_facility_settings(Path(args.spec).parent)
    for name in SHARED_IMPORTS:
        importlib.import_module(name)
    if start_zygote(CHILD_PRELOAD) is None:
        start_fork_server(CHILD_PRELOAD)
    from transformer.worker import run_from_args as run_worker_from_args

    return run_worker_from_args(args)
