"""What an LM run serves once its lm-compress step passed: the chosen artifact (ONNX, torchao or a plain student),
never with adapters; a failed or empty compress step leaves the run serving what it served before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kubeforge.config import ConfigError
from kubeforge.llm.launch import serve_environment
from kubeforge.llm.source import FINETUNED_ADAPTER, is_lm_source, resolve_lm_source
from kubeforge.lm.inference import artifact_kind
from kubeforge.lm.sources import check_checkpoint_files
from tests.kubeforge.llm.conftest import build_adapter


def write_compressed(out: Path, kind: str, *, gate: str = "passed") -> Path:
    """The layout lm_compress_step writes: the chosen candidate's files and compression.json."""
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 96}))
    (out / "tokenizer.json").write_text("{}")
    if kind == "onnx":
        (out / "model.onnx").write_bytes(b"graph")
    else:
        (out / "model.safetensors").write_bytes(b"weights")
        if kind == "torchao":
            (out / "torchao.json").write_text(json.dumps({"format": 1, "method": "int8-weight"}))
    chosen = {"onnx": "onnx", "torchao": "int8-weight", "torch": "distill"}[kind]
    (out / "compression.json").write_text(json.dumps({
        "gate": gate, "chosen": chosen if gate == "passed" else None, "source": "the fine-tune's merged model",
        "artifact": {"format": "onnx" if kind == "onnx" else "torch", "precision": "int8"} if gate == "passed"
        else None}))
    return out


@pytest.fixture(scope="module")
def lm_run(llm_base_dir, tmp_path_factory) -> Path:
    """An lm-pretrain-finetune run: pretrained model, the LoRA adapter trained on it."""
    run = tmp_path_factory.mktemp("runs") / "lm-pretrain-finetune-2026-12-02"
    pretrained = Path(shutil.copytree(llm_base_dir, run / "lm-pretrain" / "pretrained_model"))
    build_adapter(pretrained, run / "lm-finetune" / "finetuned_model" / "adapter", seed=5)
    return run


@pytest.mark.parametrize("kind", ["onnx", "torchao", "torch"])
def test_a_passed_compress_step_serves_its_chosen_artifact_without_the_adapter(lm_run, tmp_path, kind):
    run = Path(shutil.copytree(lm_run, tmp_path / "run"))
    chosen = write_compressed(run / "lm-compress" / "compressed_model", kind)
    served = resolve_lm_source(run)
    assert served.base == chosen and served.adapters == {}
    assert "lm-compress chose" in served.why and "without adapters" in served.why
    assert artifact_kind(chosen) == kind and is_lm_source(chosen)
    direct = resolve_lm_source(chosen)  # the compressed directory itself says what it is
    assert direct.base == chosen and "lm-compress chose" in direct.why


def test_a_failed_compress_step_leaves_the_base_and_its_adapter(lm_run, tmp_path):
    run = Path(shutil.copytree(lm_run, tmp_path / "run"))
    (run / "lm-compress" / "compressed_model").mkdir(parents=True)
    (run / "lm-compress" / "compressed_model" / "compression.json").write_text(json.dumps({"gate": "failed"}))
    served = resolve_lm_source(run)
    assert served.base == run / "lm-pretrain" / "pretrained_model" and FINETUNED_ADAPTER in served.adapters


def test_a_run_with_only_a_compressed_model_is_an_lm_source(tmp_path):
    chosen = write_compressed(tmp_path / "run" / "lm-compress" / "compressed_model", "onnx")
    assert is_lm_source(tmp_path / "run") and resolve_lm_source(tmp_path / "run").base == chosen
    check_checkpoint_files(chosen)  # an ONNX graph holds its weights: accepted without safetensors


@pytest.mark.parametrize("kind", ["onnx", "torchao"])
def test_adapters_on_a_compressed_model_are_refused_before_the_server_starts(tmp_path, kind):
    served = resolve_lm_source(write_compressed(tmp_path / "run" / "lm-compress" / "compressed_model", kind).parent
                               .parent)
    for environ in ({"KUBEFORGE_LLM_ADAPTERS": "extra=/somewhere"}, {"KUBEFORGE_LLM_ADAPTERS_DIR": "/adapters"}):
        with pytest.raises(ConfigError, match=f"compressed {kind} model, which serves no LoRA adapters"):
            serve_environment(served, environ)
    assert serve_environment(served, {})["KUBEFORGE_LLM_MODEL"] == str(served.base.resolve())
