"""Run the in-cluster image build Job (rendered by ``image_job.render_image_job``) and wait for it.

Kept out of the pipeline component so the waiting, the failure report and the clean-up are plain, tested Python:
a failed or timed-out build is deleted with its pods (a half-built image is worth nothing and the Job would hold
quota), and the error carries the Job's condition, what is wrong with its pods and the builder's log tail.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubeforge.distributed.launcher import pod_problems


class ImageBuildError(RuntimeError):
    """The build Job failed, timed out or could not be created; the message says why."""


def _failed_condition(status: Any) -> Any | None:
    return next((c for c in status.conditions or [] if c.type == "Failed" and c.status == "True"), None)


def _refused_pods(core: Any, namespace: str, name: str) -> str:
    """The Job controller's FailedCreate event: admission (Pod Security, quota) refused the builder pod, which no
    amount of waiting fixes."""
    events = core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=Job,involvedObject.name={name},reason=FailedCreate").items
    return events[-1].message if events else ""


def _log_tail(core: Any, namespace: str, pods: list[Any], lines: int) -> str:
    if not pods:
        return ""
    from kubernetes.client.exceptions import ApiException

    name = pods[-1].metadata.name
    try:
        return core.read_namespaced_pod_log(name, namespace, tail_lines=lines) or ""
    except ApiException as exc:  # a pod that never started has no log
        return f"(no log from {name}: {exc.reason})"


def run_image_job(job: dict[str, Any], *, api_client: Any, timeout_s: float, poll_s: float = 5.0,
                  log_lines: int = 20, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> str:
    """Create the Job, wait until it succeeds; returns ``namespace/name``. Raises ImageBuildError otherwise."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    if timeout_s <= 0:
        raise ImageBuildError(f"timeout_s must be positive, got {timeout_s}")
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    batch, core = client.BatchV1Api(api_client), client.CoreV1Api(api_client)
    try:
        batch.create_namespaced_job(namespace, job)
    except ApiException as exc:
        raise ImageBuildError(f"cannot create the image build Job {namespace}/{name}: {exc.reason} "
                              f"(HTTP {exc.status})") from None
    deadline = clock() + timeout_s
    while True:
        status = batch.read_namespaced_job(name, namespace).status  # jobs/status would need its own RBAC rule
        if status.succeeded:
            return f"{namespace}/{name}"
        failed = _failed_condition(status)
        refused = "" if failed else _refused_pods(core, namespace, name)
        if failed or refused or clock() > deadline:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
            problems = pod_problems([api_client.sanitize_for_serialization(pod) for pod in pods])
            logs = _log_tail(core, namespace, pods, log_lines)
            batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
            reason = (f"{failed.reason}: {failed.message}" if failed else f"its pod was refused: {refused}" if refused
                      else f"not finished after {timeout_s:g} s")
            details = "".join(f"\n  pod: {problem}" for problem in problems)
            raise ImageBuildError(f"image build Job {namespace}/{name} failed ({reason}); the Job was deleted"
                                  f"{details}" + (f"\n{logs.rstrip()}" if logs else ""))
        sleep(poll_s)
