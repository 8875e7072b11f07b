"""LM fine-tuning across nodes on a real API server: the TrainJob (with its TrainingRuntime) and the PyTorchJob that
lm-train-distributed creates for kubeforge.lm.worker, on the run's volume as the pipeline creates it, accepted under
strict validation by the Kubeflow Trainer / training-operator CRDs, and their pods placed on the fake GPU nodes.

No Trainer, JobSet or training-operator controller runs here, so nothing creates the job's pods: the test creates
them the way those controllers do (one pod per node from the runtime's or the replica's template, with the
TrainJob's trainer image, command, args, env and per-node resources on the `node` container) and lets the real
scheduler, quota admission and Pod Security admission decide; kwok's fake kubelets then run them."""

import subprocess
from pathlib import Path

import pytest
import yaml

from kubeforge.config import DistributedConfig, load_platform
from kubeforge.deploy.schemas import go_module_dir
from kubeforge.distributed import jobs, launcher
from kubeforge.distributed.jobs import TRAINER_NODE
from kubeforge.lm.cluster import LM_WORKER_MODULE, LMWorkspace, plan_lm_job
from tests.cluster.conftest import KUBEFORGE, apply, dump, get_json, install_crds, wait_for
from tests.cluster.test_distributed import OPERATOR_CRD, TRAINER_VERSIONS, create_strict, trainer_crds

pytestmark = pytest.mark.cluster

NAMESPACE = "alpha"  # quota: 4 GPUs, so 2 nodes x 2 processes on T4s is the whole of it
CLAIM = "lm-run-1-lm-workspace"  # what CreatePVC names a pipeline run's volume: <uuid>-lm-workspace
PROFILE = "gpu-t4"
PRODUCT = "Tesla-T4"


def lm_request(name: str, job_kind: str, nodes: int = 2, procs_per_node: int = 2) -> jobs.TrainingJobRequest:
    settings = DistributedConfig(nodes=nodes, procs_per_node=procs_per_node, job_kind=job_kind)
    return plan_lm_job(f"uri://{name}", settings, profile=PROFILE, volume_claim=CLAIM, namespace=NAMESPACE,
                       job_name=name, image="registry.example/kubeforge/runtime:1",
                       service_account="pipeline-runner", platform=load_platform())


@pytest.fixture(scope="module")
def run_volume(cluster, tenants):
    """The run's volume as kfp-kubernetes' CreatePVC makes it (ReadWriteMany, storageClassName ''), bound to a
    statically provisioned PersistentVolume: no storage provisioner runs on this control plane."""
    volume = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NAMESPACE}-{CLAIM}"},
              "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                       "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": "/srv/lm-workspace"}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": CLAIM, "namespace": NAMESPACE},
             "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                      "volumeName": volume["metadata"]["name"], "resources": {"requests": {"storage": "50Gi"}}}}
    apply(cluster, dump(volume, claim))
    wait_for(lambda: get_json(cluster, "pvc", CLAIM, "-n", NAMESPACE).get("status", {}).get("phase") == "Bound", 60,
             "the run's volume to be bound")
    yield CLAIM
    cluster.kubectl("delete", "pvc", CLAIM, "-n", NAMESPACE, "--wait=false", check=False)


def trainer_pods(runtime: dict, trainjob: dict) -> list[dict]:
    """The pods Kubeflow Trainer (torch plugin) and JobSet make of a TrainJob: one per node, from the runtime's pod
    template, the TrainJob's trainer settings on the `node` container."""
    trainer = trainjob["spec"]["trainer"]
    template = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    pods = []
    for index in range(trainer["numNodes"]):
        spec = {**template["spec"], "containers": [
            {**container, "image": trainer["image"], "command": trainer["command"], "args": trainer["args"],
             "env": trainer["env"], "resources": trainer["resourcesPerNode"]}
            if container["name"] == TRAINER_NODE else container for container in template["spec"]["containers"]]}
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": f"{trainjob['metadata']['name']}-{TRAINER_NODE}-0-{index}", "namespace": NAMESPACE,
            "labels": template["metadata"]["labels"]}, "spec": spec})
    return pods


def operator_pods(pytorchjob: dict) -> list[dict]:
    """The pods the training operator makes of a PyTorchJob: one per replica, from each replica's template."""
    pods = []
    for replica_type, replica in pytorchjob["spec"]["pytorchReplicaSpecs"].items():
        for index in range(replica["replicas"]):
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"{pytorchjob['metadata']['name']}-{replica_type.lower()}-{index}", "namespace": NAMESPACE,
                "labels": replica["template"]["metadata"]["labels"]},
                "spec": {**replica["template"]["spec"], "restartPolicy": replica["restartPolicy"]}})
    return pods


def place(cluster, pods: list[dict]) -> dict[str, dict]:
    """Create the pods (strict) and wait until the scheduler bound each and kwok runs it; pod name -> node."""
    done = create_strict(cluster, pods)
    assert done.returncode == 0, done.stderr
    def running(name: str) -> dict | None:
        found = get_json(cluster, "pod", name, "-n", NAMESPACE)
        return found if found.get("status", {}).get("phase") == "Running" else None

    placed = {}
    for pod in pods:
        name = pod["metadata"]["name"]
        bound = wait_for(lambda name=name: running(name), 90, f"pod {name} to be scheduled and running")
        placed[name] = get_json(cluster, "node", bound["spec"]["nodeName"])
    return placed


def remove(cluster, pods: list[dict]) -> None:
    names = [pod["metadata"]["name"] for pod in pods]
    cluster.kubectl("delete", "pod", *names, "-n", NAMESPACE, "--grace-period=0", "--force", "--wait=false",
                    "--ignore-not-found", check=False)
    wait_for(lambda: get_json(cluster, "resourcequota", "kubeforge-quota", "-n", NAMESPACE)["status"]["used"]
             .get("requests.nvidia.com/gpu") == "0", 60, "the quota to release the job's GPUs")


def assert_on_gpu_nodes(placed: dict[str, dict], gpus_per_pod: int) -> None:
    for pod, node in placed.items():
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == PRODUCT, pod
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= gpus_per_pod, pod


def test_lm_job_objects_read_the_run_volume_with_the_lm_worker():
    objects = jobs.render_job_objects(lm_request("lm-objects", "trainjob"))
    trainer = objects[1]["spec"]["trainer"]
    assert trainer["command"] == ["torchrun", "--module", LM_WORKER_MODULE]
    assert trainer["args"] == LMWorkspace(Path(DistributedConfig().checkpoint_mount)).worker_args()
    pod = objects[0]["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": CLAIM}} in pod["volumes"]


@pytest.mark.parametrize("version", TRAINER_VERSIONS)
def test_lm_trainjob_and_runtime_are_accepted_with_strict_validation(cluster, tenants, version):
    install_crds(cluster, trainer_crds(version))
    for nodes, procs_per_node in ((2, 2), (4, 1)):
        objects = jobs.render_job_objects(lm_request(f"lm-strict-{version.replace('.', '-')}-{nodes}", "trainjob",
                                                     nodes, procs_per_node))
        done = create_strict(cluster, objects, "--dry-run=server")
        assert done.returncode == 0, f"Trainer {version}:\n{done.stderr}"


def test_job_render_output_for_lm_is_accepted_by_the_server(cluster, tenants):
    """What `kubeforge job render --kind lm` prints is what a reviewer pipes to `kubectl apply --dry-run=server`."""
    install_crds(cluster, trainer_crds(TRAINER_VERSIONS[-1]))
    rendered = subprocess.run([str(KUBEFORGE), "job", "render", "lm-rendered", "-n", NAMESPACE, "--kind", "lm",
                               "--profile", PROFILE, "-p", "nodes=2", "-p", "procs_per_node=2",
                               "-p", f"checkpoint_pvc={CLAIM}"], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    done = cluster.kubectl("create", "--validate=strict", "--dry-run=server", "-f", "-", input=rendered.stdout,
                           check=False)
    assert done.returncode == 0, done.stderr


def test_lm_trainjob_is_launched_and_its_pods_land_on_gpu_nodes(cluster, tenants, api_client, run_volume):
    install_crds(cluster, trainer_crds(TRAINER_VERSIONS[-1]))
    request = lm_request("lm-trainjob", "trainjob")
    kind, attached = launcher.Launcher(api_client, poll_s=0.2).submit(request)
    assert (kind.kind, attached) == ("TrainJob", False)
    runtime = get_json(cluster, "trainingruntimes.trainer.kubeflow.org", request.name, "-n", NAMESPACE)
    trainjob = get_json(cluster, "trainjobs.trainer.kubeflow.org", request.name, "-n", NAMESPACE)
    assert trainjob["spec"]["trainer"]["numNodes"] == 2 and trainjob["spec"]["trainer"]["numProcPerNode"] == 2
    pods = trainer_pods(runtime, trainjob)
    try:
        placed = place(cluster, pods)
        assert len(placed) == 2
        assert_on_gpu_nodes(placed, gpus_per_pod=2)
        used = get_json(cluster, "resourcequota", "kubeforge-quota", "-n", NAMESPACE)["status"]["used"]
        assert used["requests.nvidia.com/gpu"] == "4"  # 2 nodes x 2 processes, one GPU each
        for pod in pods:
            stored = get_json(cluster, "pod", pod["metadata"]["name"], "-n", NAMESPACE)
            volumes = {v["name"]: v for v in stored["spec"]["volumes"]}
            assert volumes["checkpoints"]["persistentVolumeClaim"]["claimName"] == CLAIM
    finally:
        remove(cluster, pods)
        cluster.kubectl("delete", "trainjobs.trainer.kubeflow.org", request.name, "-n", NAMESPACE, check=False)


def test_lm_pytorchjob_is_accepted_and_its_pods_land_on_gpu_nodes(cluster, tenants, run_volume):
    module, version, path = OPERATOR_CRD
    install_crds(cluster, [yaml.safe_load((go_module_dir(module, version) / path).read_text())])
    (job,) = jobs.render_job_objects(lm_request("lm-ptj", "pytorchjob"))
    done = create_strict(cluster, [job])
    assert done.returncode == 0, done.stderr
    stored = get_json(cluster, "pytorchjobs.kubeflow.org", "lm-ptj", "-n", NAMESPACE)
    master = stored["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["command"][-2:] == ["--module", LM_WORKER_MODULE]
    pods = operator_pods(stored)
    try:
        placed = place(cluster, pods)
        assert sorted(placed) == ["lm-ptj-master-0", "lm-ptj-worker-0"]
        assert_on_gpu_nodes(placed, gpus_per_pod=2)
    finally:
        remove(cluster, pods)
        cluster.kubectl("delete", "pytorchjobs.kubeflow.org", "lm-ptj", "-n", NAMESPACE, check=False)
