"""The `servicex-joiner` command: argument parsing only.

Each subcommand lives in its own module and is imported only when it runs, so that `servicex-joiner join`
starts without loading the service stack (pika, FastAPI, tritonclient) and the science container starts
fast. Every handler takes the parsed arguments and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> "module:function"; the function takes argparse.Namespace and returns an exit code.
_HANDLERS = {
    "join": "transformer.commands.join:run",
    "demo": "transformer.commands.demo:run",
    "generate": "transformer.commands.generate:run",
    "index": "transformer.commands.index:run",
    "worker": "transformer.worker_start:run_from_args",
    "transform": "transformer.science:run_from_args",
    "serve": "transformer.api.server:run_from_args",
    "cache-clean": "transformer.cache_clean:run_from_args",
    "healthcheck": "transformer.healthcheck:run_from_args",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="servicex-joiner",
        description="Join columns from other datasets (and Triton inference) onto NanoAOD/PHYSLITE on the event key.",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    join = sub.add_parser("join", help="run a join on files (local paths or URLs), no servers needed")
    join.add_argument("--spec", required=True, help="join spec, YAML or JSON")
    join.add_argument("--output", required=True, help="directory for the outputs")
    join.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")
    join.add_argument("--format", choices=["parquet", "root-file"], default="parquet", help="output format")
    join.add_argument("--chunk-entries", type=int, default=None, help="entries per chunk (bounds memory)")
    join.add_argument("--index-cache", default=None, help="directory to cache friend key indexes in")
    join.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="generate a small NanoAOD-like dataset with friends and join it")
    demo.add_argument("--output", default="demo-output", help="working directory (default ./demo-output)")
    demo.add_argument("--events", type=int, default=200_000, help="events in the primary dataset")

    gen = sub.add_parser("generate", help="write NanoAOD-like ROOT files (LZMA) for tests and benchmarks")
    gen.add_argument("--output", required=True, help="directory to write into")
    gen.add_argument("--events", type=int, required=True, help="events per file")
    gen.add_argument("--files", type=int, default=1, help="number of files")
    gen.add_argument("--seed", type=int, default=1, help="random seed")
    gen.add_argument("--friends", action="store_true", help="also write aligned/reordered/regrouped friends")

    index = sub.add_parser("index", help="build (or show) the key index of a friend dataset")
    index.add_argument("--spec", required=True, help="join spec naming the friend")
    index.add_argument("--friend", required=True, help="friend name in the spec")
    index.add_argument("--output", required=True, help="directory for the index fragments")

    worker = sub.add_parser("worker", help="consume a ServiceX request queue (sidecar role)")
    worker.add_argument("--request-id", required=True, help="ServiceX request id")
    worker.add_argument("--rabbit-uri", required=True, help="amqp://user:pass@host:5672/%%2F")
    worker.add_argument("--result-destination", choices=["object-store", "volume"], default="object-store")
    worker.add_argument("--result-format", default="parquet", help="parquet or root-file")
    worker.add_argument("--output-dir", default=None, help="output directory for --result-destination volume")
    worker.add_argument("--spec", default="/generated/join_spec.json", help="join spec from the code generator")

    transform = sub.add_parser("transform", help="science-container entry: one file in, one file out")
    transform.add_argument("input", help="input file path or URL")
    transform.add_argument("output", help="output file path")
    transform.add_argument("format", nargs="?", default="parquet", help="parquet or root-file")
    transform.add_argument("--spec", default="/generated/join_spec.json", help="join spec")

    serve = sub.add_parser("serve", help="run the code generator service (FastAPI)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5000, help="port (default 5000)")

    clean = sub.add_parser("cache-clean", help="bound the shared index/result cache by age and size")
    clean.add_argument("--max-age-days", type=float, default=None, help="delete entries older than this")
    clean.add_argument("--max-bytes", type=int, default=None, help="then delete oldest until under this")
    clean.add_argument("--dry-run", action="store_true", help="only list what would be deleted")

    health = sub.add_parser("healthcheck", help="probe a running service's /healthz (for container probes)")
    health.add_argument("--url", default="http://127.0.0.1:5000/healthz", help="health URL")
    return parser


def _normalise_argv(argv: list[str]) -> list[str]:
    # `servicex-joiner cache clean ...` reads naturally; map it to the `cache-clean` subcommand.
    if len(argv) >= 2 and argv[0] == "cache" and argv[1] == "clean":
        return ["cache-clean", *argv[2:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args_list = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args = parser.parse_args(args_list)
    import logging

    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if level > logging.DEBUG:
        # pika narrates each step of a connection (and httpx each request) at INFO; the worker logs its own
        # connects, losses and accepted reports, once each
        for chatty in ("pika", "urllib3", "httpx"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    module_name, function_name = _HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module_name), function_name)
    code: int = handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
