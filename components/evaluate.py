"""evaluate: score the trained model on the held-out test split."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def evaluate(
    splits: Input[Dataset],
    trained_model: Input[Model],
    seed: int,
    test_metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    evaluation_report: Output[Markdown],
    evaluation: Output[Artifact],
):
    """Logs headline metrics and the confusion matrix for the UI; keeps the full result as JSON for later steps."""
    from kubeforge.artifacts import label
    from kubeforge.evaluation import to_markdown
    from kubeforge.steps import evaluate_step

    result = evaluate_step(splits.path, trained_model.path, evaluation.path, seed=seed)
    label(evaluation, "Evaluation (JSON)")
    for name, value in result.headline().items():
        test_metrics.log_metric(name, round(value, 6))
    label(test_metrics, "Test metrics")
    confusion.log_confusion_matrix(result.class_names, result.confusion_matrix)
    label(confusion, "Confusion matrix")
    with open(evaluation_report.path, "w") as handle:
        handle.write(to_markdown(result))
    label(evaluation_report, "Evaluation report")
