"""What an LM run (or model directory) serves: a base model and the adapters to put on it.

A run of lm-pretrain-finetune serves its pre-trained model as the base and the fine-tune's LoRA adapter on top
(the adapter was trained on exactly that model); a run without a usable base for its adapter (the base was a
scratch build that is not kept) serves its merged model; a full fine-tune serves its merged model; a pre-training
run alone serves its pre-trained model. The adapter is served as ``finetuned``.

A run whose lm-compress step passed its gate serves the artifact that step chose (ONNX, torchao or a plain student
directory: the one the harness measured), whatever else the run holds, as kubeforge.serving.source does for
classifiers. The fine-tune is merged into the model before compression, so no adapter is served with it; to serve
the uncompressed base with its adapter, serve the adapter directory (``lm-finetune*/finetuned_model/adapter``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kubeforge.config import ConfigError
from kubeforge.lm.inference import ONNX_MODEL_FILE

FINETUNED_ADAPTER = "finetuned"
FINETUNED_GLOB = "lm-finetune*/finetuned_model"
PRETRAINED_GLOB = "lm-pretrain*/pretrained_model"
COMPRESSED_GLOB = "lm-compress*/compressed_model"
COMPRESSION_REPORT = "compression.json"  # kubeforge.compression.lm_step.REPORT_FILE (not imported: it pulls torch)
WEIGHT_FILES = ("*.safetensors", ONNX_MODEL_FILE)


@dataclass(frozen=True)
class ServedLM:
    base: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    why: str = ""  # one line for the CLI: what is served and why


def _is_model(path: Path) -> bool:
    return (path / "config.json").is_file() and any(any(path.glob(pattern)) for pattern in WEIGHT_FILES)


def compressed_choice(path: Path) -> dict | None:
    """What the lm-compress step chose for the model directory ``path`` (its compression.json passed the gate and
    the chosen files are there), else None."""
    try:
        report = json.loads((path / COMPRESSION_REPORT).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("gate") != "passed" or not _is_model(path):
        return None
    return report


def _describe(report: dict) -> str:
    artifact = report.get("artifact") or {}
    return (f"lm-compress chose {report.get('chosen')!r}: {artifact.get('format', '?')}, "
            f"{artifact.get('precision', '?')}")


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def is_lm_source(path: str | Path) -> bool:
    """A Hugging Face model or adapter directory, or a run directory with LM steps (not a classifier model)."""
    path = Path(path)
    if (path / "model.json").is_file():
        return False
    return (_is_model(path) or _is_adapter(path)
            or any(any(path.glob(pattern)) for pattern in (FINETUNED_GLOB, PRETRAINED_GLOB, COMPRESSED_GLOB)))


def recorded_base(adapter_dir: Path) -> Path | None:
    """The adapter's base model when it is a local directory that still exists."""
    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    for candidate in (Path(base).expanduser(), adapter_dir / base) if base else ():
        if _is_model(candidate):
            return candidate
    return None


def resolve_lm_source(path: str | Path) -> ServedLM:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    if _is_adapter(path):
        base = recorded_base(path)
        if base is None:
            raise ConfigError(f"{path}: the adapter's base model is not a local directory; serve the run directory "
                              "or set KUBEFORGE_LLM_MODEL to the base and KUBEFORGE_LLM_ADAPTERS to the adapter")
        return ServedLM(base, {FINETUNED_ADAPTER: path}, f"adapter {path.name} on its base {base}")
    if _is_model(path):
        report = compressed_choice(path)
        return ServedLM(path, {}, f"model directory {path}" + (f" ({_describe(report)})" if report else ""))
    compressed = [(p, report) for p in sorted(path.glob(COMPRESSED_GLOB)) if (report := compressed_choice(p))]
    if compressed:
        directory, report = compressed[0]
        return ServedLM(directory, {}, f"the compressed model {directory.relative_to(path)} ({_describe(report)}; "
                                       f"made from {report.get('source', 'the fine-tuned model')}, so it is served "
                                       "without adapters)")
    finetuned = sorted(path.glob(FINETUNED_GLOB))
    pretrained = sorted(p for p in path.glob(PRETRAINED_GLOB) if _is_model(p))
    adapter = finetuned[0] / "adapter" if finetuned else None
    merged = finetuned[0] / "merged" if finetuned else None
    if adapter is not None and _is_adapter(adapter):
        base = pretrained[0] if pretrained else recorded_base(adapter)
        if base is not None:
            return ServedLM(base, {FINETUNED_ADAPTER: adapter},
                            f"base {base.relative_to(path) if base.is_relative_to(path) else base} with the "
                            f"fine-tune's adapter as {FINETUNED_ADAPTER!r}")
    if merged is not None and _is_model(merged):
        return ServedLM(merged, {}, f"the merged fine-tuned model {merged.relative_to(path)}")
    if pretrained:
        return ServedLM(pretrained[0], {}, f"the pre-trained model {pretrained[0].relative_to(path)}")
    raise ConfigError(f"{path}: no servable language model (a merged model, a pre-trained model, or an adapter whose "
                      "base is present)")
