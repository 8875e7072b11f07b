import numpy as np
import pytest

from kubeforge.evaluation import Evaluation, classification_metrics, evaluate, permutation_importance, to_markdown


def one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[labels]


def test_metrics_match_a_hand_computed_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    result = classification_metrics(y, pred, ["a", "b", "c"])
    assert result.accuracy == pytest.approx(4 / 6)
    assert result.confusion_matrix == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    by_name = {c.name: c for c in result.per_class}
    assert by_name["b"].precision == pytest.approx(2 / 3) and by_name["b"].recall == 1.0
    assert result.recall_macro == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_a_never_predicted_class_still_appears():
    result = classification_metrics(np.array([0, 1, 2]), np.array([0, 1, 1]), ["a", "b", "c"])
    assert [c.name for c in result.per_class] == ["a", "b", "c"]
    assert result.per_class[2].recall == 0.0 and len(result.confusion_matrix) == 3


def test_empty_or_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="empty test split"):
        classification_metrics(np.array([]), np.array([]), ["a"])
    with pytest.raises(ValueError, match="2 labels but 1 predictions"):
        classification_metrics(np.array([0, 1]), np.array([0]), ["a", "b"])


def test_permutation_importance_finds_the_only_informative_feature():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3)).astype(np.float32)
    y = (X[:, 1] > 0).astype(int)

    def predict(features):
        return one_hot((features[:, 1] > 0).astype(int), 2)

    importance = permutation_importance(predict, X, y, ["noise_a", "signal", "noise_b"], repeats=3)
    assert importance[0].feature == "signal" and importance[0].importance > 0.3
    assert all(abs(item.importance) < 1e-9 for item in importance[1:])


def test_evaluate_round_trips_through_json(tmp_path):
    X = np.array([[0.0], [1.0], [2.0], [3.0]], dtype=np.float32)
    y = np.array([0, 0, 1, 1])

    def predict(features):
        return one_hot((features[:, 0] > 1.5).astype(int), 2)

    result = evaluate(predict, X, y, ["low", "high"], ["x"], importance_repeats=2)
    assert result.accuracy == 1.0 and result.feature_importance[0].feature == "x"
    path = tmp_path / "evaluation.json"
    result.save(path)
    assert Evaluation.load(path) == result
    markdown = to_markdown(result)
    assert "| accuracy | 1.0000 |" in markdown and "| **low** | 2 | 0 |" in markdown


def test_importance_skipped_for_wide_inputs():
    X = np.zeros((4, 5), dtype=np.float32)
    result = evaluate(lambda f: one_hot(np.zeros(len(f), dtype=int), 2), X, np.array([0, 0, 1, 1]),
                      ["a", "b"], [f"f{i}" for i in range(5)], max_importance_features=3)
    assert result.feature_importance == []
