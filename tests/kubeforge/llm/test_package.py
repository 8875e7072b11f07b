"""LM runs: what `kubeforge serve` and `kubeforge build` pick from a run directory, the Bento they build offline, and
that the built Bento (and `kubeforge serve RUN`) really serve the run's base model with its adapter."""

from __future__ import annotations

import shutil
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kubeforge.config import ConfigError
from kubeforge.llm.launch import serve_environment
from kubeforge.llm.source import FINETUNED_ADAPTER, is_lm_source, resolve_lm_source
from tests.kubeforge.llm.conftest import build_adapter
from tests.kubeforge.llm.helpers import offline_greedy
from tests.kubeforge.llm.server import LLMServer

PROMPT = "The with statement"


@pytest.fixture(scope="module")
def lm_run(llm_base_dir, tmp_path_factory) -> Path:
    """The layout of an lm-pretrain-finetune run: pretrained model, LoRA adapter trained on it, merged model."""
    run = tmp_path_factory.mktemp("runs") / "lm-pretrain-finetune-2026-12-01"
    pretrained = Path(shutil.copytree(llm_base_dir, run / "lm-pretrain" / "pretrained_model"))
    finetuned = run / "lm-finetune" / "finetuned_model"
    build_adapter(pretrained, finetuned / "adapter", seed=5)
    shutil.copytree(llm_base_dir, finetuned / "merged")  # stands in for the merged model (its contents are not read)
    (run / "lm-evaluate").mkdir()
    return run


def test_an_lm_run_serves_its_pretrained_base_with_the_finetuned_adapter(lm_run):
    served = resolve_lm_source(lm_run)
    assert served.base == lm_run / "lm-pretrain" / "pretrained_model"
    assert served.adapters == {FINETUNED_ADAPTER: lm_run / "lm-finetune" / "finetuned_model" / "adapter"}
    assert is_lm_source(lm_run) and is_lm_source(served.base) and is_lm_source(served.adapters["finetuned"])


def test_without_a_base_for_the_adapter_the_merged_model_is_served(lm_run, tmp_path):
    run = Path(shutil.copytree(lm_run, tmp_path / "run"))
    shutil.rmtree(run / "lm-pretrain")
    adapter = run / "lm-finetune" / "finetuned_model" / "adapter"
    config = (adapter / "adapter_config.json").read_text()
    (adapter / "adapter_config.json").write_text(config.replace(str(lm_run / "lm-pretrain" / "pretrained_model"),
                                                                "/gone/.source"))
    served = resolve_lm_source(run)
    assert served.base == run / "lm-finetune" / "finetuned_model" / "merged" and served.adapters == {}
    shutil.rmtree(run / "lm-finetune" / "finetuned_model" / "merged")
    with pytest.raises(ConfigError, match="no servable language model"):
        resolve_lm_source(run)


def test_an_adapter_directory_serves_on_its_recorded_base(lm_run):
    adapter = lm_run / "lm-finetune" / "finetuned_model" / "adapter"
    served = resolve_lm_source(adapter)
    assert served.base == lm_run / "lm-pretrain" / "pretrained_model" and served.adapters == {"finetuned": adapter}


def test_classifier_directories_are_not_lm_sources(tmp_path):
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")
    assert not is_lm_source(tmp_path)
    assert not is_lm_source(tmp_path / "missing")


def test_the_serve_environment_names_the_base_and_keeps_the_users_adapters(lm_run, tmp_path):
    served = resolve_lm_source(lm_run)
    env = serve_environment(served, {"KUBEFORGE_LLM_ADAPTERS": "extra=hf://org/adapter"})
    assert env["KUBEFORGE_LLM_MODEL"] == str(served.base.resolve())
    assert env["KUBEFORGE_LLM_ADAPTERS"] == f"finetuned={served.adapters['finetuned'].resolve()},extra=hf://org/adapter"
    with pytest.raises(ConfigError, match="already serves"):
        serve_environment(served, {"KUBEFORGE_LLM_ADAPTERS": "finetuned=/x"})
    with pytest.raises(ConfigError, match="KUBEFORGE_LLM_MAX_N|max_n"):
        serve_environment(served, {"KUBEFORGE_LLM_MAX_N": "lots"})


@pytest.fixture(scope="module")
def built(lm_run, tmp_path_factory):
    from kubeforge.cli import app

    out = tmp_path_factory.mktemp("llm-bento")
    result = CliRunner().invoke(app, ["build", str(lm_run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_build_makes_an_offline_bento_with_the_base_the_adapter_and_pinned_requirements(built):
    from kubeforge.llm.package import pinned_requirements

    out, output = built
    assert "adapter as 'finetuned'" in " ".join(output.split())  # rich wraps lines
    context = out / "context"
    assert (context / "env" / "docker" / "Dockerfile").is_file()
    models = {path.relative_to(context / "models").as_posix() for path in (context / "models").rglob("*")
              if path.is_file()}
    assert any(p.startswith("kubeforge-llm-base/") and p.endswith("/model.safetensors") for p in models)
    assert any(p.endswith("/finetuned/adapter_model.safetensors") for p in models)
    assert not any(p.endswith((".bin", ".pt", ".pkl")) or "/training/" in p for p in models)
    requirements = (context / "env" / "python" / "requirements.txt").read_text().split()
    assert set(pinned_requirements()) <= set(requirements)
    entry = (context / "src" / "service.py").read_text()
    assert "KUBEFORGE_LLM_MODEL_TAG" in entry and "KUBEFORGE_LLM_ADAPTERS_TAG" in entry
    archives = list(out.glob("kubeforge-llm-*.bento"))
    with tarfile.open(archives[0]) as archive:
        assert "./bento.yaml" in archive.getnames()


def bento_tag(out: Path) -> str:
    import json

    return json.loads((out / "build.json").read_text())["bento_tag"]


@pytest.mark.slow
@pytest.mark.server
def test_the_built_bento_serves_the_base_and_the_adapter(built, lm_run, tmp_path):
    out, _ = built
    bentoml = str(Path(sys.executable).parent / "bentoml")
    server = LLMServer(tmp_path, [bentoml, "serve", bento_tag(out)], BENTOML_HOME=str(out / "bentoml-home"),
                       KUBEFORGE_LLM_THREADS="1")
    try:
        server.wait("/readyz", 200)
        assert_serves_the_run(server, lm_run)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.server
def test_kubeforge_serve_runs_the_llm_service_on_an_lm_run(lm_run, tmp_path):
    kubeforge = str(Path(sys.executable).parent / "kubeforge")
    server = LLMServer(tmp_path, [kubeforge, "serve", str(lm_run), "--no-auth"], KUBEFORGE_LLM_THREADS="1")
    try:
        server.wait("/readyz", 200)
        assert_serves_the_run(server, lm_run)
    finally:
        server.stop()


def assert_serves_the_run(server: LLMServer, lm_run: Path) -> None:
    from transformers import AutoTokenizer

    base = lm_run / "lm-pretrain" / "pretrained_model"
    adapter = lm_run / "lm-finetune" / "finetuned_model" / "adapter"
    prompt_ids = AutoTokenizer.from_pretrained(base)(PROMPT)["input_ids"]
    models = httpx.get(server.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["base", "finetuned"]
    for name, expected in (("base", offline_greedy(base, prompt_ids, 8)),
                           ("finetuned", offline_greedy(base, prompt_ids, 8, adapter))):
        answer = httpx.post(server.url + "/v1/completions", timeout=30,
                            json={"model": name, "prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                  "return_token_ids": True}).json()
        assert answer["choices"][0]["token_ids"] == expected, name


def test_a_compressed_base_is_packaged_with_its_runtime_and_without_adapters(tmp_path):
    from kubeforge.llm.package import build_llm_bento, pinned_requirements
    from kubeforge.llm.source import ServedLM
    from tests.kubeforge.llm.test_source import write_compressed

    assert any(r.startswith("onnxruntime==") for r in pinned_requirements("onnx"))
    assert any(r.startswith("torchao==") for r in pinned_requirements("torchao"))
    assert not any(r.startswith(("onnxruntime==", "torchao==")) for r in pinned_requirements())
    chosen = write_compressed(tmp_path / "run" / "lm-compress" / "compressed_model", "onnx")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="compressed onnx model, which serves no LoRA adapters"):
        build_llm_bento(ServedLM(chosen, {"finetuned": adapter}), tmp_path / "out")
