"""The service settings read the ServiceX pod environment names."""

from __future__ import annotations

import pytest

from transformer.settings import Settings


def test_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "MINIO_URL": "minio:9000", "MINIO_ACCESS_KEY": "ak", "MINIO_SECRET_KEY": "sk", "MINIO_ENCRYPT": "true",
        "POD_NAME": "pod-1", "HOST_NAME": "node-7", "INSTANCE_NAME": "sx", "CACHE_PREFIX": "xc1:1094, xc2:1094",
        "TRITON_URL": "triton:8001", "JOINER_ALLOWED_LOCATIONS": "root://,s3://friends/",
        "JOINER_CACHE_BUCKET": "idx", "JOINER_FILE_DEADLINE_S": "12.5", "JOINER_MAX_FRIEND_FILES": "7",
        "JOINER_MAX_FRIEND_BYTES": "1000", "JOINER_MAX_BODY_BYTES": "2048",
        "TRANSFORMER_SCIENCE_IMAGE": "img:1", "LOG_LEVEL": "DEBUG",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.object_store.url == "minio:9000" and s.object_store.encrypt
    assert s.object_store.endpoint_url == "https://minio:9000"
    assert s.object_store.secret_key is not None and s.object_store.secret_key.get_secret_value() == "sk"
    assert "sk" not in repr(s)
    assert (s.place.pod_name, s.place.host_name, s.place.instance_name) == ("pod-1", "node-7", "sx")
    assert s.worker.cache_prefix == ("xc1:1094", "xc2:1094")
    assert s.worker.allowed_locations == ("root://", "s3://friends/")
    assert (s.worker.cache_bucket, s.worker.file_deadline_s) == ("idx", 12.5)
    assert (s.worker.max_friend_files, s.worker.max_friend_bytes) == (7, 1000)
    assert (s.service.max_body_bytes, s.service.science_image) == (2048, "img:1")
    assert s.inference.triton_url == "triton:8001" and s.log_level == "DEBUG"


def test_defaults_and_bad_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MINIO_URL", "JOINER_ALLOWED_LOCATIONS", "JOINER_CACHE_BUCKET"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.worker.allowed_locations == ("root://", "https://", "s3://")
    assert s.worker.cache_bucket == "servicex-joiner-cache"
    assert not s.object_store.configured
    monkeypatch.setenv("MINIO_URL", "http://minio:9000")
    with pytest.raises(ValueError, match="without a scheme"):
        Settings()
