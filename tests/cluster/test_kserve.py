"""The InferenceService of `kubeforge deploy kserve` and of a KServe release, accepted by a real API server under
server dry run with strict field validation, KServe's CRD installed from its Go module. No KServe controller or
webhook runs here: this proves the object against the API server's structural schema, not KServe's admission."""

import json
import subprocess

import pytest
import yaml

from kubeforge.config import load_platform
from kubeforge.deploy.gitops import promote
from kubeforge.deploy.kserve import KServeOptions, inference_service
from kubeforge.deploy.schemas import KSERVE_CRD, go_module_dir
from tests.cluster.conftest import KUBEFORGE, apply, dump, get_json, kustomize, wait_for
from tests.kubeforge.deploy.conftest import repo, run_dir  # noqa: F401 - a scratch GitOps repository and a run

pytestmark = pytest.mark.cluster
NAMESPACE = "kserve-dry-run"
IMAGE = "registry.example/kubeforge/kubeforge-classifier:0.1.0"
PLATFORM = load_platform()


@pytest.fixture(scope="module")
def kserve_crd(cluster) -> str:
    """The full CRD (2 MB of YAML, every PodSpec field): server-side apply, as KServe's own install does, since it is
    far over the 256 KiB a client-side apply's last-applied annotation may hold."""
    text = (go_module_dir(KSERVE_CRD[0], KSERVE_CRD[1]) / KSERVE_CRD[2]).read_text()
    apply(cluster, text)
    name = "inferenceservices.serving.kserve.io"
    wait_for(lambda: any(c["type"] == "Established" and c["status"] == "True"
                         for c in get_json(cluster, "crd", name).get("status", {}).get("conditions") or []),
             60, f"CRD {name} to be established")
    apply(cluster, dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
    return name


def dry_run(cluster, documents: str, *flags: str) -> list[dict]:
    """The objects as the API server would store them (defaulted and pruned), nothing persisted."""
    done = apply(cluster, documents, "--dry-run=server", "-o", "json", *flags)
    result = json.loads(done.stdout)
    return result["items"] if result.get("kind") == "List" else [result]


@pytest.mark.parametrize("profile", [p.name for p in PLATFORM.profiles])
def test_every_profile_is_accepted_and_nothing_is_pruned(cluster, kserve_crd, run_dir, profile):  # noqa: F811
    chosen = PLATFORM.profile(profile)
    service = inference_service(run_dir, chosen, IMAGE, name="classifier", namespace=NAMESPACE,
                                options=KServeOptions(min_replicas=1, max_replicas=4))
    (stored,) = dry_run(cluster, dump(service))
    assert stored["metadata"]["uid"] and stored["spec"] == service["spec"]  # a pruned field would be missing here


def test_cli_output_is_accepted_and_planted_errors_are_refused(cluster, kserve_crd, run_dir):  # noqa: F811
    done = subprocess.run([str(KUBEFORGE), "deploy", "kserve", str(run_dir), "-t", IMAGE, "--profile", "gpu-a100",
                           "-n", NAMESPACE, "--deployment-mode", "Knative", "--min-replicas", "0",
                           "--max-replicas", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    applied = apply(cluster, done.stdout, "--dry-run=server")
    assert applied.stdout.strip() == "inferenceservice.serving.kserve.io/classifier serverside-applied " \
                                     "(server dry run)", applied.stdout
    service = yaml.safe_load(done.stdout)
    service["spec"]["predictor"]["containers"][0]["imagee"] = "typo"
    service["spec"]["predictor"]["minReplicas"] = "two"
    refused = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
                              input=dump(service), check=False)
    assert refused.returncode != 0
    assert ".spec.predictor.containers[0].imagee: field not declared in schema" in refused.stderr, refused.stderr
    assert ".spec.predictor.minReplicas: expected numeric" in refused.stderr, refused.stderr


def test_a_kserve_release_applies_as_flux_builds_it(cluster, kserve_crd, repo, run_dir):  # noqa: F811
    promote(run_dir, tenant="team-a", env="prod", repo=repo, image=IMAGE, platform=PLATFORM, profile="gpu-t4",
            kserve=KServeOptions(min_replicas=2, max_replicas=3))
    rendered = kustomize(cluster, repo / "manifests" / "apps" / "team-a" / "prod")
    apply(cluster, dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}))
    (stored,) = dry_run(cluster, rendered)
    assert stored["kind"] == "InferenceService" and stored["metadata"]["namespace"] == "team-a"
    predictor = stored["spec"]["predictor"]
    assert predictor["annotations"]["kubeforge.io/run-id"] == run_dir.name
    assert predictor["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
