"""Throwaway Kubernetes control planes for the cluster tests: `kwokctl --runtime binary` runs a real kube-apiserver,
etcd, kube-controller-manager and kube-scheduler from locally built binaries, and kwok fakes the kubelets of the
nodes created here (GPU nodes of two products and CPU nodes), so scheduling, quota and RBAC are the real thing.

Used by tests/cluster/conftest.py and by scripts/kwok-cluster.sh (`python -m kubeforge.devtools.kwok_cluster`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
GET_BINARIES = REPO_ROOT / "scripts" / "get-kwok-binaries.sh"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
NAME_PREFIX = "kf-"
BINARY_KEYS = {  # get-kwok-binaries.sh names -> KwokctlConfiguration options
    "kwok": "kwokControllerBinary",
    "kube-apiserver": "kubeApiserverBinary",
    "kube-controller-manager": "kubeControllerManagerBinary",
    "kube-scheduler": "kubeSchedulerBinary",
    "etcd": "etcdBinary",
}


class ClusterError(RuntimeError):
    """The cluster could not be started, or a command against it failed."""


class MissingBinaries(ClusterError):
    """The control-plane binaries are not built yet."""


@dataclass(frozen=True)
class FakeNode:
    name: str
    cpu: str
    memory: str
    gpus: int = 0
    product: str = ""  # GPU Feature Discovery product label, as in kubeforge/platform/platform.yaml

    def manifest(self) -> dict:
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "kwok", "node.kubernetes.io/instance-type": "gpu" if self.gpus else "cpu"}
        capacity = {"cpu": self.cpu, "memory": self.memory, "pods": "110", "ephemeral-storage": "200Gi"}
        spec: dict = {}
        if self.gpus:
            labels |= {"nvidia.com/gpu.present": "true", GPU_PRODUCT_LABEL: self.product,
                       "nvidia.com/gpu.count": str(self.gpus)}
            capacity["nvidia.com/gpu"] = str(self.gpus)
            spec["taints"] = [dict(GPU_TAINT)]
        return {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.name, "labels": labels, "annotations": {FAKE_NODE_ANNOTATION: "fake"}},
                "spec": spec,
                "status": {"capacity": capacity, "allocatable": dict(capacity)}}


DEFAULT_NODES = (
    FakeNode("gpu-t4-0", cpu="32", memory="128Gi", gpus=4, product="Tesla-T4"),
    FakeNode("gpu-t4-1", cpu="32", memory="128Gi", gpus=4, product="Tesla-T4"),
    FakeNode("gpu-a100-0", cpu="64", memory="512Gi", gpus=8, product="NVIDIA-A100-SXM4-80GB"),
    FakeNode("cpu-0", cpu="16", memory="64Gi"),
    FakeNode("cpu-1", cpu="16", memory="64Gi"),
)


def cache_dir() -> Path:
    return Path(os.environ.get("KUBEFORGE_CACHE") or Path.home() / ".cache" / "kubeforge")


def cached_binaries() -> dict[str, Path]:
    """The binaries get-kwok-binaries.sh would produce; MissingBinaries (saying how to build them) if any is absent."""
    done = subprocess.run(["bash", str(GET_BINARIES), "--check"], capture_output=True, text=True, timeout=60)
    paths = {name: Path(path) for name, _, path in
             (line.partition("=") for line in done.stdout.splitlines() if "=" in line)}
    if done.returncode != 0 or set(paths) < set(BINARY_KEYS) | {"kwokctl"}:
        missing = ", ".join(f"{name} ({path})" for name, path in paths.items() if not path.is_file()) or "all"
        raise MissingBinaries(
            f"kwok cluster binaries missing: {missing}. Build them once with `scripts/get-kwok-binaries.sh` "
            "(or `make kwok-binaries`; needs Go and the Go module proxy, ~20 min cold on 2 cores).")
    return paths


def kwokctl_configuration(binaries: dict[str, Path], kube_version: str) -> str:
    options = {key: str(binaries[name]) for name, key in BINARY_KEYS.items()}
    options |= {"runtime": "binary", "kubeVersion": kube_version, "kubectlBinary": _which("kubectl"),
                "securePort": True, "kubeAuthorization": True, "kubeAdmission": True, "bindAddress": "127.0.0.1"}
    return yaml.safe_dump({"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokctlConfiguration",
                           "options": options}, sort_keys=False)


def _which(tool: str) -> str:
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ClusterError(f"{tool} is not on PATH")


def _version_of(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"v\d+\.\d+\.\d+", out)
    if not match:
        raise ClusterError(f"{binary} --version printed no version: {out!r}")
    return match.group(0)


@dataclass
class KwokCluster:
    """One kwokctl cluster with its own name, work directory and kubeconfig."""

    name: str
    binaries: dict[str, Path]
    workdir: Path = field(default_factory=lambda: cache_dir() / "kwok")
    kubeconfig: Path | None = None
    start_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.name.startswith(NAME_PREFIX):
            self.name = NAME_PREFIX + self.name
        self.kubeconfig = self.kubeconfig or self.workdir / f"{self.name}.kubeconfig"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KWOK_WORKDIR": str(self.workdir), "KUBECONFIG": str(self.kubeconfig)}

    def kwokctl(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.binaries["kwokctl"]), "--name", self.name, *args], capture_output=True,
                              text=True, env=self.env, timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"kwokctl {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], capture_output=True,
                              text=True, input=input, timeout=timeout)
        if check and done.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        return done

    def up(self, nodes: tuple[FakeNode, ...] = DEFAULT_NODES, timeout: float = 240) -> float:
        """Create the cluster and its fake nodes; returns the seconds it took. Half-started clusters are removed."""
        if (self.workdir / "clusters" / self.name).exists():
            raise ClusterError(f"cluster {self.name} already exists (kubeconfig {self.kubeconfig}); "
                               "take it down first")
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / f"{self.name}.kwokctl.yaml"
        config.write_text(kwokctl_configuration(self.binaries, _version_of(self.binaries["kube-apiserver"])))
        try:
            # --kubeconfig= keeps kwokctl away from ~/.kube/config; ours is written from `get kubeconfig`
            self.kwokctl("create", "cluster", "--config", str(config), "--kubeconfig=", "--wait", f"{int(timeout)}s",
                         "--timeout", f"{int(timeout)}s", timeout=timeout + 60)
            self.kubeconfig.write_text(self.kwokctl("get", "kubeconfig").stdout)
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([node.manifest() for node in nodes]))
            self.wait_nodes_ready([node.name for node in nodes], timeout=timeout)
            self.wait_default_service_account(timeout=timeout)
        except BaseException:
            try:
                self.down()
            except ClusterError as error:
                print(f"kwok-cluster: {error}", file=sys.stderr)
            raise
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def wait_nodes_ready(self, names: list[str], timeout: float) -> None:
        self.kubectl("wait", "--for=condition=Ready", f"--timeout={int(timeout)}s",
                     *[f"node/{name}" for name in names], timeout=timeout + 30)

    def wait_default_service_account(self, timeout: float) -> None:
        """Pods are refused until the controller-manager made `default` accounts: a sign it is fully running."""
        deadline = time.monotonic() + timeout
        while self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise ClusterError("kube-controller-manager never created the default ServiceAccount")
            time.sleep(0.5)

    def down(self) -> None:
        """Stop every process of the cluster and delete its files; an error if kwokctl could not."""
        # delete (unlike create) refuses an empty --kubeconfig: point it at our own file, which goes anyway
        self.kubeconfig.touch()
        done = subprocess.run([str(self.binaries["kwokctl"]), "--name", self.name, "delete", "cluster",
                               f"--kubeconfig={self.kubeconfig}"], capture_output=True, text=True, env=self.env,
                              timeout=180)
        for leftover in (self.kubeconfig, self.workdir / f"{self.name}.kwokctl.yaml"):
            leftover.unlink(missing_ok=True)
        if (self.workdir / "clusters" / self.name).exists():
            raise ClusterError(f"kwokctl could not delete cluster {self.name} ({done.returncode}):\n"
                               f"{done.stderr[-4000:]}")


def remove_stale_clusters(binaries: dict[str, Path], workdir: Path | None = None) -> list[str]:
    """Delete test clusters whose creating process is gone (a killed pytest never ran its teardown)."""
    workdir = workdir or cache_dir() / "kwok"
    removed = []
    for cluster_dir in sorted((workdir / "clusters").glob(f"{NAME_PREFIX}test-*")):
        pid = cluster_dir.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            KwokCluster(cluster_dir.name, binaries, workdir=workdir).down()
            removed.append(cluster_dir.name)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kwok-cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "nodes"])
    parser.add_argument("--name", default="dev", help="cluster name (prefixed with kf-)")
    args = parser.parse_args(argv)
    if args.action == "nodes":
        print(yaml.safe_dump_all([node.manifest() for node in DEFAULT_NODES], sort_keys=False), end="")
        return 0
    try:
        cluster = KwokCluster(args.name, cached_binaries())
        if args.action == "up":
            seconds = cluster.up()
            print(json.dumps({"cluster": cluster.name, "kubeconfig": str(cluster.kubeconfig),
                              "start_seconds": round(seconds, 1)}))
            print(f"export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
        else:
            cluster.down()
    except ClusterError as error:
        print(f"kwok-cluster: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
