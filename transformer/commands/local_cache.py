"""Key-index fragments cached in a local directory, for the command line (the worker uses the object store).

Names are content addressed (`joiner.index.fragment_name`), so a changed file is simply a new entry. A put
writes a temporary file and renames it: concurrent processes never read half a fragment.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/servicex-joiner` (default `~/.cache/servicex-joiner`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "servicex-joiner"


class LocalFragmentStore:
    """A `joiner.index.FragmentStore` on a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        return self.directory / name

    def get(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except OSError:
            return None

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
            os.replace(temporary, path)
        except OSError:
            return  # a cache that cannot be written only costs a rebuild next time
