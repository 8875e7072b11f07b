import gzip

import numpy as np
import pandas as pd
import pytest

from kubeforge.config import DataConfig
from kubeforge.data import LABEL, DataError, load_table, prepare, read_splits, split_table, write_splits


@pytest.mark.parametrize("name, rows, features, classes", [
    ("digits", 1797, 64, 10), ("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3), ("iris", 150, 4, 3)])
def test_bundled_sets_load(name, rows, features, classes):
    table = load_table(name)
    assert table.features.shape == (rows, features)
    assert table.labels.nunique() == classes
    assert (table.image_shape == (8, 8)) == (name == "digits")


def test_split_is_stratified_seeded_and_scaled_on_train_only():
    table = load_table("wine")
    config = DataConfig(dataset="wine", split_seed=3)
    splits = split_table(table, config)
    assert len(splits.y_train) + len(splits.y_val) + len(splits.y_test) == 178
    overall = np.bincount(table.labels.map({v: i for i, v in enumerate(splits.class_names)}).to_numpy()) / 178
    for name in ("train", "val", "test"):
        share = np.bincount(splits.split(name)[1], minlength=3) / len(splits.split(name)[1])
        assert np.allclose(share, overall, atol=0.06), name
    scaled = splits.scaler.transform(splits.X_train)
    assert np.allclose(scaled.mean(axis=0), 0, atol=1e-4)
    assert not np.allclose(splits.scaler.mean, table.features.to_numpy().mean(axis=0))
    again = split_table(table, config)
    assert np.array_equal(again.X_test, splits.X_test)
    other = split_table(table, DataConfig(dataset="wine", split_seed=4))
    assert not np.array_equal(other.X_test, splits.X_test)


def test_write_read_round_trip(tmp_path):
    splits = prepare(DataConfig(dataset="iris"), tmp_path / "splits")
    back = read_splits(tmp_path / "splits")
    for name in ("train", "val", "test"):
        assert np.array_equal(back.split(name)[0], splits.split(name)[0])
        assert np.array_equal(back.split(name)[1], splits.split(name)[1])
    assert back.feature_names == splits.feature_names and back.class_names == splits.class_names
    assert np.array_equal(back.scaler.mean, splits.scaler.mean)
    assert not list(tmp_path.glob(".splits-*")), "staging directory left behind"


def test_read_splits_names_the_missing_file(tmp_path):
    prepare(DataConfig(dataset="iris"), tmp_path)
    (tmp_path / "val.parquet").unlink()
    with pytest.raises(DataError, match="missing val.parquet"):
        read_splits(tmp_path)


def write_csv(path, text):
    path.write_text(text)
    return str(path)


def good_frame(rows_per_class=10):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(3 * rows_per_class, 3)), columns=["a", "b", "c"])
    frame["y"] = ["x", "y", "z"] * rows_per_class
    return frame


def test_csv_parquet_and_fsspec_uri_sources(tmp_path):
    frame = good_frame()
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    with gzip.open(tmp_path / "d.csv.gz", "wt") as handle:
        frame.to_csv(handle, index=False)
    for source in (str(tmp_path / "d.csv"), str(tmp_path / "d.parquet"), f"file://{tmp_path}/d.parquet",
                   str(tmp_path / "d.csv.gz")):
        table = load_table(source, "y")
        assert list(table.features.columns) == ["a", "b", "c"] and len(table.labels) == 30, source
    splits = prepare(DataConfig(dataset=str(tmp_path / "d.csv"), label_column="y"), tmp_path / "out")
    assert splits.class_names == ["x", "y", "z"]
    assert LABEL in pd.read_parquet(tmp_path / "out" / "train.parquet").columns


@pytest.mark.parametrize("content, label, message", [
    (None, "y", "file not found"),
    ("a,b,y\n1,2,0\n", "label", "label column 'label' not found; columns: a, b, y"),
    ("a,b,y\n1,x,0\n2,3,1\n", "y", "feature column 'b' is not numeric"),
    ("a,b,y\n1,,0\n2,3,1\n2,3,1\n1,2,0\n", "y", "feature column 'b' has 1 NaN/inf"),
    ("a,b,y\n1,inf,0\n2,3,1\n2,3,1\n1,2,0\n", "y", "feature column 'b' has 1 NaN/inf"),
    ("a,b,y\n", "y", "empty table (no rows)"),
    ("y\n0\n1\n", "y", "no feature columns"),
    ("a,b,y\n1,2,0\n2,3,0\n", "y", "single class"),
    ("a,b,y\n1,2,0\n2,3,0\n3,3,1\n", "y", "class '1' has fewer than 2 rows"),
    ("a,a,y\n1,2,0\n2,3,1\n", "y", "duplicate column names: a"),
    ("a,b,y\n1,2,\n2,3,1\n", "y", "label column 'y' has 1 missing value"),
])
def test_bad_csv_inputs_are_refused_with_a_named_problem(tmp_path, content, label, message):
    path = tmp_path / "data.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_table(str(path), label)


def test_unreadable_formats_are_refused(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="unreadable Parquet"):
        load_table(str(tmp_path / "junk.parquet"), "y")
    (tmp_path / "junk.csv").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="unreadable CSV"):
        load_table(str(tmp_path / "junk.csv"), "y")
    (tmp_path / "data.xlsx").write_bytes(b"")
    with pytest.raises(DataError, match="unsupported format; supported: .csv"):
        load_table(str(tmp_path / "data.xlsx"), "y")


def test_duplicate_columns_in_parquet_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_arrays([pa.array([1, 2]), pa.array([3, 4]), pa.array([0, 1])],
                                        names=["a", "a", "y"]), tmp_path / "dup.parquet")
    with pytest.raises(DataError, match="duplicate column names: a"):
        load_table(str(tmp_path / "dup.parquet"), "y")


def test_too_small_class_for_the_split_names_the_class(tmp_path):
    frame = good_frame(rows_per_class=10)
    frame.loc[len(frame)] = [0.1, 0.2, 0.3, "rare"]
    frame.loc[len(frame)] = [0.1, 0.2, 0.4, "rare"]
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="class 'rare' has 2 rows; a stratified split .* needs at least"):
        prepare(DataConfig(dataset=str(path), label_column="y"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_booleans_are_numeric(tmp_path):
    frame = good_frame()
    frame["flag"] = [True, False] * 15
    frame.to_parquet(tmp_path / "d.parquet")
    assert load_table(str(tmp_path / "d.parquet"), "y").features["flag"].sum() == 15
