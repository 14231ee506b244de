"""servicex-joiner's join engine: event-key sort-merge joins of columnar HEP data.

Pure library: numpy, awkward, pyarrow and uproot only; it reads no environment and knows nothing of
ServiceX, RabbitMQ or S3. `joiner.join` joins in-memory arrays; `joiner.engine.join_file` runs one input
file of a spec end to end.
"""

from __future__ import annotations

from joiner.errors import (
    CollectionLengthError,
    DuplicateKeyError,
    InputFileError,
    JoinError,
    KeyMismatchError,
    KeyTypeError,
    MissingColumnError,
    SchemaError,
    SpecError,
)
from joiner.spec import FriendSpec, InferenceSpec, JoinSpec, PrimarySpec, load_spec, parse_spec

__all__ = [
    "CollectionLengthError",
    "DuplicateKeyError",
    "FriendSpec",
    "InferenceSpec",
    "InputFileError",
    "JoinError",
    "JoinSpec",
    "KeyMismatchError",
    "KeyTypeError",
    "MissingColumnError",
    "PrimarySpec",
    "SchemaError",
    "SpecError",
    "join",
    "load_spec",
    "parse_spec",
]


def __getattr__(name: str) -> object:
    # `join` pulls in pyarrow compute and awkward; keep `import joiner` cheap for the command line.
    if name == "join":
        from joiner.api import join

        return join
    raise AttributeError(name)
