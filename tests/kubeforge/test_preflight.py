"""The preflight check: the data problems preprocess would fail on, found before kfp starts, in its words."""

import time

import pytest

from kubeforge.data import DataError
from kubeforge.orchestration import resolve_params
from kubeforge.preflight import local_path, preflight


def table_params(path, label="y"):
    return resolve_params("train-evaluate", {"dataset": str(path), "label_column": label})


@pytest.mark.parametrize("text, message", [
    ("a,b,y\n1,2,0\n3,,1\n5,6,0\n7,8,1\n", "feature column 'b' has 1 NaN/inf value(s)"),
    ("a,b,y\n1,2,0\n3,inf,1\n5,6,0\n7,8,1\n", "feature column 'b' has 1 NaN/inf value(s)"),
    ("a,y\n1,0\n2,0\n", "label column 'y' has a single class ('0')"),
    ("a,b\n1,2\n3,4\n", "label column 'y' not found; columns: a, b"),
    ("a,y\nx,0\ny,1\nz,0\nw,1\n", "feature column 'a' is not numeric"),
    ("a,y\n1,0\n2,0\n3,1\n", "class '1' has fewer than 2 rows (1)"),
    ("a,a,y\n1,2,0\n", "duplicate column names: a"),
    ("", "empty table"),
])
def test_bad_tables_are_refused_with_the_preprocess_message(tmp_path, text, message):
    path = tmp_path / "data.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=f"^{path}: .*" if not message.startswith("empty") else "empty table") as info:
        preflight(table_params(path))
    assert message in str(info.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path}/nope.parquet: file not found$"):
        preflight(table_params(tmp_path / "nope.parquet"))


def test_good_bundled_remote_and_oversized_sources_pass(tmp_path, monkeypatch):
    good = tmp_path / "good.csv"
    good.write_text("a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(40)))
    preflight(table_params(good))
    preflight(resolve_params("train-evaluate", {"dataset": "digits"}))
    preflight(resolve_params("train-evaluate", {"dataset": "s3://bucket/t.csv", "label_column": "y"}))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,y\n1,0\n2,0\n")
    monkeypatch.setattr("kubeforge.preflight.PREFLIGHT_MAX_BYTES", 4)
    preflight(table_params(bad))  # too big to read up front: the step reads it


def test_the_check_takes_well_under_a_second(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,y\n" + "".join(f"{i},{i * 0.5},{i % 3}\n" for i in range(2000)) + "1,,0\n")
    params = table_params(path)
    with pytest.raises(DataError):
        preflight(params)  # imports pandas once, as the first check in a process does
    started = time.perf_counter()
    with pytest.raises(DataError, match="NaN"):
        preflight(params)
    assert time.perf_counter() - started < 0.5


def test_language_model_sources_are_loaded_and_split_by_document(tmp_path):
    base = {"corpus": "pydoc:topics", "finetune_dataset": "pydoc:docstrings", "holdout_fraction": 0.1,
            "holdout_seed": 0}
    preflight(base)  # built-in sources: nothing to read up front
    with pytest.raises(DataError, match="missing.txt: not found"):
        preflight({**base, "corpus": str(tmp_path / "missing.txt")})
    single = tmp_path / "one.txt"
    single.write_text("just one document without any gap\n")
    with pytest.raises(DataError, match=f"^{single}: cannot hold out by document"):
        preflight({**base, "corpus": str(single)})
    broken = tmp_path / "tune.jsonl"
    broken.write_text('{"prompt": "a", "completion": "b"}\n{not json\n')
    with pytest.raises(DataError, match="line 2: invalid JSON"):
        preflight({**base, "finetune_dataset": str(broken)})


@pytest.mark.parametrize("source, expected", [
    ("data/t.csv", "data/t.csv"), ("file:///x/t.csv", "/x/t.csv"), ("s3://b/t.csv", None), ("pydoc:topics", None),
    ("hf://datasets/a/b", None),
])
def test_only_local_sources_are_read(source, expected):
    found = local_path(source)
    assert (str(found) if found else None) == expected
