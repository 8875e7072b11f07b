import json
from pathlib import Path

import pytest

from kubeforge_components.preprocess import preprocess

pytestmark = pytest.mark.slow


def test_preprocess_runs_locally_and_labels_its_outputs(kfp_local):
    task = preprocess(dataset="iris", label_column="", val_fraction=0.2, test_fraction=0.2, split_seed=1)
    splits = task.outputs["splits"]
    files = {p.name for p in Path(splits.path).iterdir()}
    assert {"train.parquet", "val.parquet", "test.parquet", "scaler.json", "schema.json"} <= files
    assert splits.metadata["display_name"] == "Train/val/test splits"
    assert splits.metadata["rows_train"] + splits.metadata["rows_val"] + splits.metadata["rows_test"] == 150
    stats = task.outputs["data_stats"]
    assert stats.metadata["classes"] == 3 and stats.metadata["display_name"] == "Data statistics"
    report = Path(task.outputs["data_report"].path).read_text()
    assert "# Data" in report and "iris" in report
    assert json.loads((Path(splits.path) / "schema.json").read_text())


def test_preprocess_failure_names_the_problem(kfp_local, tmp_path, capfd):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,y\n1,x,0\n2,3,1\n")
    with pytest.raises(RuntimeError):
        preprocess(dataset=str(bad), label_column="y", val_fraction=0.2, test_fraction=0.2, split_seed=0)
    captured = capfd.readouterr()
    assert "feature column 'b' is not numeric" in captured.out + captured.err
