"""Kubernetes objects of the kind test, as plain dicts: infrastructure, the App stand-in, and the transformer
Deployment and HorizontalPodAutoscaler shaped exactly as the ServiceX App makes them
(servicex_app/transformer_manager.py: sidecar + science container, /generated from the code generator's
ConfigMap, the App's sidecar and science command lines, autoscaling/v1 HPA).

Pure functions: no cluster access. The offline tests validate every object with kubernetes-validate.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "servicex-joiner-kind"
MINIO_IMAGE = "quay.io/minio/minio:RELEASE.2024-10-13T13-34-11Z"
RABBITMQ_IMAGE = "rabbitmq:3.13.7-management"
MINIO_SECRET = "kind-minio"
RABBIT_SECRET = "kind-rabbitmq"
MINIO_HOST = "kind-minio"
RABBIT_HOST = "kind-rabbitmq"
APP_HOST = "kind-app"
STANDIN_CONFIGMAP = "kind-app-standin"
STANDIN_PATH = "/standin/app_standin.py"
SHARED_DIR = "/servicex/output"
POD_TERMINATION_GRACE_PERIOD = 300

_SECURE_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def _labels(app: str) -> dict[str, str]:
    return {"app": app, "app.kubernetes.io/part-of": "servicex-joiner-kind"}


def _deployment(name: str, pod_spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = labels or _labels(name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": labels["app"]}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def _service(name: str, ports: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": _labels(name)},
        "spec": {
            "selector": {"app": name},
            "ports": [
                {"name": port_name, "port": port, "targetPort": port} for port_name, port in ports.items()
            ],
        },
    }


def secret(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": _labels(name)},
        "type": "Opaque",
        "stringData": data,
    }


def minio() -> list[dict[str, Any]]:
    """MinIO (single node, emptyDir), credentials from the `kind-minio` Secret (keys as Bitnami's chart)."""
    env = [
        {
            "name": "MINIO_ROOT_USER",
            "valueFrom": {"secretKeyRef": {"name": MINIO_SECRET, "key": "root-user"}},
        },
        {
            "name": "MINIO_ROOT_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": MINIO_SECRET, "key": "root-password"}},
        },
    ]
    pod = {
        "containers": [
            {
                "name": "minio",
                "image": MINIO_IMAGE,
                "args": ["server", "/data", "--address", ":9000"],
                "env": env,
                "ports": [{"name": "api", "containerPort": 9000}],
                "readinessProbe": {
                    "httpGet": {"path": "/minio/health/ready", "port": 9000},
                    "periodSeconds": 2,
                },
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }
        ],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }
    return [_deployment(MINIO_HOST, pod), _service(MINIO_HOST, {"api": 9000})]


def rabbitmq() -> list[dict[str, Any]]:
    """RabbitMQ, user and password from the `kind-rabbitmq` Secret."""
    env = [
        {
            "name": "RABBITMQ_DEFAULT_USER",
            "valueFrom": {"secretKeyRef": {"name": RABBIT_SECRET, "key": "user"}},
        },
        {
            "name": "RABBITMQ_DEFAULT_PASS",
            "valueFrom": {"secretKeyRef": {"name": RABBIT_SECRET, "key": "password"}},
        },
    ]
    pod = {
        "containers": [
            {
                "name": "rabbitmq",
                "image": RABBITMQ_IMAGE,
                "env": env,
                "ports": [{"name": "amqp", "containerPort": 5672}],
                "readinessProbe": {
                    "exec": {"command": ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]},
                    "periodSeconds": 5,
                    "timeoutSeconds": 10,
                },
            }
        ]
    }
    return [_deployment(RABBIT_HOST, pod), _service(RABBIT_HOST, {"amqp": 5672})]


def standin_configmap(script: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": STANDIN_CONFIGMAP, "labels": _labels(STANDIN_CONFIGMAP)},
        "data": {"app_standin.py": script},
    }


def _standin_container(image: str, name: str, args: list[str], minio_env: bool) -> dict[str, Any]:
    env = []
    if minio_env:
        env = [
            {"name": "MINIO_URL", "value": f"{MINIO_HOST}:9000"},
            {
                "name": "MINIO_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": MINIO_SECRET, "key": "root-user"}},
            },
            {
                "name": "MINIO_SECRET_KEY",
                "valueFrom": {"secretKeyRef": {"name": MINIO_SECRET, "key": "root-password"}},
            },
        ]
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["python", STANDIN_PATH],
        "args": args,
        "env": env,
        "securityContext": _SECURE_CONTAINER,
        "volumeMounts": [{"name": "standin", "mountPath": "/standin", "readOnly": True}],
    }


def _standin_volume() -> dict[str, Any]:
    return {"name": "standin", "configMap": {"name": STANDIN_CONFIGMAP}}


def app_standin(image: str) -> list[dict[str, Any]]:
    """The App's file-complete endpoint, as Deployment + Service `kind-app:8000`."""
    pod = {
        "containers": [
            {
                **_standin_container(image, "app", ["serve", "--port", "8000"], minio_env=False),
                "ports": [{"name": "http", "containerPort": 8000}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 2},
            }
        ],
        "volumes": [_standin_volume()],
    }
    return [_deployment(APP_HOST, pod), _service(APP_HOST, {"http": 8000})]


def standin_job(name: str, image: str, args: list[str], *, minio_env: bool = False) -> dict[str, Any]:
    """A one-off run of app_standin.py in the servicex-joiner image."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": _labels(name)},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 600,
            "template": {
                "metadata": {"labels": _labels(name)},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [_standin_container(image, "run", args, minio_env)],
                    "volumes": [_standin_volume()],
                },
            },
        },
    }


def generated_code_configmap(request_id: str, files: dict[str, str]) -> dict[str, Any]:
    """The ConfigMap the App makes from the code generator's zip, mounted at /generated."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{request_id}-generated-source",
            "labels": _labels(f"{request_id}-generated-source"),
        },
        "data": files,
    }


def sidecar_command(request_id: str, rabbit_uri: str, result_format: str) -> str:
    """The App's sidecar command line (servicex_app transformer_manager.create_job_object)."""
    return (
        "PYTHONPATH=/servicex/transformer_sidecar:$PYTHONPATH "
        "python /servicex/transformer_sidecar/transformer.py "
        f" --shared-dir {SHARED_DIR} "
        f" --request-id {request_id}"
        f" --rabbit-uri {rabbit_uri}"
        " --result-destination object-store"
        f" --result-format {result_format}"
    )


def science_command(request_id: str, language: str, command: str) -> str:
    """The App's science-container command line (same source)."""
    return (
        f" cp /generated/transformer_capabilities.json {SHARED_DIR} && "
        "PYTHONPATH=/generated:$PYTHONPATH "
        f"bash {SHARED_DIR}/scripts/watch.sh {language} {command} {SHARED_DIR}/{request_id}"
    )


def transformer_deployment(
    request_id: str,
    *,
    science_image: str,
    sidecar_image: str,
    rabbit_uri: str,
    language: str,
    command: str,
    result_format: str = "parquet",
    extra_env: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The transformer Deployment `transformer-<request_id>` as the App creates it.

    `extra_env` is the one addition the App would not make (the kind test's friends are served over plain
    HTTP, which JOINER_ALLOWED_LOCATIONS must then allow).
    """
    env: list[dict[str, Any]] = [
        {"name": "BASH_ENV", "value": "/servicex/.bashrc"},
        {"name": "LOG_LEVEL", "value": "INFO"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "HOST_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "INSTANCE_NAME", "value": "kind"},
        {"name": "MINIO_URL", "value": f"{MINIO_HOST}:9000"},
        {
            "name": "MINIO_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": MINIO_SECRET, "key": "root-user"}},
        },
        {
            "name": "MINIO_SECRET_KEY",
            "valueFrom": {"secretKeyRef": {"name": MINIO_SECRET, "key": "root-password"}},
        },
        {"name": "MINIO_ENCRYPT", "value": "False"},
        *(extra_env or []),
    ]
    mounts = [
        {"name": "sidecar-volume", "mountPath": SHARED_DIR},
        {"name": "generated-code", "mountPath": "/generated"},
    ]
    resources = {"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "250m", "memory": "512Mi"}}
    pod = {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": POD_TERMINATION_GRACE_PERIOD,
        "containers": [
            {
                "name": "sidecar",
                "image": sidecar_image,
                "imagePullPolicy": "Never",
                "command": ["bash", "-c"],
                "args": [sidecar_command(request_id, rabbit_uri, result_format)],
                "env": env,
                "resources": resources,
                "volumeMounts": mounts,
            },
            {
                "name": "transformer",
                "image": science_image,
                "imagePullPolicy": "Never",
                "command": ["bash", "--login", "-c"],
                "args": [science_command(request_id, language, command)],
                "env": env,
                "resources": resources,
                "volumeMounts": mounts,
            },
        ],
        "volumes": [
            {"name": "sidecar-volume", "emptyDir": {}},
            {"name": "generated-code", "configMap": {"name": f"{request_id}-generated-source"}},
        ],
    }
    name = f"transformer-{request_id}"
    return _deployment(name, pod, labels={"app": name})


def transformer_hpa(request_id: str, *, min_replicas: int = 1, max_replicas: int = 3) -> dict[str, Any]:
    """The App's HorizontalPodAutoscaler (autoscaling/v1, CPU) for a request's transformers."""
    name = f"transformer-{request_id}"
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "targetCPUUtilizationPercentage": 30,
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
        },
    }
