"""Runtime settings of the service side: one `Settings` value, read from the environment once.

Owns every environment variable name the service reads (the ServiceX App's `MINIO_*`, `POD_NAME`,
`HOST_NAME`, `INSTANCE_NAME`, `CACHE_PREFIX` and our own `JOINER_*`, `TRITON_URL`, `LOG_LEVEL`). Code takes
a `Settings` (or one of its groups) as an argument; nothing else reads `os.environ`, and no settings object
exists at import time. `get_settings()` builds and caches one for entry points; tests build their own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_ALLOWED_LOCATIONS = ("root://", "https://", "s3://")

_GROUP_CONFIG = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class ObjectStoreSettings(BaseSettings):
    """The S3-compatible object store (MinIO in ServiceX) the App gives every transformer pod."""

    model_config = _GROUP_CONFIG

    url: str | None = Field(default=None, validation_alias="MINIO_URL", description="host:port, no scheme")
    access_key: SecretStr | None = Field(default=None, validation_alias="MINIO_ACCESS_KEY")
    secret_key: SecretStr | None = Field(default=None, validation_alias="MINIO_SECRET_KEY")
    encrypt: bool = Field(default=False, validation_alias="MINIO_ENCRYPT", description="use https")
    region: str = Field(default="us-east-1", validation_alias="MINIO_REGION")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if "://" in value:
            raise ValueError(f"MINIO_URL is host:port without a scheme (got {value!r}); use MINIO_ENCRYPT")
        return value

    @property
    def configured(self) -> bool:
        """True when an object store is named (credentials may still be missing)."""
        return self.url is not None

    @property
    def endpoint_url(self) -> str:
        """The store as a URL with scheme, for clients that want one (fsspec/s3fs)."""
        if self.url is None:
            raise ValueError("no object store configured (MINIO_URL is not set)")
        return ("https://" if self.encrypt else "http://") + self.url


class PlaceSettings(BaseSettings):
    """Where this transformer runs: the `place` of every file-complete report."""

    model_config = _GROUP_CONFIG

    host_name: str = Field(default="unknown", validation_alias="HOST_NAME")
    pod_name: str = Field(default="unknown", validation_alias="POD_NAME")
    site: str = Field(default="unknown", validation_alias="SITE")
    instance_name: str = Field(default="servicex", validation_alias="INSTANCE_NAME")


class WorkerSettings(BaseSettings):
    """Limits and policies of the worker and of the science entry."""

    model_config = _GROUP_CONFIG

    allowed_locations: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_ALLOWED_LOCATIONS,
        validation_alias="JOINER_ALLOWED_LOCATIONS",
        description="comma-separated prefixes that friend files of a spec must start with",
    )
    cache_bucket: str = Field(default="servicex-joiner-cache", validation_alias="JOINER_CACHE_BUCKET")
    cache_prefix: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), validation_alias="CACHE_PREFIX", description="xcache hosts prepended to root:// inputs"
    )
    file_deadline_s: float = Field(default=3600.0, gt=0, validation_alias="JOINER_FILE_DEADLINE_S")
    max_friend_files: int = Field(default=10_000, gt=0, validation_alias="JOINER_MAX_FRIEND_FILES")
    max_friend_bytes: int = Field(default=10 * 1024**4, gt=0, validation_alias="JOINER_MAX_FRIEND_BYTES")
    transient_attempts: int = Field(default=5, ge=1, validation_alias="JOINER_TRANSIENT_ATTEMPTS")
    backoff_s: float = Field(default=1.0, ge=0, validation_alias="JOINER_BACKOFF_S")
    backoff_max_s: float = Field(default=30.0, ge=0, validation_alias="JOINER_BACKOFF_MAX_S")
    crash_attempts: int = Field(default=2, ge=1, validation_alias="JOINER_CRASH_ATTEMPTS")
    report_requeue_delay_s: float = Field(default=5.0, ge=0, validation_alias="JOINER_REPORT_REQUEUE_DELAY_S")
    report_deadline_s: float = Field(default=3600.0, gt=0, validation_alias="JOINER_REPORT_DEADLINE_S")
    reconnect_attempts: int = Field(default=30, ge=1, validation_alias="JOINER_RECONNECT_ATTEMPTS")
    heartbeat_s: int = Field(default=60, ge=0, validation_alias="JOINER_HEARTBEAT_S")
    chunk_entries: int | None = Field(default=None, gt=0, validation_alias="JOINER_CHUNK_ENTRIES")
    scratch_dir: str | None = Field(default=None, validation_alias="JOINER_SCRATCH_DIR")
    child_max_files: int = Field(
        default=200, ge=1, validation_alias="JOINER_CHILD_MAX_FILES",
        description="files one transform process serves before it is replaced by a fresh one",
    )
    result_cache: bool = Field(
        default=True, validation_alias="JOINER_RESULT_CACHE",
        description="reuse results of identical (spec, input, friend index, model, format) keys across requests",
    )
    stream_uploads: bool = Field(
        default=True, validation_alias="JOINER_STREAM_UPLOADS",
        description="upload a Parquet result in parts while it is written, instead of after it is written",
    )
    metrics_host: str = Field(default="0.0.0.0", validation_alias="JOINER_METRICS_HOST")
    metrics_port: int = Field(default=8000, ge=0, le=65535, validation_alias="JOINER_METRICS_PORT")

    @field_validator("allowed_locations", "cache_prefix", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class InferenceSettings(BaseSettings):
    """The Triton server that inference columns come from."""

    model_config = _GROUP_CONFIG

    triton_url: str | None = Field(default=None, validation_alias="TRITON_URL")


class ServiceSettings(BaseSettings):
    """The code generator service (FastAPI)."""

    model_config = _GROUP_CONFIG

    science_image: str = Field(
        default="ghcr.io/servicex-joiner/servicex-joiner:0.1.0", validation_alias="TRANSFORMER_SCIENCE_IMAGE"
    )
    max_body_bytes: int = Field(default=1024 * 1024, gt=0, validation_alias="JOINER_MAX_BODY_BYTES")


class Settings(BaseSettings):
    """Every setting of the service side, in groups."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    object_store: ObjectStoreSettings = Field(default_factory=ObjectStoreSettings)
    place: PlaceSettings = Field(default_factory=PlaceSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use and cached."""
    return Settings()
