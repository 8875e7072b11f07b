"""The kwok harness without starting a cluster: its fake nodes, its kwokctl configuration, its refusal message."""

import re

import pytest
import yaml

from kubeforge.config import load_platform
from kubeforge.deploy.schemas import go_module_dir, validate_objects
from kubeforge.devtools.kwok_cluster import (DEFAULT_NODES, GET_BINARIES, GPU_PRODUCT_LABEL, MissingBinaries,
                                             cached_binaries, kwokctl_configuration)


def test_fake_nodes_offer_every_gpu_product_the_platform_profiles_select():
    products = {node.product for node in DEFAULT_NODES if node.gpus}
    selected = {p.node_selector[GPU_PRODUCT_LABEL] for p in load_platform().profiles
                if p.uses_gpu and GPU_PRODUCT_LABEL in p.node_selector}
    assert {"Tesla-T4", "NVIDIA-A100-SXM4-80GB"} <= products
    assert len(products & selected) >= 2, (products, selected)
    assert any(not node.gpus for node in DEFAULT_NODES), "CPU nodes are needed for GPU-off placement"


def test_gpu_nodes_carry_capacity_labels_and_taint_and_validate_strictly():
    manifests = [node.manifest() for node in DEFAULT_NODES]
    for node, manifest in zip(DEFAULT_NODES, manifests):
        assert manifest["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
        if node.gpus:
            assert manifest["status"]["allocatable"]["nvidia.com/gpu"] == str(node.gpus)
            assert manifest["metadata"]["labels"][GPU_PRODUCT_LABEL] == node.product
            assert manifest["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "present",
                                                   "effect": "NoSchedule"}]
        else:
            assert "nvidia.com/gpu" not in manifest["status"]["capacity"] and not manifest["spec"]
    assert validate_objects(manifests) == []


def test_kwokctl_configuration_uses_option_names_kwok_defines(tmp_path):
    version = re.search(r'^KWOK_VERSION="(v[^"]+)"', GET_BINARIES.read_text(), re.M).group(1)
    types = (go_module_dir("sigs.k8s.io/kwok", version) / "pkg" / "apis" / "config" / "v1alpha1"
             / "kwokctl_configuration_types.go").read_text()
    known = set(re.findall(r'json:"([A-Za-z]+)(?:,omitempty)?"', types))
    binaries = {name: tmp_path / name for name in
                ("kwok", "kwokctl", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")}
    config = yaml.safe_load(kwokctl_configuration(binaries, "v1.36.3"))
    assert (config["apiVersion"], config["kind"]) == ("config.kwok.x-k8s.io/v1alpha1", "KwokctlConfiguration")
    assert set(config["options"]) <= known, set(config["options"]) - known
    assert config["options"]["kubeApiserverBinary"] == str(tmp_path / "kube-apiserver")
    assert config["options"]["kwokControllerBinary"] == str(tmp_path / "kwok")
    assert config["options"]["kubeAuthorization"] is True and config["options"]["kubeAdmission"] is True


def test_missing_binaries_are_refused_with_the_command_that_builds_them(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBEFORGE_CACHE", str(tmp_path))
    with pytest.raises(MissingBinaries, match=r"kube-apiserver .*scripts/get-kwok-binaries\.sh"):
        cached_binaries()
