"""train-evaluate: preprocess -> train (scheduled by a profile) -> evaluate -> report."""

from collections.abc import Callable

from kubeforge_components.evaluate import evaluate
from kubeforge_components.preprocess import preprocess
from kubeforge_components.report import report
from kubeforge_components.train import train
from kubeforge_pipelines.params import Params, derived_pipeline, section_args
from kubeforge_pipelines.scheduling import Placement

NAME = "train-evaluate"
DESCRIPTION = "Preprocess, train, evaluate and report a classifier."
SECTIONS = ("data", "model", "train")
TRAINING_TASKS = ("train",)


def build(placement: Placement) -> Callable:
    """The pipeline with training placed by the heavy profile and the light steps by the default one."""

    def body(p: Params):
        data = preprocess(**section_args(p, "data"))
        trained = train(splits=data.outputs["splits"], **section_args(p, "model", "train"))
        scored = evaluate(splits=data.outputs["splits"], trained_model=trained.outputs["trained_model"], seed=p["seed"])
        summary = report(splits=data.outputs["splits"], trained_model=trained.outputs["trained_model"],
                         evaluation=scored.outputs["evaluation"])
        for task, name in ((data, "preprocess"), (trained, "train"), (scored, "evaluate"), (summary, "report")):
            task.set_display_name(name)
        placement.training(trained)
        for task in (data, scored, summary):
            placement.step(task)
        return summary.outputs["run_report"]

    return derived_pipeline(NAME, DESCRIPTION, SECTIONS, body)
