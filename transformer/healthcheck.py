"""`servicex-joiner healthcheck`: GET a probe URL and exit 0 when it answers 2xx, else 1.

For container exec probes (images without curl). Owns nothing else; reads no settings.
"""

from __future__ import annotations

import argparse
import logging

import httpx

log = logging.getLogger(__name__)


def check(url: str, *, timeout_s: float = 5.0) -> bool:
    """True when `url` answers a 2xx status within `timeout_s`."""
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as error:
        log.error("healthcheck %s failed: %s", url, error)
        return False
    if response.is_success:
        return True
    log.error("healthcheck %s answered HTTP %s: %s", url, response.status_code, response.text[:200])
    return False


def run_from_args(args: argparse.Namespace) -> int:
    """Entry of the `healthcheck` subcommand."""
    return 0 if check(str(args.url)) else 1
