"""The `servicex-joiner join` command as a user runs it: outputs, summary, exit codes, no partial files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import awkward as ak
import pytest
import yaml

from tests.joiner import friends


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cwd / "cache"), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "transformer.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_join_two_primary_files_with_an_outer_friend_part(data_dir: Path, tmp_path: Path) -> None:
    primaries = [data_dir / "nano_dy.root", data_dir / "nano_tt_v12.root"]
    regrouped = friends.regrouped(primaries, tmp_path, n_files=3, drop=0.1)
    spec = _write_spec(
        tmp_path / "spec.yaml",
        {
            "primary": {"files": [str(p) for p in primaries], "columns": ["Jet_pt", "MET_pt"]},
            "friends": [
                {
                    "name": "rg",
                    "files": [str(p) for p in regrouped],
                    "tree": "Friends",
                    "columns": ["sf", "Jet_sf"],
                    "prefix": "rg_",
                    "how": "left",
                }
            ],
        },
    )
    done = _run("join", "--spec", str(spec), "--output", str(tmp_path / "out"), "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outputs = sorted((tmp_path / "out").glob("*.parquet"))
    assert [o.name for o in outputs] == sorted(str(p).replace("/", ":") + ".parquet" for p in primaries)
    joined = ak.concatenate([ak.from_parquet(o) for o in outputs])
    assert len(joined) == 240 and ak.sum(joined.rg_matched) == 216
    assert "2 of 2 file(s) joined" in done.stdout
    assert "matched / missing" in done.stdout or "matched" in done.stdout


def test_bad_spec_exits_2_with_the_field_named(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path / "spec.yaml", {"primary": {"files": ["x.root"]}, "duplicates": "maybe"})
    done = _run("join", "--spec", str(spec), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2
    assert "duplicates" in done.stderr
    assert not (tmp_path / "out").exists()


def test_duplicate_friend_keys_exit_2_before_writing(nano_dy: Path, tmp_path: Path) -> None:
    duplicate = friends.with_duplicate(nano_dy, tmp_path)
    spec = _write_spec(
        tmp_path / "spec.yaml",
        {
            "primary": {"files": [str(nano_dy)], "columns": ["MET_pt"]},
            "friends": [{"name": "d", "files": [str(duplicate)], "tree": "Friends", "columns": ["sf"]}],
        },
    )
    done = _run("join", "--spec", str(spec), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2
    assert "duplicate event key" in done.stderr and "duplicate.root" in done.stderr


def test_one_bad_file_fails_alone_with_exit_1(nano_dy: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.root"
    broken.write_bytes(b"not a ROOT file at all" * 100)
    friend = friends.aligned(nano_dy, tmp_path)
    spec = _write_spec(
        tmp_path / "spec.yaml",
        {
            "primary": {"files": [str(nano_dy), str(broken)], "columns": ["MET_pt"]},
            "friends": [{"name": "a", "files": [str(friend)], "tree": "Friends", "columns": ["sf"]}],
        },
    )
    # the broken primary cannot be indexed: refused up front, nothing written
    done = _run("join", "--spec", str(spec), "--output", str(tmp_path / "out"), "--workers", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "broken.root" in done.stderr


def test_root_file_output_and_no_temporary_files_left(nano_dy: Path, tmp_path: Path) -> None:
    friend = friends.shuffled(nano_dy, tmp_path, drop=0.1)
    spec = _write_spec(
        tmp_path / "spec.yaml",
        {
            "primary": {"files": [str(nano_dy)], "columns": ["Jet_pt", "MET_pt"]},
            "friends": [{"name": "s", "files": [str(friend)], "tree": "Friends", "columns": ["sf"], "prefix": "s_"}],
        },
    )
    done = _run(
        "join",
        "--spec",
        str(spec),
        "--output",
        str(tmp_path / "out"),
        "--format",
        "root-file",
        "--no-progress",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    files = list((tmp_path / "out").iterdir())
    assert [f.name for f in files] == [str(nano_dy).replace("/", ":")]


@pytest.mark.slow
def test_demo_runs_on_generated_data(tmp_path: Path) -> None:
    done = _run("demo", "--output", str(tmp_path / "demo"), "--events", "4000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "joined Parquet written to" in done.stdout
    outputs = list((tmp_path / "demo" / "joined").glob("*.parquet"))
    assert len(outputs) == 2
    joined = ak.concatenate([ak.from_parquet(o) for o in outputs])
    assert len(joined) == 4000
    assert 0.85 < ak.mean(joined.jetsf_matched) < 0.95


def test_worker_processes_share_the_cores_unless_threads_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # each `join --workers N` process makes its engine pool after its initializer ran: its share of cores
    from joiner.threads import THREADS_VARIABLE, thread_count
    from transformer.commands.join import _install_context, _TaskContext

    context = _TaskContext(None, {}, None, None, None, threads=1)  # type: ignore[arg-type]
    monkeypatch.setenv(THREADS_VARIABLE, "")  # recorded, so that the value set below is undone afterwards
    monkeypatch.delenv(THREADS_VARIABLE)
    _install_context(context)
    assert thread_count() == 1
    monkeypatch.setenv(THREADS_VARIABLE, "3")  # the user's setting wins
    _install_context(context)
    assert thread_count() == 3
