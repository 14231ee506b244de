"""The user side: a `servicex` query class for join specs, the samples of right/outer joins, a loader.

Nothing here is on the start-up path of the `servicex-joiner` command, and this package's `__init__` must
not import `servicex`: the servicex client imports every `servicex.query` entry point (our
`transformer.client.query:JoinQuery`) while it initialises, and an `__init__` that imported servicex would
make that a circular import. Import the parts directly: `transformer.client.query`,
`transformer.client.samples`, `transformer.client.loader`.
"""

from __future__ import annotations
