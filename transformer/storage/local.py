"""Local directories as result sinks (ServiceX `result_destination: volume`) and as fragment stores.

Every write is atomic: a temporary name in the target directory, then `os.replace`, so a reader sees the
old file or the whole new one and a redelivered file overwrites, never duplicates. No retries, no network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from transformer.errors import StorageError


def _atomic_write(target: Path, *, data: bytes | None = None, source: Path | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix="." + target.name[:64] + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            if data is not None:
                out.write(data)
            elif source is not None:
                with open(source, "rb") as infile:
                    shutil.copyfileobj(infile, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalDirectorySink:
    """Stores result files in a directory under their object names (the App's shared volume)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def store_file(self, local_path: Path, name: str) -> int:
        """Copy `local_path` to `<root>/<name>` atomically; returns the stored size."""
        target = self.root / name
        if Path(local_path).resolve() == target.resolve():
            return target.stat().st_size
        try:
            _atomic_write(target, source=Path(local_path))
            return target.stat().st_size
        except OSError as error:
            raise StorageError(f"cannot write {target}: {error}") from error

    def open_stream(self, name: str) -> None:
        """None: a volume is a local copy away, so results are stored whole (`store_file`)."""


class LocalFragmentStore:
    """The engine's `FragmentStore` in a local directory (one file per content-addressed name)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def get(self, name: str) -> bytes | None:
        """The fragment stored under `name`, or None."""
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise StorageError(f"cannot read fragment {self.root / name}: {error}") from error

    def put(self, name: str, data: bytes) -> None:
        """Store a fragment under `name` atomically."""
        try:
            _atomic_write(self.root / name, data=data)
        except OSError as error:
            raise StorageError(f"cannot write fragment {self.root / name}: {error}") from error
