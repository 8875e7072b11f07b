"""Which model a command serves: a model directory, or the best model of a run directory."""

from __future__ import annotations

from pathlib import Path

from kubeforge.config import ConfigError
from kubeforge.models import SPEC_FILE

RUN_MODEL_GLOBS = ("compress*/compressed_model", "train*/trained_model")  # the compressed model wins when present


def resolve_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    if (path / SPEC_FILE).is_file():
        return path
    for pattern in RUN_MODEL_GLOBS:
        found = sorted(p for p in path.glob(pattern) if (p / SPEC_FILE).is_file())
        if found:
            return found[0]
    raise ConfigError(f"{path} is neither a model directory ({SPEC_FILE}) nor a run directory with a trained model")
