"""`primary.cut` on an RNTuple: uproot evaluates expressions for TTrees only.

uproot's `TTree.arrays` computes aliases and cuts with its Python expression language. `RNTuple.arrays`
takes the same arguments but ignores them (uproot 5.7), so a cut on an RNTuple primary (NanoAOD is moving
to RNTuple) would read nothing. Here the same language finds the fields an expression names
(`PythonLanguage.free_symbols`, which knows dotted names such as `EventInfoAuxDyn.runNumber`), those fields
are read, and the expression is evaluated over them with the language's functions (`sqrt`, `abs`, ...),
so that a cut means on an RNTuple what it means on a TTree.
"""

from __future__ import annotations

import ast
from collections.abc import Collection
from typing import Any

import awkward as ak


def _dotted_name(node: ast.expr) -> str | None:
    """`a.b.c` for a chain of attribute accesses on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        parent = _dotted_name(node.value)
        return None if parent is None else f"{parent}.{node.attr}"
    return None


class _FieldsByName(ast.NodeTransformer):
    """Rewrites every use of a field (`MET_pt`, `EventInfoAuxDyn.runNumber`) as `_fields["..."]`."""

    def __init__(self, fields: Collection[str]) -> None:
        self.fields = fields

    def _replace(self, node: ast.expr) -> ast.expr | None:
        name = _dotted_name(node)
        if name is None or name not in self.fields:
            return None
        return ast.copy_location(
            ast.Subscript(value=ast.Name("_fields", ast.Load()), slice=ast.Constant(name), ctx=ast.Load()), node
        )

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return self._replace(node) or node

    def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
        replaced = self._replace(node)
        return replaced if replaced is not None else self.generic_visit(node)  # type: ignore[return-value]


def evaluate_on_fields(rntuple: Any, expression: str, *, start: int, stop: int, path: str, tree: str) -> ak.Array:
    """The value of `expression` for entries `start`..`stop` of an RNTuple, as uproot computes it on a TTree.

    Raises uproot's KeyInFileError for a name that is neither a field nor a function, and SyntaxError
    for an expression that is not Python.
    """
    import uproot

    language = uproot.language.python.PythonLanguage()
    available = set(rntuple.keys())
    used = list(dict.fromkeys(language.free_symbols(expression, available, {}, path, tree)))
    fields = rntuple.arrays(used, entry_start=start, entry_stop=stop, library="ak") if used else {}
    node = _FieldsByName(set(used)).visit(ast.parse(expression.strip(), mode="eval"))
    code = compile(ast.fix_missing_locations(node), f"<primary.cut of {path}>", "eval")
    scope = {"__builtins__": {}, **language.functions, "_fields": {name: fields[name] for name in used}}
    value = eval(code, scope)  # the spec's cut, as uproot itself evaluates it on a TTree
    if not used:  # a constant cut: one value for every entry
        return ak.Array([bool(value)] * (stop - start))
    return ak.Array(value)
