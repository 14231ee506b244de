"""`JoinQuery`: a join spec as a query of the `servicex` client (`deliver`), code generator `join`.

Registered under the `servicex.query` entry point, so it is also `servicex.query.JoinQuery` and `!Join` in
the client's YAML request files. It validates the spec locally with the same model the code generator uses
(`joiner.spec`), so a bad spec fails before anything is submitted, and its selection string is the spec's
sorted, compact JSON: the same spec always gives the same text, which the client's cache recognises.

This module imports `servicex` and must stay off the start-up path of the `servicex-joiner` command.
"""

from __future__ import annotations

import sys

if "servicex" not in sys.modules:
    # Importing servicex imports every `servicex.query` entry point, this module among them. Were this module
    # to import servicex while it is itself half-imported, servicex would find no `JoinQuery` in it and fail
    # with a circular import. So step aside first: servicex imports (and completes) a fresh copy of this
    # module, and the import system hands that copy to whoever asked for this one.
    sys.modules.pop(__name__, None)
    import servicex  # noqa: F401

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from servicex.query_core import QueryStringGenerator

from joiner.errors import SpecError
from joiner.spec import How, JoinSpec, load_spec, parse_spec, parse_spec_text

CODEGEN = "join"
"""Name of the code generator in a ServiceX deployment (`codeGen.join` of the chart)."""

SpecSource = JoinSpec | Mapping[str, Any] | str | os.PathLike[str]
"""What `JoinQuery` accepts: a spec, its mapping, a YAML/JSON file path, or YAML/JSON text."""


def coerce_spec(source: SpecSource) -> JoinSpec:
    """Turn any accepted spec source into a validated `JoinSpec`.

    Args:
        source: a `JoinSpec`; a mapping; a path (`str` or `os.PathLike`) of a YAML or JSON spec file; or
            YAML/JSON text (a string holding a newline, starting with `{`, or a one-line `key: value`
            mapping that is not a file's name).

    Returns:
        The validated spec. Relative local paths in a spec file are taken from the file's folder.

    Raises:
        SpecError: the spec is invalid (the message names the field) or the file cannot be read.
    """
    if isinstance(source, JoinSpec):
        return source
    if isinstance(source, Mapping):
        return parse_spec(dict(source))
    if isinstance(source, str) and ("\n" in source or source.lstrip().startswith("{")):
        return parse_spec_text(source)
    if isinstance(source, str) and ": " in source and not Path(source).exists():
        return parse_spec_text(source)  # one line of YAML, such as `!Join "key: cms"`
    if isinstance(source, str | os.PathLike):
        return load_spec(Path(source))
    raise SpecError(
        f"JoinQuery takes a JoinSpec, a mapping, or the path of a YAML/JSON spec file, not {type(source).__name__}"
    )


def check_for_servicex(spec: JoinSpec) -> None:
    """Refuse a spec that cannot run as a ServiceX request as it stands.

    Right and outer joins need tasks over the friend files too and the primary files named in the spec
    (DESIGN §4); `transformer.client.samples.join_samples` builds such samples from a spec and a dataset.

    Raises:
        SpecError: a right/outer spec without `primary.files`.
    """
    outer_like = [f for f in spec.friends if f.how in (How.RIGHT, How.OUTER)]
    if outer_like and not spec.primary.files:
        friend = outer_like[0]
        raise SpecError(
            f"invalid join spec: primary.files: friend {friend.name!r} uses how: {friend.how.value}, which "
            "through ServiceX needs the primary files named in the spec and samples over the friend files; "
            "build the request with transformer.client.samples.join_request(spec, dataset.FileList([...]))"
        )


class JoinQuery(QueryStringGenerator):  # type: ignore[misc]  # servicex ships no type information
    """A join spec as a ServiceX query: `Query=JoinQuery(spec)` in a `deliver()` sample.

    Args:
        spec: the join spec: a `JoinSpec`, a mapping, the path of a YAML/JSON file, or YAML/JSON text.
        codegen: the code generator's name in the ServiceX deployment, if it is not `join`.

    Raises:
        SpecError: the spec is invalid; the message names the field and what is wrong.

    Example:
        >>> from servicex import dataset, deliver
        >>> files = ["root://eos.example//nano_1.root"]
        >>> spec = {"key": "cms", "primary": {"columns": ["Jet_pt"]},
        ...         "friends": [{"name": "sys", "files": ["s3://friends/sys.root"], "columns": ["Jet_sf"]}]}
        >>> deliver({"General": {"OutputFormat": "parquet"},  # doctest: +SKIP
        ...          "Sample": [{"Name": "x", "Dataset": dataset.FileList(files), "Query": JoinQuery(spec)}]})
    """

    yaml_tag = "!Join"
    default_codegen: str | None = CODEGEN

    def __init__(self, spec: SpecSource, *, codegen: str | None = None) -> None:
        self.spec: JoinSpec = coerce_spec(spec)
        check_for_servicex(self.spec)
        if codegen is not None:
            self.default_codegen = codegen

    def generate_selection_string(self) -> str:
        """The selection sent to ServiceX: the spec's canonical (sorted, compact) JSON."""
        return self.spec.canonical_json()

    @classmethod
    def from_yaml(cls, constructor: Any, node: Any) -> JoinQuery:
        """Build a query from a `!Join` node of the client's YAML request file.

        The node is either a string (the spec as YAML/JSON text, or the path of a spec file) or a mapping
        written inline under the tag.
        """
        from ruamel.yaml.nodes import MappingNode, ScalarNode

        if isinstance(node, ScalarNode):
            return cls(str(node.value))
        if isinstance(node, MappingNode):
            # Construct the mapping as a plain one: a copy of the node without our tag.
            plain = MappingNode("tag:yaml.org,2002:map", node.value, node.start_mark, node.end_mark)
            data = constructor.construct_object(plain, deep=True)
            return cls(dict(data))
        raise SpecError(f"!Join takes a mapping, YAML/JSON text or a file path, not a {type(node).__name__}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JoinQuery):
            return NotImplemented
        return (self.generate_selection_string(), self.default_codegen) == (
            other.generate_selection_string(),
            other.default_codegen,
        )

    def __hash__(self) -> int:
        return hash((self.generate_selection_string(), self.default_codegen))

    def __repr__(self) -> str:
        friends = ", ".join(f"{f.name}:{f.how.value}" for f in self.spec.friends) or "no friends"
        key = json.dumps(list(self.spec.key_columns))
        return f"JoinQuery(key={key}, {friends}, spec_hash={self.spec.spec_hash()[:12]})"
