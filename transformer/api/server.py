"""`servicex-joiner serve`: the code generator on uvicorn.

Binds 127.0.0.1 unless told otherwise (`--host 0.0.0.0` in the image and the chart). On SIGTERM or SIGINT
uvicorn stops gracefully (it finishes the requests in flight) and then raises the signal again; the
handlers installed here take that second one, so a stopped code generator exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType

import uvicorn

from transformer.api.app import create_app
from transformer.settings import get_settings

log = logging.getLogger(__name__)


def run_from_args(args: argparse.Namespace) -> int:
    """Entry of the `serve` subcommand: serve the code generator on `args.host`:`args.port`."""
    settings = get_settings()
    app = create_app(settings)
    log.info(
        "code generator on %s:%d: image %s, allowed locations %s, at most %d friend files, %d bytes per spec",
        args.host,
        args.port,
        settings.service.science_image,
        ",".join(settings.worker.allowed_locations),
        settings.worker.max_friend_files,
        settings.worker.max_friend_bytes,
    )
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=str(getattr(args, "log_level", "info")).lower(),
            access_log=False,
            proxy_headers=False,
            server_header=False,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _stopped(signum: int, frame: FrameType | None) -> None:
    log.info("code generator stopped (%s)", signal.Signals(signum).name)
