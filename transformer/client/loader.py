"""Read the files a join request delivered back as one awkward array, or as coffea NanoEvents.

`deliver()` answers a mapping of sample name to the downloaded files; a right or outer join spreads over
several samples (`transformer.client.samples`), whose files together are the join. Every part of one join
has the same schema, so the parts concatenate into one array. Files are Parquet (`OutputFormat: parquet`)
or ROOT files holding a `servicex` tree; each is recognised by its first bytes, since ServiceX names ROOT
outputs without a suffix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import awkward as ak

ROOT_TREE = "servicex"
"""Tree name of `root-file` outputs (DESIGN §3)."""

Delivered = Mapping[str, Iterable[str | PathLike[str]]] | Iterable[str | PathLike[str]]
"""What the loader takes: `deliver()`'s answer, or the file paths themselves."""


def delivered_files(delivered: Delivered, names: Sequence[str] | None = None) -> list[Path]:
    """The delivered file paths, in a stable order (by sample, then by name).

    Args:
        delivered: `deliver()`'s answer (sample name -> files) or a list of file paths.
        names: the samples to take (e.g. `transformer.client.samples.sample_names(spec, name)`); default:
            every sample of `delivered`.

    Returns:
        The paths. A sample whose transform failed raises the client's exception here.

    Raises:
        KeyError: a name in `names` is not a sample of `delivered`.
    """
    if isinstance(delivered, Mapping):
        chosen = list(delivered) if names is None else list(names)
        missing = [n for n in chosen if n not in delivered]
        if missing:
            raise KeyError(f"no sample named {missing} in the delivered result (samples: {sorted(delivered)})")
        return [Path(p) for n in chosen for p in sorted(str(f) for f in delivered[n])]
    return [Path(p) for p in delivered]


def read_file(path: str | PathLike[str], columns: Sequence[str] | None = None) -> ak.Array:
    """Read one delivered file (Parquet, or ROOT with a `servicex` tree) as an awkward array.

    Args:
        path: the file.
        columns: only these columns (default: all).
    """
    path = Path(path)
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic == b"root":
        import uproot

        with uproot.open(path) as file:
            return file[ROOT_TREE].arrays(filter_name=list(columns) if columns is not None else None)
    if magic != b"PAR1":
        raise ValueError(f"{path} is neither a Parquet file nor a ROOT file")
    return ak.from_parquet(path, columns=list(columns) if columns is not None else None)


def load_joined(
    delivered: Delivered, *, names: Sequence[str] | None = None, columns: Sequence[str] | None = None
) -> ak.Array:
    """The joined rows of a request as one awkward array (all parts concatenated).

    Args:
        delivered: `deliver()`'s answer or a list of file paths.
        names: the samples that make up the join (default: all of `delivered`).
        columns: only these columns (default: all).

    Raises:
        ValueError: nothing was delivered.
    """
    paths = delivered_files(delivered, names)
    if not paths:
        raise ValueError("the request delivered no files: nothing to read")
    arrays = [read_file(p, columns) for p in paths]
    return arrays[0] if len(arrays) == 1 else ak.concatenate(arrays)


def load_events(delivered: Delivered, *, names: Sequence[str] | None = None, schemaclass: Any = None) -> list[Any]:
    """The delivered Parquet files as coffea NanoEvents, one events array per file.

    coffea builds NanoEvents from one file at a time, and analyses process them file by file. A friend's
    jagged column with the collection's counts joins the collection (`Jet_sf` -> `events.Jet.sf`). Unmatched
    rows of a left join are nulls at the list level, which coffea refuses to read; ask for
    `fill_missing: nan` in the spec for coffea (DESIGN §4).

    Args:
        delivered: `deliver()`'s answer or a list of file paths (Parquet output).
        names: the samples to take (default: all).
        schemaclass: a coffea schema. Default: `NanoAODSchema` without its warnings about missing
            cross-reference branches, since a join's output holds only the columns the spec asked for.

    Returns:
        One eager NanoEvents array per file, in the order of `delivered_files`.
    """
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    if schemaclass is None:

        class JoinedNanoAODSchema(NanoAODSchema):  # type: ignore[misc]  # coffea ships no type information
            warn_missing_crossrefs = False

        schemaclass = JoinedNanoAODSchema
    return [
        NanoEventsFactory.from_parquet(str(path), mode="eager", schemaclass=schemaclass).events()
        for path in delivered_files(delivered, names)
    ]
