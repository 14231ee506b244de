"""The stand-in App's routes and state: transformation requests, their file tasks, results and transformers.

What it does as the real App does (ssl-hep/ServiceX `servicex_app`, read for this): the info document with
`code-gen-image` and `capabilities`; submission that asks the code generator for the request's code
(`POST <codegen>/servicex/generated-code` with `{"code": selection}`, parts decoded by position, a non-200
answer's `Message` relayed as `Something went wrong (Failed to generate translation code: ...)` with HTTP
500), creates bucket `<request_id>`, sends `transformer_sidecar.transform_file` Celery tasks routed to the
non-durable, auto-delete queue `transformer-<request_id>`, and starts the transformer; the status document
with the object-store endpoint as host:port; results as `TransformationResult.to_json` rows; file-complete
that counts successes and failures and completes the request when no file remains, then stops its
transformers. What it does not do: users and tokens, DID lookups (file lists only), Kubernetes.

It also checks the transformer's side of the contract: a success report must name an object of the
request's bucket whose size is `total-bytes`; a mismatch is kept in `violations` (`GET /standin/violations`).
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
import uuid
import zipfile
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from celery import Celery
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from kombu import Queue
from minio import Minio
from pydantic import ValidationError

from tests.standin_app.multipart import decode_parts
from transformer.models import (
    TRANSFORM_TASK_NAME,
    FileCompleteReport,
    FileStatus,
    ResultDestination,
    TransformTask,
    queue_name,
)

log = logging.getLogger("standin_app")

APP_VERSION = "standin-1.0"
CAPABILITIES = ["poll_local_transformation_results", "long_sample_titles_10240"]
RESULT_FORMATS = ("arrow", "parquet", "root-file")  # what the App's request parser accepts
ISO = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class StandinConfig:
    """Where the stand-in's collaborators are.

    Args:
        codegens: code generator name -> its base URL (`CODE_GEN_SERVICE_URLS` of the App).
        images: code generator name -> image name (`CODE_GEN_IMAGES`, shown by `GET /servicex`).
        rabbit_uri: the broker the file tasks go to.
        minio_url: the object store, host:port.
        minio_access_key: its access key.
        minio_secret_key: its secret key.
        advertised_url: this App's URL as transformers reach it (base of `service_endpoint`).
        workdir: where generated code and transformer logs go.
        transformer_command: the transformer to start per request, a command template with `{request_id}`,
            `{rabbit_uri}`, `{generated_dir}`, `{result_format}`, `{result_destination}`; None starts none.
        transformer_env: environment added for the transformer (`MINIO_*` are always given).
        max_transformers: at most this many requests' transformers run at once (a cluster with room for
            that many transformer pods); a request's transformer starts when a slot frees. None: no limit.
    """

    codegens: dict[str, str]
    images: dict[str, str]
    rabbit_uri: str
    minio_url: str
    minio_access_key: str
    minio_secret_key: str
    advertised_url: str
    workdir: Path
    transformer_command: str | None = None
    transformer_env: dict[str, str] = field(default_factory=dict)
    max_transformers: int | None = None


@dataclass
class Result:
    """One file-complete report, as the App stores it (`TransformationResult`)."""

    id: int
    report: FileCompleteReport
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request-id": self.report.request_id,
            "file-id": self.report.file_id,
            "file-path": self.report.file_path,
            "s3-object-name": self.report.s3_object_name,
            "transform_status": self.report.status.value,
            "transform_time": int(self.report.total_time),
            "total-events": self.report.total_events,
            "total-bytes": self.report.total_bytes,
            "avg-rate": self.report.avg_rate,
            "created_at": self.created_at.replace(tzinfo=None).isoformat(),
        }


@dataclass
class Transformation:
    """One transformation request and what happened to it."""

    request_id: str
    title: str | None
    files: list[str]
    selection: str
    codegen: str
    image: str
    language: str
    command: str
    generated_dir: Path
    result_destination: str
    result_format: str
    submit_time: datetime
    status: str = "Running"
    finish_time: datetime | None = None
    results: list[Result] = field(default_factory=list)
    transformers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.time)
    transformer_started_at: float | None = None
    finished_at: float | None = None
    holds_slot: bool = False

    @property
    def files_completed(self) -> int:
        return sum(r.report.status is FileStatus.SUCCESS for r in self.results)

    @property
    def files_failed(self) -> int:
        return sum(r.report.status is FileStatus.FAILURE for r in self.results)

    @property
    def files_remaining(self) -> int:
        return len(self.files) - self.files_completed - self.files_failed

    def to_json(self, config: StandinConfig) -> dict[str, Any]:
        """`TransformRequest.to_json()` and the object-store fields of `GET /servicex/transformation/<id>`."""
        return {
            "request_id": self.request_id,
            "title": self.title,
            "did": f"file-list:{len(self.files)} files",
            "did_id": 1,
            "selection": self.selection,
            "tree-name": None,
            "image": self.image,
            "workers": 1,
            "result-destination": self.result_destination,
            "result-format": self.result_format,
            "generated-code-cm": f"{self.request_id}-generated-source",
            "status": self.status,
            "failure-info": None,
            "app-version": APP_VERSION,
            "code-gen-image": config.images[self.codegen],
            "files": len(self.files),
            "files-completed": self.files_completed,
            "files-failed": self.files_failed,
            "files-remaining": self.files_remaining,
            "submit-time": self.submit_time.strftime(ISO),
            "finish-time": self.finish_time.strftime(ISO) if self.finish_time else "None",
            "minio-endpoint": config.minio_url,
            "minio-secured": False,
            "minio-access-key": config.minio_access_key,
            "minio-secret-key": config.minio_secret_key,
        }


class CodegenFailedError(ValueError):
    """The code generator refused the selection (its `Message`)."""


class Standin:
    """The stand-in App's state and actions (thread-safe: FastAPI runs sync routes in a pool)."""

    def __init__(self, config: StandinConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.transformations: dict[str, Transformation] = {}
        self.violations: list[str] = []
        self.next_result_id = 1
        self.duplicate_reports = 0
        self.running_slots = 0
        self.waiting: deque[Transformation] = deque()
        self.celery = Celery("ServiceX-App", broker=config.rabbit_uri)
        self.celery.conf.task_routes = (self._route_task,)
        self.celery.conf.broker_connection_retry_on_startup = True
        self.minio = Minio(
            config.minio_url,
            access_key=config.minio_access_key,
            secret_key=config.minio_secret_key,
            secure=False,
            region="us-east-1",
        )

    @staticmethod
    def _route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        """The App's Celery router: file tasks to their request's non-durable, auto-delete queue."""
        if name == TRANSFORM_TASK_NAME:
            return {"queue": Queue(name=queue_name(kwargs["request_id"]), durable=False, auto_delete=True)}
        return {"queue": "celery"}

    def info(self) -> dict[str, Any]:
        return {
            "app-version": APP_VERSION,
            "code-gen-image": self.config.images,
            "capabilities": CAPABILITIES,
        }

    def generate_code(self, codegen: str, selection: str) -> tuple[str, str, str, bytes]:
        """Ask the code generator, as the App's `CodeGenAdapter` does."""
        url = self.config.codegens[codegen] + "/servicex/generated-code"
        response = httpx.post(url, json={"code": selection}, timeout=httpx.Timeout(60.0, connect=5.0))
        if response.status_code != 200:
            raise CodegenFailedError(f"Failed to generate translation code: {response.json()['Message']}")
        parts = decode_parts(response.content, response.headers["content-type"])
        image, language, command = (parts[i][1].decode().strip() for i in range(3))
        return image, language, command, parts[3][1]

    def submit(self, body: dict[str, Any]) -> Transformation:
        """Create a transformation: code, bucket, tasks, transformer."""
        request_id = str(uuid.uuid4())
        codegen = str(body["codegen"])
        files = [str(f) for f in body["file-list"]]
        image, language, command, zip_data = self.generate_code(codegen, str(body["selection"]))
        generated = self.config.workdir / request_id / "generated"
        generated.mkdir(parents=True)
        with zipfile.ZipFile(io.BytesIO(zip_data)) as archive:
            archive.extractall(generated)
        transformation = Transformation(
            request_id=request_id,
            title=body.get("title"),
            files=files,
            selection=str(body["selection"]),
            codegen=codegen,
            image=image,
            language=language,
            command=command,
            generated_dir=generated,
            result_destination=str(body["result-destination"]),
            result_format=str(body.get("result-format", "arrow")),
            submit_time=datetime.now(tz=UTC),
        )
        if transformation.result_destination == "object-store":
            self.minio.make_bucket(request_id)
        with self.lock:
            self.transformations[request_id] = transformation
        endpoint = f"{self.config.advertised_url}/servicex/internal/transformation/{request_id}"
        for file_id, path in enumerate(files, start=1):
            task = TransformTask(
                request_id=request_id,
                file_id=file_id,
                paths=path.split(","),
                service_endpoint=endpoint,
                result_destination=ResultDestination(transformation.result_destination),
                result_format=transformation.result_format,
            )
            self.celery.send_task(TRANSFORM_TASK_NAME, kwargs=task.model_dump(mode="json"))
        self._schedule(transformation)
        log.info("request %s: %d file task(s) sent", request_id, len(files))
        return transformation

    def _schedule(self, transformation: Transformation) -> None:
        """Start the request's transformer now, or when a slot frees (`max_transformers`)."""
        if self.config.transformer_command is None:
            return
        limit = self.config.max_transformers
        with self.lock:
            if limit is not None and self.running_slots >= limit:
                self.waiting.append(transformation)
                log.info("request %s: waiting for a transformer slot (%d waiting)", transformation.request_id,
                         len(self.waiting))
                return
            self.running_slots += 1
            transformation.holds_slot = True
        self._start_transformer(transformation)

    def _release_slot(self, transformation: Transformation) -> None:
        """A finished request's slot goes to the next waiting request."""
        with self.lock:
            if not transformation.holds_slot:
                return
            transformation.holds_slot = False
            if not self.waiting:
                self.running_slots -= 1
                return
            following = self.waiting.popleft()
            following.holds_slot = True
        self._start_transformer(following)

    def _finish(self, transformation: Transformation) -> None:
        self.stop_transformers(transformation)
        self._release_slot(transformation)

    def _start_transformer(self, transformation: Transformation) -> None:
        template = self.config.transformer_command
        if template is None:
            return
        command = template.format(
            request_id=transformation.request_id,
            rabbit_uri=self.config.rabbit_uri,
            generated_dir=transformation.generated_dir,
            result_format=transformation.result_format,
            result_destination=transformation.result_destination,
        )
        env = {
            **os.environ,
            "MINIO_URL": self.config.minio_url,
            "MINIO_ACCESS_KEY": self.config.minio_access_key,
            "MINIO_SECRET_KEY": self.config.minio_secret_key,
            "MINIO_ENCRYPT": "false",
            "POD_NAME": f"transformer-{transformation.request_id[:8]}",
            **self.config.transformer_env,
        }
        log_path = transformation.generated_dir.parent / "transformer.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                shlex.split(command), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        transformation.transformers.append(process)
        transformation.transformer_started_at = time.time()
        log.info("request %s: transformer pid %d started: %s", transformation.request_id, process.pid, command)

    def file_complete(self, request_id: str, body: dict[str, Any]) -> tuple[int, str]:
        """Record one file's report; complete the request when no file remains."""
        report = FileCompleteReport.model_validate(body)
        with self.lock:
            transformation = self.transformations.get(request_id)
            if transformation is None:
                return 404, "Request not found"
            if any(r.report.file_id == report.file_id for r in transformation.results):
                self.duplicate_reports += 1
                return 200, "Ignoring duplicate result report"
            transformation.results.append(Result(self.next_result_id, report, datetime.now(tz=UTC)))
            self.next_result_id += 1
            done = transformation.files_remaining == 0
            if done:
                transformation.status = "Complete"
                transformation.finish_time = datetime.now(tz=UTC)
                transformation.finished_at = time.time()
        if report.status is FileStatus.SUCCESS:
            self._check_object(request_id, report)
        if done:
            # The App stops the transformers after answering: the last one may be waiting for this answer.
            threading.Thread(target=self._finish, args=(transformation,), daemon=True).start()
        return 200, "Ok"

    def _check_object(self, request_id: str, report: FileCompleteReport) -> None:
        try:
            size = self.minio.stat_object(request_id, report.s3_object_name).size
        except Exception as error:  # noqa: BLE001 - any failure is a violation to report, not to raise
            size = None
            problem = f"{type(error).__name__}: {error}"
        else:
            problem = "" if size == report.total_bytes else f"object size {size} != total-bytes"
        if problem:
            message = f"request {request_id} file {report.file_id} ({report.s3_object_name}): {problem}"
            log.error("contract violation: %s", message)
            with self.lock:
                self.violations.append(message)

    def stop_transformers(self, transformation: Transformation) -> None:
        """SIGTERM a request's transformers (the App shuts down the transformer job) and wait for them."""
        for process in transformation.transformers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in transformation.transformers:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        """Stop every transformer and close the broker connections."""
        with self.lock:
            self.waiting.clear()
        for transformation in list(self.transformations.values()):
            self.stop_transformers(transformation)
        self.celery.close()


def create_standin(config: StandinConfig) -> FastAPI:
    """The stand-in App as a FastAPI application."""
    standin = Standin(config)
    app = FastAPI(title="ServiceX App stand-in", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.standin = standin
    app.router.add_event_handler("shutdown", standin.close)

    @app.get("/servicex")
    def info() -> dict[str, Any]:
        return standin.info()

    @app.post("/servicex/transformation")
    def submit(body: dict[str, Any]) -> JSONResponse:
        codegen = body.get("codegen")
        if codegen not in config.images:
            return JSONResponse({"message": f"Invalid Codegen Image Passed in Request: {codegen}"}, 500)
        if (
            body.get("result-destination") not in ("object-store", "volume")
            or body.get("result-format", "arrow") not in RESULT_FORMATS
        ):
            return JSONResponse({"message": "The json request was malformed: result-destination/format"}, 400)
        if bool(body.get("did")) == bool(body.get("file-list")):
            return JSONResponse({"message": "Must provide did or file-list but not both"}, 400)
        if body.get("did"):
            scheme = str(body["did"]).split("://")[0]
            return JSONResponse({"message": f"DID scheme is not supported: {scheme}"}, 400)
        try:
            transformation = standin.submit(body)
        except (CodegenFailedError, httpx.HTTPError, OSError) as error:
            log.error("submission failed: %s", error)
            return JSONResponse({"message": f"Something went wrong ({error})"}, 500)
        return JSONResponse({"request_id": transformation.request_id})

    @app.get("/servicex/transformation/{request_id}")
    def status(request_id: str) -> JSONResponse:
        transformation = standin.transformations.get(request_id)
        if transformation is None:
            return JSONResponse({"message": f"Transformation request not found with id: {request_id}"}, 404)
        with standin.lock:
            return JSONResponse(transformation.to_json(config))

    @app.get("/servicex/transformation/{request_id}/results")
    def results(request_id: str, later_than: str | None = None) -> JSONResponse:
        transformation = standin.transformations.get(request_id)
        if transformation is None:
            return JSONResponse({"message": f"Transformation request not found with id: {request_id}"}, 404)
        since = datetime.fromisoformat(later_than) if later_than else None
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        with standin.lock:
            rows = [r for r in transformation.results if since is None or r.created_at >= since]
            return JSONResponse({"results": [r.to_json() for r in rows]})

    @app.put("/servicex/internal/transformation/{request_id}/file-complete")
    def file_complete(request_id: str, body: dict[str, Any]) -> PlainTextResponse:
        try:
            code, text = standin.file_complete(request_id, body)
        except ValidationError as error:
            message = f"file-complete body does not follow the contract: {error}"
            log.error("contract violation: %s", message)
            with standin.lock:
                standin.violations.append(message)
            return PlainTextResponse(message, 400)
        return PlainTextResponse(text, code)

    @app.get("/standin/violations")
    def violations() -> list[str]:
        with standin.lock:
            return list(standin.violations)

    @app.get("/standin/timings")
    def timings() -> dict[str, Any]:
        """Per request: submission, transformer start and completion times (epoch seconds)."""
        with standin.lock:
            return {
                rid: {"submitted": t.submitted_at, "transformer_started": t.transformer_started_at,
                      "finished": t.finished_at, "pids": [p.pid for p in t.transformers]}
                for rid, t in standin.transformations.items()
            }

    @app.get("/standin/stats")
    def stats() -> dict[str, Any]:
        """Duplicate reports ignored, transformer slots in use, requests waiting for one."""
        with standin.lock:
            return {"duplicate_reports": standin.duplicate_reports, "running": standin.running_slots,
                    "waiting": len(standin.waiting)}

    @app.get("/standin/transformations")
    def transformations() -> dict[str, Any]:
        with standin.lock:
            return {rid: t.to_json(config) for rid, t in standin.transformations.items()}

    return app
