"""The lm-compress component: its interface is the config sections it takes, it sits after lm-evaluate on the light
profile in both LM pipelines, and run locally by KFP it writes the chosen model, Metrics and Markdown."""

import inspect
import json
from pathlib import Path

import pytest
from kfp import dsl

from kubeforge.config import RunConfig, load_platform
from kubeforge_components.lm_compress import lm_compress
from tests.kubeforge.compression.lm_fixtures import (build_tiny_lm, lm_data_config,  # noqa: F401
                                                     offline_one_thread, write_lm_splits)

SECTIONS = ("lm_data", "lm_runtime", "lm_compress")


def test_takes_exactly_its_sections_fields_with_their_types():
    from kubeforge_pipelines.params import kfp_type

    signature = inspect.signature(lm_compress.python_func)
    parameters = {name: p.annotation for name, p in signature.parameters.items()
                  if p.annotation in (str, int, float, bool, list, dict)}
    fields = RunConfig.flat_fields(SECTIONS)
    assert parameters == {name: kfp_type(field.info.annotation) for name, field in fields.items()}
    inputs, outputs = lm_compress.component_spec.inputs, lm_compress.component_spec.outputs
    assert inputs["pretrained_model"].optional and not inputs["finetuned_model"].optional
    assert {"compressed_model", "lm_compression_metrics", "lm_compression_report", "lm_compression_json"} == \
        set(outputs)
    assert inspect.getsource(lm_compress.python_func).count("lm_compress_step(") == 1


@pytest.mark.parametrize("pipeline", ["lm-pretrain-finetune", "lm-finetune"])
def test_both_lm_pipelines_compress_after_evaluating_on_the_light_profile(tmp_path, pipeline):
    from kubeforge.orchestration import compile_pipeline
    from tests.pipelines.conftest import CompiledPipeline

    platform = load_platform()
    gpu = next((p.name for p in platform.profiles if p.uses_gpu), platform.default_profile)
    ir = CompiledPipeline(compile_pipeline(pipeline, tmp_path / "ir.yaml", platform, gpu))
    task = ir.task_named("lm-compress")
    assert "lm-evaluate" in task["dependentTasks"]
    artifacts = task["inputs"]["artifacts"]
    assert artifacts["finetuned_model"]["taskOutputArtifact"]["producerTask"] == "lm-finetune"
    assert ("pretrained_model" in artifacts) == (pipeline == "lm-pretrain-finetune")
    default = platform.profile(platform.default_profile)
    resources = ir.resources("lm-compress")
    assert resources["resourceCpuRequest"] == default.cpu_request and "accelerator" not in resources
    assert ir.k8s("lm-compress")["podMetadata"]["labels"]["kubeforge.io/profile"] == default.name
    parameters = ir.spec["root"]["inputDefinitions"]["parameters"]
    assert {"lm_compress_methods", "max_perplexity_increase", "min_greedy_agreement", "lm_objective"} <= set(parameters)


@pytest.mark.slow
@pytest.mark.usefixtures("offline_one_thread")
def test_runs_locally_and_labels_its_outputs(kfp_local, tmp_path):
    data = write_lm_splits(tmp_path / "data")
    model = build_tiny_lm(tmp_path / "model", data, steps=20)
    values = {**RunConfig().to_flat(SECTIONS), **lm_data_config().model_dump(),
              "lm_compress_methods": ["int8-weight"], "lm_bench_rounds": 1, "max_perplexity_increase": 50.0,
              "min_greedy_agreement": 0.0}

    @dsl.pipeline(name="lm-compress-test")
    def pipeline():
        splits = dsl.importer(artifact_uri=str(data), artifact_class=dsl.Dataset, reimport=True)
        tuned = dsl.importer(artifact_uri=str(model), artifact_class=dsl.Model, reimport=True)
        lm_compress(lm_splits=splits.output, finetuned_model=tuned.output, **values)

    pipeline()
    root = Path(kfp_local)
    (model_dir,) = [p for p in root.rglob("compressed_model") if p.is_dir()]
    report = json.loads((model_dir / "compression.json").read_text())
    assert report["chosen"] == "int8-weight" and (model_dir / "torchao.json").is_file()
    assert report["candidates"][0]["size_ratio"] > 3
    (markdown,) = list(root.rglob("lm_compression_report"))
    assert "| int8-weight | pass |" in markdown.read_text()
    (copied,) = list(root.rglob("lm_compression_json"))
    assert json.loads(copied.read_text()) == report
