# servicex-joiner: one image for every role (DESIGN.md §2, §3).
#
#   codegen service   default command: `servicex-joiner serve --host 0.0.0.0 --port 5000` (what ServiceX's
#                     chart runs for a `codeGen.<name>` block, and what our chart runs)
#   worker            `servicex-joiner worker ...` (mode b, sidecar replacement); the App starts the sidecar
#                     with `python /servicex/transformer_sidecar/transformer.py ...`, a shim below maps that on
#   science container the App runs `bash --login -c "... bash watch.sh python /generated/transform_single_file.py
#                     ..."` (mode a); watch.sh needs bash, nc and jq
#   CLI               `docker run --rm IMAGE join --spec ... --output ...`
#
# Build (BuildKit, Docker >= 23):  docker build -t servicex-joiner:0.1.0 .
# The base image is pinned by tag; pin its digest too where a registry is reachable:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest> .
# (docs/deployment.md, "Pinning the base image").

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
# Build stage: the wheel, then a virtual environment holding it and its dependencies, with the XRootD client
# (root:// replicas, as Rucio lists them; all of them ship manylinux wheels, so no compiler is needed here).
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY joiner/ joiner/
COPY transformer/ transformer/

RUN python -m pip wheel --no-deps --wheel-dir /dist . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/python -m pip install --no-cache-dir "$(ls /dist/servicex_joiner-*.whl)[xrootd]" \
    && /opt/venv/bin/servicex-joiner --help >/dev/null

# ---------------------------------------------------------------------------------------------------------
# Runtime stage: slim base, the virtual environment, the tools ServiceX's watch.sh uses, a non-root user.
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
ARG APP_GID=10001

LABEL org.opencontainers.image.title="servicex-joiner" \
      org.opencontainers.image.description="Event-key joins and Triton inference columns as a ServiceX transformer" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.version="0.1.0"

# bash, nc (netcat-openbsd) and jq: ServiceX's watch.sh in the science-container role; tini: PID 1.
# Debian package versions are not pinned: bookworm's security updates replace them in the archive, and a
# pin to a superseded version stops the image from building. The base image tag (and digest) fixes the rest.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash ca-certificates jq netcat-openbsd tini \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid "${APP_GID}" joiner \
    && useradd --uid "${APP_UID}" --gid "${APP_GID}" --home-dir /home/joiner --create-home --shell /bin/bash \
       joiner \
    && mkdir -p /generated /servicex/output /servicex/transformer_sidecar \
    && touch /servicex/.bashrc \
    && chown -R "${APP_UID}:0" /generated /servicex /home/joiner \
    && chmod -R g+rwX /generated /servicex /home/joiner

COPY --from=build /opt/venv /opt/venv

# A login shell (the App runs the science container with `bash --login -c`) resets PATH from /etc/profile;
# this puts the virtual environment back in front.
COPY <<"EOF" /etc/profile.d/servicex-joiner.sh
export PATH="/opt/venv/bin:${PATH}"
EOF

# Mode (b), sidecar replacement: the App starts its sidecar image as
#   python /servicex/transformer_sidecar/transformer.py --shared-dir D --request-id R --rabbit-uri U
#          --result-destination object-store|volume --result-format F [--output-dir O]
# This shim runs `servicex-joiner worker` with those arguments and gives the science container, which the
# App still starts beside it and which waits for D/scripts/watch.sh, an idle watch.sh that ends when the
# worker does, and the proxy-exporter.sh it runs when an X.509 secret is mounted.
COPY --chmod=0755 <<"SHIM" /servicex/transformer_sidecar/transformer.py
"""ServiceX sidecar command line -> `servicex-joiner worker` (DESIGN.md section 3, mode b)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

STOPPED_MARKER = "joiner-worker.stopped"
PROXY_SOURCE = "/etc/grid-security-ro/x509up"

IDLE_WATCH = """#!/usr/bin/env bash
# servicex-joiner's worker consumes the queue in the sidecar container; the science container only waits.
marker="$(dirname "$0")/../joiner-worker.stopped"
trap 'exit 0' TERM INT
while [ ! -e "$marker" ]; do sleep 2 & wait $!; done
"""

PROXY_EXPORTER = """#!/usr/bin/env bash
# Copy the mounted X.509 proxy to $X509_USER_PROXY, then refresh it every hour.
proxy="${X509_USER_PROXY:-/tmp/grid-security/x509up}"
mkdir -p "$(dirname "$proxy")"
while true; do
  until cp /etc/grid-security-ro/x509up "$proxy" 2>/dev/null; do
    echo "proxy-exporter: waiting for /etc/grid-security-ro/x509up" >&2
    sleep 5
  done
  chmod 600 "$proxy"
  sleep 3600
done
"""


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="transformer.py", description=__doc__)
    parser.add_argument("--shared-dir", default="/servicex/output")
    parser.add_argument("--request-id", required=True)
    parser.add_argument("--rabbit-uri", required=True)
    parser.add_argument("--result-destination", default="object-store")
    parser.add_argument("--result-format", default="parquet")
    parser.add_argument("--output-dir", default=None)
    return parser.parse_known_args(argv)


def write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def main(argv: list[str]) -> int:
    args, extra = parse(argv)
    shared = Path(args.shared_dir)
    scripts = shared / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    (shared / STOPPED_MARKER).unlink(missing_ok=True)
    write_script(scripts / "watch.sh", IDLE_WATCH)
    write_script(scripts / "proxy-exporter.sh", PROXY_EXPORTER)

    command = [
        os.environ.get("JOINER_COMMAND", "servicex-joiner"), "worker",
        "--request-id", args.request_id,
        "--rabbit-uri", args.rabbit_uri,
        "--result-destination", args.result_destination,
        "--result-format", args.result_format,
    ]
    if args.output_dir:
        command += ["--output-dir", args.output_dir]
    command += extra

    helpers = []
    if os.path.exists(PROXY_SOURCE):
        helpers.append(subprocess.Popen(["bash", str(scripts / "proxy-exporter.sh")]))
    worker = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: worker.send_signal(received))
    code = worker.wait()
    for helper in helpers:
        helper.terminate()
    (shared / STOPPED_MARKER).touch()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
SHIM

# Fail the build, not the first transform, if a role's tools are missing.
RUN bash --login -c 'command -v servicex-joiner python' >/dev/null \
    && command -v bash nc jq tini >/dev/null \
    && /opt/venv/bin/python -c 'import ast, sys; ast.parse(open(sys.argv[1]).read())' \
       /servicex/transformer_sidecar/transformer.py

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    X509_USER_PROXY=/tmp/grid-security/x509up \
    X509_CERT_DIR=/etc/grid-security/certificates

USER ${APP_UID}:${APP_GID}
WORKDIR /home/joiner
EXPOSE 5000

# For `docker run` of the codegen role; in Kubernetes the chart's probes call /healthz directly. Other roles
# (worker, science container, CLI) serve no HTTP: run them with `--no-healthcheck`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["servicex-joiner", "healthcheck", "--url", "http://127.0.0.1:5000/healthz"]

ENTRYPOINT ["tini", "--", "servicex-joiner"]
CMD ["serve", "--host", "0.0.0.0", "--port", "5000"]
