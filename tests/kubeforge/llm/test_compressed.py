"""The served path of a compressed LM: the artifact the lm-compress step chose (ONNX with its KV cache, or torchao
int8) runs in the continuous-batching engine through the inference module's runner, and its greedy completions equal
what that module (the compression harness's) completes for the same prompts: rows joining and leaving the batch,
n choices, cancellation, two prompts padded into one batch, concurrent requests, streams; over HTTP with the official
openai client, from `kubeforge serve RUN` and from the built Bento."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
import torch
from prometheus_client import CollectorRegistry

from kubeforge.llm.errors import APIError
from kubeforge.llm.metrics import LLMMetrics
from kubeforge.llm.runtime import LLMRuntime
from kubeforge.llm.settings import LLMServeConfig
from kubeforge.llm.source import resolve_lm_source
from kubeforge.lm.inference import LightTokenizer, complete, open_runner
from tests.kubeforge.compression.lm_fixtures import lm_data_config, lm_settings, write_lm_splits
from tests.kubeforge.llm.conftest import build_adapter
from tests.kubeforge.llm.helpers import greedy, run_generation
from tests.kubeforge.llm.server import LLMServer

pytestmark = pytest.mark.slow
PROMPTS = ["The with statement", "Names refer to objects. Names are introduced by", "x"]
MAX_TOKENS = 12


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def compressed_run(llm_base_dir, tmp_path_factory) -> Path:
    """An LM run whose lm-compress step (the real one, on the tiny base) chose the ONNX graph; beside it the
    pre-trained model and a LoRA adapter, which the compressed model outranks."""
    from kubeforge.compression.lm_step import lm_compress_step
    from kubeforge.config import LMRuntimeConfig

    run = tmp_path_factory.mktemp("runs") / "lm-finetune-2026-12-02"
    pretrained = Path(shutil.copytree(llm_base_dir, run / "lm-pretrain" / "pretrained_model"))
    build_adapter(pretrained, run / "lm-finetune" / "finetuned_model" / "adapter", seed=5)
    data = write_lm_splits(tmp_path_factory.mktemp("lm-data"), train_examples=24, heldout_examples=8)
    with one_thread():
        report = lm_compress_step(data, llm_base_dir, run / "lm-compress" / "compressed_model",
                                  lm_settings(lm_compress_methods=["onnx"]), lm_data_config(), LMRuntimeConfig())
    assert report["chosen"] == "onnx" and report["gate"] == "passed"
    return run


@pytest.fixture(scope="module")
def torchao_dir(llm_base_dir, tmp_path_factory) -> Path:
    """The int8-weight candidate, built and saved by the compression step's own code."""
    from kubeforge.compression.lm_candidates import LMCandidate, LMContext, build_chain, save_lm_candidate
    from kubeforge.lm.sources import load_causal_lm

    model, tokenizer = load_causal_lm(llm_base_dir)
    context = LMContext(settings=lm_settings(), train=None, calibration=None)
    with one_thread():
        candidate, _ = build_chain(LMCandidate("baseline", model.config, model=model.eval()), "int8-weight", context)
    return save_lm_candidate(candidate, tokenizer, tmp_path_factory.mktemp("torchao") / "int8")


def artifact(kind: str, request) -> Path:
    if kind == "onnx":
        return request.getfixturevalue("compressed_run") / "lm-compress" / "compressed_model"
    return request.getfixturevalue("torchao_dir")


def harness_completions(directory: Path, prompts: list[str], max_tokens: int = MAX_TOKENS) -> list[str]:
    """What kubeforge.lm.inference (the harness's module) completes, each prompt alone."""
    with one_thread():
        runner, tokenizer = open_runner(directory), LightTokenizer(directory)
        return [complete(runner, tokenizer, [prompt], max_tokens)[0] for prompt in prompts]


def test_the_run_serves_the_chosen_artifact_without_adapters(compressed_run):
    served = resolve_lm_source(compressed_run)
    assert served.base == compressed_run / "lm-compress" / "compressed_model" and served.adapters == {}
    assert "lm-compress chose 'onnx'" in served.why and (served.base / "model.onnx").is_file()


@pytest.fixture(scope="module", params=["onnx", "torchao"])
def runtime(request):
    directory = artifact(request.param, request)
    with one_thread():
        loaded = LLMRuntime.load(directory, LLMServeConfig(threads=1), LLMMetrics(CollectorRegistry()))
    yield loaded, directory, request.param
    loaded.close()


def encode(runtime: LLMRuntime, text: str) -> list[int]:
    return runtime.tokenizer(text)["input_ids"]


def test_the_engine_runs_the_artifact_through_the_inference_runner(runtime):
    served, directory, kind = runtime
    assert served.engine.backend.kind == kind and served.bank is None
    assert type(served.engine.backend.runner).__name__ == ("OnnxRunner" if kind == "onnx" else "TorchRunner")
    with pytest.raises(APIError, match="serves no LoRA adapters") as refused:
        served.load_adapter("extra", str(directory))
    assert refused.value.code == "adapters_unsupported"


def test_concurrent_rows_of_different_lengths_equal_the_harness(runtime):
    served, directory, _ = runtime
    expected = harness_completions(directory, PROMPTS)

    async def main():
        return await asyncio.gather(*(run_generation(served, "base", [encode(served, p)], greedy(MAX_TOKENS))
                                      for p in PROMPTS))

    for (_, texts, _), text in zip(asyncio.run(main()), expected, strict=True):
        assert texts[0] == text


def test_a_row_joins_between_steps_and_n_choices_share_one_prefill(runtime):
    served, directory, _ = runtime
    first, second = harness_completions(directory, PROMPTS[:2], 30)

    async def main():
        joined: list = []

        async def join():  # submitted once the first request has its first token: it joins the running batch
            joined.append(asyncio.ensure_future(run_generation(served, "base", [encode(served, PROMPTS[1])],
                                                               greedy(30), n=2)))

        result = await run_generation(served, "base", [encode(served, PROMPTS[0])], greedy(30), after_first=join)
        return result, await joined[0]

    (_, texts, _), (_, pair, _) = asyncio.run(main())
    assert texts[0] == first and pair == {0: second, 1: second}


def test_a_cancelled_row_leaves_and_the_others_go_on(runtime):
    served, directory, _ = runtime
    expected = harness_completions(directory, PROMPTS[1:2], 30)[0]

    async def main():
        loop = asyncio.get_running_loop()
        doomed = served.submit("base", [encode(served, PROMPTS[0])], greedy(60, ignore_eos=True), 1, loop)
        survivor = asyncio.ensure_future(run_generation(served, "base", [encode(served, PROMPTS[1])], greedy(30)))
        async for _ in doomed.events():
            doomed.cancel()
            break
        return await survivor

    _, texts, _ = asyncio.run(main())
    assert texts[0] == expected
    deadline = time.monotonic() + 10
    while served.engine.running_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.engine.running_rows == 0


# ---- over HTTP ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["onnx", "torchao"])
def server(request, tmp_path_factory):
    """ONNX: `kubeforge serve RUN` (the run resolves to its chosen artifact); torchao: the service on the directory."""
    directory = artifact(request.param, request)
    tmp = tmp_path_factory.mktemp(f"served-{request.param}")
    if request.param == "onnx":
        kubeforge = str(Path(sys.executable).parent / "kubeforge")
        running = LLMServer(tmp, [kubeforge, "serve", str(request.getfixturevalue("compressed_run")), "--no-auth"],
                            KUBEFORGE_LLM_THREADS="1")
    else:
        running = LLMServer(tmp, KUBEFORGE_LLM_MODEL=str(directory), KUBEFORGE_LLM_THREADS="1")
    try:
        running.wait("/readyz", 200)
        yield running, directory
    finally:
        running.stop()


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.server
def test_served_completions_equal_the_harness_batched_concurrent_and_streamed(server):
    running, directory = server
    expected = harness_completions(directory, PROMPTS)
    assert_serves(running.url, expected)
    assert running.metric("kubeforge:batch_rows_sum") > running.metric("kubeforge:batch_rows_count")  # 2 rows


@pytest.mark.server
def test_served_chat_renders_the_artifacts_template_and_equals_the_harness(server):
    from transformers import AutoTokenizer

    running, directory = server
    messages = [{"role": "user", "content": "What is a name?"}]
    rendered = AutoTokenizer.from_pretrained(directory).apply_chat_template(messages, tokenize=False,
                                                                            add_generation_prompt=True)
    answer = asyncio.run(client(running.url).chat.completions.create(model="base", messages=messages,
                                                                      max_tokens=MAX_TOKENS, temperature=0))
    assert answer.choices[0].message.content == harness_completions(directory, [rendered])[0]


def assert_serves(url: str, expected: list[str]) -> None:
    """Two prompts in one request (one padded prefill), two requests at once, and a stream, against ``expected``."""
    models = httpx.get(url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["base"]

    async def main():
        api = client(url)
        pair = await api.completions.create(model="base", prompt=PROMPTS[:2], max_tokens=MAX_TOKENS, temperature=0)
        together = await asyncio.gather(*(api.completions.create(model="base", prompt=prompt, max_tokens=MAX_TOKENS,
                                                                 temperature=0) for prompt in PROMPTS[1:]))
        chunks = [c async for c in await api.completions.create(model="base", prompt=PROMPTS[1], temperature=0,
                                                                max_tokens=MAX_TOKENS, stream=True)]
        return pair, together, chunks

    pair, together, chunks = asyncio.run(main())
    assert [c.text for c in sorted(pair.choices, key=lambda c: c.index)] == expected[:2]
    assert [answer.choices[0].text for answer in together] == expected[1:]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected[1] == together[0].choices[0].text


@pytest.mark.server
def test_the_bento_of_a_compressed_run_packages_and_serves_the_chosen_artifact(compressed_run, tmp_path):
    from kubeforge.llm.package import build_llm_bento, pinned_requirements

    served = resolve_lm_source(compressed_run)
    out = tmp_path / "bento"
    built = build_llm_bento(served, out)
    context = Path(built.context)
    models = {p.relative_to(context / "models").as_posix() for p in (context / "models").rglob("*") if p.is_file()}
    assert any(p.startswith("kubeforge-llm-base/") and p.endswith("/model.onnx") for p in models)
    assert any(p.endswith("/compression.json") for p in models) and built.adapters_tag is None
    assert not any("adapter" in p for p in models)
    requirements = (context / "env" / "python" / "requirements.txt").read_text().split()
    assert set(pinned_requirements("onnx")) <= set(requirements)
    assert any(r.startswith("onnxruntime==") for r in requirements)
    bentoml = str(Path(sys.executable).parent / "bentoml")
    running = LLMServer(tmp_path, [bentoml, "serve", built.bento_tag], BENTOML_HOME=str(out / "bentoml-home"),
                        KUBEFORGE_LLM_THREADS="1")
    try:
        running.wait("/readyz", 200)
        assert_serves(running.url, harness_completions(served.base, PROMPTS))
    finally:
        running.stop()


def test_adapters_asked_for_on_a_compressed_model_are_refused(compressed_run):
    from kubeforge.config import ConfigError
    from kubeforge.llm.launch import serve_environment

    served = resolve_lm_source(compressed_run)
    with pytest.raises(ConfigError, match="serves no LoRA adapters"):
        serve_environment(served, {"KUBEFORGE_LLM_ADAPTERS": "extra=/somewhere"})
    assert serve_environment(served, {})["KUBEFORGE_LLM_MODEL"] == str(served.base.resolve())
    record = json.loads((served.base / "compression.json").read_text())
    assert record["artifact"]["format"] == "onnx"
