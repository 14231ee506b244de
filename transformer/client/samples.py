"""The `deliver()` samples of one join: one sample for inner/left joins, more for right and outer joins.

A ServiceX request's tasks are its dataset's files. Inner and left joins run over the primary files as they
are; right and outer joins also need tasks over the friend files (DESIGN §4): right(P, F) is one sample over
the friend files, and outer(P, F) is a sample over the primary files plus a sample over the friend files
(the friend rows no primary row matched). The spec is the same in every sample and names the primary files
(`primary.files`), so a worker tells a friend file's task from a primary file's task by the file itself.
The delivered files of all the samples together are the join; `transformer.client.loader` reads them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from servicex.dataset_identifier import DataSetIdentifier, FileListDataset

from joiner.errors import SpecError
from joiner.spec import FriendSpec, How, JoinSpec, parse_spec
from transformer.client.query import JoinQuery, SpecSource, coerce_spec

ANTI_SUFFIX = "-anti"
"""Appended to the sample name for the friend-file part of an outer join."""

_GLOB_CHARS = frozenset("*?[")


def sample_names(spec: SpecSource, name: str) -> list[str]:
    """The names of the samples `join_samples` makes for `spec` under `name`, in order."""
    joined = coerce_spec(spec)
    friend = _outer_like_friend(joined)
    if friend is not None and friend.how is How.OUTER:
        return [name, name + ANTI_SUFFIX]
    return [name]


def join_samples(
    spec: SpecSource,
    dataset: DataSetIdentifier | Sequence[str],
    *,
    name: str,
    ignore_local_cache: bool = False,
) -> list[dict[str, Any]]:
    """The `Sample` entries of a `deliver()` request for one join.

    Args:
        spec: the join spec (anything `JoinQuery` accepts).
        dataset: the primary dataset. Any dataset identifier for inner and left joins; for right and outer
            joins a `servicex.dataset.FileList` (or a list of file URLs), since their friend-side tasks need
            every primary file named.
        name: the sample name; an outer join adds a second sample named `name + "-anti"`.
        ignore_local_cache: passed on as each sample's `IgnoreLocalCache`.

    Returns:
        Sample mappings for `deliver({"Sample": ...})`, in the order of `sample_names`.

    Raises:
        SpecError: the spec is invalid, or a right/outer join is given a dataset that does not list its
            files, friend files that are globs, or primary files other than the dataset's.
    """
    joined = coerce_spec(spec)
    friend = _outer_like_friend(joined)
    identifier = dataset if isinstance(dataset, DataSetIdentifier) else FileListDataset(list(dataset))
    if friend is None:
        return [_sample(name, identifier, JoinQuery(joined), ignore_local_cache)]

    primary_files = _primary_files(joined, identifier, friend)
    friend_files = _concrete_friend_files(friend, primary_files)
    data = joined.normalised()
    data["primary"]["files"] = primary_files
    query = JoinQuery(parse_spec(data))
    friend_side = _sample(
        name if friend.how is How.RIGHT else name + ANTI_SUFFIX,
        FileListDataset(friend_files),
        query,
        ignore_local_cache,
    )
    if friend.how is How.RIGHT:
        return [friend_side]
    return [_sample(name, FileListDataset(primary_files), query, ignore_local_cache), friend_side]


def join_request(
    spec: SpecSource,
    dataset: DataSetIdentifier | Sequence[str],
    *,
    name: str,
    output_format: str = "parquet",
    ignore_local_cache: bool = False,
) -> dict[str, Any]:
    """A whole `deliver()` request for one join: Parquet output and the samples of `join_samples`.

    The servicex client asks for ROOT files unless `General.OutputFormat` says `parquet`; this sets it.

    Args:
        spec: the join spec (anything `JoinQuery` accepts).
        dataset: the primary dataset (see `join_samples`).
        name: the sample name.
        output_format: `parquet` (default) or `root-ttree`.
        ignore_local_cache: ignore the client's cache of earlier identical requests.

    Returns:
        A mapping to pass to `servicex.deliver`.
    """
    return {
        "General": {"OutputFormat": output_format},
        "Sample": join_samples(spec, dataset, name=name, ignore_local_cache=ignore_local_cache),
    }


def _sample(name: str, dataset: DataSetIdentifier, query: JoinQuery, ignore_local_cache: bool) -> dict[str, Any]:
    return {"Name": name, "Dataset": dataset, "Query": query, "IgnoreLocalCache": ignore_local_cache}


def _outer_like_friend(spec: JoinSpec) -> FriendSpec | None:
    # The spec model allows right/outer only with exactly one friend.
    for friend in spec.friends:
        if friend.how in (How.RIGHT, How.OUTER):
            return friend
    return None


def _primary_files(spec: JoinSpec, dataset: DataSetIdentifier, friend: FriendSpec) -> list[str]:
    if not isinstance(dataset, FileListDataset):
        raise SpecError(
            f"invalid join spec: friends.0.how: a {friend.how.value} join through ServiceX needs the primary "
            f"files listed (servicex.dataset.FileList), not a {type(dataset).__name__}: the tasks over the "
            "friend files must know every primary file"
        )
    files = list(dataset.files)
    if not files:
        raise SpecError("invalid join spec: primary.files: the primary dataset lists no files")
    if spec.primary.files and sorted(spec.primary.files) != sorted(files):
        raise SpecError(
            "invalid join spec: primary.files: the spec names other primary files than the dataset; "
            "leave primary.files empty (the dataset's files are used) or make them the same"
        )
    return files


def _concrete_friend_files(friend: FriendSpec, primary_files: list[str]) -> list[str]:
    globs = [f for f in friend.files if _GLOB_CHARS & set(f)]
    if globs:
        raise SpecError(
            f"invalid join spec: friends.0.files: a {friend.how.value} join through ServiceX runs one task "
            f"per friend file, so the files must be named one by one, not as globs: {globs[:3]}"
        )
    both = sorted(set(friend.files) & set(primary_files))
    if both:
        raise SpecError(
            f"invalid join spec: friends.0.files: {both[:3]} are primary files too; a file is either the "
            "primary's or the friend's"
        )
    return list(friend.files)
