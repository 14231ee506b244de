"""The code generator's FastAPI application: `create_app(settings)`.

Routes: `POST /servicex/generated-code` (the ServiceX App's call: `{"code": <selection>}` in, the parts
`transformer_image`, `language`, `command`, `zip_data` out as `multipart/form-data`), `GET /healthz`
(alive), `GET /readyz` (configured to answer), `GET /metrics` (Prometheus). Every error answer is JSON
`{"Message": "..."}`, the key the App reads and relays to the user: HTTP 500 for a spec that is invalid or
refused (as ServiceX's own code generators answer), 413 for a body over `JOINER_MAX_BODY_BYTES`, 400 for a
body that is not `{"code": <string>}`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from joiner.errors import SpecError
from joiner.spec import JoinSpec
from transformer.api.friend_files import RemoteFileResolver
from transformer.api.metrics import CONTENT_TYPE, CodegenMetrics, Outcome
from transformer.api.multipart import encode_form
from transformer.codegen import CodegenLimits, FileResolver, SpecRefusedError, generate
from transformer.errors import StorageError
from transformer.facility_settings import facility_settings
from transformer.inference import InferenceConfigError, ModelMismatchError, check_spec_against_server
from transformer.locations import AllowedLocations
from transformer.settings import Settings
from transformer.storage.s3 import S3Store

log = logging.getLogger(__name__)

GENERATED_CODE_PATH = "/servicex/generated-code"


@dataclass(frozen=True)
class _Service:
    """What the routes need, built once from the settings."""

    settings: Settings
    allowed: AllowedLocations
    limits: CodegenLimits
    resolver: FileResolver
    metrics: CodegenMetrics

    def check_inference(self, spec: JoinSpec) -> None:
        """Refuse inference entries that do not fit the served models (when a Triton server is reachable)."""
        try:
            checked = check_spec_against_server(spec, self.settings.inference.triton_url)
        except (ModelMismatchError, InferenceConfigError) as error:
            raise SpecRefusedError(f"invalid join spec: inference: {error}") from None
        if spec.inference and not checked:
            log.warning(
                "inference entries of spec %s not checked: no Triton server reachable (TRITON_URL=%s)",
                spec.spec_hash()[:12],
                self.settings.inference.triton_url,
            )


def _default_resolver(settings: Settings) -> FileResolver:
    store = None
    if settings.object_store.configured:
        try:
            store = S3Store(settings.object_store, read_timeout=10.0)
        except StorageError as error:
            log.warning("s3:// friend files will not be sized: %s", error)
    return RemoteFileResolver(store)


def create_app(settings: Settings, *, resolver: FileResolver | None = None) -> FastAPI:
    """Build the code generator application.

    Args:
        settings: the service settings (science image, allowed locations, limits, Triton URL, object store).
        resolver: finds friend files and their sizes; default: local paths, the settings' object store for
            `s3://`, HEAD requests for `https://`.

    Returns:
        The FastAPI application.
    """
    service = _Service(
        settings=settings,
        allowed=AllowedLocations(settings.worker.allowed_locations),
        limits=CodegenLimits(
            max_friend_files=settings.worker.max_friend_files,
            max_friend_bytes=settings.worker.max_friend_bytes,
        ),
        resolver=resolver if resolver is not None else _default_resolver(settings),
        metrics=CodegenMetrics(),
    )
    app = FastAPI(title="servicex-joiner code generator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.post(GENERATED_CODE_PATH)
    async def generated_code(request: Request) -> Response:
        started = time.perf_counter()
        outcome, response = await _generated_code(request, service)
        service.metrics.requests.labels(outcome=outcome.value).inc()
        service.metrics.seconds.observe(time.perf_counter() - started)
        return response

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not settings.service.science_image.strip():
            return JSONResponse({"status": "not ready", "reason": "TRANSFORMER_SCIENCE_IMAGE is empty"}, 503)
        if not service.allowed.prefixes:
            return JSONResponse({"status": "not ready", "reason": "JOINER_ALLOWED_LOCATIONS is empty"}, 503)
        return JSONResponse({"status": "ready", "image": settings.service.science_image})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=error)
        service.metrics.requests.labels(outcome=Outcome.ERROR.value).inc()
        message = f"internal error of the join code generator: {type(error).__name__}: {error}"
        return JSONResponse({"Message": message}, status_code=500)

    return app


def _message(status: int, message: str) -> JSONResponse:
    return JSONResponse({"Message": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it is longer than `limit` bytes (without reading the rest)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _generated_code(request: Request, service: _Service) -> tuple[Outcome, Response]:
    limit = service.settings.service.max_body_bytes
    body = await _read_body(request, limit)
    if body is None:
        message = f"the request body is larger than {limit} bytes (JOINER_MAX_BODY_BYTES); the join spec is too big"
        log.info("code generation refused: %s", message)
        return Outcome.TOO_LARGE, _message(413, message)
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return Outcome.MALFORMED, _message(400, f'expected a JSON body {{"code": <join spec>}}: {error}')
    if not isinstance(payload, dict) or not isinstance(payload.get("code"), str):
        return Outcome.MALFORMED, _message(400, 'expected a JSON body {"code": <join spec as a JSON string>}')
    try:
        code, checked = await run_in_threadpool(
            generate,
            payload["code"],
            transformer_image=service.settings.service.science_image,
            allowed=service.allowed,
            limits=service.limits,
            resolver=service.resolver,
            check_inference=service.check_inference,
            facility=facility_settings(service.settings),
        )
    except SpecError as error:
        log.info("code generation refused: %s", error)
        return Outcome.REFUSED, _message(500, str(error))
    service.metrics.friend_files.observe(checked.friend_files)
    service.metrics.friend_bytes.inc(checked.friend_bytes)
    log.info(
        "generated code for spec %s: %d friend(s), %d friend file(s), %d bytes (%d unsized), %d inference",
        checked.spec.spec_hash()[:12],
        len(checked.spec.friends),
        checked.friend_files,
        checked.friend_bytes,
        checked.unsized_files,
        len(checked.spec.inference),
    )
    body_bytes, content_type = encode_form(
        [
            ("transformer_image", code.transformer_image),
            ("language", code.language),
            ("command", code.command),
            ("zip_data", code.zip_data),
        ]
    )
    return Outcome.GENERATED, Response(body_bytes, media_type=content_type)
