"""Part 1b of bench.llm_tenants: the engine alone (no HTTP, no load generator process), the same two tenants'
arrivals submitted in-process, with the fair scheduler and with plain FIFO admission: what the scheduler itself
does for B's wait for a first token, apart from the CPU the HTTP side takes on a shared machine."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

from bench._harness import ms, percentile
from bench._tenant_load import MAX_TOKENS


def engine_only(base: Path, seconds: float, rate_a: float, rate_b: float, prompt_texts: list[str]) -> dict:
    import torch

    from kubeforge.llm.metrics import LLMMetrics
    from kubeforge.llm.runtime import LLMRuntime
    from kubeforge.llm.sampling import SamplingParams
    from kubeforge.llm.settings import LLMServeConfig
    from kubeforge.llm.tenancy.fair import FairScheduler, Share
    from kubeforge.llm.tenancy.settings import TenancySettings

    torch.set_num_threads(1)
    runtime = LLMRuntime.load(base, LLMServeConfig(max_running=32, threads=1), LLMMetrics())
    ids = [runtime.tokenizer(text)["input_ids"] for text in prompt_texts]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    defaults = TenancySettings()
    results = {}
    try:
        for name, scheduler in (("b_alone", FairScheduler(defaults.fair_burst_rows, defaults.fair_window_s,
                                                           defaults.fair_prefill_tokens)),
                                ("fair", FairScheduler(defaults.fair_burst_rows, defaults.fair_window_s,
                                                       defaults.fair_prefill_tokens)), ("fifo", None)):
            runtime.engine.fairness = scheduler
            waits = asyncio.run(_arrivals(runtime, ids, params, seconds, 0.0 if name == "b_alone" else rate_a,
                                          rate_b, Share))
            results[name] = {tenant: {"requests": len(w), "first_token_p50_ms": ms(percentile(w, 50)),
                                      "first_token_p99_ms": ms(percentile(w, 99))} for tenant, w in waits.items()}
    finally:
        runtime.close()
    return results


async def _arrivals(runtime, ids, params, seconds: float, rate_a: float, rate_b: float, share_type) -> dict:
    """Poisson arrivals for A (at most 40 in flight, its concurrency budget) and B; submit to first token."""
    rng = random.Random(3)
    waits: dict[str, list[float]] = {"tenant-a": [], "tenant-b": []}
    in_flight = {"tenant-a": 0, "tenant-b": 0}
    tasks = []
    end = time.perf_counter() + seconds

    async def one(tenant: str, index: int) -> None:
        in_flight[tenant] += 1
        generation = runtime.submit("base", [ids[index % len(ids)]], params, 1, asyncio.get_running_loop(),
                                    share=share_type(tenant))
        async for _ in generation.events():
            pass
        in_flight[tenant] -= 1
        waits[tenant].append(generation.first_token_at - generation.arrival)

    async def arrivals(tenant: str, rate: float, cap: int | None) -> None:
        index = 0
        while rate > 0:
            await asyncio.sleep(rng.expovariate(rate))
            if time.perf_counter() >= end:
                return
            if cap is None or in_flight[tenant] < cap:
                tasks.append(asyncio.ensure_future(one(tenant, index)))
            index += 1

    await asyncio.gather(arrivals("tenant-a", rate_a, 40), arrivals("tenant-b", rate_b, None))
    await asyncio.gather(*tasks)
    return {tenant: w for tenant, w in waits.items() if w}
