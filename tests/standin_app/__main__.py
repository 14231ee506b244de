"""Run the stand-in App: `python -m tests.standin_app --port P --codegen join=http://127.0.0.1:C ...`.

The object store's credentials come from `MINIO_URL`, `MINIO_ACCESS_KEY` and `MINIO_SECRET_KEY`, as the
App's are configured; the transformer gets them too.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import uvicorn

from tests.standin_app.app import StandinConfig, create_standin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.standin_app", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--codegen", action="append", required=True, help="NAME=URL of a code generator")
    parser.add_argument("--image", action="append", default=[], help="NAME=IMAGE shown by GET /servicex")
    parser.add_argument("--rabbit-uri", required=True, help="broker of the file tasks")
    parser.add_argument("--workdir", required=True, help="generated code and transformer logs")
    parser.add_argument("--transformer-command", default=None, help="command template started per request")
    parser.add_argument("--transformer-env", action="append", default=[], help="KEY=VALUE for the transformer")
    parser.add_argument("--max-transformers", type=int, default=None,
                        help="at most this many requests' transformers at once (default: no limit)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    codegens = dict(item.split("=", 1) for item in args.codegen)
    images = {name: f"servicex-joiner-codegen-{name}" for name in codegens} | dict(
        item.split("=", 1) for item in args.image
    )
    config = StandinConfig(
        codegens=codegens,
        images=images,
        rabbit_uri=args.rabbit_uri,
        minio_url=os.environ["MINIO_URL"],
        minio_access_key=os.environ["MINIO_ACCESS_KEY"],
        minio_secret_key=os.environ["MINIO_SECRET_KEY"],
        advertised_url=f"http://127.0.0.1:{args.port}",
        workdir=Path(args.workdir),
        transformer_command=args.transformer_command,
        transformer_env=dict(item.split("=", 1) for item in args.transformer_env),
        max_transformers=args.max_transformers,
    )
    # uvicorn raises the signal that stopped it again once it has shut down: take it, and exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(create_standin(config), host="127.0.0.1", port=args.port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
