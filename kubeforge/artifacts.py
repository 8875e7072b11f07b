"""Glue between library results and pipeline artifacts: display names and the Markdown the Kubeflow UI renders.

Works on any object with ``metadata`` (a dict) and ``path``, so it needs no KFP import and is testable alone.
"""

from __future__ import annotations

import json
import shutil
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


class PathArtifact(ArtifactLike, Protocol):
    path: str


def hand_over_bento(archive: str | Path, context: str | Path, bento: PathArtifact, build_context: PathArtifact,
                    report: PathArtifact, *, bento_tag: str, model_tag: str, serving: str, image: str) -> None:
    """A package step's outputs, the same for every kind of model: the .bento archive, the image build context (any
    OCI builder takes it as is), their metadata and display names, and the report the Kubeflow UI shows."""
    shutil.copyfile(archive, bento.path)
    shutil.copytree(context, build_context.path, dirs_exist_ok=True)
    bento.metadata.update({"bento_tag": bento_tag, "model_tag": model_tag})
    label(bento, f"Bento {bento_tag}")
    build_context.metadata.update({"dockerfile": "env/docker/Dockerfile", "bento_tag": bento_tag})
    label(build_context, "Image build context")
    Path(report.path).write_text(
        f"# Serving package\n\nBento `{bento_tag}` serving {serving}.\n\n"
        "Build the image from the `build_context` artifact with any OCI builder, e.g.\n\n"
        f"```\ndocker build -f env/docker/Dockerfile -t REGISTRY/{image}:TAG .\n```\n")
    label(report, "Package report")
