"""Apply a named scheduling profile to a pipeline task: one helper, so every GPU step is placed the same way."""

from kfp import kubernetes
from kfp.dsl import PipelineTask

from kubeforge.config import SchedulingProfile

PROFILE_LABEL = "kubeforge.io/profile"


def apply_profile(task: PipelineTask, profile: SchedulingProfile) -> PipelineTask:
    """Requests (a tenant quota on cpu/memory refuses pods without them), GPU limit, placement and tolerations.

    Kubeflow sets only a limit for accelerators; the GPU product is chosen by the node selector.
    kfp-kubernetes has no priority-class setting, so a profile's priority class applies to the serving chart and
    the distributed-training jobs only.
    """
    task.set_cpu_request(profile.cpu_request).set_memory_request(profile.memory_request)
    if profile.cpu_limit:
        task.set_cpu_limit(profile.cpu_limit)
    if profile.memory_limit:
        task.set_memory_limit(profile.memory_limit)
    if profile.uses_gpu:
        task.set_accelerator_type(profile.gpu_resource).set_accelerator_limit(profile.gpu_count)
    for key, value in profile.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in profile.tolerations:
        kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator, value=toleration.value,
                                  effect=toleration.effect)
    kubernetes.add_pod_label(task, label_key=PROFILE_LABEL, label_value=profile.name)
    return task
