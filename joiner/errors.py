"""Domain errors of the join engine.

Every error names what a physicist needs to find the problem: the file, the tree, the column and a few of
the offending keys. Each subclasses the builtin that callers already catch, and permanent problems (a bad
spec, a broken file, duplicate keys) are separate types from anything retryable, so that a worker decides
its policy from the type alone, never from a message string.
"""

from __future__ import annotations

from collections.abc import Sequence


class JoinError(Exception):
    """Base of every error raised by the join engine. Errors of this type are permanent for their input."""


class SpecError(JoinError, ValueError):
    """The join spec is invalid: the message names the field and what is wrong with it."""


def _where(path: str | None, tree: str | None) -> str:
    if path is None:
        return ""
    return f" [file {path}" + (f", tree {tree}" if tree else "") + "]"


class InputFileError(JoinError, OSError):
    """An input file cannot be read as asked: missing, truncated, not ROOT/Parquet, or no such tree."""

    def __init__(self, message: str, *, path: str | None = None, tree: str | None = None) -> None:
        self.reason = message  # without the file and tree, for callers that add context of their own
        self.path = path
        self.tree = tree
        super().__init__(message + _where(path, tree))


class SourceUnavailableError(OSError):
    """A file's server could not be reached: the connection was refused, lost or timed out, or the store
    answered that it is busy.

    Not a JoinError: it says nothing about the file or the spec, and the same read may well succeed a little
    later, so a worker retries it with backoff rather than failing the file (ServiceX's contract for a
    store or network that is down).
    """

    def __init__(self, message: str, *, path: str | None = None, tree: str | None = None) -> None:
        self.reason = message
        self.path = path
        self.tree = tree
        super().__init__(message + _where(path, tree))


class MissingColumnError(InputFileError, KeyError):
    """A requested column (or key column) is absent from a file."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class KeyTypeError(JoinError, TypeError):
    """A key column is not of an integer type, or holds missing or negative values."""


class DuplicateKeyError(JoinError, ValueError):
    """A dataset holds the same event key more than once and the spec does not allow it."""

    def __init__(self, dataset: str, examples: Sequence[tuple[tuple[int, ...], Sequence[str]]], total: int) -> None:
        self.dataset = dataset
        self.examples = list(examples)
        self.total = total
        shown = "; ".join(f"{key} in {', '.join(sorted(set(files)))}" for key, files in self.examples)
        super().__init__(
            f"{total} duplicate event key(s) in {dataset} (set `duplicates: first` to keep the first): {shown}"
        )


class KeyMismatchError(JoinError, RuntimeError):
    """A gathered friend row does not carry the primary row's key: the join would have mixed events."""

    def __init__(self, friend: str, examples: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], total: int) -> None:
        self.friend = friend
        self.examples = list(examples)
        self.total = total
        shown = "; ".join(f"primary {p} vs friend {f}" for p, f in self.examples)
        super().__init__(f"integrity check failed for friend {friend!r}: {total} row(s) with other keys: {shown}")


class SchemaError(JoinError, ValueError):
    """The joined columns cannot form one table: a name collision, or a type the output cannot hold."""


class CollectionLengthError(JoinError, ValueError):
    """A friend's per-object column has another number of values than the primary collection it joins."""

    def __init__(
        self, friend: str, column: str, counter: str, examples: Sequence[tuple[tuple[int, ...], int, int]], total: int
    ) -> None:
        self.friend = friend
        self.column = column
        self.examples = list(examples)
        self.total = total
        shown = "; ".join(f"{key}: {theirs} vs {ours}" for key, theirs, ours in self.examples)
        super().__init__(
            f"friend {friend!r} column {column!r} joins the collection counted by {counter!r}, but {total} matched "
            f"event(s) have another number of values than objects (key: friend values vs {counter}): {shown}. "
            f"A per-object column needs one value per object; give the friend a `prefix` to keep it apart"
        )
