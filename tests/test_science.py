"""The science-container entry as ServiceX's sidecar runs it: `python transform_single_file.py in out fmt`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.worker_support import REPO, truncated_copy, write_friend, write_spec
from transformer.science import SCRIPT_NAME, SCRIPT_TEXT, SPEC_NAME

# The pattern ServiceX's sidecar uses to read the stats line.
SIDECAR_STATS = re.compile(r"Transform stats: Total Events: (\d+), resulting file size (\d+)")


@pytest.fixture
def generated(tmp_path: Path, data_dir: Path) -> Path:
    """A /generated-like folder: the entry script and the join spec beside it."""
    folder = tmp_path / "generated"
    folder.mkdir()
    friend = tmp_path / "friend.root"
    write_friend(data_dir / "nano_dy.root", friend, seed=2, reorder=True)
    write_spec(folder / SPEC_NAME, [{"name": "f", "files": [str(friend)], "columns": ["sf"]}])
    (folder / SCRIPT_NAME).write_text(SCRIPT_TEXT)
    return folder


def _run(generated: Path, *args: str, allowed: str = "/") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIO_")}
    env["JOINER_ALLOWED_LOCATIONS"] = allowed
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(generated / SCRIPT_NAME), *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_one_file_in_one_parquet_out(generated: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "x.parquet"
    out.parent.mkdir()
    done = _run(generated, str(data_dir / "nano_dy.root"), str(out), "parquet")
    assert done.returncode == 0, done.stdout + done.stderr
    matches = SIDECAR_STATS.findall(done.stdout)
    assert len(matches) == 1
    events, size = map(int, matches[0])
    assert events == 40 and size == out.stat().st_size
    assert list(out.parent.iterdir()) == [out]
    assert pq.read_table(out).num_rows == 40


def test_errors_exit_1_with_the_reason(generated: Path, data_dir: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.root"
    truncated_copy(data_dir / "nano_dy.root", corrupt)
    out = tmp_path / "out.parquet"
    done = _run(generated, str(corrupt), str(out), "parquet")
    assert done.returncode == 1
    assert "Transform failed for" in done.stdout and str(corrupt) in done.stdout
    assert not out.exists()
    done = _run(generated, str(data_dir / "nano_dy.root"), str(out), "root-rntuple")
    assert done.returncode == 1 and "unsupported result_format 'root-rntuple'" in done.stdout
    assert not SIDECAR_STATS.search(done.stdout)


def test_friend_location_is_checked(generated: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    done = _run(generated, str(data_dir / "nano_dy.root"), str(out), allowed="root://,https://,s3://")
    assert done.returncode == 1
    assert "is not in an allowed location" in done.stdout and "JOINER_ALLOWED_LOCATIONS" in done.stdout
    assert not out.exists()
