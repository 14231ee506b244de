"""The `join` code generator's work, without HTTP: a selection in, a checked spec and the generated zip out.

The ServiceX App posts a request's selection (the join spec as JSON) to the code generator and mounts the
returned zip at `/generated` in the transformer pods (DESIGN §3). This module owns what that zip holds
(`transformer_capabilities.json`, the normalised `join_spec.json`, the science entry script of
`transformer.science`) and the
checks a spec must pass before the App queues any task for it: a valid spec, friend and primary files only
in `JOINER_ALLOWED_LOCATIONS`, and the deployment's limits on the number and bytes of friend files.
It reads no settings and opens no connection itself: the caller passes the limits and a `FileResolver`
(`transformer.api.friend_files`) that finds friend files and their sizes.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from joiner.errors import SpecError
from joiner.spec import JoinSpec, parse_spec_text
from transformer.errors import LocationNotAllowedError
from transformer.facility_settings import FACILITY_SETTINGS_NAME
from transformer.locations import AllowedLocations
from transformer.science import SCRIPT_NAME, SCRIPT_TEXT, SPEC_NAME

LANGUAGE = "python"
COMMAND = f"/generated/{SCRIPT_NAME}"
CAPABILITIES_NAME = "transformer_capabilities.json"

CAPABILITIES: dict[str, Any] = {
    "name": "servicex-joiner",
    "description": "Joins columns of other datasets and Triton inference columns onto NanoAOD/PHYSLITE "
    "on the event key.",
    "limitations": "Right and outer joins need samples over the friend files too "
    "(transformer.client.samples.join_request).",
    "file-formats": ["parquet", "root"],
    "stats-parser": "UprootStats",
    "language": LANGUAGE,
    "command": COMMAND,
}
"""`transformer_capabilities.json`: what the App's sidecar reads about this transformer."""

GLOB_CHARS = frozenset("*?[")
_GLOB_SCHEMES = ("s3://",)  # besides local paths (DESIGN §3: globs only for local paths and s3)
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so one spec always gives the same zip bytes


class SpecRefusedError(SpecError):
    """A valid spec that this deployment will not run: a location, a limit. The message names both."""


@dataclass(frozen=True)
class CodegenLimits:
    """The deployment's limits per spec (`JOINER_MAX_FRIEND_FILES`, `JOINER_MAX_FRIEND_BYTES`)."""

    max_friend_files: int
    max_friend_bytes: int


@dataclass(frozen=True)
class FoundFile:
    """One friend file: its path and, when the resolver could read it, its size in bytes."""

    path: str
    size: int | None


class FileResolver(Protocol):
    """Finds the files one spec entry names: expands a glob, reads sizes where it can."""

    def resolve(self, pattern: str) -> list[FoundFile]:
        """The files of one entry of a `files` list.

        Returns:
            The files (one for a plain path). A size is None when it cannot be read (say, no XRootD
            client, or no object-store credentials); a glob that cannot be expanded is returned as itself.

        Raises:
            FileNotFoundError: the file does not exist, or the glob matches nothing.
        """
        ...


@dataclass(frozen=True)
class CheckedSpec:
    """A spec that passed every check, with what the checks found."""

    spec: JoinSpec
    friend_files: int
    friend_bytes: int
    unsized_files: int


@dataclass(frozen=True)
class GeneratedCode:
    """The code generator's answer: the four multipart parts, in the order the App reads them."""

    transformer_image: str
    language: str
    command: str
    zip_data: bytes


def is_glob(path: str) -> bool:
    """True if `path` holds a glob character."""
    return bool(GLOB_CHARS & set(path))


def parse_selection(selection: str) -> JoinSpec:
    """The spec of a selection string (JSON, as `JoinQuery` sends it; YAML is accepted too).

    Raises:
        SpecError: the selection is not a valid spec (the message names the field).
    """
    if not selection.strip():
        raise SpecError("invalid join spec: the selection is empty; expected the join spec as JSON")
    return parse_spec_text(selection, source="the selection")


def check_spec(
    spec: JoinSpec,
    *,
    allowed: AllowedLocations,
    limits: CodegenLimits,
    resolver: FileResolver,
    threads: int = 8,
    deadline_s: float = 20.0,
) -> CheckedSpec:
    """Check a valid spec against the deployment: locations, glob rules, file and byte limits.

    Args:
        spec: the validated spec.
        allowed: the allowed location prefixes.
        limits: the per-spec limits.
        resolver: finds friend files and their sizes.
        threads: friend entries resolved in parallel.
        deadline_s: time for resolving every entry; an entry not resolved by then counts as one file of
            unknown size (the worker reads it, or reports it, later), so a slow server cannot hold up the
            submission.

    Returns:
        The spec with the friend file count and bytes found.

    Raises:
        SpecRefusedError: a file outside the allowed locations, a glob where none is allowed, a missing
            friend file, or a limit exceeded; the message names the field and the limit.
    """
    entries: list[tuple[str, str]] = [(f"primary.files.{i}", p) for i, p in enumerate(spec.primary.files)]
    friend_entries: list[tuple[str, str]] = [
        (f"friends.{n}.files.{i}", p) for n, friend in enumerate(spec.friends) for i, p in enumerate(friend.files)
    ]
    for field, path in entries + friend_entries:
        _check_location(field, path, allowed)
    _check_count(len(friend_entries), limits, expanded=False)

    found_lists = _resolve_all(friend_entries, resolver, threads=threads, deadline_s=deadline_s)
    found = {f.path: f for files in found_lists for f in files}
    for (field, pattern), files in zip(friend_entries, found_lists, strict=True):
        for file in files:
            if file.path != pattern:
                _check_location(f"{field} (match {file.path!r})", file.path, allowed)
    _check_count(len(found), limits, expanded=True)
    sizes = [f.size for f in found.values() if f.size is not None]
    total = sum(sizes)
    unsized = len(found) - len(sizes)
    if total > limits.max_friend_bytes:
        raise SpecRefusedError(
            f"invalid join spec: friends: the friend files hold {total} bytes"
            + (f" (not counting {unsized} file(s) whose size could not be read)" if unsized else "")
            + f"; this deployment allows at most {limits.max_friend_bytes} bytes of friends per spec "
            "(JOINER_MAX_FRIEND_BYTES)"
        )
    return CheckedSpec(spec=spec, friend_files=len(found), friend_bytes=total, unsized_files=unsized)


def _resolve_all(
    entries: list[tuple[str, str]], resolver: FileResolver, *, threads: int, deadline_s: float
) -> list[list[FoundFile]]:
    """Resolve every (field, pattern) entry in parallel within `deadline_s`, in the entries' order."""
    if not entries:
        return []
    pool = ThreadPoolExecutor(max_workers=max(1, min(threads, len(entries))), thread_name_prefix="friend-files")
    try:
        futures = [pool.submit(resolver.resolve, pattern) for _, pattern in entries]
        wait(futures, timeout=deadline_s)
        results: list[list[FoundFile]] = []
        for (field, pattern), future in zip(entries, futures, strict=True):
            if not future.done():
                results.append([FoundFile(pattern, None)])
                continue
            try:
                results.append(future.result())
            except FileNotFoundError as error:
                what = "matches no file" if is_glob(pattern) else "does not exist"
                raise SpecRefusedError(f"invalid join spec: {field}: {pattern!r} {what} ({error})") from None
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _check_location(field: str, path: str, allowed: AllowedLocations) -> None:
    try:
        allowed.check(path)
    except LocationNotAllowedError as error:
        raise SpecRefusedError(f"invalid join spec: {field}: {error}") from None
    if is_glob(path) and "://" in path and not path.startswith(_GLOB_SCHEMES):
        raise SpecRefusedError(
            f"invalid join spec: {field}: {path!r} is a glob, and globs are read only for s3:// and local "
            "paths; name the files one by one"
        )


def _check_count(count: int, limits: CodegenLimits, *, expanded: bool) -> None:
    if count > limits.max_friend_files:
        what = "match" if expanded else "name"
        raise SpecRefusedError(
            f"invalid join spec: friends: the friend entries {what} {count} files; this deployment allows "
            f"at most {limits.max_friend_files} friend files per spec (JOINER_MAX_FRIEND_FILES)"
        )


def spec_json(spec: JoinSpec) -> str:
    """`join_spec.json`: the normalised spec (defaults filled), keys sorted, indented for people."""
    return json.dumps(spec.normalised(), sort_keys=True, indent=2) + "\n"


def build_zip(spec: JoinSpec, entry_script: str = SCRIPT_TEXT, facility: Mapping[str, str] | None = None) -> bytes:
    """The flat zip the App mounts at `/generated`: capabilities, the normalised spec, the entry script,
    and the facility's settings for the transformer pods (`joiner_settings.json`, see facility_settings).

    The bytes depend only on the spec, the script and the settings (fixed timestamps and order).
    """
    members: list[tuple[str, str, int]] = [
        (CAPABILITIES_NAME, json.dumps(CAPABILITIES, indent=2) + "\n", 0o644),
        (SPEC_NAME, spec_json(spec), 0o644),
        (SCRIPT_NAME, entry_script, 0o755),
    ]
    if facility:
        members.append((FACILITY_SETTINGS_NAME, json.dumps(dict(facility), sort_keys=True, indent=2) + "\n", 0o644))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text, mode in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, text)
    return buffer.getvalue()


def generate(
    selection: str,
    *,
    transformer_image: str,
    allowed: AllowedLocations,
    limits: CodegenLimits,
    resolver: FileResolver,
    check_inference: Callable[[JoinSpec], None] | None = None,
    entry_script: str = SCRIPT_TEXT,
    facility: Mapping[str, str] | None = None,
) -> tuple[GeneratedCode, CheckedSpec]:
    """Everything the code generator does for one selection.

    Args:
        selection: the request's selection (the join spec as JSON).
        transformer_image: the science image the App should run (`TRANSFORMER_SCIENCE_IMAGE`).
        allowed: the allowed location prefixes.
        limits: the per-spec limits.
        resolver: finds friend files and their sizes.
        check_inference: refuses a spec whose inference entries do not fit the served models (raises).
        entry_script: the text of `transform_single_file.py` (default: the science entry's).
        facility: settings for the transformer pods (`facility_settings`), shipped in the zip.

    Returns:
        The answer's parts and what the checks found.

    Raises:
        SpecError: the selection is not a valid spec, or this deployment refuses it (the message names the
            field); whatever `check_inference` raises.
    """
    spec = parse_selection(selection)
    checked = check_spec(spec, allowed=allowed, limits=limits, resolver=resolver)
    if check_inference is not None:
        check_inference(spec)
    code = GeneratedCode(
        transformer_image=transformer_image,
        language=LANGUAGE,
        command=COMMAND,
        zip_data=build_zip(spec, entry_script, facility),
    )
    return code, checked
