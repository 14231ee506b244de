"""`joiner.join`: the engine on arrays already in memory, for notebooks.

Same semantics and checks as the file-level join (DESIGN §4): friends apply in order, right/outer only with
one friend, duplicate keys refused unless `duplicates="first"`, every gathered row's key verified, missing
rows as nulls (lists null at the list level), a `<name>_matched` flag per friend. Inputs may be awkward
arrays of records (what uproot and `ak.from_parquet` give) or Arrow tables; the result has the same kind
as the primary unless `library` says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from joiner.arrow_arrays import arrow_to_numpy, numpy_to_arrow
from joiner.errors import MissingColumnError, SchemaError, SpecError
from joiner.gather import take_rows_many
from joiner.integrity import verify_keys
from joiner.keys import validate_key_array
from joiner.merge import match_keys
from joiner.spec import PRESET_KEYS, DuplicatePolicy, How, KeyPreset

Table = Any  # ak.Array or pa.Table


def _to_arrow(data: Table, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    import awkward as ak

    if isinstance(data, ak.Array):
        if not data.fields:
            raise SpecError(f"{what} must be an array of records (one field per column)")
        columns = [ak.to_arrow(data[field], extensionarray=False, list_to32=True) for field in data.fields]
        return pa.Table.from_arrays(columns, names=list(data.fields))
    raise SpecError(f"{what} must be an awkward Array or a pyarrow Table, not {type(data).__name__}")


def _key_names(key: str | Sequence[str]) -> list[str]:
    if isinstance(key, str):
        try:
            return list(PRESET_KEYS[KeyPreset(key)])
        except ValueError:
            raise SpecError(f"unknown key preset {key!r}; use cms, atlas, atlas-mc or a list of columns") from None
    return list(key)


def _keys_of(table: pa.Table, names: Sequence[str], what: str) -> list[npt.NDArray[np.integer]]:
    result = []
    for name in names:
        if name not in table.column_names:
            raise MissingColumnError(f"key column {name!r} missing from {what}")
        column = table.column(name)
        if column.null_count:
            raise SpecError(f"key column {name!r} of {what} holds nulls")
        result.append(validate_key_array(name, arrow_to_numpy(column), where=what))
    return result


def _combine_keys(
    left: npt.NDArray[np.integer],
    right: npt.NDArray[np.integer],
    left_rows: npt.NDArray[np.int64],
    right_rows: npt.NDArray[np.int64],
) -> npt.NDArray[np.integer]:
    """Key values of joined rows: the primary's where it has the row, the friend's for friend-only rows."""
    result = np.zeros(len(left_rows), dtype=left.dtype)
    has_left = left_rows >= 0
    result[has_left] = left[left_rows[has_left]]
    result[~has_left] = right[right_rows[~has_left]].astype(left.dtype)
    return result


def _tighten(table: pa.Table) -> pa.Table:
    """Declare columns without nulls non-nullable (and list elements too), so awkward sees no option types."""
    from joiner.plan import non_null_elements

    fields = [
        pa.field(
            f.name,
            non_null_elements(f.type),
            nullable=table.column(f.name).null_count > 0 or pa.types.is_null(f.type) or _has_null_items(f.type),
        )
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _has_null_items(data_type: pa.DataType) -> bool:
    return bool(
        (pa.types.is_list(data_type) or pa.types.is_large_list(data_type)) and pa.types.is_null(data_type.value_type)
    )


def join(
    primary: Table,
    friends: Mapping[str, Table],
    *,
    key: str | Sequence[str] = "cms",
    how: str | Mapping[str, str] = "left",
    prefix: Mapping[str, str] | None = None,
    duplicates: str = "error",
    library: Literal["ak", "arrow"] | None = None,
) -> Table:
    """Join `friends` (name -> table) onto `primary` on the event key.

    Args:
        primary: the primary rows (awkward records or an Arrow table) holding the key columns.
        friends: tables to join, applied in order; their key columns appear once in the output.
        key: a preset (`cms`, `atlas`, `atlas-mc`) or the key column names.
        how: one of inner/left/right/outer for all friends, or per friend name.
        prefix: per friend, prepended to its column names.
        duplicates: `error` (refuse repeated keys) or `first` (keep the first row of a key).
        library: `ak` or `arrow` for the result; default: the primary's kind.

    Returns:
        The joined rows: key columns, primary columns, each friend's columns, `<name>_matched` flags.
    """
    names = _key_names(key)
    policy = DuplicatePolicy(duplicates)
    hows = {name: How(how if isinstance(how, str) else how.get(name, "left")) for name in friends}
    if any(h is How.ANTI for h in hows.values()):
        raise SpecError("how: anti is internal; use inner, left, right or outer")
    outer_like = [n for n, h in hows.items() if h in (How.RIGHT, How.OUTER)]
    if outer_like and len(friends) != 1:
        raise SpecError(f"right/outer joins ({outer_like}) are allowed only with exactly one friend")
    prefixes = dict(prefix or {})

    table = _to_arrow(primary, "the primary")
    result_keys = _keys_of(table, names, "the primary")
    key_table = pa.Table.from_arrays([table.column(n) for n in names], names=names)
    body = table.drop_columns(names)
    for friend_name, friend_data in friends.items():
        friend = _to_arrow(friend_data, f"friend {friend_name!r}")
        friend_keys = _keys_of(friend, names, f"friend {friend_name!r}")
        match = match_keys(
            result_keys,
            friend_keys,
            hows[friend_name],
            duplicates=policy,
            left_name="the primary",
            right_name=f"friend {friend_name!r}",
        )
        both = (match.left_rows >= 0) & (match.right_rows >= 0)
        verify_keys(
            friend_name,
            [k[match.left_rows[both]] for k in result_keys],
            [k[match.right_rows[both]] for k in friend_keys],
        )
        friend_body = friend.drop_columns(names)
        renamed = [prefixes.get(friend_name, "") + c for c in friend_body.column_names]
        clash = (set(renamed) | {f"{friend_name}_matched"}) & (set(body.column_names) | set(names))
        if clash:
            raise SchemaError(f"columns {sorted(clash)} of friend {friend_name!r} collide; give it a prefix")
        # keys: the primary's where it has the row, the friend's for friend-only rows
        result_keys = [
            _combine_keys(lk, fk, match.left_rows, match.right_rows)
            for lk, fk in zip(result_keys, friend_keys, strict=True)
        ]
        key_table = pa.Table.from_arrays(
            [numpy_to_arrow(k, key_table.schema.field(n).type) for k, n in zip(result_keys, names, strict=True)],
            names=names,
        )
        body, gathered = take_rows_many([(body, match.left_rows), (friend_body, match.right_rows)])
        gathered = gathered.rename_columns(renamed)
        for column_name in gathered.column_names:
            body = body.append_column(column_name, gathered.column(column_name))
        body = body.append_column(f"{friend_name}_matched", numpy_to_arrow(match.right_rows >= 0))
    result = key_table
    for column_name in body.column_names:
        result = result.append_column(column_name, body.column(column_name))
    result = _tighten(result)
    kind = library or ("arrow" if isinstance(primary, pa.Table | pa.RecordBatch) else "ak")
    if kind == "arrow":
        return result
    import awkward as ak

    return ak.from_arrow(result)
