"""Test-split metrics a tenant can act on: headline scores, per-class breakdown, confusion matrix, and which inputs
the model actually relies on (permutation importance, model-agnostic so it works for plug-in architectures too)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

PredictFn = Callable[[np.ndarray], np.ndarray]
"""Maps raw float32 features [N, D] to class probabilities [N, C]."""


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class FeatureImportance:
    feature: str
    importance: float  # mean accuracy drop when the column is shuffled
    std: float


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    num_samples: int
    class_names: list[str]
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]]
    feature_importance: list[FeatureImportance] = field(default_factory=list)

    def headline(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "precision_macro": self.precision_macro,
                "recall_macro": self.recall_macro, "f1_macro": self.f1_macro}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Evaluation:
        return cls(**{**data,
                      "per_class": [ClassMetrics(**c) for c in data["per_class"]],
                      "feature_importance": [FeatureImportance(**f) for f in data.get("feature_importance", [])]})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Evaluation:
        return cls.from_dict(json.loads(Path(path).read_text()))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> Evaluation:
    """Scores over every declared class, so a class the model never predicts still shows up (with zeros)."""
    if len(y_true) == 0:
        raise ValueError("cannot evaluate on an empty test split")
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return Evaluation(
        accuracy=float(accuracy_score(y_true, y_pred)),
        precision_macro=float(macro[0]),
        recall_macro=float(macro[1]),
        f1_macro=float(macro[2]),
        num_samples=int(len(y_true)),
        class_names=list(class_names),
        per_class=[ClassMetrics(name, float(p), float(r), float(f), int(s))
                   for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)],
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).astype(int).tolist(),
    )


def permutation_importance(predict: PredictFn, X: np.ndarray, y: np.ndarray, feature_names: list[str], *,
                           repeats: int = 5, seed: int = 0) -> list[FeatureImportance]:
    """Accuracy drop per shuffled column, sorted most important first."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    rng = np.random.default_rng(seed)
    baseline = float(np.mean(predict(X).argmax(axis=1) == y))
    scores = []
    shuffled = X.copy()
    for column, name in enumerate(feature_names):
        drops = []
        for _ in range(repeats):
            shuffled[:, column] = X[rng.permutation(len(X)), column]
            drops.append(baseline - float(np.mean(predict(shuffled).argmax(axis=1) == y)))
        shuffled[:, column] = X[:, column]
        scores.append(FeatureImportance(name, float(np.mean(drops)), float(np.std(drops))))
    return sorted(scores, key=lambda item: item.importance, reverse=True)


def evaluate(predict: PredictFn, X: np.ndarray, y: np.ndarray, class_names: list[str], feature_names: list[str], *,
             importance_repeats: int = 3, max_importance_features: int = 256, seed: int = 0) -> Evaluation:
    """Full evaluation; importance is skipped for very wide inputs, where it costs more than it tells."""
    probabilities = predict(X)
    result = classification_metrics(y, probabilities.argmax(axis=1), class_names)
    if importance_repeats > 0 and len(feature_names) <= max_importance_features:
        importance = permutation_importance(predict, X, y, feature_names, repeats=importance_repeats, seed=seed)
        result = Evaluation(**{**result.__dict__, "feature_importance": importance})
    return result


def to_markdown(result: Evaluation, *, title: str = "Evaluation on the test split", top_features: int = 10) -> str:
    lines = [f"# {title}", "",
             f"{result.num_samples} test rows, {len(result.class_names)} classes.", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.4f} |" for name, value in result.headline().items()]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c.name} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |" for c in result.per_class]
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(result.class_names) + " |",
              "| --- " * (len(result.class_names) + 1) + "|"]
    lines += [f"| **{name}** | " + " | ".join(str(v) for v in row) + " |"
              for name, row in zip(result.class_names, result.confusion_matrix, strict=True)]
    if result.feature_importance:
        lines += ["", f"## Most important features (permutation, top {top_features})", "",
                  "| feature | accuracy drop | std |", "| --- | --- | --- |"]
        lines += [f"| {f.feature} | {f.importance:.4f} | {f.std:.4f} |"
                  for f in result.feature_importance[:top_features]]
    return "\n".join(lines) + "\n"
