"""The facility's settings travel to transformer pods inside the generated zip, as environment defaults."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from joiner.spec import parse_spec
from transformer.codegen import build_zip
from transformer.facility_settings import FACILITY_SETTINGS_NAME, apply_facility_settings, facility_settings
from transformer.settings import Settings


def test_codegen_ships_the_forwarded_settings_and_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_URL", "triton.facility:8001")
    monkeypatch.setenv("JOINER_ALLOWED_LOCATIONS", "root://eos.cms/,s3://")
    monkeypatch.setenv("JOINER_FILE_DEADLINE_S", "900")
    monkeypatch.setenv("MINIO_SECRET_KEY", "do-not-ship")
    settings = Settings()
    shipped = facility_settings(settings)
    assert shipped["TRITON_URL"] == "triton.facility:8001"
    assert shipped["JOINER_ALLOWED_LOCATIONS"] == "root://eos.cms/,s3://"
    assert shipped["JOINER_FILE_DEADLINE_S"] == "900.0"
    spec = parse_spec({"primary": {"columns": ["Jet_pt"]}})
    archive = zipfile.ZipFile(io.BytesIO(build_zip(spec, facility=shipped)))
    data = json.loads(archive.read(FACILITY_SETTINGS_NAME))
    assert data == shipped
    assert "do-not-ship" not in json.dumps(data)
    assert FACILITY_SETTINGS_NAME not in zipfile.ZipFile(io.BytesIO(build_zip(spec))).namelist()


def test_pod_environment_wins_over_shipped_settings(tmp_path: Path) -> None:
    (tmp_path / FACILITY_SETTINGS_NAME).write_text(
        json.dumps({"TRITON_URL": "shipped:8001", "JOINER_CACHE_BUCKET": "shipped-bucket", "MINIO_URL": "evil:9000"})
    )
    environ = {"TRITON_URL": "pod:8001"}
    applied = apply_facility_settings(tmp_path, environ)
    assert environ["TRITON_URL"] == "pod:8001"
    assert environ["JOINER_CACHE_BUCKET"] == "shipped-bucket"
    assert "MINIO_URL" not in environ  # only the forwarded names travel
    assert applied == {"JOINER_CACHE_BUCKET": "shipped-bucket"}
    assert apply_facility_settings(tmp_path / "absent", environ) == {}
    (tmp_path / FACILITY_SETTINGS_NAME).write_text("{not json")
    assert apply_facility_settings(tmp_path, environ) == {}
