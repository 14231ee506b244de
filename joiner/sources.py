"""Reading one input file as a table source: ROOT trees through uproot, Parquet through pyarrow.

A source answers four questions the engine asks of any file: how many entries, which columns match the
spec's names/patterns, the key columns of an entry range, and the columns of an entry range as an Arrow
table (NanoAOD-style flat names, jagged branches as lists). Errors become `InputFileError` /
`MissingColumnError` naming the file and tree. Nothing here joins or writes.
"""

from __future__ import annotations

import fnmatch
import glob
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import awkward as ak
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from joiner.arrow_arrays import arrow_to_numpy
from joiner.cuts import evaluate_on_fields
from joiner.errors import InputFileError, MissingColumnError, SourceUnavailableError, SpecError
from joiner.keys import COUNTER_COLUMNS, validate_key_array
from joiner.spec import FileFormat, KeyBranches
from joiner.threads import thread_pool

StorageOptions = Mapping[str, Any]
"""fsspec options for `s3://` files (endpoint, credentials): the object store's, given to no other URL."""
_CUT_ALIAS = "_servicex_joiner_cut"


def options_for(path: str, storage_options: StorageOptions | None) -> dict[str, Any]:
    """The storage options that apply to `path`: an https:// or root:// replica must not get the object
    store's endpoint and keys (its client would refuse them, or send them elsewhere)."""
    return dict(storage_options or {}) if path.startswith("s3://") else {}


@dataclass(frozen=True)
class FileIdentity:
    """What makes a file's content unique for caching: logical path, size and ROOT UUID (or ETag)."""

    path: str
    size: int
    uuid: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "uuid": self.uuid}


class TableSource(Protocol):
    """One input file opened for reading (see module docstring)."""

    @property
    def path(self) -> str: ...

    @property
    def tree(self) -> str | None: ...

    @property
    def num_entries(self) -> int: ...

    def identity(self) -> FileIdentity: ...

    def resolve_columns(self, patterns: Sequence[str]) -> list[str]: ...

    def has_column(self, name: str) -> bool: ...

    def key_branch_names(self, names: Sequence[str]) -> list[str]: ...

    def read_keys(self, names: Sequence[str], start: int, stop: int) -> list[npt.NDArray[np.integer]]: ...

    def read_table(self, names: Sequence[str], start: int, stop: int) -> pa.Table: ...

    def cut_mask(self, cut: str, start: int, stop: int) -> npt.NDArray[np.bool_]: ...

    def read_runs(self) -> list[dict[str, Any]] | None: ...


def is_pattern(name: str) -> bool:
    """Whether a column name in a spec is an uproot-style pattern (a glob or /regex/) rather than a name."""
    return any(ch in name for ch in "*?[") or (name.startswith("/") and name.endswith("/") and len(name) > 1)


def _match_names(
    available: Sequence[str],
    patterns: Sequence[str],
    where: str,
    tree: str | None,
    readable: Callable[[str], bool] | None = None,
) -> list[str]:
    """Resolve exact names and uproot-style patterns (globs or /regex/) against available names, in order.

    A pattern takes only the columns that `readable` accepts: `AnalysisJetsAuxDyn.*` or `*` in an xAOD file
    also matches branches that hold C++ objects no array can (element-link maps, split-object parents). An
    exact name is taken as it is, and reading it says what is wrong.
    """
    chosen: list[str] = []
    seen: set[str] = set()
    missing: list[str] = []
    for pattern in patterns:
        if is_pattern(pattern):
            if pattern.startswith("/") and pattern.endswith("/"):
                regex = re.compile(pattern[1:-1])
                found = [n for n in available if regex.search(n)]
            else:
                found = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
            if found and readable is not None:
                kept = [n for n in found if readable(n)]
                if not kept:
                    raise MissingColumnError(
                        f"{pattern!r} matches only branches that cannot be read as arrays: {found[:5]}",
                        path=where, tree=tree,
                    )
                found = kept
            if not found:
                missing.append(pattern)
        else:
            found = [pattern] if pattern in available else []
            if not found:
                missing.append(pattern)
        for name in found:
            if name not in seen:
                seen.add(name)
                chosen.append(name)
    if missing:
        raise MissingColumnError(
            f"no column matches {missing} (it has {len(available)} columns)", path=where, tree=tree
        )
    return chosen


_RNTUPLE_COLLECTION = re.compile(r"^_collection[0-9]+$")

# Exception classes (by name, anywhere in the class hierarchy: their libraries need not be imported) that
# say a server could not be reached: builtins, botocore (s3fs), aiohttp (fsspec's http), fsspec itself.
_UNREACHABLE = frozenset({
    "ConnectionError", "TimeoutError", "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError",
    "ReadTimeoutError", "ClientConnectionError", "ServerDisconnectedError", "FSTimeoutError",
})
# S3 error codes of a store that is there but cannot answer now
_BUSY_STORE = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "500", "502", "503"})
# The XRootD client reports every failure as a plain OSError holding its status text; these statuses are the
# transport's (no server, a dropped or timed-out connection), not the file's ("No such file", "Permission").
_XROOTD_TRANSPORT = re.compile(
    r"\[(?:ERROR|FATAL)\] (?:Connection error|Operation expired|Operation interrupted|Socket error|Socket timeout"
    r"|Socket disconnected|Stream disconnect|Poller error)"
)


def unreachable(error: BaseException) -> bool:
    """Whether an error (or one it was raised from) says that the file's server could not be reached.

    Such a failure is the network's or the store's, not the file's: the same read may work later.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in _UNREACHABLE for cls in type(current).__mro__):
            return True
        if type(current) is OSError and _XROOTD_TRANSPORT.search(str(current)):
            return True
        response = getattr(current, "response", None)
        if isinstance(response, dict) and str(response.get("Error", {}).get("Code")) in _BUSY_STORE:
            return True
        current = current.__cause__ or current.__context__
    return False


def _read_error(what: str, error: BaseException, path: str, tree: str | None = None) -> OSError:
    """The error to raise for a failed open or read: the file's fault, or its server's (transient)."""
    message = f"{what}: {type(error).__name__}: {error}"
    if unreachable(error):
        return SourceUnavailableError(message, path=path, tree=tree)
    return InputFileError(message, path=path, tree=tree)


def _holds_an_empty_record(form: Any) -> bool:
    """Whether an awkward form has a record without fields somewhere (no output format can store one)."""
    if isinstance(form, ak.forms.RecordForm):
        return not form.fields or any(_holds_an_empty_record(content) for content in form.contents)
    content = getattr(form, "content", None)
    if content is not None:
        return _holds_an_empty_record(content)
    return any(_holds_an_empty_record(c) for c in getattr(form, "contents", ()) or ())


def _key_branch_names(
    key_branches: KeyBranches | None, available: set[str], names: Sequence[str], path: str, tree: str | None
) -> list[str]:
    return (key_branches or KeyBranches.named(names)).resolve(available, names, path=path, tree=tree)


class RootSource:
    """A TTree in a ROOT file, read with uproot."""

    def __init__(
        self,
        path: str,
        tree: str,
        storage_options: StorageOptions | None = None,
        key_branches: KeyBranches | None = None,
    ) -> None:
        import uproot

        self.path = path
        self.tree = tree
        self._key_branches = key_branches
        options = options_for(path, storage_options)
        try:
            # no array cache: every range is read once, and memory must stay bounded by the chunk
            self._file = uproot.open(path, array_cache=None, **options)
        except FileNotFoundError as error:
            raise InputFileError(f"no such file: {error}", path=path) from None
        except Exception as error:  # noqa: BLE001 - uproot raises many types for a non-ROOT/truncated file
            raise _read_error("cannot open as a ROOT file", error, path) from None
        try:
            self._tree = self._file[tree]
        except KeyError:
            trees = [k.split(";")[0] for k, c in self._file.classnames().items() if c in ("TTree", "ROOT::RNTuple")]
            raise InputFileError(f"no tree {tree!r} (trees here: {trees})", path=path, tree=tree) from None
        except Exception as error:  # noqa: BLE001 - a corrupt directory raises from deep inside uproot
            raise _read_error("cannot read tree", error, path, tree) from None
        try:
            # A TTree's split objects have sub-branches worth naming ("Aux./Aux.smk"). An RNTuple's columns
            # are its top-level fields, less the record fields that hold its collections ("_collection0",
            # whose members are also fields of their own: "Jet_pt").
            self._is_ttree = hasattr(self._tree, "branches")
            if self._is_ttree:
                self._names = list(self._tree.keys(recursive=True, full_paths=True))
            else:
                self._names = [n for n in self._tree.keys(recursive=False) if not _RNTUPLE_COLLECTION.match(n)]
        except Exception as error:  # noqa: BLE001
            raise _read_error("cannot list branches", error, path, tree) from None
        self._name_set = set(self._names)

    @property
    def num_entries(self) -> int:
        return int(self._tree.num_entries)

    def identity(self) -> FileIdentity:
        source = self._file.file.source
        size = int(getattr(source, "num_bytes", 0) or 0)
        return FileIdentity(self.path, size, str(self._file.file.uuid))

    def has_column(self, name: str) -> bool:
        return name in self._name_set

    def resolve_columns(self, patterns: Sequence[str]) -> list[str]:
        return _match_names(self._names, patterns, self.path, self.tree, self._readable)

    def _readable(self, name: str) -> bool:
        """Whether uproot can read branch `name` as an array (an RNTuple's fields always can)."""
        if not self._is_ttree:
            return True
        import uproot

        branch = self._tree[name]
        interpretation = branch.interpretation
        # numbers and lists of numbers (all of NanoAOD): no form to build (exact types: AsStridedObjects,
        # which holds C++ objects, is an AsDtype too)
        content = interpretation.content if isinstance(interpretation, uproot.AsJagged) else interpretation
        if type(content) is uproot.AsDtype:
            return True
        if isinstance(interpretation, (uproot.interpretation.identify.UnknownInterpretation,
                                       uproot.interpretation.grouped.AsGrouped)):
            return False  # no streamer to read it by, or only the parent of its sub-branches
        try:
            form = interpretation.awkward_form(branch.file)
        except Exception:  # noqa: BLE001 - uproot's CannotBeAwkward and kin: objects of unbounded depth
            return False
        return not _holds_an_empty_record(form)  # a base class with no members ("EventInfoAux.")

    def _check(self, names: Sequence[str]) -> None:
        missing = [n for n in names if n not in self._name_set]
        if missing:
            raise MissingColumnError(f"no branch {missing}", path=self.path, tree=self.tree)

    def key_branch_names(self, names: Sequence[str]) -> list[str]:
        """The branches this tree keeps the key columns `names` in (see `KeyBranches`)."""
        return _key_branch_names(self._key_branches, self._name_set, names, self.path, self.tree)

    def read_keys(self, names: Sequence[str], start: int, stop: int) -> list[npt.NDArray[np.integer]]:
        branches = self.key_branch_names(names)
        try:
            arrays = self._tree.arrays(
                decompression_executor=thread_pool(),
                expressions=branches,
                library="np",
                entry_start=start,
                entry_stop=stop,
            )
        except Exception as error:  # noqa: BLE001 - decompression/basket errors of a damaged file
            raise _read_error("cannot read key branches", error, self.path, self.tree) from None
        where = f"{self.path} [{self.tree}]"
        return [
            validate_key_array(branch, arrays[branch], where=where, first_row=start, counter=name in COUNTER_COLUMNS)
            for name, branch in zip(names, branches, strict=True)
        ]

    def read_table(self, names: Sequence[str], start: int, stop: int) -> pa.Table:
        self._check(names)
        if stop <= start:
            return self._empty_table(names)
        try:
            arrays = self._tree.arrays(
                decompression_executor=thread_pool(),
                expressions=list(names),
                library="ak",
                entry_start=start,
                entry_stop=stop,
            )
        except Exception as error:  # noqa: BLE001
            raise _read_error("cannot read branches", error, self.path, self.tree) from None
        return awkward_to_arrow(arrays, names)

    def _empty_table(self, names: Sequence[str]) -> pa.Table:
        """Zero rows with the branches' types, from their interpretations: no basket is read."""
        if not names:
            return pa.table({})
        if not all(hasattr(self._tree[name], "interpretation") for name in names):  # RNTuple fields
            arrays = self._tree.arrays(
                decompression_executor=thread_pool(),
                expressions=list(names),
                library="ak",
                entry_start=0,
                entry_stop=0,
            )
            return awkward_to_arrow(arrays, names)
        columns = []
        for name in names:
            try:
                form = self._tree[name].interpretation.awkward_form(self._tree.file)
                empty = ak.Array(form.length_zero_array())
                columns.append(ak.to_arrow(empty, extensionarray=False, list_to32=True))
            except Exception as error:  # noqa: BLE001 - CannotBeAwkward, an unknown interpretation, no arrow type
                raise InputFileError(
                    f"branch {name!r} cannot be read as an array: {type(error).__name__}: {error}",
                    path=self.path, tree=self.tree,
                ) from None
        return pa.Table.from_arrays(columns, names=list(names))

    def cut_mask(self, cut: str, start: int, stop: int) -> npt.NDArray[np.bool_]:
        try:
            if self._is_ttree:
                mask = self._tree.arrays(
                    decompression_executor=thread_pool(),
                    expressions=[_CUT_ALIAS],
                    aliases={_CUT_ALIAS: cut},
                    library="ak",
                    entry_start=start,
                    entry_stop=stop,
                )[_CUT_ALIAS]
            else:  # uproot's RNTuple reader takes no expressions
                mask = evaluate_on_fields(self._tree, cut, start=start, stop=stop, path=self.path, tree=self.tree)
        except Exception as error:  # noqa: BLE001 - uproot raises KeyInFileError/SyntaxError/NameError
            raise SpecError(f"primary.cut {cut!r} cannot be evaluated on {self.path}: {error}") from None
        if mask.ndim != 1:
            raise SpecError(f"primary.cut {cut!r} must give one boolean per event, not one per object")
        return np.asarray(ak.to_numpy(mask)).astype(bool)

    def read_runs(self) -> list[dict[str, Any]] | None:
        try:
            runs = self._file["Runs"]
            arrays = runs.arrays(library="ak")
        except Exception:  # noqa: BLE001 - no Runs tree (data files, friends) is normal
            return None
        result: list[dict[str, Any]] = ak.to_list(arrays)
        return result


def awkward_to_arrow(arrays: ak.Array, names: Sequence[str]) -> pa.Table:
    """Convert uproot's record array to an Arrow table with one column per branch, in `names` order."""
    columns = []
    for name in names:
        array = ak.to_arrow(arrays[name], extensionarray=False, list_to32=True)
        columns.append(array)
    return pa.Table.from_arrays(columns, names=list(names))


class ParquetSource:
    """A Parquet file (for example another ServiceX request's output), read with pyarrow (fsspec URLs)."""

    def __init__(
        self, path: str, storage_options: StorageOptions | None = None, key_branches: KeyBranches | None = None
    ) -> None:
        self.path = path
        self.tree = None
        self._key_branches = key_branches
        try:
            if "://" in path and not path.startswith("file://"):
                import fsspec

                self._fs, self._fs_path = fsspec.core.url_to_fs(path, **options_for(path, storage_options))
                handle = self._fs.open(self._fs_path, "rb")
                self._parquet = pq.ParquetFile(handle)
                self._size = int(self._fs.size(self._fs_path))
                info = self._fs.info(self._fs_path)
                self._etag = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")
            else:
                local = Path(path.removeprefix("file://"))
                self._parquet = pq.ParquetFile(local)
                stat = local.stat()
                self._size = stat.st_size
                self._etag = f"mtime:{stat.st_mtime_ns}"
        except FileNotFoundError:
            raise InputFileError("no such file", path=path) from None
        except Exception as error:  # noqa: BLE001 - pyarrow, fsspec and botocore errors alike
            raise _read_error("cannot open as Parquet", error, path) from None
        self._names = list(self._parquet.schema_arrow.names)
        self._name_set = set(self._names)
        self._cache: tuple[int, int, pa.Table] | None = None

    @property
    def num_entries(self) -> int:
        return int(self._parquet.metadata.num_rows)

    def identity(self) -> FileIdentity:
        return FileIdentity(self.path, self._size, self._etag)

    def has_column(self, name: str) -> bool:
        return name in self._name_set

    def resolve_columns(self, patterns: Sequence[str]) -> list[str]:
        return _match_names(self._names, patterns, self.path, None)

    def _read(self, names: Sequence[str], start: int, stop: int) -> pa.Table:
        missing = [n for n in names if n not in self._name_set]
        if missing:
            raise MissingColumnError(f"no column {missing}", path=self.path)
        metadata = self._parquet.metadata
        groups, first_row, row = [], None, 0
        for index in range(metadata.num_row_groups):
            rows = metadata.row_group(index).num_rows
            if row + rows > start and row < stop:
                groups.append(index)
                if first_row is None:
                    first_row = row
            row += rows
        try:
            if not groups:
                return self._parquet.schema_arrow.empty_table().select(list(names))
            table = self._parquet.read_row_groups(groups, columns=list(names))
        except Exception as error:  # noqa: BLE001
            raise _read_error("cannot read Parquet row groups", error, self.path) from None
        offset = start - (first_row or 0)
        return table.slice(offset, stop - start)

    def key_branch_names(self, names: Sequence[str]) -> list[str]:
        """The columns this file keeps the key columns `names` in (see `KeyBranches`)."""
        return _key_branch_names(self._key_branches, self._name_set, names, self.path, None)

    def read_keys(self, names: Sequence[str], start: int, stop: int) -> list[npt.NDArray[np.integer]]:
        columns = self.key_branch_names(names)
        table = self._read(columns, start, stop)
        result = []
        for logical, name in zip(names, columns, strict=True):
            column = table.column(name)
            if column.null_count:
                raise InputFileError(f"key column {name!r} holds nulls", path=self.path)
            result.append(validate_key_array(name, arrow_to_numpy(column), where=self.path, first_row=start,
                                             counter=logical in COUNTER_COLUMNS))
        return result

    def read_table(self, names: Sequence[str], start: int, stop: int) -> pa.Table:
        return self._read(names, start, stop)

    def cut_mask(self, cut: str, start: int, stop: int) -> npt.NDArray[np.bool_]:
        raise SpecError(f"primary.cut is supported for ROOT primaries only ({self.path} is Parquet)")

    def read_runs(self) -> list[dict[str, Any]] | None:
        return None


def source_format(path: str, file_format: FileFormat | None = None) -> FileFormat:
    """The format a file is read as: `file_format` if given, else by its extension (ROOT unless Parquet)."""
    if file_format is not None:
        return file_format
    lowered = path.lower().split("?")[0]
    return FileFormat.PARQUET if lowered.endswith((".parquet", ".pq")) else FileFormat.ROOT


def open_source(
    path: str,
    *,
    tree: str,
    file_format: FileFormat | None = None,
    storage_options: StorageOptions | None = None,
    key_branches: KeyBranches | None = None,
) -> TableSource:
    """Open a ROOT tree or a Parquet file (format by argument, else by extension).

    `key_branches` says where its dataset keeps the key columns (default: branches named as the columns).
    """
    if source_format(path, file_format) is FileFormat.PARQUET:
        return ParquetSource(path, storage_options, key_branches)
    return RootSource(path, tree, storage_options, key_branches)


def file_identity(
    path: str, storage_options: StorageOptions | None = None, *, file_format: FileFormat | None = None
) -> FileIdentity:
    """Identity (path, size, ROOT UUID or ETag) of a file, for content-addressed caching.

    A ROOT file's header is all that is read (not its trees): the same identity `RootSource.identity`
    gives, at a fraction of the cost for a file with wide trees or behind a remote server.
    """
    if source_format(path, file_format) is FileFormat.PARQUET:
        return ParquetSource(path, storage_options).identity()
    import uproot

    try:
        with uproot.open(path, array_cache=None, **options_for(path, storage_options)) as handle:
            source = handle.file.source
            return FileIdentity(path, int(getattr(source, "num_bytes", 0) or 0), str(handle.file.uuid))
    except FileNotFoundError as error:
        raise InputFileError(f"no such file: {error}", path=path) from None
    except Exception as error:  # noqa: BLE001 - uproot raises many types for a non-ROOT/truncated file
        raise _read_error("cannot open as a ROOT file", error, path) from None


_REMOTE = re.compile(r"^(?:root|xroot|https?|davs?)://[^/]*/+(.*)$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def logical_path(path: str) -> str:
    """A replica's path without the parts that differ between replicas and caches of one file.

    `root://cache//root://origin//store/x.root`, `root://origin//store/x.root` and
    `https://origin:443/store/x.root` are all `/store/x.root`; `s3://` URLs and local paths are kept.
    """
    current = path.removeprefix("file://")
    while (match := _REMOTE.match(current)) is not None:
        inner = match.group(1)
        if _SCHEME.match(inner) is None:
            return "/" + inner
        current = inner
    return current


def expand_paths(patterns: Sequence[str], storage_options: StorageOptions | None = None) -> list[str]:
    """Expand globs of local paths and s3:// URLs, keeping order and URLs of other schemes as they are."""
    result: list[str] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            result.append(pattern)
            continue
        if pattern.startswith("s3://"):
            import fsspec

            fs, _ = fsspec.core.url_to_fs(pattern, **options_for(pattern, storage_options))
            try:
                matches = sorted("s3://" + m for m in fs.glob(pattern))
            except Exception as error:  # botocore's errors are not OSErrors: classified here
                if unreachable(error):
                    raise SourceUnavailableError(f"cannot list {pattern!r}: {type(error).__name__}: {error}") from None
                raise
        elif "://" in pattern and not pattern.startswith("file://"):
            raise SpecError(f"globs are supported for local paths and s3:// only, not {pattern!r}")
        else:
            matches = sorted(glob.glob(pattern.removeprefix("file://")))
        if not matches:
            raise SpecError(f"no file matches {pattern!r}")
        result.extend(matches)
    return result
