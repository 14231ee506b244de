"""Which files a worker may read, and in which order it tries an input file's replicas.

Owns the `JOINER_ALLOWED_LOCATIONS` check for friend files named by a user's spec (a user must not make a
worker read arbitrary paths of the pod or of internal services), and the replica order ServiceX uses for
primary inputs (`davs://` as `https://`, non-HTTP replicas first, `CACHE_PREFIX` xcache hosts prepended).
Pure functions: no I/O, no settings object (callers pass the values).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from transformer.errors import LocationNotAllowedError


class AllowedLocations:
    """A set of path prefixes; `check(path)` raises `LocationNotAllowedError` for any other path.

    Args:
        prefixes: allowed prefixes such as `root://`, `s3://bucket/`, `/data/`. Empty strings are ignored.
    """

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.prefixes = tuple(p for p in (q.strip() for q in prefixes) if p)

    def allows(self, path: str) -> bool:
        """True if `path` starts with an allowed prefix (and does not climb out of it with `..`)."""
        if "/../" in path or path.endswith("/.."):
            return False
        return any(path.startswith(prefix) for prefix in self.prefixes)

    def check(self, path: str) -> None:
        """Raise `LocationNotAllowedError` unless `path` is allowed; usable as the engine's `path_check`."""
        if not self.allows(path):
            raise LocationNotAllowedError(path, self.prefixes)

    def check_all(self, paths: Iterable[str]) -> None:
        """`check` every path."""
        for path in paths:
            self.check(path)

    def __call__(self, path: str) -> None:
        self.check(path)

    def __repr__(self) -> str:
        return f"AllowedLocations({self.prefixes!r})"


def order_replicas(paths: Sequence[str], cache_prefixes: Sequence[str] = ()) -> list[str]:
    """The replicas of one input file in the order the ServiceX sidecar tries them.

    Args:
        paths: replica URLs as the App sent them.
        cache_prefixes: xcache `host:port` entries (`CACHE_PREFIX`); each path is pinned to one of them by
            a hash of the path, and read through it as `root://<cache>//<path>`.

    Returns:
        `davs://` rewritten to `https://`, non-HTTP replicas before HTTP ones, cache prefixes applied.
    """
    rewritten = [re.sub(r"^davs", "https", p) for p in paths]
    ordered = [p for p in rewritten if not p.startswith("http")]
    ordered += [p for p in rewritten if p.startswith("http")]
    caches = [c.strip() for c in cache_prefixes if c.strip()]
    if not caches:
        return ordered
    result = []
    for path in ordered:
        index = int(hashlib.sha256(path.encode()).hexdigest(), 16) % len(caches)
        result.append(f"root://{caches[index]}//{path}")
    return result
