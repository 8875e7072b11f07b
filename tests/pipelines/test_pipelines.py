"""Resources, accelerators and kfp-kubernetes settings are ignored by kfp.local, so they are asserted on the IR."""

import inspect

import pytest

from kubeforge.config import RunConfig, load_platform
from kubeforge_pipelines import PIPELINES, build_pipeline

PROFILES = [p.name for p in load_platform().profiles]
LIGHT_TASKS = ("preprocess", "evaluate", "report")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_parameters_are_exactly_the_config_fields_with_the_same_defaults(platform, name):
    signature = inspect.signature(build_pipeline(name, platform).pipeline_func)
    defaults = {name: parameter.default for name, parameter in signature.parameters.items()}
    assert defaults == RunConfig().to_flat(PIPELINES[name].sections)


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@pytest.mark.parametrize("profile_name", PROFILES)
def test_train_task_carries_the_profile(compile_with, platform, profile_name, pipeline):
    profile = platform.profile(profile_name)
    ir = compile_with(pipeline, profile_name)
    resources = ir.resources("train")
    assert resources["resourceCpuRequest"] == profile.cpu_request
    assert resources["resourceMemoryRequest"] == profile.memory_request
    assert resources.get("resourceCpuLimit") == profile.cpu_limit
    assert resources.get("resourceMemoryLimit") == profile.memory_limit
    k8s = ir.k8s("train")
    assert k8s["podMetadata"]["labels"]["kubeforge.io/profile"] == profile_name
    if profile.uses_gpu:
        assert resources["accelerator"]["resourceType"] == profile.gpu_resource
        assert resources["accelerator"]["resourceCount"] == str(profile.gpu_count)
        assert k8s["nodeSelector"]["labels"] == profile.node_selector
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    else:
        assert "accelerator" not in resources
        assert "nodeSelector" not in k8s and "tolerations" not in k8s


def test_light_steps_stay_on_cpu_with_requests(compile_with, platform):
    cpu = platform.profile("cpu")
    ir = compile_with("train-compress", "gpu-a100")
    for task in LIGHT_TASKS + ("compress",):
        resources = ir.resources(task)
        assert resources["resourceCpuRequest"] == cpu.cpu_request, task
        assert resources["resourceMemoryRequest"] == cpu.memory_request, task
        assert "accelerator" not in resources and "tolerations" not in ir.k8s(task), task


def test_training_is_never_served_from_cache(compile_with):
    ir = compile_with("train-evaluate", "cpu")
    assert ir.task("train")["cachingOptions"].get("enableCache", False) is False


def test_every_component_runs_in_the_project_image_without_installing(compile_with, platform):
    ir = compile_with("train-evaluate", "cpu")
    for name, executor in ir.spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == platform.image, name
        assert "pip install" not in " ".join(container["command"]), name


def test_image_is_configurable_from_the_environment(tmp_path):
    import subprocess
    import sys

    code = ("from kubeforge_components import RUNTIME_IMAGE; print(RUNTIME_IMAGE)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "KUBEFORGE_IMAGE": "registry.local/kf@sha256:abc"})
    assert out.stdout.strip() == "registry.local/kf@sha256:abc"
