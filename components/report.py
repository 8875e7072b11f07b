"""report: one self-contained HTML page per run (curves, confusion matrix, importance), shown by the KFP UI."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def report(
    splits: Input[Dataset],
    trained_model: Input[Model],
    evaluation: Input[Artifact],
    run_report: Output[HTML],
    compressed_model: Input[Model] = None,
):
    """The compression section appears when the pipeline has a compress step."""
    from kubeforge.artifacts import label
    from kubeforge.steps import report_step

    report_step(splits.path, trained_model.path, evaluation.path, run_report.path,
                compressed_dir=compressed_model.path if compressed_model is not None else None)
    label(run_report, "Run report")
