import pytest
from pydantic import ValidationError

from kubeforge.config import ConfigError, DistributedConfig, RunConfig, load_platform
from kubeforge.distributed.jobs import (JOB_LABEL, KUEUE_QUEUE_LABEL, JobSpecError, TrainingJobRequest,
                                        manifests_yaml, render_job_objects, render_pytorchjob, render_trainjob,
                                        render_training_runtime, resources_per_node, scale_quantity)

ARGS = ["--splits", "/mnt/kubeforge/j/splits", "--config", "/mnt/kubeforge/j/train.json", "--output",
        "/mnt/kubeforge/j/model"]
TRAINER_VERSIONS = ("v2.0.0", "v2.1.0", "v2.2.0")
TRAINER_CRDS = {version: tuple(("github.com/kubeflow/trainer/v2", version,
                                f"manifests/base/crds/trainer.kubeflow.org_{name}.yaml")
                               for name in ("trainjobs", "trainingruntimes")) for version in TRAINER_VERSIONS}
OPERATOR_CRDS = (("github.com/kubeflow/training-operator", "v1.9.3",
                  "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"),)


@pytest.fixture(scope="module")
def platform():
    return load_platform()


def request_for(platform, profile="gpu-a100", **settings) -> TrainingJobRequest:
    values = {"nodes": 3, "procs_per_node": 4, "checkpoint_pvc": "team-a-checkpoints", "max_restarts": 5,
              **settings}
    return TrainingJobRequest(name="kubeforge-train-abc", namespace="team-a", image="registry.example/kf:1.0",
                              profile=platform.profile(profile), settings=DistributedConfig(**values),
                              worker_args=ARGS, env={"HF_HOME": "/tmp/hf"}, labels={"team": "a"},
                              service_account="pipeline-runner")


def env_of(container):
    return {item["name"]: item["value"] for item in container["env"]}


def test_distributed_settings_do_not_collide_with_pipeline_parameters():
    others = {name for model in RunConfig.sections().values() if model is not DistributedConfig
              for name in model.model_fields}
    assert not set(DistributedConfig.model_fields) & others


def test_quantities_scale_without_changing_units():
    assert scale_quantity("500m", 3) == "1500m"
    assert scale_quantity("16Gi", 2) == "32Gi"
    assert scale_quantity("1.5", 2) == "3"
    assert scale_quantity("8", 1) == "8"
    with pytest.raises(JobSpecError, match="cannot scale"):
        scale_quantity("lots", 2)


def test_trainjob_carries_nodes_processes_and_per_node_resources(platform):
    job = render_trainjob(request_for(platform))
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["metadata"]["namespace"] == "team-a"
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "kubeforge-train-abc", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "TrainingRuntime"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 3 and trainer["numProcPerNode"] == 4
    assert trainer["image"] == "registry.example/kf:1.0"
    assert trainer["command"] == ["torchrun", "--module", "kubeforge.distributed.worker"]
    assert trainer["args"] == ARGS
    assert env_of(trainer)["HF_HOME"] == "/tmp/hf"
    # gpu-a100: 1 GPU, 8/12 cpu, 64Gi/96Gi per process; four processes per node
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "32", "memory": "256Gi"},
                                           "limits": {"cpu": "48", "memory": "384Gi", "nvidia.com/gpu": "4"}}


def assert_restricted(pod_spec):
    """What the `restricted` Pod Security Standard of tenant namespaces demands of every pod."""
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod_spec["containers"]:
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert all(set(v) <= {"name", "persistentVolumeClaim", "emptyDir"} for v in pod_spec["volumes"])


def test_trainjob_runtime_carries_placement_priority_pvc_and_restarts(platform):
    runtime = render_training_runtime(request_for(platform))
    assert (runtime["kind"], runtime["metadata"]["name"]) == ("TrainingRuntime", "kubeforge-train-abc")
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 3, "torch": {}}
    jobset = runtime["spec"]["template"]["spec"]
    assert jobset["failurePolicy"] == {"maxRestarts": 5}
    [node] = jobset["replicatedJobs"]
    assert node["name"] == "node"
    assert node["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"][JOB_LABEL] == "kubeforge-train-abc"
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["priorityClassName"] == "kubeforge-gpu-training"
    assert spec["serviceAccountName"] == "pipeline-runner"
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "team-a-checkpoints"}} in spec["volumes"]
    [container] = spec["containers"]
    assert container["name"] == "node"
    assert {"name": "checkpoints", "mountPath": "/mnt/kubeforge"} in container["volumeMounts"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert_restricted(spec)


def test_pytorchjob_has_a_master_and_workers_with_the_profile(platform):
    job = render_pytorchjob(request_for(platform, job_kind="pytorchjob"))
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    spec = job["spec"]
    assert spec["nprocPerNode"] == "4"
    assert spec["runPolicy"] == {"cleanPodPolicy": "None", "backoffLimit": 5}
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for replica in replicas.values():
        pod = replica["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["priorityClassName"] == "kubeforge-gpu-training"
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "team-a-checkpoints"
        [container] = pod["containers"]
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert container["resources"]["requests"] == {"cpu": "32", "memory": "256Gi"}
        assert env_of(container)["HF_HOME"] == "/tmp/hf"
        assert container["args"] == ARGS
        assert_restricted(pod)
        command = container["command"]
        assert command[:3] == ["torchrun", "--nnodes=3", "--nproc-per-node=4"]
        assert "--node-rank=$(RANK)" in command and command[-2:] == ["--module", "kubeforge.distributed.worker"]


def test_yaml_stream_holds_the_objects_in_creation_order(platform):
    import yaml

    documents = list(yaml.safe_load_all(manifests_yaml(request_for(platform))))
    assert documents == render_job_objects(request_for(platform))
    assert [d["kind"] for d in documents] == ["TrainingRuntime", "TrainJob"]


def test_single_node_pytorchjob_has_no_workers(platform):
    job = render_pytorchjob(request_for(platform, nodes=1, job_kind="pytorchjob"))
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}


def test_mig_and_cpu_profiles(platform):
    mig = render_trainjob(request_for(platform, "mig-1g.10gb", procs_per_node=2))
    assert mig["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/mig-1g.10gb"] == "2"
    assert "nvidia.com/gpu" not in mig["spec"]["trainer"]["resourcesPerNode"]["limits"]
    cpu = request_for(platform, "cpu", procs_per_node=2)
    limits = render_trainjob(cpu)["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert limits == {"cpu": "4", "memory": "8Gi"}
    pod = render_training_runtime(cpu)["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    spec = pod["template"]["spec"]
    assert "nodeSelector" not in spec and "tolerations" not in spec and "priorityClassName" not in spec
    assert [v["name"] for v in spec["volumes"]] == ["checkpoints"]


def test_queue_label_goes_on_the_job_only(platform):
    request = request_for(platform)
    queued = TrainingJobRequest(**{**request.__dict__, "queue": "team-a-queue"})
    objects = render_job_objects(queued)
    assert [o["kind"] for o in objects] == ["TrainingRuntime", "TrainJob"]
    assert objects[1]["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a-queue"
    assert KUEUE_QUEUE_LABEL not in objects[0]["metadata"]["labels"]
    assert objects[1]["metadata"]["labels"]["team"] == "a"


@pytest.mark.parametrize("change, message", [
    ({"name": "Train_Job"}, "DNS-1035"),
    ({"name": "x" * 41}, "at most 40"),
    ({"namespace": "Team A"}, "namespace"),
    ({"image": " "}, "image"),
    ({"env": {"1BAD=": "x"}}, "environment variable name"),
    ({"worker_args": []}, "worker_args"),
    ({"queue": "Bad Queue"}, "not a valid Kubernetes object name"),
])
def test_bad_requests_are_refused_with_the_setting_named(platform, change, message):
    request = TrainingJobRequest(**{**request_for(platform).__dict__, **change})
    with pytest.raises(JobSpecError, match=message):
        render_job_objects(request)


def test_settings_problems(platform):
    with pytest.raises(JobSpecError, match="checkpoint_pvc is required"):
        render_job_objects(request_for(platform, checkpoint_pvc=""))
    with pytest.raises(JobSpecError, match="'nccl' needs GPUs"):
        render_job_objects(request_for(platform, "cpu", dist_backend="nccl"))
    with pytest.raises(ValidationError, match="nodes"):
        DistributedConfig(nodes=0)
    with pytest.raises(ConfigError, match="unknown profile 'gpu-b200'"):
        platform.profile("gpu-b200")


def test_resources_per_node_without_limits(platform):
    profile = platform.profile("cpu").model_copy(update={"cpu_limit": None, "memory_limit": None})
    assert resources_per_node(profile, 3) == {"requests": {"cpu": "3", "memory": "6Gi"}}


@pytest.fixture(scope="module")
def crd_validation():
    from kubeforge.deploy.schemas import SchemaSourceError, validate_objects

    def validate(objects, crds):
        try:
            return validate_objects(objects, crds)
        except SchemaSourceError as exc:
            pytest.skip(f"CRD schemas come from the Go module proxy: {exc}")
    return validate


@pytest.mark.slow
@pytest.mark.parametrize("version", TRAINER_VERSIONS)
def test_trainjob_objects_match_the_trainer_crds(platform, crd_validation, version):
    for profile in ("gpu-a100", "mig-1g.10gb", "cpu"):
        objects = render_job_objects(request_for(platform, profile))
        assert crd_validation(objects, TRAINER_CRDS[version]) == []


@pytest.mark.slow
def test_pytorchjob_matches_the_training_operator_crd(platform, crd_validation):
    for profile, nodes in (("gpu-h100", 4), ("cpu", 1)):
        objects = render_job_objects(request_for(platform, profile, nodes=nodes, job_kind="pytorchjob"))
        assert crd_validation(objects, OPERATOR_CRDS) == []
