"""The code generator service (FastAPI): `POST /servicex/generated-code`, `/healthz`, `/readyz`, `/metrics`.

`app.create_app(settings)` builds the application; `server.run_from_args` serves it (`servicex-joiner
serve`). The work itself (checking a spec, building the zip) is `transformer.codegen`; this package only
speaks HTTP, counts and wires the settings in.
"""

from __future__ import annotations
