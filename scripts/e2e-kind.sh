#!/usr/bin/env bash
# The cluster tests (tests/cluster) against a kind cluster, for machines with Docker and internet access.
#
# kwokctl's kind runtime starts a kind cluster (kubeadm control plane in a Docker container, kind binary and node
# image downloaded by kwokctl) and runs the kwok controller inside it. The same fake GPU and CPU nodes as in the kwok
# tests are then added (`kubeforge.devtools.kwok_cluster nodes`: nvidia.com/gpu capacity, GPU Feature Discovery
# product labels, the GPU taint), because a laptop has no GPUs for the scheduler to place GPU pods on. The kind node
# itself gets a NoSchedule taint so the test pods, whose images do not exist, only land on the fake nodes.
# The cluster is deleted on every exit path. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"

command -v docker >/dev/null || { echo "e2e-kind: needs Docker (there is no docker command)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "e2e-kind: the Docker engine is not reachable" >&2; exit 1; }

KWOKCTL="$(scripts/get-kwok-binaries.sh --kwok-only | sed -n 's/^kwokctl=//p')"
export KWOK_WORKDIR="${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}/kwok"
NAME="kf-e2e-kind-$$"
KUBECONFIG_FILE="$KWOK_WORKDIR/$NAME.kubeconfig"
mkdir -p "$KWOK_WORKDIR"

cleanup() {
  "$KWOKCTL" --name "$NAME" delete cluster --kubeconfig= >/dev/null 2>&1 || true
  rm -f "$KUBECONFIG_FILE"
}
trap cleanup EXIT INT TERM

start=$SECONDS
"$KWOKCTL" --name "$NAME" create cluster --runtime kind --kubeconfig= --wait 5m
"$KWOKCTL" --name "$NAME" get kubeconfig > "$KUBECONFIG_FILE"
export KUBECONFIG="$KUBECONFIG_FILE"
for node in $(kubectl get nodes -o name); do
  kubectl taint "$node" kubeforge.io/real-node=true:NoSchedule --overwrite
done
"$PYTHON" -m kubeforge.devtools.kwok_cluster nodes | kubectl apply -f -
kubectl wait --for=condition=Ready --timeout=120s node -l type=kwok
for _ in $(seq 120); do kubectl get serviceaccount default -n default >/dev/null 2>&1 && break; sleep 1; done
echo "e2e-kind: cluster $NAME ready in $(( SECONDS - start )) s" >&2

KUBEFORGE_TEST_KUBECONFIG="$KUBECONFIG_FILE" PATH="$ROOT/.venv/bin:$PATH" \
  "$ROOT/.venv/bin/pytest" -m cluster tests/cluster "$@"
