"""lm-report: the run's HTML report for a language model (data, loss curves, base vs fine-tuned, completions)."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_report(
    lm_splits: Input[Dataset],
    finetuned_model: Input[Model],
    lm_evaluation: Input[Artifact],
    run_report: Output[HTML],
    pretrained_model: Input[Model] = None,
    compressed_model: Input[Model] = None,
):
    from kubeforge.artifacts import label
    from kubeforge.lm.steps import lm_report_step

    lm_report_step(lm_splits.path, finetuned_model.path, lm_evaluation.path, run_report.path,
                   pretrained_dir=pretrained_model.path if pretrained_model is not None else None,
                   compressed_dir=compressed_model.path if compressed_model is not None else None)
    label(run_report, "Run report")
