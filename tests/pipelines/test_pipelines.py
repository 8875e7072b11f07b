"""Resources, accelerators, images and kfp-kubernetes settings are ignored by kfp.local, so they are asserted on the
compiled IR, for every pipeline and every profile of the platform file."""

import inspect

import pytest

from kubeforge.config import ConfigError, RunConfig, load_platform, runtime_image
from kubeforge.orchestration import compile_pipeline, resolve_params
from kubeforge_components.build_image import CONTEXT_MOUNT, NODE_NAME_ENV
from kubeforge_pipelines import PIPELINES, build_pipeline
from kubeforge_pipelines.train_compress_cluster import CHECKPOINT_MOUNT
from tests.pipelines.conftest import CompiledPipeline

PROFILES = [p.name for p in load_platform().profiles]
LIGHT_TASKS = ("preprocess", "evaluate", "report")
LM_LIGHT_TASKS = ("lm-data", "lm-evaluate", "lm-compress", "lm-package", "lm-report")
KFP_VOLUME_STUBS = ("exec-createpvc", "exec-deletepvc")  # executed by the KFP driver itself, not in a container
DIGEST_IMAGE = "registry.example.com/ml/kubeforge-runtime@sha256:" + "0123456789abcdef" * 4


def test_the_cluster_and_language_model_pipelines_are_registered():
    assert {"train-compress", "train-evaluate", "train-compress-cluster", "lm-pretrain-finetune",
            "lm-finetune"} <= set(PIPELINES)
    assert {name for name, entry in PIPELINES.items() if entry.kind == "language-model"} >= \
        {"lm-pretrain-finetune", "lm-finetune"}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_parameters_carry_the_config_descriptions_for_the_ui(compile_with, name):
    inputs = compile_with(name, "cpu").spec["root"]["inputDefinitions"]["parameters"]
    fields = RunConfig.flat_fields(PIPELINES[name].sections)
    for parameter, spec in inputs.items():
        assert spec["description"] == fields[parameter].info.description, parameter


COMPONENT_SECTIONS = {
    "preprocess": ("data",), "train": ("model", "train"), "compress": ("compress",),
    "lm_data": ("lm_data",), "lm_pretrain": ("lm_model", "lm_data", "pretrain", "lm_runtime"),
    "lm_finetune": ("lm_model", "lm_data", "finetune", "lm_runtime", "lora"),
    "lm_evaluate": ("lm_model", "lm_data", "lm_runtime"), "lm_compress": ("lm_data", "lm_runtime", "lm_compress")}


@pytest.mark.parametrize("component", sorted(COMPONENT_SECTIONS))
def test_components_take_whole_config_sections_with_the_fields_types(component):
    """Pipelines pass a component its sections' channels by name, so its typed parameters must be exactly them."""
    import importlib

    from kubeforge_pipelines.params import kfp_type

    function = getattr(importlib.import_module(f"kubeforge_components.{component}"), component).python_func
    fields = RunConfig.flat_fields(COMPONENT_SECTIONS[component])
    parameters = {name: p.annotation for name, p in inspect.signature(function).parameters.items()
                  if p.annotation in (str, int, float, bool, list, dict) and p.default is inspect.Parameter.empty}
    assert parameters == {name: kfp_type(field.info.annotation) for name, field in fields.items()}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_parameters_are_exactly_the_config_fields_with_the_same_defaults(platform, name):
    signature = inspect.signature(build_pipeline(name, platform).pipeline_func)
    defaults = {name: parameter.default for name, parameter in signature.parameters.items()}
    entry = PIPELINES[name]
    expected = RunConfig().to_flat(entry.sections)
    assert defaults == {key: value for key, value in expected.items() if key not in entry.fixed}
    assert set(entry.fixed) <= set(expected)


def test_a_compile_time_setting_cannot_be_passed_as_a_run_parameter():
    with pytest.raises(ConfigError, match="parameter 'checkpoint_mount' cannot be set for train-compress-cluster"):
        resolve_params("train-compress-cluster", {"checkpoint_mount": "/data"})
    assert "checkpoint_mount" not in resolve_params("train-compress-cluster", {"nodes": 2})


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@pytest.mark.parametrize("profile_name", PROFILES)
def test_train_task_carries_the_profile(compile_with, platform, profile_name, pipeline):
    for task in PIPELINES[pipeline].training_tasks:
        _assert_placed_on(compile_with(pipeline, profile_name), task, platform.profile(profile_name))


def _assert_placed_on(ir, task, profile):
    profile_name = profile.name
    resources = ir.resources(task)
    assert resources["resourceCpuRequest"] == profile.cpu_request
    assert resources["resourceMemoryRequest"] == profile.memory_request
    assert resources.get("resourceCpuLimit") == profile.cpu_limit
    assert resources.get("resourceMemoryLimit") == profile.memory_limit
    k8s = ir.k8s(task)
    assert k8s["podMetadata"]["labels"]["kubeforge.io/profile"] == profile_name
    if profile.uses_gpu:
        assert resources["accelerator"]["resourceType"] == profile.gpu_resource
        assert resources["accelerator"]["resourceCount"] == str(profile.gpu_count)
        assert k8s["nodeSelector"]["labels"] == profile.node_selector
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    else:
        assert "accelerator" not in resources
        assert "nodeSelector" not in k8s and "tolerations" not in k8s


@pytest.mark.parametrize("pipeline, light", [("train-compress", LIGHT_TASKS + ("compress", "package")),
                                             ("train-compress-cluster",
                                              LIGHT_TASKS + ("compress", "package", "build-image", "promote",
                                                             "train-distributed")),
                                             ("lm-pretrain-finetune", LM_LIGHT_TASKS), ("lm-finetune", LM_LIGHT_TASKS)])
@pytest.mark.parametrize("profile_name", PROFILES)
def test_every_other_step_stays_on_the_default_profile_with_requests(compile_with, platform, pipeline, light,
                                                                     profile_name):
    default = platform.profile(platform.default_profile)
    ir = compile_with(pipeline, profile_name)
    for task in light:
        resources = ir.resources(task)
        assert resources["resourceCpuRequest"] == default.cpu_request, task
        assert resources["resourceMemoryRequest"] == default.memory_request, task
        assert "accelerator" not in resources, task
        assert "tolerations" not in ir.k8s(task) and "nodeSelector" not in ir.k8s(task), task
        assert ir.k8s(task)["podMetadata"]["labels"]["kubeforge.io/profile"] == default.name, task


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_training_is_never_served_from_cache_unless_asked(compile_with, tmp_path, platform, pipeline):
    cached = CompiledPipeline(compile_pipeline(pipeline, tmp_path / "c.yaml", platform, cache_training=True))
    for task in PIPELINES[pipeline].training_tasks:
        assert compile_with(pipeline, "cpu").task(task)["cachingOptions"].get("enableCache", False) is False
        assert cached.task(task)["cachingOptions"]["enableCache"] is True


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_every_component_runs_in_the_project_image_without_installing(compile_with, platform, pipeline):
    ir = compile_with(pipeline, "gpu-a100")
    executors = ir.spec["deploymentSpec"]["executors"]
    ours = {name: e for name, e in executors.items() if name not in KFP_VOLUME_STUBS}
    assert len(ours) >= 4
    for name, executor in ours.items():
        container = executor["container"]
        assert container["image"] == runtime_image(platform), name
        assert "pip install" not in " ".join(container["command"] + container.get("args", [])), name


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_the_image_setting_reaches_every_task_from_the_environment(tmp_path, monkeypatch, platform, pipeline):
    """The components were imported with the default image; the build-time setting must still win everywhere."""
    monkeypatch.setenv("KUBEFORGE_IMAGE", DIGEST_IMAGE)
    ir = CompiledPipeline(compile_pipeline(pipeline, tmp_path / "p.yaml", platform, "gpu-t4"))
    images = {name: e["container"]["image"] for name, e in ir.spec["deploymentSpec"]["executors"].items()
              if name not in KFP_VOLUME_STUBS}
    assert set(images.values()) == {DIGEST_IMAGE}, images


def test_the_image_setting_comes_from_the_platform_file(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBEFORGE_IMAGE", raising=False)
    builtin = load_platform().model_dump(exclude_none=True)
    path = tmp_path / "platform.yaml"
    path.write_text(__import__("yaml").safe_dump({**builtin, "image": "registry.example.com/kf/runtime:2.0"}))
    ir = CompiledPipeline(compile_pipeline("train-evaluate", tmp_path / "p.yaml", load_platform(path)))
    assert {e["container"]["image"] for e in ir.spec["deploymentSpec"]["executors"].values()} == \
        {"registry.example.com/kf/runtime:2.0"}


def test_a_malformed_image_setting_is_refused_before_compiling(tmp_path, monkeypatch, platform):
    monkeypatch.setenv("KUBEFORGE_IMAGE", "Not An Image")
    with pytest.raises(ConfigError, match=r"\$KUBEFORGE_IMAGE 'Not An Image' is not an image reference"):
        compile_pipeline("train-evaluate", tmp_path / "p.yaml", platform)
    assert not (tmp_path / "p.yaml").exists()


def test_cluster_pipeline_builds_the_serving_image_only_when_asked(compile_with):
    ir = compile_with("train-compress-cluster", "gpu-a100")
    condition = ir.task_named("serving-image-requested")
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--serving_image'] != ''"
    assert condition["inputs"]["artifacts"]["pipelinechannel--package-build_context"]["taskOutputArtifact"] == \
        {"outputArtifactKey": "build_context", "producerTask": "package"}
    inner = ir.spec["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert {t["taskInfo"]["name"] for t in inner.values()} == {
        "create-build-context-volume", "build-image", "delete-build-context-volume", "promotion-requested"}
    assert inner["deletepvc"]["dependentTasks"] == ["build-image", "createpvc"]  # the volume outlives the build only
    assert inner["build-image"]["cachingOptions"].get("enableCache", False) is False  # a push is a side effect


def test_cluster_build_step_gets_the_context_volume_and_its_node_name(compile_with):
    k8s = compile_with("train-compress-cluster", "gpu-t4").k8s("build-image")
    (mount,) = k8s["pvcMount"]
    assert mount["mountPath"] == CONTEXT_MOUNT
    assert mount["pvcNameParameter"]["taskOutputParameter"] == {"outputParameterKey": "name",
                                                                 "producerTask": "createpvc"}
    assert {"name": NODE_NAME_ENV, "fieldPath": "spec.nodeName"} in k8s["fieldPathAsEnv"]


@pytest.mark.parametrize("profile_name", PROFILES)
def test_cluster_pipeline_trains_distributed_only_when_asked_on_the_profile(compile_with, platform, profile_name):
    ir = compile_with("train-compress-cluster", profile_name)
    branch = ir.task_named("distributed-training")
    assert branch["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--distributed_training'] == true"
    launcher = ir.task("train-distributed")
    constants = {name: value["runtimeValue"]["constant"] for name, value in launcher["inputs"]["parameters"].items()
                 if "runtimeValue" in value}
    assert constants["training_profile"] == profile_name  # the job's pods take the profile's GPUs and placement
    assert constants["training_image"] == runtime_image(platform)
    assert constants["checkpoint_mount"] == CHECKPOINT_MOUNT
    assert launcher["cachingOptions"].get("enableCache", False) is False
    default = platform.profile(platform.default_profile)
    resources = ir.resources("train-distributed")  # the launcher itself only waits: default profile, no GPU
    assert resources["resourceCpuRequest"] == default.cpu_request and "accelerator" not in resources
    (mount,) = ir.k8s("train-distributed")["pvcMount"]
    assert mount["mountPath"] == CHECKPOINT_MOUNT
    assert mount["pvcNameParameter"] == {"componentInputParameter": "pipelinechannel--checkpoint_pvc"}


def test_cluster_pipeline_steps_after_training_take_whichever_branch_ran(compile_with):
    ir = compile_with("train-compress-cluster", "gpu-a100")
    branches = ir.task_named("condition-branches-1")
    (oneof,) = ir.spec["components"][branches["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    for step in ("evaluate", "compress", "report"):
        source = ir.task(step)["inputs"]["artifacts"]["trained_model"]["taskOutputArtifact"]
        assert source == {"outputArtifactKey": oneof, "producerTask": "condition-branches-1"}, step


def test_cluster_pipeline_promotes_the_built_image_only_when_asked(compile_with, platform):
    ir = compile_with("train-compress-cluster", "gpu-a100")
    build_branch = ir.task_named("serving-image-requested")
    inner = ir.spec["components"][build_branch["componentRef"]["name"]]["dag"]["tasks"]
    (gate,) = [t for t in inner.values() if t["taskInfo"]["name"] == "promotion-requested"]
    assert gate["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--promote'] == true"
    assert gate["dependentTasks"] == ["build-image"]
    promote = ir.task("promote")
    parameters = promote["inputs"]["parameters"]
    assert parameters["image"] == {"componentInputParameter": "pipelinechannel--build-image-Output"}
    assert parameters["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    assert promote["inputs"]["artifacts"]["compressed_model"] == \
        {"componentInputArtifact": "pipelinechannel--compress-compressed_model"}
    assert promote["cachingOptions"].get("enableCache", False) is False
    (secret,) = ir.k8s("promote")["secretAsEnv"]
    assert secret["secretName"] == "kubeforge-gitops-credentials"
    assert {e["envVar"] for e in secret["keyToEnv"]} == {"GITOPS_USERNAME", "GITOPS_TOKEN"}
    assert "accelerator" not in ir.resources("promote")


@pytest.mark.parametrize("profile_name", ["cpu", "gpu-a100"])
def test_lm_pipeline_wires_pretraining_into_finetuning_and_evaluation(compile_with, profile_name):
    ir = compile_with("lm-pretrain-finetune", profile_name)
    pretrained = {"outputArtifactKey": "pretrained_model", "producerTask": "lm-pretrain"}
    for step in ("lm-finetune", "lm-evaluate", "lm-report"):
        assert ir.task(step)["inputs"]["artifacts"]["pretrained_model"]["taskOutputArtifact"] == pretrained, step
    assert ir.task("lm-evaluate")["inputs"]["artifacts"]["finetuned_model"]["taskOutputArtifact"] == \
        {"outputArtifactKey": "finetuned_model", "producerTask": "lm-finetune"}
    assert "pretrained_model" not in compile_with("lm-finetune", profile_name).task("lm-finetune")["inputs"].get(
        "artifacts", {})


def test_lm_parameters_validate_like_the_classifier_ones():
    done = resolve_params("lm-finetune", {"base_model": "hf://org/model@main", "finetune_dataset": "data.jsonl",
                                          "lora_rank": 16})
    assert done["lora_rank"] == 16 and done["finetune_steps"] == RunConfig().finetune.steps
    with pytest.raises(ConfigError, match="lora_rank: Input should be greater than or equal to 1"):
        resolve_params("lm-finetune", {"lora_rank": 0})
    with pytest.raises(ConfigError, match="unknown parameter 'pretrain_steps'"):
        resolve_params("lm-finetune", {"pretrain_steps": 3})
    with pytest.raises(ConfigError, match="unknown scratch preset 'huge'"):
        resolve_params("lm-pretrain-finetune", {"base_model": "scratch:huge"})


def test_promotion_without_its_settings_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="promote=true needs serving_image, promote_tenant, gitops_repo_url"):
        resolve_params("train-compress-cluster", {"promote": True})
    done = resolve_params("train-compress-cluster", {
        "promote": True, "serving_image": "registry.example.com/a/clf:1", "promote_tenant": "team-a",
        "gitops_repo_url": "https://git.example.com/platform/gitops.git"})
    assert done["promote"] is True and done["promote_env"] == "dev"
