"""Names of output objects, by ServiceX's rule, so that one input file always gets one object name.

Owns `hash_path` (the 255-character rule) and the object name of an input path for a result format. Pure
functions: no I/O, no settings.
"""

from __future__ import annotations

import hashlib

MAX_PATH_LEN = 255
PARQUET_SUFFIX = ".parquet"


def hash_path(file_name: str) -> str:
    """Keep a name within 255 characters the way the ServiceX sidecar does.

    A longer name becomes `'_' + sha1(name).hexdigest() + name[-214:]`, exactly 255 characters: the
    leading (least telling) part is replaced by a 40-character hash, the end (the file name) is kept.

    Args:
        file_name: the candidate object name.

    Returns:
        The name itself if short enough, else the hashed form.
    """
    if len(file_name) <= MAX_PATH_LEN:
        return file_name
    digest = hashlib.sha1(file_name.encode("utf-8")).hexdigest()
    return "_" + digest + file_name[-(MAX_PATH_LEN - len(digest) - 1) :]


def object_name(input_path: str, *, parquet: bool) -> str:
    """The object (or volume file) name of one input file's output.

    Args:
        input_path: the replica path or URL that was transformed.
        parquet: True for Parquet output (`.parquet` appended), False for ROOT output (no suffix).

    Returns:
        `hash_path(input_path.replace('/', ':') + suffix)`.
    """
    return hash_path(input_path.replace("/", ":") + (PARQUET_SUFFIX if parquet else ""))
