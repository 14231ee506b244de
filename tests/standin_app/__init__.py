"""A stand-in for the ServiceX App, for end-to-end tests with the real servicex client.

The real App needs Kubernetes and Postgres; this implements the endpoints the servicex client (3.3.1) and a
transformer use, with the App's behaviour where it matters (verified against ssl-hep/ServiceX): `GET
/servicex` (code generators, capabilities), `POST /servicex/transformation` (calls the code generator over
HTTP, creates the bucket, sends one real Celery task per file to queue `transformer-<request_id>`, starts
the transformer), `GET /servicex/transformation/<id>` and `/results`, and the internal file-complete.
Run it as a process: `python -m tests.standin_app --help`.
"""

from __future__ import annotations
