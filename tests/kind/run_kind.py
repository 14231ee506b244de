#!/usr/bin/env python3
"""End-to-end test on a kind cluster: the image, the chart and a request handled the way ServiceX does.

Steps: build the image; create a kind cluster and load the image; start MinIO and RabbitMQ; generate
NanoAOD-like inputs and friends into MinIO; install the chart (code generator with the Service name the
App expects, object-store credentials from an existing Secret, cache clean-up CronJob) and run
`helm test`; then act as the App (mode b of DESIGN.md §3): ask the code generator for code, make the
`<id>-generated-source` ConfigMap, the `transformer-<id>` Deployment (our image as sidecar and as science
container, with the App's command lines) and its HPA, publish one Celery task per file on
`transformer-<id>`, and check the file-complete reports against the objects in the request's bucket. The
cluster is driven with the `kubernetes` Python client (rollouts, Job completion, pod logs, the HPA).

Needs Docker, kind (https://kind.sigs.k8s.io), Helm (`.ci/helm-tools.sh` fetches it) and
`pip install kubernetes`. Run from the repository root:

    python tests/kind/run_kind.py            # build, test, delete the cluster
    python tests/kind/run_kind.py --keep     # leave the cluster for a look (kind delete cluster ...)

Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import manifests as m  # noqa: E402 - after the path set-up

CLUSTER = "servicex-joiner-kind"
IMAGE = "servicex-joiner:kind"
RELEASE = "joiner"
CODEGEN_SERVICE = "servicex-code-gen-join"  # what an App with release `servicex` expects for `join`
INPUT_BUCKET = "kind-inputs"
CACHE_BUCKET = "servicex-joiner-cache"


class KindTestError(AssertionError):
    """A check of the kind test failed."""


def log(message: str) -> None:
    print(f"[kind-test] {message}", flush=True)


def sh(*args: str, capture: bool = False, timeout: float = 1800) -> str:
    log("$ " + " ".join(args))
    done = subprocess.run(args, text=True, capture_output=capture, timeout=timeout, check=False)
    if done.returncode != 0:
        raise KindTestError(f"{args[0]} failed ({done.returncode}): {done.stderr if capture else ''}")
    return done.stdout if capture else ""


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise KindTestError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Cluster:
    """The kubernetes client calls the test uses, in one namespace."""

    def __init__(self, context: str, namespace: str) -> None:
        from kubernetes import client, config

        config.load_kube_config(context=context)
        self.client = client
        self.api = client.ApiClient()
        self.core = client.CoreV1Api()
        self.apps = client.AppsV1Api()
        self.batch = client.BatchV1Api()
        self.autoscaling = client.AutoscalingV1Api()
        self.namespace = namespace

    def create_namespace(self) -> None:
        """A fresh namespace: one left by an earlier run (--reuse) is deleted first."""
        from kubernetes.client.rest import ApiException

        def gone() -> bool:
            try:
                self.core.read_namespace(self.namespace)
            except ApiException as error:
                if error.status == 404:
                    return True
                raise
            return False

        if not gone():
            self.core.delete_namespace(self.namespace)
            wait_for(f"namespace {self.namespace} to go", gone, timeout=300)
        self.core.create_namespace(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
        )

    def apply(self, objects: list[dict[str, Any]] | dict[str, Any]) -> None:
        from kubernetes import utils

        for obj in objects if isinstance(objects, list) else [objects]:
            log(f"create {obj['kind']}/{obj['metadata']['name']}")
            utils.create_from_dict(self.api, obj, namespace=self.namespace)

    def wait_rollout(self, name: str, timeout: float = 300) -> None:
        def done() -> bool:
            dep = self.apps.read_namespaced_deployment_status(name, self.namespace)
            want = dep.spec.replicas or 0
            status = dep.status
            return (
                (status.observed_generation or 0) >= (dep.metadata.generation or 0)
                and (status.updated_replicas or 0) == want
                and (status.available_replicas or 0) == want
            )

        wait_for(f"rollout of deployment/{name}", done, timeout)
        log(f"deployment/{name} rolled out")

    def pods(self, selector: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def logs(self, pod: str, container: str | None = None) -> str:
        text: str = self.core.read_namespaced_pod_log(pod, self.namespace, container=container)
        return text

    def job_output(self, job: dict[str, Any], timeout: float = 600) -> str:
        """Run a Job to completion and return its pod's log."""
        name = job["metadata"]["name"]
        self.apply(job)

        def finished() -> bool:
            status = self.batch.read_namespaced_job_status(name, self.namespace).status
            if status.failed:
                raise KindTestError(f"job/{name} failed:\n{self._job_logs(name)}")
            return bool(status.succeeded)

        wait_for(f"job/{name}", finished, timeout)
        return self._job_logs(name)

    def _job_logs(self, name: str) -> str:
        return "\n".join(self.logs(pod.metadata.name) for pod in self.pods(f"job-name={name}"))


def tagged_line(text: str, tag: str) -> Any:
    for line in text.splitlines():
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
    raise KindTestError(f"no {tag} line in:\n{text[-3000:]}")


def helm_binary() -> str:
    out = sh("bash", str(REPO / ".ci" / "helm-tools.sh"), capture=True)
    return next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("helm4="))


def preflight() -> None:
    for tool in ("docker", "kind"):
        if shutil.which(tool) is None:
            raise KindTestError(f"{tool} is not on PATH")
    sh("docker", "info", capture=True, timeout=60)
    try:
        import kubernetes  # noqa: F401
    except ImportError as error:
        raise KindTestError("pip install kubernetes") from error


def create_cluster(reuse: bool) -> None:
    existing = sh("kind", "get", "clusters", capture=True).split()
    if CLUSTER in existing and not reuse:
        sh("kind", "delete", "cluster", "--name", CLUSTER)
    if CLUSTER not in existing or not reuse:
        sh("kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s")
    sh("kind", "load", "docker-image", IMAGE, "--name", CLUSTER)


def run(args: argparse.Namespace) -> None:
    preflight()
    helm = helm_binary()
    if not args.skip_build:
        sh("docker", "build", "-t", IMAGE, str(REPO))
    create_cluster(args.reuse)
    cluster = Cluster(f"kind-{CLUSTER}", m.NAMESPACE)
    cluster.create_namespace()

    # infrastructure, with credentials made for this run only
    minio_user, minio_password = "kind-" + secrets.token_hex(4), secrets.token_urlsafe(24)
    rabbit_user, rabbit_password = "kind", secrets.token_urlsafe(24)
    cluster.apply(m.secret(m.MINIO_SECRET, {"root-user": minio_user, "root-password": minio_password}))
    cluster.apply(m.secret(m.RABBIT_SECRET, {"user": rabbit_user, "password": rabbit_password}))
    cluster.apply(m.minio() + m.rabbitmq())
    cluster.apply(m.standin_configmap((HERE / "app_standin.py").read_text()))
    cluster.apply(m.app_standin(IMAGE))
    for name in (m.MINIO_HOST, m.RABBIT_HOST, m.APP_HOST):
        cluster.wait_rollout(name, timeout=600)

    # inputs: primary files and friends, readable over HTTP from MinIO
    inputs = tagged_line(
        cluster.job_output(
            m.standin_job(
                "kind-prepare", IMAGE,
                ["prepare", "--bucket", INPUT_BUCKET, "--cache-bucket", CACHE_BUCKET, "--files", "2"],
                minio_env=True,
            )
        ),
        "INPUTS",
    )  # fmt: skip
    primary = [url for name, url in inputs.items() if name.startswith("nano_")]
    friend_prefix = f"http://{m.MINIO_HOST}:9000/{INPUT_BUCKET}/"

    # our chart, registered under the name the App uses for a code generator called `join`
    sh(
        helm, "upgrade", "--install", RELEASE, str(REPO / "helm" / "servicex-joiner"),
        "--namespace", m.NAMESPACE, "--wait", "--timeout", "5m",
        "--set", "image.repository=servicex-joiner", "--set", "image.tag=kind",
        "--set", "image.pullPolicy=Never",
        "--set", f"objectStore.endpoint={m.MINIO_HOST}:9000",
        "--set", f"objectStore.existingSecret={m.MINIO_SECRET}",
        "--set", "objectStore.accessKeyKey=root-user", "--set", "objectStore.secretKeyKey=root-password",
        "--set", f"objectStore.cacheBucket={CACHE_BUCKET}",
        "--set", f"joiner.allowedLocations={{root://,https://,s3://,{friend_prefix}}}",
        "--set", f"joiner.scienceImage={IMAGE}",
        "--set", f"codegen.service.name={CODEGEN_SERVICE}",
        "--set", "cacheClean.enabled=true", "--set", "cacheClean.dryRun=true",
    )  # fmt: skip
    cluster.wait_rollout(f"{RELEASE}-servicex-joiner-codegen")
    sh(helm, "test", RELEASE, "--namespace", m.NAMESPACE, "--timeout", "3m")

    # the App's code generator call
    spec = {
        "primary": {"files": primary, "columns": ["Jet_pt", "MET_pt"]},
        "key": "cms",
        "friends": [
            {
                "name": "syst",
                "files": [url for name, url in inputs.items() if name.startswith("aligned_")],
                "tree": "Friends",
                "columns": ["weight_up", "weight_down"],
                "how": "left",
            },
            {
                "name": "jetsf",
                "files": [url for name, url in inputs.items() if name.startswith("regrouped_")],
                "tree": "Friends",
                "columns": ["Jet_sf"],
                "how": "left",
            },
        ],
    }
    answer = tagged_line(
        cluster.job_output(
            m.standin_job(
                "kind-codegen", IMAGE,
                ["codegen", "--url", f"http://{CODEGEN_SERVICE}:8000", "--selection", json.dumps(spec)],
            )
        ),
        "CODEGEN",
    )  # fmt: skip
    check(
        answer["order"] == ["transformer_image", "language", "command", "zip_data"],
        f"part order {answer['order']}",
    )
    check(answer["transformer_image"] == IMAGE, f"science image {answer['transformer_image']}")
    check(answer["language"] == "python", "language")
    check(answer["command"] == "/generated/transform_single_file.py", "command")
    check(
        {"transformer_capabilities.json", "join_spec.json", "transform_single_file.py"}
        <= set(answer["files"]),
        "zip members",
    )

    # the App's transformer Deployment (mode b: our image is the sidecar too) and HPA
    request_id = str(uuid.uuid4())
    rabbit_uri = f"amqp://{rabbit_user}:{rabbit_password}@{m.RABBIT_HOST}:5672/%2F?heartbeat=9000"
    cluster.apply(m.generated_code_configmap(request_id, answer["files"]))
    cluster.apply(
        m.transformer_deployment(
            request_id,
            science_image=answer["transformer_image"],
            sidecar_image=IMAGE,
            rabbit_uri=rabbit_uri,
            language=answer["language"],
            command=answer["command"],
            extra_env=[
                {"name": "JOINER_ALLOWED_LOCATIONS", "value": f"root://,https://,s3://,{friend_prefix}"}
            ],
        )
    )
    cluster.apply(m.transformer_hpa(request_id))
    cluster.wait_rollout(f"transformer-{request_id}", timeout=600)
    hpa = cluster.autoscaling.read_namespaced_horizontal_pod_autoscaler(
        f"transformer-{request_id}", m.NAMESPACE
    )
    check(hpa.spec.scale_target_ref.name == f"transformer-{request_id}", "HPA target")
    check((hpa.spec.min_replicas, hpa.spec.max_replicas) == (1, 3), "HPA bounds")

    # the App's tasks, one per input file
    cluster.job_output(
        m.standin_job(
            "kind-publish", IMAGE,
            ["publish", "--rabbit-uri", rabbit_uri, "--request-id", request_id,
             "--app-url", f"http://{m.APP_HOST}:8000", "--paths", json.dumps([[p] for p in primary])],
        )
    )  # fmt: skip

    # file-complete reports, as the App receives them
    (app_pod,) = cluster.pods(f"app={m.APP_HOST}")

    def reports() -> list[dict[str, Any]]:
        lines = cluster.logs(app_pod.metadata.name).splitlines()
        return [json.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith("FILE-COMPLETE ")]

    wait_for(f"{len(primary)} file-complete reports", lambda: len(reports()) >= len(primary), timeout=900)
    got = reports()
    objects = tagged_line(
        cluster.job_output(
            m.standin_job("kind-inspect", IMAGE, ["inspect", "--request-id", request_id], minio_env=True)
        ),
        "OBJECTS",
    )
    from transformer.naming import object_name

    check(len(got) == len(primary), f"{len(got)} reports for {len(primary)} files")
    for item in got:
        report = item["report"]
        check(item["path"] == f"/servicex/internal/transformation/{request_id}/file-complete", item["path"])
        check(report["status"] == "success", f"status {report}")
        check(report["requestId"] == request_id, "requestId")
        name = object_name(report["file-path"], parquet=True)
        check(report["s3-object-name"] == name, f"object name {report['s3-object-name']} != {name}")
        check(name in objects, f"{name} not in bucket {request_id}")
        check(report["total-bytes"] == objects[name]["size"], "total-bytes is the object's size")
        check(report["total-events"] == objects[name]["rows"], "total-events is the object's rows")
        columns = objects[name]["columns"]
        for friend_column in ("weight_up", "weight_down", "Jet_sf"):
            check(
                any(c.endswith(friend_column) for c in columns), f"friend column {friend_column} in {columns}"
            )
        check(report["place"]["pod"].startswith(f"transformer-{request_id}"), "place.pod")

    # both containers of the transformer pod stay up; the worker logged its work
    (pod,) = cluster.pods(f"app=transformer-{request_id}")
    for status in pod.status.container_statuses:
        check(status.ready, f"container {status.name} not ready")
    sidecar_log = cluster.logs(pod.metadata.name, "sidecar")
    check(request_id in sidecar_log, "the worker's log names the request")

    # the cache clean-up CronJob runs (dry run)
    cronjob = cluster.batch.read_namespaced_cron_job(f"{RELEASE}-servicex-joiner-cache-clean", m.NAMESPACE)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "kind-cache-clean"},
        "spec": cluster.api.sanitize_for_serialization(cronjob.spec.job_template.spec),
    }
    cluster.job_output(job)
    log("all checks passed")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise KindTestError(what)
    log(f"ok: {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the cluster afterwards")
    parser.add_argument("--reuse", action="store_true", help="reuse an existing cluster of the same name")
    parser.add_argument("--skip-build", action="store_true", help=f"use the image {IMAGE} already built")
    args = parser.parse_args(argv)
    try:
        run(args)
    except KindTestError as failure:
        log(f"FAILED: {failure}")
        return 1
    finally:
        if not args.keep and shutil.which("kind"):
            subprocess.run(["kind", "delete", "cluster", "--name", CLUSTER], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
