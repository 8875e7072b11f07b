"""train-compress (the default): preprocess -> train (profile) -> evaluate -> compress (accuracy gate) -> package
(Bento + image build context), plus the run report."""

from collections.abc import Callable

from kubeforge_components.compress import compress
from kubeforge_components.evaluate import evaluate
from kubeforge_components.package import package
from kubeforge_components.preprocess import preprocess
from kubeforge_components.report import report
from kubeforge_components.train import train
from kubeforge_pipelines.params import Params, derived_pipeline, section_args
from kubeforge_pipelines.scheduling import Placement

NAME = "train-compress"
DESCRIPTION = "Preprocess, train, evaluate, compress behind an accuracy gate, package a Bento, and report."
SECTIONS = ("data", "model", "train", "compress")
TRAINING_TASKS = ("train",)


def evaluate_compress_report(placement: Placement, p: Params, splits, trained_model):
    """The steps after training, shared with train-compress-cluster: (compress task, package task, report task)."""
    scored = evaluate(splits=splits, trained_model=trained_model, seed=p["seed"])
    compressed = compress(splits=splits, trained_model=trained_model, **section_args(p, "compress"))
    summary = report(splits=splits, trained_model=trained_model, evaluation=scored.outputs["evaluation"],
                     compressed_model=compressed.outputs["compressed_model"])
    packaged = package(model=compressed.outputs["compressed_model"])
    for task, name in ((scored, "evaluate"), (compressed, "compress"), (packaged, "package"), (summary, "report")):
        task.set_display_name(name)
        placement.step(task)  # latency is measured on CPU, where the model will be served
    return compressed, packaged, summary


def build(placement: Placement) -> Callable:
    def body(p: Params):
        data = preprocess(**section_args(p, "data"))
        trained = train(splits=data.outputs["splits"], **section_args(p, "model", "train"))
        data.set_display_name("preprocess")
        trained.set_display_name("train")
        placement.step(data)
        placement.training(trained)
        _, _, summary = evaluate_compress_report(placement, p, data.outputs["splits"],
                                                 trained.outputs["trained_model"])
        return summary.outputs["run_report"]

    return derived_pipeline(NAME, DESCRIPTION, SECTIONS, body)
