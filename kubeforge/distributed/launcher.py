"""Create a distributed training job on a cluster, wait for it, and say why it failed.

``launch(request)`` validates the request and renders every object before it talks to the API server, checks that
the cluster serves the job's API (the CRD is installed, the namespace is reachable), creates the objects, and polls
the job's conditions until it succeeds, fails or the timeout passes. A failure raises ``JobFailed`` carrying the
job's condition reason and message, what is wrong with its pods (unschedulable, OOMKilled, exit codes) and the tail
of every pod's log. Nothing the user needs is deleted: finished jobs and their pods stay for inspection, and a
timeout leaves the job running. The only clean-up is of a TrainingRuntime this call created when creating its
TrainJob then failed, so nothing is left half-created.

A job that already exists under the same name is re-attached to (a retried pipeline step) rather than duplicated.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeforge.distributed.jobs import (JOB_LABEL, MANAGED_BY_LABEL, OPERATOR_GROUP, OPERATOR_VERSION,
                                        TRAINER_GROUP, TRAINER_VERSION, TrainingJobRequest, render_job_objects)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class JobKind:
    kind: str
    group: str
    version: str
    plural: str
    succeeded: str  # the condition type that means success
    failed: str = "Failed"


TRAINJOB = JobKind("TrainJob", TRAINER_GROUP, TRAINER_VERSION, "trainjobs", succeeded="Complete")
PYTORCHJOB = JobKind("PyTorchJob", OPERATOR_GROUP, OPERATOR_VERSION, "pytorchjobs", succeeded="Succeeded")
TRAINING_RUNTIME = JobKind("TrainingRuntime", TRAINER_GROUP, TRAINER_VERSION, "trainingruntimes", succeeded="")
KINDS = {kind.kind: kind for kind in (TRAINJOB, PYTORCHJOB, TRAINING_RUNTIME)}


class LaunchError(RuntimeError):
    """The job could not be created or watched; the message says what to fix."""


class LaunchTimeout(LaunchError):
    """The job is still running when the launcher stops waiting; it is left in place."""


@dataclass
class JobOutcome:
    kind: str
    name: str
    namespace: str
    state: str  # Succeeded | Failed | Running
    reason: str = ""
    message: str = ""
    pod_problems: list[str] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    attached: bool = False  # True when the job existed before this call

    def describe(self, log_lines: int = 30) -> str:
        lines = [f"{self.kind} {self.namespace}/{self.name}: {self.state}"
                 + (f" ({self.reason}: {self.message})" if self.reason or self.message else "")]
        lines += [f"  pod: {problem}" for problem in self.pod_problems]
        for pod, text in self.logs.items():
            tail = text.rstrip().splitlines()[-log_lines:]
            lines.append(f"  --- last {len(tail)} log lines of {pod} ---")
            lines += [f"  {line}" for line in tail]
        return "\n".join(lines)


class JobFailed(LaunchError):
    def __init__(self, outcome: JobOutcome):
        super().__init__(outcome.describe())
        self.outcome = outcome


def job_state(obj: dict[str, Any], kind: JobKind) -> tuple[str, str, str]:
    """(state, reason, message) from a job's status conditions; a failure wins over anything else."""
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    for wanted, state in ((kind.failed, "Failed"), (kind.succeeded, "Succeeded")):
        for condition in conditions:
            if condition.get("type") == wanted:
                return state, condition.get("reason") or "", condition.get("message") or ""
    latest = conditions[-1] if conditions else {}
    return "Running", latest.get("reason") or "", latest.get("message") or ""


def pod_problems(pods: list[dict[str, Any]]) -> list[str]:
    """One line per pod that is unschedulable, waiting on an error, or whose container ended badly."""
    problems = []
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                problems.append(f"{name}: not scheduled ({condition.get('reason')}: {condition.get('message')})")
        for container in status.get("containerStatuses") or []:
            state = container.get("state") or {}
            last = (container.get("lastState") or {}).get("terminated")
            terminated = state.get("terminated") or last
            waiting = state.get("waiting")
            if terminated and terminated.get("exitCode", 0) != 0:
                problems.append(f"{name}/{container.get('name')}: exited {terminated.get('exitCode')} "
                                f"({terminated.get('reason') or 'Error'})"
                                + (f", restarted {container['restartCount']}x" if container.get("restartCount")
                                   else ""))
            elif waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                problems.append(f"{name}/{container.get('name')}: waiting ({waiting.get('reason')}: "
                                f"{waiting.get('message') or ''})")
    return problems


def current_namespace() -> str:
    """The namespace of the pod this runs in (a KFP step runs in the tenant's namespace)."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        raise LaunchError("no namespace given and not running in a pod; pass the tenant namespace") from None


def connect(context: str | None = None):
    """An API client: the pod's ServiceAccount in a cluster, else the kubeconfig (optionally a named context)."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
        else:
            config.load_kube_config(context=context)
    except (ConfigException, OSError) as exc:
        raise LaunchError(f"cannot reach a Kubernetes API server: {exc}") from None
    return client.ApiClient()


def _api_error(exc: Exception, what: str) -> LaunchError:
    status = getattr(exc, "status", None)
    try:
        detail = json.loads(getattr(exc, "body", "") or "{}").get("message", "")
    except (TypeError, ValueError):
        detail = ""
    detail = detail or getattr(exc, "reason", "") or str(exc)
    if status == 403:
        return LaunchError(f"{what}: forbidden ({detail}); the step's ServiceAccount needs RBAC for it")
    return LaunchError(f"{what}: {detail} (HTTP {status})" if status else f"{what}: {detail}")


class Launcher:
    """Thin layer over the kubernetes client: create, poll, read pods and logs."""

    def __init__(self, api_client, *, poll_s: float = 5.0, log_lines: int = 200,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self._serialize = api_client.sanitize_for_serialization
        self.poll_s, self.log_lines, self.clock, self.sleep = poll_s, log_lines, clock, sleep

    # -- reads
    def get(self, kind: JobKind, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(exc, f"reading {kind.kind} {namespace}/{name}") from None

    def check_api(self, kind: JobKind, namespace: str) -> None:
        """Fail before creating anything when the CRD is missing or the namespace is out of reach."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.list_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, limit=1)
        except ApiException as exc:
            if exc.status == 404:
                hint = ("install Kubeflow Trainer v2 or use job_kind=pytorchjob" if kind.group == TRAINER_GROUP
                        else "install the Kubeflow training operator v1 or use job_kind=trainjob")
                raise LaunchError(f"the cluster does not serve {kind.group}/{kind.version} {kind.plural}: {hint}") \
                    from None
            raise _api_error(exc, f"listing {kind.plural} in namespace {namespace}") from None

    def pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        listing = self.core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={name}")
        return [self._serialize(pod) for pod in listing.items]

    def logs(self, namespace: str, pods: list[dict[str, Any]]) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        found = {}
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            try:
                found[pod_name] = self.core.read_namespaced_pod_log(pod_name, namespace, tail_lines=self.log_lines)
            except ApiException as exc:  # a pending pod has no log yet; say so instead of failing the report
                found[pod_name] = f"(no log: {exc.reason})"
        return found

    # -- writes
    def _create(self, kind: JobKind, obj: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            return self.custom.create_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, obj)
        except ApiException as exc:
            if exc.status == 409:
                raise
            raise _api_error(exc, f"creating {kind.kind} {namespace}/{name}") from None

    def _put_runtime(self, runtime: dict[str, Any]) -> dict[str, Any]:
        """Create the job's TrainingRuntime, or take over a leftover one of ours whose TrainJob is gone."""
        from kubernetes.client.exceptions import ApiException

        namespace, name = runtime["metadata"]["namespace"], runtime["metadata"]["name"]
        try:
            return self._create(TRAINING_RUNTIME, runtime)
        except ApiException:  # 409: it exists
            existing = self.get(TRAINING_RUNTIME, namespace, name) or {}
            if existing.get("metadata", {}).get("labels", {}).get(MANAGED_BY_LABEL) != "kubeforge":
                raise LaunchError(f"TrainingRuntime {namespace}/{name} exists and was not made by kubeforge; "
                                  "choose another job name") from None
            body = {**runtime, "metadata": {**runtime["metadata"],
                                            "resourceVersion": existing["metadata"]["resourceVersion"]}}
            try:
                return self.custom.replace_namespaced_custom_object(
                    TRAINING_RUNTIME.group, TRAINING_RUNTIME.version, namespace, TRAINING_RUNTIME.plural, name, body)
            except ApiException as exc:
                raise _api_error(exc, f"updating TrainingRuntime {namespace}/{name}") from None

    def submit(self, request: TrainingJobRequest) -> tuple[JobKind, bool]:
        """Create the request's objects; (job kind, attached) where attached means the job already existed."""
        from kubernetes.client.exceptions import ApiException

        objects = render_job_objects(request)
        job = objects[-1]
        kind = KINDS[job["kind"]]
        self.check_api(kind, request.namespace)
        existing = self.get(kind, request.namespace, request.name)
        if existing is not None:
            if existing.get("metadata", {}).get("labels", {}).get(MANAGED_BY_LABEL) != "kubeforge":
                raise LaunchError(f"{kind.kind} {request.namespace}/{request.name} exists and was not made by "
                                  "kubeforge; choose another job name")
            state, reason, message = job_state(existing, kind)
            if state == "Failed":
                raise LaunchError(f"{kind.kind} {request.namespace}/{request.name} already exists and failed "
                                  f"({reason}: {message}); delete it to retry — its checkpoint on the PVC is kept, "
                                  "so the new job resumes")
            return kind, True
        runtime = None
        if kind is TRAINJOB:
            runtime = self._put_runtime(objects[0])
        try:
            created = self._create(kind, job)
        except ApiException:  # 409: a twin of this step created it meanwhile, and it uses this runtime
            return kind, True
        except LaunchError:
            if runtime is not None:  # nothing half-created: the runtime is useless without its TrainJob
                try:
                    self.custom.delete_namespaced_custom_object(
                        TRAINING_RUNTIME.group, TRAINING_RUNTIME.version, request.namespace, TRAINING_RUNTIME.plural,
                        request.name)
                except ApiException:
                    pass  # the creation error below is the one to report
            raise
        if runtime is not None:  # deleting the TrainJob garbage-collects its runtime
            owner = {"apiVersion": job["apiVersion"], "kind": kind.kind, "name": request.name,
                     "uid": created["metadata"]["uid"]}
            try:
                self.custom.patch_namespaced_custom_object(
                    TRAINING_RUNTIME.group, TRAINING_RUNTIME.version, request.namespace, TRAINING_RUNTIME.plural,
                    request.name, {"metadata": {"ownerReferences": [owner]}})
            except ApiException:
                pass  # only tidiness is lost: the runtime then outlives its TrainJob
        return kind, False

    def outcome(self, kind: JobKind, namespace: str, name: str, obj: dict[str, Any] | None = None,
                *, with_logs: bool = False) -> JobOutcome:
        obj = obj if obj is not None else self.get(kind, namespace, name)
        if obj is None:
            raise LaunchError(f"{kind.kind} {namespace}/{name} was deleted while waiting for it")
        state, reason, message = job_state(obj, kind)
        pods = self.pods(namespace, name)
        return JobOutcome(kind.kind, name, namespace, state, reason, message, pod_problems(pods),
                          self.logs(namespace, pods) if with_logs else {})

    def wait(self, kind: JobKind, namespace: str, name: str, timeout_s: float) -> JobOutcome:
        deadline = self.clock() + timeout_s
        while True:
            obj = self.get(kind, namespace, name)
            if obj is None:
                raise LaunchError(f"{kind.kind} {namespace}/{name} was deleted while waiting for it")
            state, _, _ = job_state(obj, kind)
            if state != "Running":
                return self.outcome(kind, namespace, name, obj, with_logs=True)
            if self.clock() >= deadline:
                pending = self.outcome(kind, namespace, name, obj)
                raise LaunchTimeout(f"{kind.kind} {namespace}/{name} did not finish within {timeout_s:.0f} s; it is "
                                    f"left running (delete it with kubectl -n {namespace} delete "
                                    f"{kind.plural}.{kind.group} {name})\n{pending.describe()}")
            self.sleep(self.poll_s)


def launch(request: TrainingJobRequest, *, api_client=None, timeout_s: float | None = None,
           poll_s: float = 5.0) -> JobOutcome:
    """Create (or re-attach to) the job, wait for it, and return its outcome; raise JobFailed when it failed."""
    request.validate()
    render_job_objects(request)  # every rendering error surfaces before the cluster is contacted
    launcher = Launcher(api_client if api_client is not None else connect(), poll_s=poll_s)
    kind, attached = launcher.submit(request)
    outcome = launcher.wait(kind, request.namespace, request.name,
                            timeout_s if timeout_s is not None else request.settings.job_timeout_s)
    outcome.attached = attached
    if outcome.state == "Failed":
        raise JobFailed(outcome)
    return outcome
