"""Kubernetes objects for a distributed training run: a Kubeflow Trainer ``TrainJob`` or a ``PyTorchJob``.

Plain dictionaries, no client and no KFP: the launcher creates them, tests and ``--dry-run`` print them.

TrainJob (trainer.kubeflow.org/v1alpha1): its per-job API (``spec.trainer``: image, command, env, numNodes,
numProcPerNode, resourcesPerNode) has been stable since Trainer v2.0, but the way to place pods has not
(``podSpecOverrides`` in v2.0, ``podTemplateOverrides`` in v2.1, ``runtimePatches`` in v2.2), and none of them can
set a priority class. So each TrainJob references its own namespaced ``TrainingRuntime`` (a torch runtime, same
name) that carries the profile's placement — node selector, tolerations, priority class — and the checkpoint PVC,
and the TrainJob carries only the stable fields. The runtime also sets the JobSet ``failurePolicy.maxRestarts``:
a lost pod (preemption, node failure) restarts the whole gang, which resumes from the checkpoint on the PVC.

PyTorchJob (kubeflow.org/v1, training operator v1.x): one Master and ``nodes - 1`` Worker replicas, each a full pod
template carrying the same placement and PVC; the operator restarts failed pods up to ``runPolicy.backoffLimit``.

The worker is a parameter of the request: the classifier's ``kubeforge.distributed.worker`` by default, or another
module torchrun runs with its own arguments (the LM fine-tuning worker, ``kubeforge.lm.worker``), and so is the shared
volume (by default the settings' ``checkpoint_pvc`` at ``checkpoint_mount``; a pipeline that creates its own volume
passes it instead).

A scheduling profile describes one GPU's worth of a node (see kubeforge/platform/platform.yaml), so a node running
M processes asks for M GPUs of the profile's resource and M times its cpu/memory requests and limits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import yaml

from kubeforge.config import DNS_LABEL, DistributedConfig, SchedulingProfile

TRAINER_GROUP = "trainer.kubeflow.org"
TRAINER_VERSION = "v1alpha1"
TRAINER_API = f"{TRAINER_GROUP}/{TRAINER_VERSION}"
TRAINER_NODE = "node"  # the torch runtime's replicated job and container name the Trainer looks for
TRAINER_ANCESTOR_LABEL = f"{TRAINER_GROUP}/trainjob-ancestor-step"

OPERATOR_GROUP = "kubeflow.org"
OPERATOR_VERSION = "v1"
OPERATOR_API = f"{OPERATOR_GROUP}/{OPERATOR_VERSION}"
PYTORCH_CONTAINER = "pytorch"  # the training operator only wires env/ports into the container of this name

WORKER_MODULE = "kubeforge.distributed.worker"
CHECKPOINT_VOLUME = "checkpoints"
SHM_VOLUME = "dshm"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
JOB_LABEL = "kubeforge.io/training-job"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RUNTIME_GID = 10001  # the project image's USER (images/runtime/Dockerfile); owns what the job writes to the PVC

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # what a PVC may be named
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$")
# names longer than this leave no room for the suffixes JobSet/the operator append to pod and service names
MAX_NAME_LENGTH = 40


class JobSpecError(ValueError):
    """The requested job cannot be built; the message names the setting."""


@dataclass(frozen=True)
class JobVolume:
    """The PVC every pod of the job mounts (inputs in, checkpoint and model out), and where."""

    claim: str
    mount_path: str


@dataclass(frozen=True)
class TrainingJobRequest:
    """Everything a distributed training job is made of; validate() runs before anything is rendered or created."""

    name: str
    namespace: str
    image: str
    profile: SchedulingProfile
    settings: DistributedConfig
    worker_args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str = ""
    queue: str = ""  # a Kueue LocalQueue in the namespace ('' = not queued)
    worker_module: str = WORKER_MODULE  # torchrun runs `python -m <worker_module> <worker_args>`
    volume: JobVolume | None = None  # None: the settings' checkpoint_pvc at checkpoint_mount

    @property
    def shared_volume(self) -> JobVolume:
        if self.volume is not None:
            return self.volume
        return JobVolume(self.settings.checkpoint_pvc, self.settings.checkpoint_mount)

    def validate(self) -> None:
        if not _DNS1035.match(self.name) or len(self.name) > MAX_NAME_LENGTH:
            raise JobSpecError(f"job name {self.name!r} must be a DNS-1035 label (lowercase letters, digits, '-', "
                               f"starting with a letter) of at most {MAX_NAME_LENGTH} characters")
        if not DNS_LABEL.match(self.namespace) or len(self.namespace) > 63:
            raise JobSpecError(f"namespace {self.namespace!r} is not a valid Kubernetes namespace name")
        if not self.image.strip() or any(c.isspace() for c in self.image):
            raise JobSpecError(f"image {self.image!r} is not an image reference")
        if self.volume is None and not self.settings.checkpoint_pvc:
            raise JobSpecError("checkpoint_pvc is required: the job writes its checkpoints and the trained model to "
                               "that PVC, which is how a restarted job resumes and how the model comes back")
        if self.volume is not None:
            if not _DNS1123_SUBDOMAIN.match(self.volume.claim) or len(self.volume.claim) > 253:
                raise JobSpecError(f"volume claim {self.volume.claim!r} is not a PersistentVolumeClaim name "
                                   "(lowercase letters, digits, '-' and '.')")
            if not self.volume.mount_path.startswith("/"):
                raise JobSpecError(f"volume mount path {self.volume.mount_path!r} must be absolute")
        if not _MODULE.match(self.worker_module):
            raise JobSpecError(f"worker_module {self.worker_module!r} is not a Python module name (a.b.c)")
        if self.settings.dist_backend == "nccl" and not self.profile.uses_gpu:
            raise JobSpecError(f"dist_backend 'nccl' needs GPUs, but profile {self.profile.name!r} has none; "
                               "use 'gloo' or 'auto'")
        for name in self.env:
            if not _ENV_NAME.match(name):
                raise JobSpecError(f"environment variable name {name!r} is not valid")
        for value in (self.service_account, self.queue):
            if value and not DNS_LABEL.match(value):
                raise JobSpecError(f"{value!r} is not a valid Kubernetes object name")
        if not self.worker_args:
            raise JobSpecError(f"worker_args are empty: {self.worker_module} needs its arguments (the classifier's "
                               "worker: --splits, --config and --output)")


def scale_quantity(quantity: str, factor: int) -> str:
    """``'500m' x 3 -> '1500m'``, ``'16Gi' x 2 -> '32Gi'``; the unit is kept, so no rounding happens."""
    match = _QUANTITY.match(quantity)
    if not match:
        raise JobSpecError(f"cannot scale the quantity {quantity!r}")
    number = Decimal(match[1]) * factor
    return f"{number.normalize():f}{match[2]}"


def resources_per_node(profile: SchedulingProfile, procs_per_node: int) -> dict[str, dict[str, str]]:
    """Requests and limits of one node: the profile's per-process share times the processes on it."""
    requests = {"cpu": scale_quantity(profile.cpu_request, procs_per_node),
                "memory": scale_quantity(profile.memory_request, procs_per_node)}
    limits = {name: scale_quantity(value, procs_per_node)
              for name, value in (("cpu", profile.cpu_limit), ("memory", profile.memory_limit)) if value}
    if profile.uses_gpu:
        # extended resources: the request defaults to the limit, and quota counts requests.<resource>
        limits[profile.gpu_resource] = str(procs_per_node)
    resources: dict[str, dict[str, str]] = {"requests": requests}
    if limits:
        resources["limits"] = limits
    return resources


def _env_list(request: TrainingJobRequest) -> list[dict[str, str]]:
    env = {"PYTHONUNBUFFERED": "1", **request.env}
    return [{"name": name, "value": str(value)} for name, value in env.items()]


def _labels(request: TrainingJobRequest) -> dict[str, str]:
    return {**request.labels, MANAGED_BY_LABEL: "kubeforge", JOB_LABEL: request.name}


def _metadata(request: TrainingJobRequest, *, queued: bool) -> dict[str, Any]:
    labels = _labels(request)
    if queued and request.queue:
        labels[KUEUE_QUEUE_LABEL] = request.queue
    return {"name": request.name, "namespace": request.namespace, "labels": labels}


def _volumes(request: TrainingJobRequest) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": request.shared_volume.claim}}]
    if request.profile.uses_gpu:  # NCCL needs more shared memory than a container's default 64 MiB
        volumes.append({"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}})
    return volumes


def _volume_mounts(request: TrainingJobRequest) -> list[dict[str, str]]:
    mounts = [{"name": CHECKPOINT_VOLUME, "mountPath": request.shared_volume.mount_path}]
    if request.profile.uses_gpu:
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    return mounts


# tenant namespaces enforce the `restricted` Pod Security Standard; fsGroup lets the non-root user write the PVC
POD_SECURITY = {"runAsNonRoot": True, "fsGroup": RUNTIME_GID, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _placement(request: TrainingJobRequest) -> dict[str, Any]:
    """The pod-spec fields the profile decides, plus the restricted security context every pod needs."""
    profile = request.profile
    spec: dict[str, Any] = {"securityContext": dict(POD_SECURITY)}
    if profile.node_selector:
        spec["nodeSelector"] = dict(profile.node_selector)
    if profile.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in profile.tolerations]
    if profile.priority_class:
        spec["priorityClassName"] = profile.priority_class
    if request.service_account:
        spec["serviceAccountName"] = request.service_account
    return spec


def worker_command(module: str = WORKER_MODULE) -> list[str]:
    """torchrun reads PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR/PORT from the Trainer."""
    return ["torchrun", "--module", module]


def pytorchjob_command(settings: DistributedConfig, module: str = WORKER_MODULE) -> list[str]:
    """The training operator exports MASTER_ADDR, MASTER_PORT and RANK (the pod's node rank) in every version;
    ``$(VAR)`` is expanded by the kubelet from the container's environment."""
    return ["torchrun", f"--nnodes={settings.nodes}", f"--nproc-per-node={settings.procs_per_node}",
            "--node-rank=$(RANK)", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)",
            "--max-restarts=0", "--module", module]


def render_training_runtime(request: TrainingJobRequest) -> dict[str, Any]:
    """The job's own torch TrainingRuntime: placement, PVC and restart policy the TrainJob API cannot express."""
    request.validate()
    settings = request.settings
    pod_spec = {
        **_placement(request),
        "restartPolicy": "Never",  # a failed pod fails its Job; JobSet then restarts the whole gang
        "volumes": _volumes(request),
        "containers": [{"name": TRAINER_NODE, "image": request.image, "volumeMounts": _volume_mounts(request),
                        "securityContext": dict(CONTAINER_SECURITY)}],
    }
    return {
        "apiVersion": TRAINER_API,
        "kind": "TrainingRuntime",
        "metadata": {"name": request.name, "namespace": request.namespace, "labels": _labels(request)},
        "spec": {
            # an empty torch policy enables the torch plugin; the process count travels on the TrainJob
            # (trainer.numProcPerNode), because Trainer v2.2 no longer accepts it here
            "mlPolicy": {"numNodes": settings.nodes, "torch": {}},
            "template": {"spec": {
                "failurePolicy": {"maxRestarts": settings.max_restarts},
                "replicatedJobs": [{
                    "name": TRAINER_NODE,
                    "template": {
                        "metadata": {"labels": {TRAINER_ANCESTOR_LABEL: "trainer"}},
                        "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": _labels(request)},
                                                                 "spec": pod_spec}},
                    },
                }],
            }},
        },
    }


def render_trainjob(request: TrainingJobRequest) -> dict[str, Any]:
    """A TrainJob running the worker on ``nodes`` pods of ``procs_per_node`` processes, via its own runtime."""
    request.validate()
    settings = request.settings
    return {
        "apiVersion": TRAINER_API,
        "kind": "TrainJob",
        "metadata": _metadata(request, queued=True),
        "spec": {
            "runtimeRef": {"name": request.name, "apiGroup": TRAINER_GROUP, "kind": "TrainingRuntime"},
            "trainer": {
                "image": request.image,
                "command": worker_command(request.worker_module),
                "args": list(request.worker_args),
                "env": _env_list(request),
                "numNodes": settings.nodes,
                "numProcPerNode": settings.procs_per_node,
                "resourcesPerNode": resources_per_node(request.profile, settings.procs_per_node),
            },
        },
    }


def _pytorch_replica(request: TrainingJobRequest, replicas: int) -> dict[str, Any]:
    container = {
        "name": PYTORCH_CONTAINER,
        "image": request.image,
        "command": pytorchjob_command(request.settings, request.worker_module),
        "args": list(request.worker_args),
        "env": _env_list(request),
        "resources": resources_per_node(request.profile, request.settings.procs_per_node),
        "volumeMounts": _volume_mounts(request),
        "securityContext": dict(CONTAINER_SECURITY),
    }
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": {"metadata": {"labels": _labels(request)},
                     "spec": {**_placement(request), "volumes": _volumes(request), "containers": [container]}},
    }


def render_pytorchjob(request: TrainingJobRequest) -> dict[str, Any]:
    """A PyTorchJob for clusters with the training operator v1: Master + (nodes - 1) Workers."""
    request.validate()
    settings = request.settings
    replicas = {"Master": _pytorch_replica(request, 1)}
    if settings.nodes > 1:
        replicas["Worker"] = _pytorch_replica(request, settings.nodes - 1)
    return {
        "apiVersion": OPERATOR_API,
        "kind": "PyTorchJob",
        "metadata": _metadata(request, queued=True),
        "spec": {
            "nprocPerNode": str(settings.procs_per_node),
            # keep finished pods: their logs are what a user reads when a run fails
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": settings.max_restarts},
            "pytorchReplicaSpecs": replicas,
        },
    }


def render_job_objects(request: TrainingJobRequest) -> list[dict[str, Any]]:
    """The objects to create, in order: [TrainingRuntime, TrainJob] or [PyTorchJob]."""
    if request.settings.job_kind == "trainjob":
        return [render_training_runtime(request), render_trainjob(request)]
    return [render_pytorchjob(request)]


def manifests_yaml(request: TrainingJobRequest) -> str:
    """The objects as one multi-document YAML stream, for a dry run or ``kubectl apply -f -``."""
    return yaml.safe_dump_all(render_job_objects(request), sort_keys=False)
