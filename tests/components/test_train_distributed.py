"""The train-distributed component's interface. Running it needs a cluster with the Kubeflow Trainer (or training
operator) controllers to run the job's pods; kwok has no such controllers, so the create/wait path is covered by
tests/cluster against a real API server, with the job's status written the way the controller writes it."""

import inspect

from kfp import compiler, dsl

from kubeforge.config import DistributedConfig, ModelConfig, TrainConfig
from kubeforge_components.train import train
from kubeforge_components.train_distributed import train_distributed


def parameters(component) -> dict:
    return component.component_spec.inputs


def test_takes_every_train_parameter_plus_the_distributed_settings():
    train_inputs, distributed_inputs = parameters(train), parameters(train_distributed)
    for name, spec in train_inputs.items():
        assert distributed_inputs[name].type == spec.type, name
    volume_settings = {"storage_class", "workspace_size"}  # the pipeline's CreatePVC steps take those
    assert set(DistributedConfig.model_fields) - volume_settings <= set(distributed_inputs)
    assert set(ModelConfig.model_fields) | set(TrainConfig.model_fields) <= set(distributed_inputs)
    assert {"training_profile", "training_image", "namespace", "job_name", "queue"} <= set(distributed_inputs)
    outputs = train_distributed.component_spec.outputs
    assert {"trained_model", "train_metrics", "job_report"} <= set(outputs)
    assert outputs["trained_model"].type == train.component_spec.outputs["trained_model"].type


def test_compiles_inside_a_pipeline(tmp_path):
    @dsl.pipeline(name="distributed-smoke")
    def smoke(splits_uri: str = "gs://bucket/splits"):
        splits = dsl.importer(artifact_uri=splits_uri, artifact_class=dsl.Dataset)
        train_distributed(
            splits=splits.output, **{k: v for k, v in ModelConfig().model_dump().items()},
            **TrainConfig().model_dump(),
            **DistributedConfig(checkpoint_pvc="ckpt").model_dump(exclude={"storage_class", "workspace_size"}),
            training_profile="gpu-a100")

    package = tmp_path / "smoke.yaml"
    compiler.Compiler().compile(smoke, str(package))
    text = package.read_text()
    assert "kubeforge.distributed.step" in text and "train_distributed_step" in text
    assert "training_profile" in text


def test_body_is_one_library_call():
    source = inspect.getsource(train_distributed.python_func)
    assert source.count("train_distributed_step(") == 1
