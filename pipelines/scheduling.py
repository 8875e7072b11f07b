"""Apply a named scheduling profile to a pipeline task: one helper, so every GPU step is placed the same way."""

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Placement:
    """Everything a pipeline needs to know about where its tasks run, resolved once when the pipeline is built.

    ``image`` replaces each component's import-time base image, so the compiled IR carries exactly the platform
    setting (``$KUBEFORGE_IMAGE`` or the platform file's ``image:``) given to this build, on every task.
    """

    heavy: SchedulingProfile
    light: SchedulingProfile
    image: str
    cache_training: bool = False

    def training(self, task: PipelineTask) -> PipelineTask:
        """A retrain is what was asked for; a cached model is served only when caching was asked for."""
        task.set_caching_options(self.cache_training)
        task.set_container_image(self.image)
        return apply_profile(task, self.heavy)

    def step(self, task: PipelineTask) -> PipelineTask:
        task.set_container_image(self.image)
        return apply_profile(task, self.light)
