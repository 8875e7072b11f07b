"""The distributed-training objects (kubeforge/distributed/jobs.py) against a real API server with the Kubeflow
Trainer / training-operator CRDs installed from their Go modules, and the launcher's create/attach/timeout path.

No Trainer or training-operator controller runs here, so jobs are admitted but never start: what is checked is what
the API server and the controller-manager decide (schema, strict fields, ownership and garbage collection)."""

import pytest
import yaml

from kubeforge.config import DistributedConfig, load_platform
from kubeforge.distributed import jobs, launcher
from kubeforge.deploy.schemas import go_module_dir
from tests.cluster.conftest import dump, get_json, install_crds, wait_for

pytestmark = pytest.mark.cluster

NAMESPACE = "alpha"
TRAINER_MODULE = "github.com/kubeflow/trainer/v2"
TRAINER_VERSIONS = ("v2.0.0", "v2.1.0", "v2.2.0")  # the Trainer v2 releases jobs.py is written for
OPERATOR_CRD = ("github.com/kubeflow/training-operator", "v1.9.3", "manifests/base/crds/kubeflow.org_pytorchjobs.yaml")
ARGS = ["--splits", "/mnt/kubeforge/j/splits", "--config", "/mnt/kubeforge/j/train.json", "--output",
        "/mnt/kubeforge/j/model"]


def trainer_crds(version: str) -> list[dict]:
    base = go_module_dir(TRAINER_MODULE, version) / "manifests" / "base" / "crds"
    return [yaml.safe_load((base / f"trainer.kubeflow.org_{name}.yaml").read_text())
            for name in ("trainjobs", "trainingruntimes")]


def request(name: str, job_kind: str, profile: str = "gpu-a100", **settings):
    values = {"nodes": 2, "procs_per_node": 2, "checkpoint_pvc": "alpha-checkpoints", "job_kind": job_kind,
              **settings}
    return jobs.TrainingJobRequest(name=name, namespace=NAMESPACE, image="registry.example/kubeforge/runtime:1",
                                   profile=load_platform().profile(profile), settings=DistributedConfig(**values),
                                   worker_args=ARGS, service_account="pipeline-runner")


def create_strict(cluster, objects: list[dict], *flags: str):
    return cluster.kubectl("create", "--validate=strict", *flags, "-f", "-", input=dump(*objects), check=False)


@pytest.mark.parametrize("version", TRAINER_VERSIONS)
def test_trainjob_and_its_runtime_are_accepted_with_strict_validation(cluster, tenants, version):
    install_crds(cluster, trainer_crds(version))
    for profile in ("gpu-a100", "cpu"):
        objects = jobs.render_job_objects(request(f"strict-{version.replace('.', '-')}-{profile}", "trainjob",
                                                  profile=profile, dist_backend="gloo"))
        assert [o["kind"] for o in objects] == ["TrainingRuntime", "TrainJob"]
        done = create_strict(cluster, objects, "--dry-run=server")
        assert done.returncode == 0, f"Trainer {version}, profile {profile}:\n{done.stderr}"
    # the check is live: a field the CRD schema does not know is refused
    broken = jobs.render_trainjob(request("strict-broken", "trainjob"))
    broken["spec"]["trainer"]["numGpus"] = 2
    refused = create_strict(cluster, [broken], "--dry-run=server")
    assert refused.returncode != 0 and 'unknown field "spec.trainer.numGpus"' in refused.stderr


def test_pytorchjob_is_accepted_with_strict_validation(cluster, tenants):
    module, version, path = OPERATOR_CRD
    install_crds(cluster, [yaml.safe_load((go_module_dir(module, version) / path).read_text())])
    for nodes in (1, 3):
        (job,) = jobs.render_job_objects(request(f"ptj-{nodes}", "pytorchjob", nodes=nodes))
        done = create_strict(cluster, [job])
        assert done.returncode == 0, done.stderr
        stored = get_json(cluster, "pytorchjobs.kubeflow.org", job["metadata"]["name"], "-n", NAMESPACE)
        assert set(stored["spec"]["pytorchReplicaSpecs"]) == ({"Master", "Worker"} if nodes > 1 else {"Master"})
        cluster.kubectl("delete", "pytorchjobs.kubeflow.org", job["metadata"]["name"], "-n", NAMESPACE)


def test_launcher_creates_a_trainjob_owning_its_runtime_and_reattaches(cluster, tenants, api_client):
    install_crds(cluster, trainer_crds(TRAINER_VERSIONS[-1]))
    job_request = request("launched", "trainjob")
    runner = launcher.Launcher(api_client, poll_s=0.2)
    kind, attached = runner.submit(job_request)
    assert (kind.kind, attached) == ("TrainJob", False)
    trainjob = get_json(cluster, "trainjobs.trainer.kubeflow.org", "launched", "-n", NAMESPACE)
    runtime = get_json(cluster, "trainingruntimes.trainer.kubeflow.org", "launched", "-n", NAMESPACE)
    assert [(o["kind"], o["uid"]) for o in runtime["metadata"]["ownerReferences"]] == \
        [("TrainJob", trainjob["metadata"]["uid"])]
    # a second submit of the same request attaches instead of creating a duplicate
    assert runner.submit(job_request)[1] is True
    # no Trainer controller runs here, so the job never finishes: the launcher gives up and says how to clean up
    with pytest.raises(launcher.LaunchTimeout, match="delete it with kubectl"):
        runner.wait(kind, NAMESPACE, "launched", timeout_s=1)
    # deleting the TrainJob lets the controller-manager's garbage collector remove the runtime
    cluster.kubectl("delete", "trainjobs.trainer.kubeflow.org", "launched", "-n", NAMESPACE)
    wait_for(lambda: cluster.kubectl("get", "trainingruntimes.trainer.kubeflow.org", "launched", "-n", NAMESPACE,
                                     check=False).returncode != 0, 60, "the orphaned TrainingRuntime to be collected")


def test_launcher_refuses_a_job_kind_the_cluster_does_not_serve(cluster, tenants, api_client):
    runner = launcher.Launcher(api_client, poll_s=0.2)
    missing = launcher.JobKind("PyTorchJob", "kubeflow.org", "v1beta9", "pytorchjobs", succeeded="Succeeded")
    with pytest.raises(launcher.LaunchError, match="does not serve kubeflow.org/v1beta9 pytorchjobs"):
        runner.check_api(missing, NAMESPACE)


# what kubeforge/distributed/launcher.py does in the tenant namespace when it runs as a pipeline step
LAUNCHER_NEEDS = [
    *((verb, "trainjobs.trainer.kubeflow.org") for verb in ("get", "list", "create")),
    *((verb, "trainingruntimes.trainer.kubeflow.org") for verb in ("get", "create", "update", "patch", "delete")),
    *((verb, "pytorchjobs.kubeflow.org") for verb in ("get", "list", "create")),
    ("list", "pods"), ("get", "pods/log"),
    # the build-image step (kubeforge.serving.image_build)
    *((verb, "jobs.batch") for verb in ("create", "get", "delete")), ("list", "events"),
]


def test_pipeline_runner_account_may_do_what_the_cluster_steps_do(cluster, tenants):
    """The tenant base's pipeline-runner account runs KFP steps (manifests/tenants/base/rbac.yaml), the launcher
    step among them; RBAC decides here, impersonating that account."""
    account = f"system:serviceaccount:{NAMESPACE}:pipeline-runner"
    denied = [(verb, resource) for verb, resource in LAUNCHER_NEEDS
              if cluster.kubectl("auth", "can-i", verb, resource, "-n", NAMESPACE, f"--as={account}",
                                 check=False).stdout.strip() != "yes"]
    assert not denied, f"{account} lacks: {denied}"
