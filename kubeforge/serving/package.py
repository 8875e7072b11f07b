"""Package a model directory as a Bento, offline: the model goes into the BentoML model store under a tag, the service
references it by that tag, and `bentoml build` (package locking off, requirements pinned to the versions installed
here) writes the Bento with its Dockerfile context; the Bento is also exported as a single ``.bento`` archive.

BentoML reads BENTOML_HOME when it is imported, so the build runs in a child interpreter with its own store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from kubeforge.config import ConfigError
from kubeforge.models import load_spec

MODEL_NAME = "kubeforge-model"
BENTO_NAME = "kubeforge-classifier"
# What the service imports at run time; pinned to this environment's versions because locking is off.
# uvloop, httptools and orjson: the event loop, HTTP parser and JSON parser the served path was measured on
SERVICE_REQUIREMENTS = ("bentoml", "fastapi", "torch", "onnxruntime", "numpy", "safetensors", "pydantic",
                        "pyyaml", "uvloop", "httptools", "orjson")
SERVICE_ENTRY = """# Written by kubeforge: serves the model stored in this Bento under the tag below.
import os

os.environ.setdefault("KUBEFORGE_MODEL_TAG", {tag!r})

from kubeforge.serving.service import KubeforgeClassifier  # noqa: E402,F401
"""


@dataclass(frozen=True)
class BentoBuild:
    bento_tag: str
    model_tag: str
    archive: str  # the exported .bento file
    context: str  # directory with env/docker/Dockerfile, src/, models/
    dockerfile: str


def pinned_requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in SERVICE_REQUIREMENTS]


def build_bento(model_dir: str | Path, out_dir: str | Path, *, bentoml_home: str | Path | None = None) -> BentoBuild:
    """Build, export and lay out the Dockerfile context under ``out_dir``; raises ConfigError on bad input."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    load_spec(model_dir)  # refuses a directory that is not a kubeforge model, before any work
    out_dir.mkdir(parents=True, exist_ok=True)
    home = Path(bentoml_home) if bentoml_home else out_dir / "bentoml-home"
    result = out_dir / "build.json"
    done = subprocess.run([sys.executable, "-m", "kubeforge.serving.package", str(model_dir), str(out_dir),
                           str(result)], env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"},
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ConfigError("bento build failed: " + " | ".join(tail))
    return BentoBuild(**json.loads(result.read_text()))


def _build_here(model_dir: Path, out_dir: Path, result: Path) -> None:
    """Runs in the child interpreter, with BENTOML_HOME already set."""
    import bentoml

    import kubeforge

    spec = load_spec(model_dir)
    with bentoml.models.create(MODEL_NAME, labels={"architecture": spec.config.model, "precision": spec.precision},
                               metadata={"classes": spec.class_names, "features": spec.input_dim}) as stored:
        for name in os.listdir(model_dir):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, Path(stored.path) / name)
    with tempfile.TemporaryDirectory() as context:
        shutil.copytree(Path(kubeforge.__file__).parent, Path(context) / "kubeforge",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (Path(context) / "service.py").write_text(SERVICE_ENTRY.format(tag=str(stored.tag)))
        bento = bentoml.bentos.build(
            "service:KubeforgeClassifier", name=BENTO_NAME, build_ctx=context,
            include=["service.py", "kubeforge/**/*.py", "kubeforge/platform/*.yaml"],
            python={"packages": pinned_requirements(), "lock_packages": False},
            models=[str(stored.tag)], labels={"built-by": "kubeforge"})
    archive = out_dir / f"{BENTO_NAME}-{bento.tag.version}.bento"
    bentoml.export_bento(bento.tag, str(archive))
    context_dir = out_dir / "context"  # the archive unpacked: Dockerfile, sources and the model, ready for a builder
    shutil.rmtree(context_dir, ignore_errors=True)
    with tarfile.open(archive) as packed:
        packed.extractall(context_dir, filter="data")
    build = BentoBuild(bento_tag=str(bento.tag), model_tag=str(stored.tag), archive=str(archive),
                       context=str(context_dir), dockerfile=str(context_dir / "env" / "docker" / "Dockerfile"))
    result.write_text(json.dumps(asdict(build)))


if __name__ == "__main__":
    _build_here(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
