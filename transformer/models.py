"""The wire vocabulary of the ServiceX contract (DESIGN.md §3): the one place its keys are spelled.

Owns the kwargs of the App's `transformer_sidecar.transform_file` Celery task, the body of
`PUT <service_endpoint>/file-complete`, and the str enums of destinations, formats and statuses. Pydantic
models only: no I/O, no Celery protocol framing (that is `transformer.messaging.codec`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

TRANSFORM_TASK_NAME = "transformer_sidecar.transform_file"
FILE_COMPLETE_PATH = "/file-complete"
NO_OBJECT = "none"  # s3-object-name of a failure report, as the ServiceX sidecar sends it


def queue_name(request_id: str) -> str:
    """The RabbitMQ queue the App publishes one request's file tasks to."""
    return f"transformer-{request_id}"


class ResultDestination(StrEnum):
    """Where the App wants results: its object store, or a shared volume."""

    OBJECT_STORE = "object-store"
    VOLUME = "volume"


class ResultFormat(StrEnum):
    """Result formats the App can ask for (`root-rntuple` is refused by this transformer)."""

    PARQUET = "parquet"
    ROOT_FILE = "root-file"
    ROOT_RNTUPLE = "root-rntuple"


class FileStatus(StrEnum):
    """Outcome of one file in a file-complete report."""

    SUCCESS = "success"
    FAILURE = "failure"


class TransformTask(BaseModel):
    """The kwargs of one `transformer_sidecar.transform_file` task: one input file of a request.

    `result_format` stays a plain string so that a format we cannot write becomes a failure report that
    names it, rather than a message dropped as invalid.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: str = Field(min_length=1)
    file_id: int
    paths: list[str] = Field(min_length=1)
    service_endpoint: str = Field(min_length=1)
    result_destination: ResultDestination = ResultDestination.OBJECT_STORE
    result_format: str = ResultFormat.PARQUET.value

    @field_validator("paths", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        # The App splits a comma-joined column; tolerate the joined form too.
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            value = [p.strip() for p in value if isinstance(p, str) and p.strip()]
        return value

    @field_validator("file_id", mode="before")
    @classmethod
    def _file_id(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("file_id must be an integer")
        return value


class Place(BaseModel):
    """Where a file was transformed."""

    model_config = ConfigDict(frozen=True)

    host_name: str
    site: str
    pod: str


class FileCompleteReport(BaseModel):
    """The JSON body of `PUT <service_endpoint>/file-complete`."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    request_id: str = Field(alias="requestId")
    file_path: str = Field(alias="file-path")
    file_id: int = Field(alias="file-id")
    status: FileStatus
    total_time: float = Field(alias="total-time")
    total_events: int = Field(alias="total-events")
    total_bytes: int = Field(alias="total-bytes")
    avg_rate: float = Field(alias="avg-rate")
    s3_object_name: str = Field(alias="s3-object-name")
    place: Place

    @classmethod
    def build(
        cls,
        task: TransformTask,
        *,
        file_path: str,
        status: FileStatus,
        total_time: float,
        total_events: int,
        total_bytes: int,
        s3_object_name: str,
        place: Place,
    ) -> FileCompleteReport:
        """A report with `avg-rate` computed as events per second (0 when no time passed)."""
        return cls.model_validate(
            {
                "request_id": task.request_id,
                "file_path": file_path,
                "file_id": task.file_id,
                "status": status,
                "total_time": total_time,
                "total_events": total_events,
                "total_bytes": total_bytes,
                "avg_rate": total_events / total_time if total_time > 0 else 0.0,
                "s3_object_name": s3_object_name,
                "place": place,
            }
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able body with the App's key names."""
        return self.model_dump(mode="json", by_alias=True)
