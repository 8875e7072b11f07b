#!/usr/bin/env bash
# Build (once) and cache the binaries the kwok cluster tests run: kwok, kwokctl, kube-apiserver,
# kube-controller-manager, kube-scheduler and etcd. Prints "name=path" lines for each.
#
# Everything is built from Go modules through the Go module proxy (the only source reachable in CI).
# k8s.io/kubernetes and go.etcd.io/etcd/server/v3 carry `replace` directives, which `go install pkg@version`
# refuses, so they are built inside a small wrapper module generated in the cache directory that pins every
# k8s.io/* staging module to the matching v0.x release. All four control-plane binaries are linked by one
# `go build` so the shared dependency tree (grpc, apimachinery, etcd client, ...) compiles once.
# Cached under ${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}/bin with versioned names; re-runs are no-ops.
#   --check      build nothing: print the paths, exit 3 when any binary is missing (used by the test harness)
#   --kwok-only  only kwok and kwokctl (enough for scripts/e2e-kind.sh, where kind runs the control plane)
set -euo pipefail

KWOK_VERSION="v0.8.0"
KUBE_VERSION="v1.36.3"    # go.mod says `go 1.26.0`: builds with the Go 1.26 toolchain already here
ETCD_VERSION="v3.6.8"     # the etcd that k8s.io/kubernetes $KUBE_VERSION itself requires

CACHE="${KUBEFORGE_CACHE:-$HOME/.cache/kubeforge}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

declare -A TARGETS=(
  [kwok]="$BIN/kwok-$KWOK_VERSION"
  [kwokctl]="$BIN/kwokctl-$KWOK_VERSION"
  [kube-apiserver]="$BIN/kube-apiserver-$KUBE_VERSION"
  [kube-controller-manager]="$BIN/kube-controller-manager-$KUBE_VERSION"
  [kube-scheduler]="$BIN/kube-scheduler-$KUBE_VERSION"
  [etcd]="$BIN/etcd-$ETCD_VERSION"
)
ORDER=(kwok kwokctl kube-apiserver kube-controller-manager kube-scheduler etcd)

command -v go >/dev/null || { echo "get-kwok-binaries: needs the go toolchain (go.mod of $KUBE_VERSION wants go >= 1.26)" >&2; exit 1; }

log() { echo "get-kwok-binaries: $*" >&2; }

build_kwok() {
  local gobin
  gobin="$(mktemp -d "$BIN/.kwok-build.XXXXXX")"
  log "go install sigs.k8s.io/kwok/cmd/{kwok,kwokctl}@$KWOK_VERSION"
  GOBIN="$gobin" go install -trimpath -ldflags='-s -w' \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  mv "$gobin/kwok" "${TARGETS[kwok]}"
  mv "$gobin/kwokctl" "${TARGETS[kwokctl]}"
  rmdir "$gobin"
}

write_wrapper_module() {
  # go.mod pinning kubernetes, etcd and every staging module that kubernetes replaces with ./staging/src/...
  local dir="$1" kube_mod
  kube_mod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  [ -f "$kube_mod" ] || { log "could not download the go.mod of k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
  local staging="v0.${KUBE_VERSION#v1.}"
  {
    echo "module kubeforge.local/kwok-binaries"
    echo
    echo "go 1.26.0"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $KUBE_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo ")"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/.*#\1#p' "$kube_mod" | sort -u |
      while read -r mod; do echo "	$mod => $mod $staging"; done
    echo ")"
  } > "$dir/go.mod"
  cat > "$dir/tools.go" <<'EOF'
//go:build tools

// Records the main packages built from this module so `go mod tidy` keeps their dependencies.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOF
}

build_control_plane() {
  local dir="$CACHE/src/kwok-binaries-$KUBE_VERSION-etcd-$ETCD_VERSION" out
  mkdir -p "$dir"
  write_wrapper_module "$dir"
  log "resolving the k8s.io/kubernetes@$KUBE_VERSION + etcd $ETCD_VERSION module graph in $dir"
  (cd "$dir" && go mod tidy -e >&2)
  out="$(mktemp -d "$BIN/.kube-build.XXXXXX")"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "go build kube-apiserver kube-controller-manager kube-scheduler etcd (cold: many minutes on 2 cores)"
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler \
    go.etcd.io/etcd/server/v3)
  mv "$out/kube-apiserver" "${TARGETS[kube-apiserver]}"
  mv "$out/kube-controller-manager" "${TARGETS[kube-controller-manager]}"
  mv "$out/kube-scheduler" "${TARGETS[kube-scheduler]}"
  # the etcd main package is the module root go.etcd.io/etcd/server/v3: go names it after the element before /v3
  mv "$out/server" "${TARGETS[etcd]}"
  rmdir "$out"
}

if [ "${1:-}" = "--check" ]; then
  status=0
  for name in "${ORDER[@]}"; do
    echo "$name=${TARGETS[$name]}"
    [ -x "${TARGETS[$name]}" ] || status=3
  done
  exit $status
fi

start=$SECONDS
if [ ! -x "${TARGETS[kwok]}" ] || [ ! -x "${TARGETS[kwokctl]}" ]; then
  build_kwok
fi
if [ "${1:-}" = "--kwok-only" ]; then
  ORDER=(kwok kwokctl)
else
  for name in kube-apiserver kube-controller-manager kube-scheduler etcd; do
    if [ ! -x "${TARGETS[$name]}" ]; then
      build_control_plane
      break
    fi
  done
fi
if (( SECONDS - start > 1 )); then
  log "built in $(( SECONDS - start )) s"
fi
for name in "${ORDER[@]}"; do
  echo "$name=${TARGETS[$name]}"
done
