"""The join spec: one pydantic model read from YAML or JSON.

The same document travels from the user's `servicex-joiner join --spec` file or `JoinQuery` to the code
generator and into every worker, so this module is the only place that says what a spec may contain.
It validates shape and values; it does not open files (that is `joiner.sources`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from joiner.errors import MissingColumnError, SpecError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class KeyPreset(StrEnum):
    """Named event keys of the experiments, with the tree their data lives in."""

    CMS = "cms"
    ATLAS = "atlas"
    ATLAS_MC = "atlas-mc"


PRESET_KEYS: dict[KeyPreset, tuple[str, ...]] = {
    KeyPreset.CMS: ("run", "luminosityBlock", "event"),
    KeyPreset.ATLAS: ("EventInfoAuxDyn.runNumber", "EventInfoAuxDyn.eventNumber"),
    KeyPreset.ATLAS_MC: (
        "EventInfoAuxDyn.mcChannelNumber",
        "EventInfoAuxDyn.runNumber",
        "EventInfoAuxDyn.eventNumber",
    ),
}
# Other names of the presets' key branches in files made from those formats: a flat ATLAS ntuple, or a friend
# tree written by an analysis framework, keeps EventInfo's numbers as plain `runNumber`, `eventNumber`.
_SAME_KEY_BRANCHES = (
    ("EventInfoAuxDyn.runNumber", "runNumber"),
    ("EventInfoAuxDyn.eventNumber", "eventNumber"),
    ("EventInfoAuxDyn.mcChannelNumber", "mcChannelNumber"),
)
KEY_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    **{full: (flat,) for full, flat in _SAME_KEY_BRANCHES},
    **{flat: (full,) for full, flat in _SAME_KEY_BRANCHES},
}
PRESET_TREES: dict[KeyPreset, str] = {
    KeyPreset.CMS: "Events",
    KeyPreset.ATLAS: "CollectionTree",
    KeyPreset.ATLAS_MC: "CollectionTree",
}
DEFAULT_TREE = "Events"


class How(StrEnum):
    """How a friend joins the rows so far (DESIGN §4). `anti` is internal: friend rows with no primary."""

    INNER = "inner"
    LEFT = "left"
    RIGHT = "right"
    OUTER = "outer"
    ANTI = "anti"


@dataclass(frozen=True)
class KeyBranches:
    """Where the files of one dataset keep the key: per key column, the branch names it may have there.

    The spec names the key once (`run, luminosityBlock, event`; `EventInfoAuxDyn.runNumber, ...`), but the
    datasets joined on it need not spell it alike: a flat ATLAS ntuple keeps `runNumber` where PHYSLITE has
    `EventInfoAuxDyn.runNumber` (`KEY_ALTERNATIVES`), and a friend may name its own key branches (`key:`).
    Each file takes, per key column, the first of its names that the file has; the output always carries
    the spec's names.

    Args:
        choices: per key column, in the key's order: (the spec's name, the branch names in order of
            preference).
    """

    choices: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def named(cls, names: Sequence[str]) -> KeyBranches:
        """Key branches named exactly as the key columns."""
        return cls(tuple((name, (name,)) for name in names))

    def candidates(self, name: str) -> tuple[str, ...]:
        """The branch names key column `name` may have (only itself, for a column this does not know)."""
        for column, branches in self.choices:
            if column == name:
                return branches
        return (name,)

    def resolve(
        self, available: Collection[str], names: Sequence[str], *, path: str | None = None, tree: str | None = None
    ) -> list[str]:
        """The branch of each key column in a file (`path`, `tree`) holding the branches `available`.

        Raises:
            MissingColumnError: a key column has none of its names there (the message lists them).
        """
        chosen, missing = [], []
        for name in names:
            branches = self.candidates(name)
            found = next((branch for branch in branches if branch in available), None)
            if found is None:
                missing.append(repr(name) if branches == (name,) else f"{name!r} (nor {', '.join(branches[1:])})")
            else:
                chosen.append(found)
        if missing:
            raise MissingColumnError(f"no key branch {', '.join(missing)}", path=path, tree=tree)
        return chosen


class FileFormat(StrEnum):
    ROOT = "root"
    PARQUET = "parquet"


class DuplicatePolicy(StrEnum):
    ERROR = "error"
    FIRST = "first"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _non_empty_names(values: list[str], what: str) -> list[str]:
    for value in values:
        if not value:
            raise ValueError(f"{what} must not contain empty names")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} lists a name twice: {sorted({v for v in values if values.count(v) > 1})}")
    return values


class PrimarySpec(_Strict):
    """The dataset every output row comes from (for inner and left joins)."""

    files: list[str] = Field(
        default_factory=list,
        description="Input files or globs. Needed for local runs and for right/outer joins through ServiceX.",
    )
    tree: str | None = Field(default=None, description="Tree name; default from the key preset.")
    columns: list[str] = Field(
        default_factory=list, description="Branch names or uproot filter_name patterns (e.g. 'Jet_*')."
    )
    cut: str | None = Field(default=None, description="uproot cut expression, one boolean per event.")

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: list[str]) -> list[str]:
        return _non_empty_names(value, "columns")

    @field_validator("files")
    @classmethod
    def _files(cls, value: list[str]) -> list[str]:
        return _non_empty_names(value, "files")

    @field_validator("cut")
    @classmethod
    def _cut(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value


class FriendSpec(_Strict):
    """Another dataset whose columns are joined to the primary on the event key."""

    name: str = Field(description="Identifier; names the `<name>_matched` column.")
    files: list[str] = Field(min_length=1, description="Files, globs (local, s3) or URLs (root://, https://).")
    tree: str | None = Field(default=None, description="Tree of ROOT friends; default from the key preset.")
    columns: list[str] = Field(min_length=1, description="Branch names or filter_name patterns.")
    how: How = How.LEFT
    prefix: str = Field(default="", description="Prepended to this friend's column names.")
    format: FileFormat | None = Field(default=None, description="root or parquet; default by extension.")
    key: list[str] | None = Field(
        default=None,
        description="This friend's key branches, in the order of the spec's key, where they are named otherwise "
        "(e.g. [runNumber, eventNumber]).",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"friend name {value!r} must be an identifier (letters, digits, _)")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9_]*$", value):
            raise ValueError(f"prefix {value!r} may hold only letters, digits and _")
        return value

    @field_validator("how")
    @classmethod
    def _how(cls, value: How) -> How:
        if value is How.ANTI:
            raise ValueError("how: anti is internal; use inner, left, right or outer")
        return value

    @field_validator("columns", "files")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        return _non_empty_names(value, "list")

    @field_validator("key")
    @classmethod
    def _key(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _non_empty_names(value, "key")

    def format_of(self, path: str) -> FileFormat:
        """The format of one of this friend's files: the spec's `format`, else by the file's extension."""
        if self.format is not None:
            return self.format
        return FileFormat.PARQUET if path.lower().split("?")[0].endswith((".parquet", ".pq")) else FileFormat.ROOT


class InferenceSpec(_Strict):
    """One Triton model whose outputs become new columns (DESIGN §5)."""

    model: str = Field(min_length=1, description="Model name in the Triton repository.")
    version: str | None = Field(default=None, description="Pinned model version; default: the server's choice.")
    level: str = Field(default="event", description="'event', or a collection (e.g. 'Jet') for per-object.")
    inputs: dict[str, list[str]] = Field(min_length=1, description="Tensor name -> columns stacked as features.")
    outputs: dict[str, str] = Field(min_length=1, description="Tensor name -> new column name.")
    batch_size: int | None = Field(default=None, gt=0, description="Rows per request; default max_batch_size.")

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"level {value!r} must be 'event' or a collection name such as 'Jet'")
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for tensor, columns in value.items():
            if not columns:
                raise ValueError(f"input tensor {tensor!r} lists no columns")
            _non_empty_names(columns, f"columns of input tensor {tensor!r}")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: dict[str, str]) -> dict[str, str]:
        for tensor, column in value.items():
            if not _IDENTIFIER.match(column):
                raise ValueError(f"output column {column!r} of tensor {tensor!r} must be an identifier")
        return value

    @model_validator(mode="after")
    def _level_columns(self) -> InferenceSpec:
        if self.level != "event":
            for tensor, columns in self.inputs.items():
                bad = [c for c in columns if not c.startswith(self.level + "_")]
                if bad:
                    raise ValueError(
                        f"level {self.level!r} takes per-object columns named {self.level}_*; "
                        f"input tensor {tensor!r} has {bad}"
                    )
            for column in self.outputs.values():
                if not column.startswith(self.level + "_"):
                    raise ValueError(
                        f"level {self.level!r} writes per-object columns; name output {column!r} as "
                        f"{self.level}_<something> so coffea sees it as part of the collection"
                    )
        return self


KeySpec = Annotated[KeyPreset | list[str], Field(description="A preset (cms, atlas, atlas-mc) or branch names.")]


class JoinSpec(_Strict):
    """The whole join: a primary dataset, the event key, friends applied in order, inference columns."""

    primary: PrimarySpec = Field(default_factory=PrimarySpec)
    key: KeySpec = KeyPreset.CMS
    friends: list[FriendSpec] = Field(default_factory=list)
    duplicates: DuplicatePolicy = DuplicatePolicy.ERROR
    fill_missing: Literal["nan"] | None = Field(
        default=None, description="null (default): unmatched friend values are nulls; nan: NaN-filled lists."
    )
    inference: list[InferenceSpec] = Field(default_factory=list)

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in {p.value for p in KeyPreset}:
            raise ValueError(f"unknown key preset {value!r}; use cms, atlas, atlas-mc or a list of branches")
        if isinstance(value, list):
            if not value:
                raise ValueError("a key needs at least one column")
            _non_empty_names([str(v) for v in value], "key")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> JoinSpec:
        names = [f.name for f in self.friends]
        if len(set(names)) != len(names):
            raise ValueError(f"friend names must be unique, got {names}")
        for friend in self.friends:
            if friend.key is not None and len(friend.key) != len(self.key_columns):
                raise ValueError(
                    f"friend {friend.name!r} names {len(friend.key)} key branches {friend.key}, but the key has "
                    f"{len(self.key_columns)} columns {list(self.key_columns)}: name one branch per key column, "
                    "in the same order"
                )
        outer_like = [f.name for f in self.friends if f.how in (How.RIGHT, How.OUTER)]
        if outer_like and len(self.friends) != 1:
            raise ValueError(
                f"friends {outer_like} use a right/outer join, which is allowed only with exactly one friend "
                f"(the spec has {len(self.friends)}): rows that exist only in one friend have no primary "
                "to attach further friends to"
            )
        matched = {f"{f.name}_matched" for f in self.friends}
        outputs = [c for inf in self.inference for c in inf.outputs.values()]
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"inference output columns repeat: {outputs}")
        clash = matched & set(outputs)
        if clash:
            raise ValueError(f"inference outputs {sorted(clash)} collide with friend match flags")
        return self

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The key branch names, most significant first."""
        if isinstance(self.key, KeyPreset):
            return PRESET_KEYS[self.key]
        return tuple(self.key)

    @property
    def default_tree(self) -> str:
        return PRESET_TREES[self.key] if isinstance(self.key, KeyPreset) else DEFAULT_TREE

    @property
    def primary_tree(self) -> str:
        return self.primary.tree or self.default_tree

    def friend_tree(self, friend: FriendSpec) -> str:
        return friend.tree or self.default_tree

    def key_branches(self, friend: FriendSpec | None = None) -> KeyBranches:
        """Where the files of `friend` (None: of the primary) keep the key columns."""
        if friend is not None and friend.key is not None:
            named = zip(self.key_columns, friend.key, strict=True)
            return KeyBranches(tuple((name, (branch,)) for name, branch in named))
        return KeyBranches(tuple((name, (name, *KEY_ALTERNATIVES.get(name, ()))) for name in self.key_columns))

    def normalised(self) -> dict[str, Any]:
        """A canonical JSON-able form: defaults filled, enums as strings (what the codegen ships).

        A friend's `key` appears only where it is set, so that specs without one keep their canonical text and
        hash (the client's cache and the outputs' provenance hold them).
        """
        data = self.model_dump(mode="json")
        for friend in data["friends"]:
            if friend.get("key") is None:
                friend.pop("key", None)
        return data

    def canonical_json(self, *, without_primary_files: bool = False) -> str:
        """Sorted, compact JSON: the same spec always gives the same text (client cache, result cache)."""
        data = self.normalised()
        if without_primary_files:
            data["primary"]["files"] = []
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def spec_hash(self, *, without_primary_files: bool = False) -> str:
        """sha256 of the canonical JSON."""
        text = self.canonical_json(without_primary_files=without_primary_files)
        return hashlib.sha256(text.encode()).hexdigest()


def _format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "spec"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (not part of the join spec)"
        parts.append(f"{where}: {message}")
    return "invalid join spec: " + "; ".join(parts)


def parse_spec(data: Any) -> JoinSpec:
    """Validate a spec given as a mapping (or an existing JoinSpec). Raises SpecError naming the field."""
    if isinstance(data, JoinSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"invalid join spec: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return JoinSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_validation_error(error)) from None


def parse_spec_text(text: str, *, source: str = "spec") -> JoinSpec:
    """Parse YAML or JSON text (JSON is YAML) into a validated spec."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{source} is not valid YAML/JSON: {error}") from None
    return parse_spec(data)


def load_spec(path: str | Path) -> JoinSpec:
    """Read a spec file (YAML or JSON). Relative local file paths in it are taken from the spec's folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"cannot read spec file {path}: {error.strerror}") from None
    spec = parse_spec_text(text, source=str(path))
    return resolve_relative_paths(spec, path.parent)


def _is_url(path: str) -> bool:
    return "://" in path


def resolve_relative_paths(spec: JoinSpec, base: Path) -> JoinSpec:
    """Make relative local paths absolute against `base`, leaving URLs alone."""

    def fix(paths: list[str]) -> list[str]:
        return [p if _is_url(p) or Path(p).is_absolute() else str((base / p).resolve()) for p in paths]

    primary = spec.primary.model_copy(update={"files": fix(spec.primary.files)})
    friends = [f.model_copy(update={"files": fix(f.files)}) for f in spec.friends]
    return spec.model_copy(update={"primary": primary, "friends": friends})
