"""The request contract and the model runtime behind the HTTP service.

Clients send raw features, either positional (``{"instances": [[0.0, 1.5, ...], ...]}``) or named
(``{"instances": [{"pixel_0_0": 0.0, ...}, ...]}``); the standardisation fitted in training is inside the model.
Every refusal is a RequestError carrying the HTTP status and a message naming the problem, so the service can answer
4xx and keep serving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from kubeforge.compression.artifact import load_predictor
from kubeforge.config import ServeConfig
from kubeforge.models import ModelSpec, load_spec


class RequestError(ValueError):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


@dataclass
class ModelRuntime:
    spec: ModelSpec
    predict_proba: Any  # Callable[[np.ndarray], np.ndarray]
    config: ServeConfig
    source: str

    @classmethod
    def load(cls, model_dir: str | Path, config: ServeConfig | None = None) -> ModelRuntime:
        config = config or ServeConfig()
        spec = load_spec(model_dir)
        return cls(spec=spec, predict_proba=load_predictor(model_dir, threads=config.threads), config=config,
                   source=str(model_dir))

    def warm_up(self) -> None:
        """One inference per batch shape the server will see first, so the first client pays no lazy init."""
        for rows in (1, min(32, self.config.max_instances)):
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
        rows = np.empty((len(instances), width), dtype=np.float32)
        for index, row in enumerate(instances):
            rows[index] = self._row(index, row, width)
        return rows

    def _row(self, index: int, row: Any, width: int) -> list[float]:
        if isinstance(row, dict):
            names = self.spec.feature_names
            missing = [n for n in names if n not in row]
            unknown = [k for k in row if k not in set(names)]
            if missing:
                raise RequestError(f"instance {index}: missing feature(s) {', '.join(missing[:5])}"
                                   + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
            if unknown:
                raise RequestError(f"instance {index}: unknown feature(s) {', '.join(unknown[:5])}")
            row = [row[n] for n in names]
        if not isinstance(row, list):
            raise RequestError(f"instance {index}: expected a list of {width} numbers or an object of named features")
        if len(row) != width:
            raise RequestError(f"instance {index}: expected {width} features, got {len(row)}")
        values = []
        for position, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RequestError(f"instance {index}, feature {position}: {value!r} is not a number")
            if not math.isfinite(value):
                raise RequestError(f"instance {index}, feature {position}: {value!r} is not finite (NaN/inf)")
            values.append(value)
        return values

    def predict(self, X: np.ndarray) -> list[dict]:
        probabilities = self.predict_proba(X)
        indices = probabilities.argmax(axis=1)
        names = self.spec.class_names
        return [{"class_index": int(i), "class_name": names[int(i)], "probabilities": [round(float(p), 6) for p in row]}
                for i, row in zip(indices, probabilities, strict=True)]

    def describe(self) -> dict:
        return {"classes": self.spec.class_names, "features": len(self.spec.feature_names),
                "architecture": self.spec.config.model, "precision": self.spec.precision}
