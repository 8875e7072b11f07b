"""A single self-contained HTML report per run (plots embedded), readable offline and in the Kubeflow UI's HTML
viewer. Steps contribute sections; the report only lays them out."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: components run in pods and CI without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kubeforge.evaluation import Evaluation  # noqa: E402


@dataclass(frozen=True)
class Section:
    title: str
    body_html: str


def figure_to_img(fig: plt.Figure, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def table_html(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def data_section(schema: dict) -> Section:
    rows = [(split, schema["rows"][split]) for split in ("train", "val", "test")]
    body = (f"<p>Source: <code>{html.escape(str(schema['source']))}</code>; {len(schema['features'])} features, "
            f"{len(schema['class_names'])} classes.</p>" + table_html(["split", "rows"], rows))
    return Section("Data", body)


def training_section(history: list[dict], *, best_epoch: int | None = None) -> Section:
    if not history:
        return Section("Training", "<p>No epochs were recorded.</p>")
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    acc_ax.plot(epochs, [h["val_accuracy"] for h in history], label="validation accuracy", color="tab:green")
    for axis, label in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        if best_epoch is not None:
            axis.axvline(best_epoch, color="grey", linestyle=":", label="best epoch")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.legend()
    last = history[-1]
    body = (f"<p>{len(history)} epochs; best epoch {best_epoch}; final validation accuracy "
            f"{last['val_accuracy']:.4f}.</p>" + figure_to_img(fig, "training and validation curves"))
    return Section("Training", body)


def evaluation_section(evaluation: Evaluation, *, top_features: int = 15) -> Section:
    names = evaluation.class_names
    matrix = np.asarray(evaluation.confusion_matrix)
    size = max(3.5, 0.45 * len(names))
    fig, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=45)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(col, row, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black", fontsize=8)
    parts = [table_html(["metric", "value"], evaluation.headline().items()),
             figure_to_img(fig, "confusion matrix"),
             table_html(["class", "precision", "recall", "F1", "support"],
                        [(c.name, c.precision, c.recall, c.f1, c.support) for c in evaluation.per_class])]
    if evaluation.feature_importance:
        top = evaluation.feature_importance[:top_features]
        fig, axis = plt.subplots(figsize=(7, 0.3 * len(top) + 1))
        axis.barh([f.feature for f in reversed(top)], [f.importance for f in reversed(top)],
                  xerr=[f.std for f in reversed(top)], color="tab:orange")
        axis.set_xlabel("accuracy drop when shuffled")
        parts.append(figure_to_img(fig, "permutation feature importance"))
    return Section("Evaluation (test split)", "".join(parts))


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}code{background:#f5f5f5;padding:0 3px}"""


def render_report(title: str, sections: Iterable[Section], *, subtitle: str = "") -> str:
    body = "".join(f"<section><h2>{html.escape(s.title)}</h2>{s.body_html}</section>" for s in sections)
    sub = f"<p>{html.escape(subtitle)}</p>" if subtitle else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{sub}{body}</body></html>")
