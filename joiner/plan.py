"""The column plan of a join: which branches to read from each side, what they are called in the output,
and the output's Arrow schema.

The schema is decided from the spec and the files' types before any row is read, so that every part of one
join, empty ones too, carries the same schema (DESIGN §4): key columns first and never null, then the
primary's columns (nullable only when a right/outer join can leave a row without a primary), then each
friend's columns with its prefix (nullable for left/outer), each friend's `<name>_matched` flag. List
elements are never nullable; a missing row is a null at the list level.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pyarrow as pa

from joiner.errors import MissingColumnError, SchemaError
from joiner.sources import TableSource, is_pattern
from joiner.spec import FriendSpec, How, JoinSpec

_COLLECTION = re.compile(r"^([A-Za-z0-9]+)_.+$")


def collection_of(name: str) -> str | None:
    """NanoAOD collection of a flat column name (`Jet_pt` -> `Jet`), or None for `MET`-less names."""
    match = _COLLECTION.match(name)
    return match.group(1) if match else None


def is_list_type(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_list(data_type) or pa.types.is_large_list(data_type))


def non_null_elements(data_type: pa.DataType) -> pa.DataType:
    """The same type with list elements declared non-nullable (and 32-bit list offsets)."""
    if is_list_type(data_type):
        item = non_null_elements(data_type.value_type)
        return pa.list_(pa.field("item", item, nullable=pa.types.is_null(item)))
    return data_type


@dataclass(frozen=True)
class SidePlan:
    """Columns of one dataset: names in its files, names in the output, and their output types."""

    name: str
    read_names: list[str]
    output_names: list[str]
    types: list[pa.DataType]
    nullable: bool

    def fields(self) -> list[pa.Field]:
        return [
            pa.field(out, non_null_elements(t), nullable=self.nullable)
            for out, t in zip(self.output_names, self.types, strict=True)
        ]


@dataclass(frozen=True)
class JoinPlan:
    """Everything the engine needs to know about columns before reading rows."""

    key_columns: tuple[str, ...]
    key_types: list[pa.DataType]
    primary: SidePlan
    friends: list[SidePlan]
    matched_flags: list[str]
    extra_counters: dict[str, list[str]] = field(default_factory=dict)

    def schema(self) -> pa.Schema:
        fields = [pa.field(k, t, nullable=False) for k, t in zip(self.key_columns, self.key_types, strict=True)]
        fields += self.primary.fields()
        for friend, flag in zip(self.friends, self.matched_flags, strict=True):
            fields += friend.fields()
            fields.append(pa.field(flag, pa.bool_(), nullable=False))
        return pa.schema(fields)


def _types_of(source: TableSource, names: Sequence[str]) -> list[pa.DataType]:
    empty = source.read_table(names, 0, 0)
    return [empty.schema.field(name).type for name in names]


def _key_names(spec: JoinSpec, source: TableSource) -> set[str]:
    """The key's names in `source`: never data columns (the output carries the key under the spec's names)."""
    names = set(spec.key_columns)
    with contextlib.suppress(MissingColumnError):  # a file without its key fails where the key is read
        names.update(source.key_branch_names(spec.key_columns))
    return names


def _primary_columns(spec: JoinSpec, source: TableSource, needed_counters: set[str]) -> list[str]:
    keys = _key_names(spec, source)
    names = [n for n in source.resolve_columns(spec.primary.columns) if n not in keys] if spec.primary.columns else []
    chosen = set(names)
    # NanoAOD-style output carries the counter of every collection it has jagged columns of
    counters: list[str] = []
    for name in names:
        collection = collection_of(name)
        if collection is not None:
            counter = "n" + collection
            if counter not in chosen and counter not in counters and source.has_column(counter):
                counters.append(counter)
    for counter in sorted(needed_counters):
        if counter not in chosen and counter not in counters and source.has_column(counter):
            counters.append(counter)
    return counters + names


def _friend_side(spec: JoinSpec, friend: FriendSpec, source: TableSource, *, right_only: bool) -> SidePlan:
    keys = _key_names(spec, source)
    names = [n for n in source.resolve_columns(friend.columns) if n not in keys]
    types = _types_of(source, names)
    # a friend's columns are missing on a row only where its join can leave a primary row unmatched
    nullable = friend.how in (How.LEFT, How.OUTER) and not right_only
    return SidePlan(friend.name, names, [friend.prefix + n for n in names], types, nullable)


def needed_primary_counters(spec: JoinSpec, friend_sources: Sequence[TableSource]) -> set[str]:
    """Counters (`nJet`) that `fill_missing: nan` needs to size the NaN lists of unmatched friend rows."""
    if spec.fill_missing != "nan":
        return set()
    counters = set()
    for friend, source in zip(spec.friends, friend_sources, strict=True):
        keys = _key_names(spec, source)
        for name in source.resolve_columns(friend.columns):
            if name in keys:
                continue
            collection = collection_of(name)
            if collection is not None:
                counters.add("n" + collection)
    return counters


def make_plan(spec: JoinSpec, primary_source: TableSource, friend_sources: Sequence[TableSource]) -> JoinPlan:
    """Resolve names and types against one file of each side and check the output names."""
    counters = needed_primary_counters(spec, friend_sources)
    primary_names = _primary_columns(spec, primary_source, counters)
    has_outer = any(f.how in (How.RIGHT, How.OUTER) for f in spec.friends)
    primary = SidePlan(
        "primary", primary_names, list(primary_names), _types_of(primary_source, primary_names), has_outer
    )
    key_types = _types_of(primary_source, primary_source.key_branch_names(spec.key_columns))
    friends = [
        _friend_side(spec, friend, source, right_only=friend.how is How.RIGHT)
        for friend, source in zip(spec.friends, friend_sources, strict=True)
    ]
    flags = [f"{friend.name}_matched" for friend in spec.friends]
    plan = JoinPlan(tuple(spec.key_columns), key_types, primary, friends, flags)
    _check_names(spec, plan)
    if spec.fill_missing == "nan":
        _check_fill_nan(spec, plan, primary_source)
    return plan


def _check_names(spec: JoinSpec, plan: JoinPlan) -> None:
    owner: dict[str, str] = dict.fromkeys(plan.key_columns, "the key")
    for name in plan.primary.output_names:
        owner[name] = "the primary"
    for friend, flag in zip(plan.friends, plan.matched_flags, strict=True):
        for out, original in zip(friend.output_names, friend.read_names, strict=True):
            if out in owner:
                raise SchemaError(
                    f"column {out!r} of friend {friend.name!r} (from {original!r}) collides with {owner[out]}'s; "
                    f'set a `prefix` on friend {friend.name!r} (e.g. prefix: "{friend.name}_")'
                )
            owner[out] = f"friend {friend.name!r}"
        if flag in owner:
            raise SchemaError(f"match flag {flag!r} collides with a column of {owner[flag]}")
        owner[flag] = f"friend {friend.name!r}"
    for inference in spec.inference:
        for column in inference.outputs.values():
            if column in owner:
                raise SchemaError(f"inference output {column!r} collides with a column of {owner[column]}")


def _check_fill_nan(spec: JoinSpec, plan: JoinPlan, primary_source: TableSource) -> None:
    for friend in plan.friends:
        if not friend.nullable:
            continue
        for original, data_type in zip(friend.read_names, friend.types, strict=True):
            if not is_list_type(data_type):
                continue
            if not pa.types.is_floating(data_type.value_type):
                raise SchemaError(
                    f"fill_missing: nan cannot fill integer/bool list column {original!r} of friend "
                    f"{friend.name!r} ({data_type.value_type}); drop it or use the default fill_missing: null"
                )
            collection = collection_of(original)
            if collection is None or not primary_source.has_column("n" + collection):
                raise SchemaError(
                    f"fill_missing: nan needs the primary collection counter 'n{collection}' to size the "
                    f"NaN lists of {original!r} (friend {friend.name!r}), and the primary has none"
                )


def leave_out(plan: JoinPlan, spec: JoinSpec, fits: Callable[[pa.DataType], bool]) -> tuple[JoinPlan, list[str]]:
    """The plan less the columns an output cannot hold (`fits` refuses their type) that only a pattern asked for.

    A pattern (`AnalysisJetsAuxDyn.*`) takes what the output can hold, as it takes only what can be read. A
    column asked for by its exact name stays, for the sink to refuse by name. Returns the plan and the output
    names left out (the file's metadata lists them).
    """
    left: list[str] = []

    def side(columns: SidePlan, asked: Sequence[str]) -> SidePlan:
        exact = {name for name in asked if not is_pattern(name)}
        kept = [i for i, (name, data_type) in enumerate(zip(columns.read_names, columns.types, strict=True))
                if fits(data_type) or name in exact]
        kept_set = set(kept)
        left.extend(name for i, name in enumerate(columns.output_names) if i not in kept_set)
        return replace(
            columns,
            read_names=[columns.read_names[i] for i in kept],
            output_names=[columns.output_names[i] for i in kept],
            types=[columns.types[i] for i in kept],
        )

    primary = side(plan.primary, spec.primary.columns)
    friends = [side(columns, friend.columns) for columns, friend in zip(plan.friends, spec.friends, strict=True)]
    return replace(plan, primary=primary, friends=friends), left
