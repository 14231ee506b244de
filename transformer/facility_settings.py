"""Facility settings that travel in the generated code, because the App passes transformer pods no others.

ServiceX gives transformer pods only the `MINIO_*`, `POD_NAME`, `HOST_NAME`, `INSTANCE_NAME` and
`CACHE_PREFIX` variables. What the facility configured for joins (the Triton URL, the allowed friend
locations, the per-file deadline, the cache bucket) is known to the code generator, which the facility
deploys with our chart. So the code generator writes those settings into the zip (`joiner_settings.json`,
beside `join_spec.json`), and the science entry and the worker take them as defaults: a variable set in the
pod's environment still wins. Only the names in `FORWARDED` travel; never credentials.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformer.settings import Settings

log = logging.getLogger(__name__)

FACILITY_SETTINGS_NAME = "joiner_settings.json"
FORWARDED = (
    "TRITON_URL",
    "JOINER_ALLOWED_LOCATIONS",
    "JOINER_FILE_DEADLINE_S",
    "JOINER_CACHE_BUCKET",
    "JOINER_CHUNK_ENTRIES",
)


def facility_settings(settings: Settings) -> dict[str, str]:
    """The forwarded settings of this (code generator's) deployment, as environment-style strings."""
    values: dict[str, str | None] = {
        "TRITON_URL": settings.inference.triton_url,
        "JOINER_ALLOWED_LOCATIONS": ",".join(settings.worker.allowed_locations),
        "JOINER_FILE_DEADLINE_S": str(settings.worker.file_deadline_s),
        "JOINER_CACHE_BUCKET": settings.worker.cache_bucket,
        "JOINER_CHUNK_ENTRIES": str(settings.worker.chunk_entries) if settings.worker.chunk_entries else None,
    }
    return {name: value for name, value in values.items() if value}


def apply_facility_settings(
    directory: str | Path, environ: MutableMapping[str, str] | None = None
) -> Mapping[str, str]:
    """Set the forwarded settings found in `directory/joiner_settings.json` where the environment has none.

    Returns what was applied. A missing file applies nothing; an unreadable one is logged and ignored.
    """
    target = os.environ if environ is None else environ
    path = Path(directory) / FACILITY_SETTINGS_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        log.warning("ignoring %s: %s", path, error)
        return {}
    applied = {}
    if isinstance(data, dict):
        for name in FORWARDED:
            value = data.get(name)
            if isinstance(value, str) and value and name not in target:
                target[name] = value
                applied[name] = value
    return applied
