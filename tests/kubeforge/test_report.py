import base64
import re

from kubeforge.evaluation import ClassMetrics, Evaluation, FeatureImportance
from kubeforge.report import Section, data_section, evaluation_section, render_report, training_section

PNG_MAGIC = b"\x89PNG"


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def sample_evaluation() -> Evaluation:
    return Evaluation(accuracy=0.9, precision_macro=0.9, recall_macro=0.9, f1_macro=0.9, num_samples=10,
                      class_names=["cat", "<dog>"], per_class=[ClassMetrics("cat", 1, 0.8, 0.89, 5),
                                                               ClassMetrics("<dog>", 0.83, 1, 0.91, 5)],
                      confusion_matrix=[[4, 1], [0, 5]],
                      feature_importance=[FeatureImportance("ear", 0.2, 0.01)])


def test_report_embeds_every_plot_and_escapes_names():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_accuracy": 0.5 + e / 10} for e in (1, 2, 3)]
    schema = {"source": "digits", "features": ["a", "b"], "class_names": ["cat", "<dog>"],
              "rows": {"train": 6, "val": 2, "test": 2}}
    page = render_report("run", [data_section(schema), training_section(history, best_epoch=3),
                                 evaluation_section(sample_evaluation()), Section("Extra", "<p>more</p>")])
    pngs = embedded_pngs(page)
    assert len(pngs) == 3 and all(png.startswith(PNG_MAGIC) for png in pngs)  # curves, confusion, importance
    assert "&lt;dog&gt;" in page and "<dog>" not in page
    assert page.count("<section>") == 4 and "<p>more</p>" in page


def test_training_section_without_history_says_so():
    assert "No epochs" in training_section([]).body_html
