"""Glue between library results and pipeline artifacts: display names and the Markdown the Kubeflow UI renders.

Works on any object with ``metadata`` (a dict) and ``path``, so it needs no KFP import and is testable alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol


class ArtifactLike(Protocol):
    metadata: dict[str, Any]


def label(artifact: ArtifactLike, display_name: str) -> None:
    """The KFP UI lists an artifact under its display name; without one it shows an opaque id."""
    artifact.metadata["display_name"] = display_name


def data_markdown(splits_dir: str | Path) -> str:
    schema = json.loads((Path(splits_dir) / "schema.json").read_text())
    lines = ["# Data", "", f"Source: `{schema['source']}`", "",
             f"{len(schema['features'])} features, {len(schema['class_names'])} classes.", "",
             "| split | rows |", "| --- | --- |"]
    lines += [f"| {split} | {schema['rows'][split]} |" for split in ("train", "val", "test")]
    return "\n".join(lines) + "\n"
