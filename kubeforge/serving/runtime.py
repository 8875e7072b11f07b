"""The request contract and the model runtime behind the HTTP service.

Clients send raw features, either positional (``{"instances": [[0.0, 1.5, ...], ...]}``) or named
(``{"instances": [{"pixel_0_0": 0.0, ...}, ...]}``); the standardisation fitted in training is inside the model.
Every refusal is a RequestError carrying the HTTP status and a message naming the problem, so the service can answer
4xx and keep serving.

An ONNX model is served without importing torch (a worker then needs ~100 MB instead of ~800 MB, and the garbage
collector has far fewer objects to walk); only a safetensors model loads torch, through kubeforge.compression.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from kubeforge.config import ConfigError, ServeConfig
from kubeforge.onnx_inference import ONNX_FILE, Predictor, onnx_predictor, onnx_session

# The on-disk contract written by kubeforge.models / kubeforge.compression.artifact (read here without torch).
SPEC_FILE = "model.json"
NUMBER_TYPES = frozenset({float, int})
ROW_JSON = '{"class_index":%d,"class_name":%s,"probabilities":[%s]}'


class RequestError(ValueError):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServedSpec:
    """The part of a model directory's model.json that serving needs."""

    input_dim: int
    feature_names: list[str]
    class_names: list[str]
    architecture: str
    precision: str

    @classmethod
    def read(cls, model_dir: str | Path) -> ServedSpec:
        path = Path(model_dir) / SPEC_FILE
        if not path.is_file():
            raise ConfigError(f"{model_dir}: no {SPEC_FILE}; not a kubeforge model directory")
        try:
            raw = json.loads(path.read_text())
            spec = cls(input_dim=int(raw["input_dim"]), feature_names=list(raw["feature_names"]),
                       class_names=[str(name) for name in raw["class_names"]],
                       architecture=str(raw["config"]["model"]), precision=str(raw.get("precision", "fp32")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: invalid model config ({type(exc).__name__}: {exc})") from None
        if len(spec.feature_names) != spec.input_dim:
            raise ConfigError(f"{path}: {len(spec.feature_names)} feature names for input_dim {spec.input_dim}")
        return spec


def load_model_predictor(model_dir: Path, threads: int) -> Predictor:
    if (model_dir / ONNX_FILE).is_file():
        return onnx_predictor(onnx_session(model_dir / ONNX_FILE, threads))
    import torch  # only safetensors models pay for torch

    torch.set_num_threads(threads)
    from kubeforge.compression.artifact import load_predictor

    return load_predictor(model_dir, threads=threads)


@dataclass
class ModelRuntime:
    spec: ServedSpec
    predict_proba: Predictor
    config: ServeConfig
    source: str
    engine: str = "onnxruntime_onnx"  # the v2 protocol's "platform" of the model

    def __post_init__(self) -> None:
        self._names = self.spec.feature_names
        self._name_set = frozenset(self._names)
        self._name_json = [json.dumps(name) for name in self.spec.class_names]
        self._row_format = ",".join(["%.6f"] * len(self.spec.class_names))
        self._describe = {"classes": self.spec.class_names, "features": len(self.spec.feature_names),
                          "architecture": self.spec.architecture, "precision": self.spec.precision}

    @classmethod
    def load(cls, model_dir: str | Path, config: ServeConfig | None = None) -> ModelRuntime:
        config = config or ServeConfig()
        spec = ServedSpec.read(model_dir)
        engine = "onnxruntime_onnx" if (Path(model_dir) / ONNX_FILE).is_file() else "pytorch_safetensors"
        return cls(spec=spec, predict_proba=load_model_predictor(Path(model_dir), config.threads), config=config,
                   source=str(model_dir), engine=engine)

    def warm_up(self) -> None:
        """One inference per batch shape the server will see first, so the first client pays no lazy init."""
        for rows in sorted({1, min(32, self.config.max_instances), min(self.config.max_batch_size, 1024)}):
            self.predict_proba(np.zeros((rows, self.spec.input_dim), dtype=np.float32))

    def parse(self, instances: Any) -> np.ndarray:
        if not isinstance(instances, list):
            raise RequestError("'instances' must be a list of rows")
        if not instances:
            raise RequestError("'instances' is empty; send at least one row")
        if len(instances) > self.config.max_instances:
            raise RequestError(f"too many instances: {len(instances)} > limit {self.config.max_instances}",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        width = self.spec.input_dim
        # fast path, all in C: positional rows of exact floats/ints (`type` excludes bool), converted by array('f')
        flat = array("f")
        try:
            for row in instances:
                if type(row) is not list or len(row) != width or not NUMBER_TYPES.issuperset(map(type, row)):
                    break
                flat.extend(row)
            else:
                if math.isfinite(sum(flat)):  # inf/NaN in, or a value beyond float32 (became inf): slow path names it
                    return np.frombuffer(flat, dtype=np.float32).reshape(len(instances), width)
        except OverflowError:  # an integer beyond any float: the slow path names it
            pass
        rows = np.empty((len(instances), width), dtype=np.float32)
        with np.errstate(over="ignore"):  # out-of-range values become inf and are refused just below
            for index, row in enumerate(instances):
                try:
                    rows[index] = self._row(index, row, width)
                except OverflowError:  # an integer beyond any float
                    raise RequestError(f"instance {index}: an integer is too large for a float") from None
        if not np.isfinite(rows).all():
            index, position = (int(i) for i in np.argwhere(~np.isfinite(rows))[0])
            raise RequestError(f"instance {index}, feature {self._names[position]!r}: the value is outside the "
                               "float32 range (|x| > 3.4e38)")
        return rows

    def _row(self, index: int, row: Any, width: int) -> list[float]:
        if isinstance(row, dict):
            missing = [n for n in self._names if n not in row]
            unknown = [k for k in row if k not in self._name_set]
            if missing:
                raise RequestError(f"instance {index}: missing feature(s) {', '.join(missing[:5])}"
                                   + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
            if unknown:
                raise RequestError(f"instance {index}: unknown feature(s) {', '.join(unknown[:5])}")
            row = [row[n] for n in self._names]
        if not isinstance(row, list):
            raise RequestError(f"instance {index}: expected a list of {width} numbers or an object of named features")
        if len(row) != width:
            raise RequestError(f"instance {index}: expected {width} features, got {len(row)}")
        # fast path: exact float/int types (bool is excluded by `type(...) is`) and a finite sum
        if all(type(value) is float or type(value) is int for value in row) and math.isfinite(sum(row)):
            return row
        for position, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(f"instance {index}, feature {position}: {value!r} is not a number")
            if not math.isfinite(value):
                raise RequestError(f"instance {index}, feature {position}: {value!r} is not finite (NaN/inf)")
        return row

    def predictions(self, probabilities: np.ndarray) -> list[dict]:
        indices = probabilities.argmax(axis=1).tolist()
        names = self.spec.class_names
        return [{"class_index": i, "class_name": names[i], "probabilities": row}
                for i, row in zip(indices, probabilities.round(6).tolist(), strict=True)]

    def predictions_json(self, probabilities: np.ndarray) -> bytes:
        """The JSON of ``self.predictions(p)``, probabilities to 6 decimals, formatted by one C call per row instead of
        a dict and a shortest float repr per value (less than half the time of ``json.dumps``)."""
        names, values = self._name_json, self._row_format
        parts = [ROW_JSON % (i, names[i], values % tuple(row))
                 for i, row in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist(), strict=True)]
        return ("[" + ",".join(parts) + "]").encode()

    def predict(self, X: np.ndarray) -> list[dict]:
        return self.predictions(self.predict_proba(X))

    def describe(self) -> dict:
        return self._describe
