"""Package an LM run as a Bento, offline, the way kubeforge.serving.package packages a classifier: the base model and
the adapters go into BentoML's model store under tags (safetensors, ONNX, JSON and tokenizer files only), the service
entry names those tags, and `bentoml build` (locking off, requirements pinned to this environment) writes the Bento
with its Dockerfile context; the Bento is also exported as one ``.bento`` archive.

What is packaged is what kubeforge.llm.source.resolve_lm_source says the run serves: a run whose lm-compress step
passed packages the chosen artifact (ONNX or torchao, with the runtime it needs pinned beside the service's; no
adapters), else the base model and the fine-tune's adapter.

BentoML reads BENTOML_HOME when it is imported, so the build runs in a child interpreter with its own store.
"""

from __future__ import annotations

import fnmatch
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
from kubeforge.llm.source import ServedLM
from kubeforge.lm.inference import artifact_kind

BENTO_NAME = "kubeforge-llm"
BASE_MODEL_NAME = "kubeforge-llm-base"
ADAPTERS_MODEL_NAME = "kubeforge-llm-adapters"
SERVICE_REQUIREMENTS = ("bentoml", "fastapi", "torch", "transformers", "tokenizers", "peft", "accelerate",
                        "huggingface-hub", "safetensors", "pydantic", "pyyaml", "jinja2", "numpy", "fsspec", "uvloop",
                        "httptools")
ARTIFACT_REQUIREMENTS = {"torch": (), "onnx": ("onnxruntime",), "torchao": ("torchao",)}  # by artifact_kind
SERVICE_ENTRY = """# Written by kubeforge: serves the language model (and adapters) stored in this Bento under the tags below.
import os

os.environ.setdefault("KUBEFORGE_LLM_MODEL_TAG", {base!r})
{adapters_line}
from kubeforge.llm.service import KubeforgeLLM  # noqa: E402,F401
"""
# What a served model directory may bring into the image (never pickles, never the training record).
MODEL_FILES = ("*.safetensors", "*.onnx", "*.json", "*.jinja", "*.model", "vocab.txt", "merges.txt")


@dataclass(frozen=True)
class LLMBentoBuild:
    bento_tag: str
    base_tag: str
    adapters_tag: str | None
    archive: str  # the exported .bento file
    context: str  # directory with env/docker/Dockerfile, src/, models/
    dockerfile: str


def pinned_requirements(kind: str = "torch") -> list[str]:
    """The service's packages at this environment's versions, plus what a ``kind`` of base model runs on."""
    return [f"{name}=={metadata.version(name)}" for name in SERVICE_REQUIREMENTS + ARTIFACT_REQUIREMENTS[kind]]


def copy_model_files(source: Path, destination: Path) -> list[str]:
    """The top-level weight, config and tokenizer files of a model or adapter directory."""
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in MODEL_FILES):
            shutil.copy2(path, destination / path.name)
            copied.append(path.name)
    return copied


def build_llm_bento(served: ServedLM, out_dir: str | Path, *, bentoml_home: str | Path | None = None) -> LLMBentoBuild:
    """Build, export and lay out the Dockerfile context under ``out_dir``; raises ConfigError on bad input."""
    from kubeforge.lm.sources import check_checkpoint_files
    from kubeforge.models import ModelError

    try:
        check_checkpoint_files(served.base)
        for adapter in served.adapters.values():
            check_checkpoint_files(adapter)
    except ModelError as exc:
        raise ConfigError(str(exc)) from None
    kind = artifact_kind(served.base)
    if kind != "torch" and served.adapters:
        raise ConfigError(f"{served.base} is a compressed {kind} model, which serves no LoRA adapters")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    home = Path(bentoml_home) if bentoml_home else out_dir / "bentoml-home"
    request, result = out_dir / "llm-build-request.json", out_dir / "build.json"
    request.write_text(json.dumps({"base": str(served.base), "kind": kind,
                                   "adapters": {name: str(path) for name, path in served.adapters.items()}}))
    done = subprocess.run([sys.executable, "-m", "kubeforge.llm.package", str(request), str(out_dir), str(result)],
                          env={**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"},
                          capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ConfigError("bento build failed: " + " | ".join(tail))
    return LLMBentoBuild(**json.loads(result.read_text()))


def _build_here(request: Path, out_dir: Path, result: Path) -> None:
    """Runs in the child interpreter, with BENTOML_HOME already set."""
    import bentoml

    import kubeforge

    wanted = json.loads(request.read_text())
    with bentoml.models.create(BASE_MODEL_NAME, labels={"kind": "causal-lm", "format": wanted["kind"]},
                               metadata={"source": wanted["base"]}) as base:
        copy_model_files(Path(wanted["base"]), Path(base.path))
    tags = [str(base.tag)]
    adapters_tag, adapters_line = None, ""
    if wanted["adapters"]:
        with bentoml.models.create(ADAPTERS_MODEL_NAME, labels={"kind": "lora-adapters"},
                                   metadata={"adapters": sorted(wanted["adapters"])}) as adapters:
            for name, path in wanted["adapters"].items():
                copy_model_files(Path(path), Path(adapters.path) / name)
        adapters_tag = str(adapters.tag)
        tags.append(adapters_tag)
        adapters_line = f'os.environ.setdefault("KUBEFORGE_LLM_ADAPTERS_TAG", {adapters_tag!r})'
    with tempfile.TemporaryDirectory() as context:
        shutil.copytree(Path(kubeforge.__file__).parent, Path(context) / "kubeforge",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (Path(context) / "service.py").write_text(SERVICE_ENTRY.format(base=str(base.tag),
                                                                       adapters_line=adapters_line))
        bento = bentoml.bentos.build(
            "service:KubeforgeLLM", name=BENTO_NAME, build_ctx=context,
            include=["service.py", "kubeforge/**/*.py", "kubeforge/platform/*.yaml"],
            python={"packages": pinned_requirements(wanted["kind"]), "lock_packages": False},
            models=tags, labels={"built-by": "kubeforge", "kind": "llm"})
    archive = out_dir / f"{BENTO_NAME}-{bento.tag.version}.bento"
    bentoml.export_bento(bento.tag, str(archive))
    context_dir = out_dir / "context"
    shutil.rmtree(context_dir, ignore_errors=True)
    with tarfile.open(archive) as packed:
        packed.extractall(context_dir, filter="data")
    build = LLMBentoBuild(bento_tag=str(bento.tag), base_tag=str(base.tag), adapters_tag=adapters_tag,
                          archive=str(archive), context=str(context_dir),
                          dockerfile=str(context_dir / "env" / "docker" / "Dockerfile"))
    result.write_text(json.dumps(asdict(build)))


if __name__ == "__main__":
    _build_here(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
