"""The continuous-batching engine and the adapter bank, driven directly (no HTTP): token-for-token equality with
transformers' generate, joining between steps, cancellation, many adapters in one batch, admission."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from kubeforge.llm.errors import APIError
from kubeforge.llm.metrics import LLMMetrics
from kubeforge.llm.runtime import LLMRuntime
from kubeforge.llm.sampling import SamplingParams
from kubeforge.llm.settings import LLMServeConfig
from tests.kubeforge.llm.helpers import greedy, offline_greedy, run_generation

PROMPTS = ["The with statement", "Names refer to objects. Names are introduced by", "x"]


def make_runtime(base_dir, **settings) -> tuple[LLMRuntime, CollectorRegistry]:
    registry = CollectorRegistry()
    runtime = LLMRuntime.load(base_dir, LLMServeConfig(**settings), LLMMetrics(registry))
    return runtime, registry


@pytest.fixture(scope="module")
def served(llm_base_dir, llm_adapters):
    runtime, registry = make_runtime(llm_base_dir)
    for name, directory in llm_adapters.items():
        runtime.load_adapter(name, str(directory))
    yield runtime, registry
    runtime.close()


def ids(runtime, text: str) -> list[int]:
    return runtime.tokenizer(text)["input_ids"]


def test_concurrent_greedy_choices_equal_offline_generate(served, llm_base_dir):
    runtime, _ = served
    prompts = [ids(runtime, text) for text in PROMPTS]  # different lengths: rows are left-padded in the batch

    async def main():
        return await asyncio.gather(*(run_generation(runtime, "base", [p], greedy(12)) for p in prompts))

    results = asyncio.run(main())
    for prompt, (tokens, texts, reasons) in zip(prompts, results, strict=True):
        expected = offline_greedy(llm_base_dir, prompt, 12)
        assert tokens[0] == expected
        assert texts[0] == runtime.tokenizer.decode(expected, skip_special_tokens=True)
        assert reasons[0] == ("length" if len(expected) == 12 else "stop")


def test_a_request_joins_the_running_batch_between_steps(served, llm_base_dir):
    runtime, _ = served
    first, second = ids(runtime, PROMPTS[0]), ids(runtime, PROMPTS[1])
    order = []

    async def main():
        joined = asyncio.Event()

        async def start_second():
            order.append(("second submitted", runtime.engine.steps))
            joined.set()

        long_run = asyncio.create_task(run_generation(runtime, "base", [first], greedy(40, ignore_eos=True),
                                                      after_first=start_second))
        await joined.wait()
        short = await run_generation(runtime, "base", [second], greedy(8))
        order.append(("second finished", long_run.done()))
        return await long_run, short

    (long_tokens, _, _), (short_tokens, _, _) = asyncio.run(main())
    assert short_tokens[0] == offline_greedy(llm_base_dir, second, 8)
    assert len(long_tokens[0]) == 40
    assert order[1] == ("second finished", False)  # admitted and finished while the first was still decoding


def test_two_adapters_and_the_base_share_one_batch_and_each_gets_its_own_output(served, llm_base_dir, llm_adapters):
    runtime, registry = served
    prompt = ids(runtime, PROMPTS[1])
    before = registry.get_sample_value("kubeforge:batch_rows_bucket", {"le": "2.0"}) or 0.0
    before_count = registry.get_sample_value("kubeforge:batch_rows_count") or 0.0

    async def main():
        return await asyncio.gather(*(run_generation(runtime, name, [prompt], greedy(10))
                                      for name in ("alpha", "base", "beta")))

    alpha, base, beta = (result[0][0] for result in asyncio.run(main()))
    assert alpha == offline_greedy(llm_base_dir, prompt, 10, llm_adapters["alpha"])
    assert beta == offline_greedy(llm_base_dir, prompt, 10, llm_adapters["beta"])
    assert base == offline_greedy(llm_base_dir, prompt, 10)
    assert len({tuple(alpha), tuple(beta), tuple(base)}) == 3  # the adapters really change the output
    steps = registry.get_sample_value("kubeforge:batch_rows_count") - before_count
    narrow = registry.get_sample_value("kubeforge:batch_rows_bucket", {"le": "2.0"}) - before
    assert narrow < steps  # some decode steps ran all three rows together


def test_n_choices_share_one_prefill_and_seeded_sampling_repeats(served, llm_base_dir):
    runtime, _ = served
    prompt = ids(runtime, PROMPTS[0])
    tokens, _, _ = asyncio.run(run_generation(runtime, "base", [prompt], greedy(6), n=3))
    assert tokens[0] == tokens[1] == tokens[2] == offline_greedy(llm_base_dir, prompt, 6)
    sampled = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    once = asyncio.run(run_generation(runtime, "alpha", [prompt], sampled, n=2))[0]
    again = asyncio.run(run_generation(runtime, "alpha", [prompt], sampled, n=2))[0]
    assert once == again  # the same seed repeats; choice i uses seed + i
    assert once[0] != once[1]


def test_cancelling_frees_the_rows_at_once(served):
    runtime, registry = served
    prompt = ids(runtime, PROMPTS[0])
    aborted = registry.get_sample_value("kubeforge:request_success_total",
                                        {"model_name": "base", "finished_reason": "abort"}) or 0.0

    async def main():
        generation = runtime.submit("base", [prompt], greedy(80, ignore_eos=True), 2, asyncio.get_running_loop())
        seen = 0
        async for batch in generation.events():
            seen += len(batch)
            if seen >= 4:
                generation.cancel()
                break
        deadline = time.monotonic() + 5
        while runtime.engine.running_rows and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return generation

    generation = asyncio.run(main())
    assert runtime.engine.running_rows == 0
    assert sum(len(c.output_ids) for c in generation.choices) < 40  # stopped long before max_tokens
    assert registry.get_sample_value("kubeforge:request_success_total",
                                     {"model_name": "base", "finished_reason": "abort"}) == aborted + 1


def test_unloading_an_adapter_waits_for_its_running_sequences(llm_base_dir, llm_adapters):
    runtime, _ = make_runtime(llm_base_dir)
    try:
        runtime.load_adapter("gamma", str(llm_adapters["beta"]))
        prompt = ids(runtime, PROMPTS[2])

        async def main():
            async def unload():
                runtime.unload_adapter("gamma")

            return await run_generation(runtime, "gamma", [prompt], greedy(20, ignore_eos=True), after_first=unload)

        tokens, _, _ = asyncio.run(main())
        assert tokens[0] == offline_greedy(llm_base_dir, prompt, 20, llm_adapters["beta"])[:20]
        with pytest.raises(APIError) as refused:
            runtime.submit("gamma", [prompt], greedy(2), 1, asyncio.new_event_loop())
        assert refused.value.status == 404
        deadline = time.monotonic() + 5
        while runtime.bank.adapters and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not runtime.bank.adapters
        runtime.load_adapter("gamma", str(llm_adapters["alpha"]))  # the name and the slot are free again
        assert runtime.adapter_names() == ["gamma"]
    finally:
        runtime.close()


def test_admission_refuses_beyond_the_queue_and_the_token_budget(llm_base_dir):
    runtime, _ = make_runtime(llm_base_dir, max_waiting=2, max_batch_tokens=64, max_running=1)
    try:
        prompt = ids(runtime, PROMPTS[0])
        loop = asyncio.new_event_loop()
        with pytest.raises(APIError) as too_big:
            runtime.submit("base", [prompt], greedy(60), 1, loop)
        assert too_big.value.status == 400 and "KUBEFORGE_LLM_MAX_BATCH_TOKENS" in too_big.value.message
        with pytest.raises(APIError) as full:
            runtime.submit("base", [prompt], greedy(4), 3, loop)
        assert full.value.status == 503 and full.value.code == "queue_full" and full.value.retry_after_s
        loop.close()
    finally:
        runtime.close()


def test_a_request_queued_past_its_deadline_is_dropped_before_prefill(llm_base_dir):
    runtime, _ = make_runtime(llm_base_dir, max_running=1, max_queue_wait_s=0.05)
    try:
        prompt = ids(runtime, PROMPTS[0])

        async def main():
            loop = asyncio.get_running_loop()
            first = runtime.submit("base", [prompt], greedy(85, ignore_eos=True), 1, loop)
            second = runtime.submit("base", [prompt], greedy(4), 1, loop)  # waits: the batch holds one row
            second_events = [event async for batch in second.events() for event in batch]
            first_tokens = [token async for batch in first.events() for event in batch for token in event.token_ids]
            return second, second_events, len(first_tokens)

        second, events, first_tokens = asyncio.run(main())
        assert [(e.status, e.code) for e in events] == [(503, "queue_timeout")]
        assert "KUBEFORGE_LLM_MAX_QUEUE_WAIT_S" in events[0].error
        assert second.choices[0].output_ids == []  # never prefilled
        assert first_tokens == 85  # the running request was not disturbed
    finally:
        runtime.close()


def test_an_adapter_that_does_not_fit_is_refused_and_the_bank_is_unchanged(served, tmp_path, llm_adapters):
    import json
    import shutil

    runtime, _ = served
    broken = tmp_path / "broken"
    shutil.copytree(llm_adapters["alpha"], broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_layer"]
    (broken / "adapter_config.json").write_text(json.dumps(config))
    before = runtime.adapter_names()
    with pytest.raises(APIError) as refused:
        runtime.load_adapter("broken", str(broken))
    assert refused.value.status == 400 and "no_such_layer" in refused.value.message
    assert runtime.adapter_names() == before
    with pytest.raises(APIError) as pickled:
        (broken / "adapter_model.safetensors").rename(broken / "adapter_model.bin")
        runtime.load_adapter("broken", str(broken))
    assert "pickle" in pickled.value.message
