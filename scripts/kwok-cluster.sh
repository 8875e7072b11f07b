#!/usr/bin/env bash
# A kwok cluster to poke at by hand, the same one the cluster tests start (real kube-apiserver, etcd,
# controller-manager and scheduler; fake GPU and CPU nodes):
#   scripts/kwok-cluster.sh up [--name NAME]     prints its kubeconfig path (and `export KUBECONFIG=...` on stderr)
#   scripts/kwok-cluster.sh down [--name NAME]
#   scripts/kwok-cluster.sh nodes                the fake Node objects, as YAML
# Needs the binaries from scripts/get-kwok-binaries.sh (`make kwok-binaries`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
exec "$PYTHON" -m kubeforge.devtools.kwok_cluster "$@"
