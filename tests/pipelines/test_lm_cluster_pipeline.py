"""lm-finetune-cluster on the compiled IR (kfp.local ignores volumes and cannot run a TrainJob): the pipeline makes
its own volume, fills it with lm-fetch, trains from it with the LM job, evaluates from it and deletes it."""

import inspect

import pytest

from kubeforge.config import ConfigError, RunConfig, runtime_image
from kubeforge.orchestration import compile_pipeline, resolve_params
from kubeforge_pipelines import PIPELINES
from kubeforge_pipelines.lm_finetune_cluster import (HF_TOKEN_SECRET, NAME, VOLUME, WORKSPACE_ACCESS_MODES,
                                                     WORKSPACE_MOUNT)
from tests.pipelines.conftest import CompiledPipeline

FROM_THE_VOLUME_TASK = {"outputParameterKey": "name", "producerTask": "createpvc"}
LIGHT = ("lm-fetch", "lm-train-distributed", "lm-evaluate", "lm-report")


def constants(task: dict) -> dict:
    return {name: value["runtimeValue"]["constant"] for name, value in task["inputs"].get("parameters", {}).items()
            if "runtimeValue" in value}


def test_registered_as_a_cluster_only_language_model_pipeline():
    entry = PIPELINES[NAME]
    assert entry.kind == "language-model" and "kfp.local" in entry.cluster_only
    assert set(entry.sections) == {"lm_data", "lm_model", "finetune", "lora", "lm_runtime", "distributed"}


def test_the_volume_is_created_filled_used_and_deleted_by_the_pipeline(compile_with):
    ir = compile_with(NAME, "gpu-a100")
    created = ir.task("createpvc")
    assert created["taskInfo"]["name"] == "create-workspace-volume"
    assert constants(created) == {"pvc_name_suffix": "-lm-workspace", "access_modes": WORKSPACE_ACCESS_MODES}
    parameters = created["inputs"]["parameters"]
    assert parameters["size"] == {"componentInputParameter": "workspace_size"}
    assert parameters["storage_class_name"] == {"componentInputParameter": "storage_class"}
    defaults = ir.spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["workspace_size"]["defaultValue"] == RunConfig().distributed.workspace_size
    for task in ("lm-fetch", "lm-train-distributed", "lm-evaluate"):
        (mount,) = ir.k8s(task)["pvcMount"]
        assert mount["mountPath"] == WORKSPACE_MOUNT, task
        assert mount["pvcNameParameter"] == {"taskOutputParameter": FROM_THE_VOLUME_TASK}, task
    assert "pvcMount" not in ir.k8s("lm-report")
    deleted = ir.task("deletepvc")
    assert deleted["taskInfo"]["name"] == "delete-workspace-volume"
    assert deleted["inputs"]["parameters"]["pvc_name"] == {"taskOutputParameter": FROM_THE_VOLUME_TASK}
    assert deleted["dependentTasks"] == ["createpvc", "lm-evaluate"]  # the last reader of the volume


def test_fetch_then_train_then_evaluate_from_the_volume(compile_with):
    ir = compile_with(NAME, "gpu-a100")
    fetch_output = {"outputParameterKey": "Output", "producerTask": "lm-fetch"}
    assert "lm-fetch" in ir.task("lm-train-distributed")["dependentTasks"]  # the job reads what lm-fetch wrote
    launcher = ir.task("lm-train-distributed")
    assert launcher["inputs"]["parameters"]["checkpoint_pvc"] == {"taskOutputParameter": FROM_THE_VOLUME_TASK}
    evaluate = ir.task("lm-evaluate")
    assert evaluate["inputs"]["parameters"]["base_model"] == {"taskOutputParameter": fetch_output}
    assert evaluate["inputs"]["artifacts"]["finetuned_model"]["taskOutputArtifact"] == \
        {"outputArtifactKey": "finetuned_model", "producerTask": "lm-train-distributed"}
    for step in ("lm-evaluate", "lm-report"):
        assert ir.task(step)["inputs"]["artifacts"]["lm_splits"]["taskOutputArtifact"] == \
            {"outputArtifactKey": "lm_splits", "producerTask": "lm-fetch"}, step
    (secret,) = ir.k8s("lm-fetch")["secretAsEnv"]
    assert (secret["secretName"], secret["optional"]) == (HF_TOKEN_SECRET, True)
    assert secret["keyToEnv"] == [{"envVar": "HF_TOKEN", "secretKey": "token"}]


@pytest.mark.parametrize("profile_name", ["cpu", "gpu-t4", "gpu-a100", "mig-1g.10gb"])
def test_the_job_gets_the_profile_and_every_step_stays_light(compile_with, platform, profile_name):
    ir = compile_with(NAME, profile_name)
    assert constants(ir.task("lm-train-distributed"))["training_profile"] == profile_name
    assert constants(ir.task("lm-train-distributed"))["training_image"] == runtime_image(platform)
    assert constants(ir.task("lm-train-distributed"))["checkpoint_mount"] == WORKSPACE_MOUNT
    default = platform.profile(platform.default_profile)
    for task in LIGHT:
        resources = ir.resources(task)
        assert resources["resourceCpuRequest"] == default.cpu_request and "accelerator" not in resources, task
        assert ir.k8s(task)["podMetadata"]["labels"]["kubeforge.io/profile"] == default.name, task


def test_nothing_that_touches_the_volume_is_served_from_cache(compile_with, tmp_path, platform):
    ir = compile_with(NAME, "cpu")
    for task in ("createpvc", "lm-fetch", "lm-train-distributed", "deletepvc"):
        assert ir.task(task)["cachingOptions"].get("enableCache", False) is False, task
    cached = CompiledPipeline(compile_pipeline(NAME, tmp_path / "c.yaml", platform, cache_training=True))
    assert cached.task("lm-train-distributed")["cachingOptions"]["enableCache"] is True
    assert cached.task("lm-fetch")["cachingOptions"].get("enableCache", False) is False  # a new volume to fill


def test_distributed_settings_are_run_parameters_but_the_volume_is_not():
    done = resolve_params(NAME, {"nodes": 4, "procs_per_node": 8, "parallelism": "fsdp", "job_kind": "pytorchjob",
                                 "base_model": "hf://org/model@main", "lora_rank": 16})
    assert (done["nodes"], done["procs_per_node"], done["lora_rank"]) == (4, 8, 16)
    assert "checkpoint_pvc" not in done and "checkpoint_mount" not in done
    for fixed in ("checkpoint_pvc", "checkpoint_mount"):
        with pytest.raises(ConfigError, match=f"parameter '{fixed}' cannot be set for {NAME}"):
            resolve_params(NAME, {fixed: "x"})
    with pytest.raises(ConfigError, match="parallelism"):
        resolve_params(NAME, {"parallelism": "zero3"})


@pytest.mark.parametrize("component, sections, extra", [
    ("lm_fetch", ("lm_model", "lm_data", "lm_runtime"), {"workspace_mount": str}),
    ("lm_train_distributed", ("lm_model", "lm_data", "finetune", "lm_runtime", "lora", "distributed"),
     {"training_profile": str}),
])
def test_components_take_whole_config_sections(component, sections, extra):
    """The pipeline passes their sections' channels by name: the typed parameters are exactly those fields."""
    import importlib

    from kubeforge_pipelines.params import kfp_type

    function = getattr(importlib.import_module(f"kubeforge_components.{component}"), component).python_func
    required = {name: p.annotation for name, p in inspect.signature(function).parameters.items()
                if p.annotation in (str, int, float, bool, list, dict) and p.default is inspect.Parameter.empty}
    fields = {name: field for name, field in RunConfig.flat_fields(sections).items() if name not in VOLUME}
    assert required == {**{name: kfp_type(field.info.annotation) for name, field in fields.items()}, **extra}
