"""Loading, validating and splitting tabular data.

Bad data is refused here, with a message naming the file, column or class, because every later step (and a tenant
reading a failed run in the Kubeflow UI) depends on it. Splits are stored raw; the standardisation fitted on the
training split is stored beside them and travels inside the model, so serving accepts raw features.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd

from kubeforge.errors import DataError  # noqa: F401 (re-exported)
from kubeforge.config import BUNDLED_DATASETS, DataConfig




LABEL = "__label__"
SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1
_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Table:
    features: pd.DataFrame
    labels: pd.Series
    source: str
    image_shape: tuple[int, int] | None = None


@dataclass(frozen=True)
class Scaler:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Scaler:
        mean = X.mean(axis=0, dtype=np.float64)
        std = X.std(axis=0, dtype=np.float64)
        return cls(mean=mean, scale=np.where(std > 1e-12, std, 1.0))  # constant columns: never divide by zero

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Scaler:
        return cls(mean=np.asarray(data["mean"], dtype=np.float64), scale=np.asarray(data["scale"], dtype=np.float64))


@dataclass(frozen=True)
class Splits:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    class_names: list[str]
    scaler: Scaler
    image_shape: tuple[int, int] | None
    source: str

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return getattr(self, f"X_{name}"), getattr(self, f"y_{name}")


# ----------------------------------------------------------------------------------------------------------- loading

def _load_bundled(name: str) -> Table:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    image_shape = None
    if name == "digits":
        side = bunch.images.shape[1]
        names = [f"pixel_{r}_{c}" for r in range(side) for c in range(side)]
        image_shape = (side, side)
    else:
        names = [str(n) for n in bunch.feature_names]
    features = pd.DataFrame(bunch.data, columns=names)
    labels = pd.Series([str(bunch.target_names[t]) for t in bunch.target], name="label")
    if name == "digits":
        labels = pd.Series(bunch.target, name="label")
    return Table(features=features, labels=labels, source=name, image_shape=image_shape)


def _csv_header(raw: bytes, source: str) -> list[str]:
    try:
        first_line = raw.decode("utf-8").splitlines()[0] if raw.strip() else ""
    except UnicodeDecodeError:
        raise DataError(f"{source}: unreadable CSV (not UTF-8 text)") from None
    return next(csv.reader([first_line]), []) if first_line else []


def _read_file(source: str) -> pd.DataFrame:
    lowered = source.lower()
    if not lowered.endswith(_CSV_SUFFIXES + _PARQUET_SUFFIXES):
        raise DataError(f"{source}: unsupported format; supported: {', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)}")
    try:
        with fsspec.open(source, "rb", compression="infer") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise DataError(f"{source}: file not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{source}: cannot open ({exc})") from None
    if lowered.endswith(_CSV_SUFFIXES):
        header = _csv_header(raw, source)
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            raise DataError(f"{source}: duplicate column names: {', '.join(duplicates)}")
        if not header:
            raise DataError(f"{source}: empty table (no header and no rows)")
        try:
            return pd.read_csv(io.BytesIO(raw))
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"{source}: unreadable CSV ({str(exc).splitlines()[0]})") from None
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(raw))
        names = parquet.schema_arrow.names
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:  # checked on the schema: readers refuse or mangle duplicate names
            raise DataError(f"{source}: duplicate column names: {', '.join(duplicates)}")
        return parquet.read().to_pandas()
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{source}: unreadable Parquet ({str(exc).splitlines()[0]})") from None


def _validate(frame: pd.DataFrame, label_column: str, source: str) -> Table:
    columns = [str(c) for c in frame.columns]
    duplicates = sorted({c for c in columns if columns.count(c) > 1})
    if duplicates:
        raise DataError(f"{source}: duplicate column names: {', '.join(duplicates)}")
    if label_column not in columns:
        raise DataError(f"{source}: label column {label_column!r} not found; columns: {', '.join(columns)}")
    if len(frame) == 0:
        raise DataError(f"{source}: empty table (no rows)")
    features = frame.drop(columns=[label_column])
    if features.shape[1] == 0:
        raise DataError(f"{source}: empty table (no feature columns besides {label_column!r})")
    for column in features.columns:
        series = features[column]
        if pd.api.types.is_bool_dtype(series):
            features[column] = series.astype(np.float64)
        elif not pd.api.types.is_numeric_dtype(series):
            raise DataError(f"{source}: feature column {column!r} is not numeric (dtype {series.dtype})")
    values = features.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        column = int(np.argmax(bad.any(axis=0)))
        raise DataError(f"{source}: feature column {features.columns[column]!r} has "
                        f"{int(bad[:, column].sum())} NaN/inf value(s)")
    labels = frame[label_column]
    if labels.isna().any():
        raise DataError(f"{source}: label column {label_column!r} has {int(labels.isna().sum())} missing value(s)")
    counts = labels.value_counts()
    if len(counts) < 2:
        raise DataError(f"{source}: label column {label_column!r} has a single class ({str(counts.index[0])!r})")
    rare = counts[counts < 2]
    if len(rare):
        raise DataError(f"{source}: class {str(rare.index[0])!r} has fewer than 2 rows ({int(rare.iloc[0])})")
    return Table(features=features.astype(np.float64).rename(columns=str), labels=labels.reset_index(drop=True),
                 source=source)


def load_table(dataset: str, label_column: str = "") -> Table:
    """A bundled scikit-learn set by name, or a CSV/Parquet file (path or fsspec URI) with a label column."""
    if dataset in BUNDLED_DATASETS:
        return _load_bundled(dataset)
    if not label_column:
        raise DataError(f"{dataset}: label_column is required for a file source")
    return _validate(_read_file(dataset), label_column, dataset)


# --------------------------------------------------------------------------------------------------------- splitting

def _class_order(labels: pd.Series) -> list:
    return sorted(labels.unique().tolist(), key=lambda v: (not isinstance(v, (int, float, np.number)), v))


def split_table(table: Table, config: DataConfig) -> Splits:
    """Stratified train/val/test split; every class must be present in every split."""
    from sklearn.model_selection import train_test_split

    order = _class_order(table.labels)
    index = {value: i for i, value in enumerate(order)}
    y = table.labels.map(index).to_numpy(dtype=np.int64)
    X = table.features.to_numpy(dtype=np.float32)
    counts = np.bincount(y, minlength=len(order))
    smallest = min(config.val_fraction, config.test_fraction)
    for class_index, count in enumerate(counts):
        needed = int(np.ceil(1 / smallest)) + 1
        if count < needed:
            raise DataError(f"{table.source}: class {str(order[class_index])!r} has {count} rows; a stratified split with "
                            f"val_fraction={config.val_fraction} and test_fraction={config.test_fraction} needs at "
                            f"least {needed}")
    holdout = config.val_fraction + config.test_fraction
    try:
        X_train, X_rest, y_train, y_rest = train_test_split(X, y, test_size=holdout, stratify=y,
                                                            random_state=config.split_seed)
        X_val, X_test, y_val, y_test = train_test_split(X_rest, y_rest, test_size=config.test_fraction / holdout,
                                                        stratify=y_rest, random_state=config.split_seed)
    except ValueError as exc:
        raise DataError(f"{table.source}: cannot split stratified ({exc})") from None
    return Splits(X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val, X_test=X_test, y_test=y_test,
                  feature_names=list(table.features.columns), class_names=[str(v) for v in order],
                  scaler=Scaler.fit(X_train), image_shape=table.image_shape, source=table.source)


# ------------------------------------------------------------------------------------------------------------ storage

def _schema(splits: Splits) -> dict:
    X = splits.X_train.astype(np.float64)
    return {
        "format_version": FORMAT_VERSION,
        "source": splits.source,
        "features": [{"name": n, "dtype": "float32"} for n in splits.feature_names],
        "class_names": splits.class_names,
        "label_column": LABEL,
        "image_shape": list(splits.image_shape) if splits.image_shape else None,
        "rows": {name: int(len(splits.split(name)[1])) for name in SPLITS},
        "class_counts": {name: np.bincount(splits.split(name)[1], minlength=splits.num_classes).tolist()
                         for name in SPLITS},
        "train_statistics": {n: {"mean": float(X[:, i].mean()), "std": float(X[:, i].std()),
                                 "min": float(X[:, i].min()), "max": float(X[:, i].max())}
                             for i, n in enumerate(splits.feature_names)},
    }


def write_splits(splits: Splits, directory: str | os.PathLike[str]) -> None:
    """Write into a sibling temp dir first, then move files in: a failure never leaves a half-written split."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".splits-", dir=target.parent))
    try:
        for name in SPLITS:
            X, y = splits.split(name)
            frame = pd.DataFrame(X, columns=splits.feature_names)
            frame[LABEL] = y
            frame.to_parquet(staging / f"{name}.parquet", index=False)
        (staging / "scaler.json").write_text(json.dumps(splits.scaler.to_dict()))
        (staging / "schema.json").write_text(json.dumps(_schema(splits), indent=2))
        target.mkdir(exist_ok=True)
        for item in staging.iterdir():
            os.replace(item, target / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_splits(directory: str | os.PathLike[str]) -> Splits:
    root = Path(directory)
    required = [f"{name}.parquet" for name in SPLITS] + ["scaler.json", "schema.json"]
    for name in required:
        if not (root / name).is_file():
            raise DataError(f"{root}: missing {name}; not a kubeforge splits directory")
    schema = json.loads((root / "schema.json").read_text())
    names = [f["name"] for f in schema["features"]]
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        frame = pd.read_parquet(root / f"{split}.parquet")
        arrays[f"X_{split}"] = frame[names].to_numpy(dtype=np.float32)
        arrays[f"y_{split}"] = frame[LABEL].to_numpy(dtype=np.int64)
    shape = schema.get("image_shape")
    return Splits(**arrays, feature_names=names, class_names=list(schema["class_names"]),
                  scaler=Scaler.from_dict(json.loads((root / "scaler.json").read_text())),
                  image_shape=tuple(shape) if shape else None, source=schema["source"])


def prepare(config: DataConfig, directory: str | os.PathLike[str]) -> Splits:
    splits = split_table(load_table(config.dataset, config.label_column), config)
    write_splits(splits, directory)
    return splits
