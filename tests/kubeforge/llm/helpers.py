"""Shared by the LLM tests: offline reference generations and driving the engine from asyncio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from kubeforge.llm.sampling import SamplingParams


def offline_greedy(model_dir: Path, prompt_ids: list[int], max_new_tokens: int,
                   adapter_dir: Path | None = None) -> list[int]:
    """What transformers' own generate(do_sample=False) produces for one prompt, alone, with no padding."""
    from kubeforge.lm.sources import load_adapter_model, load_causal_lm

    model = (load_adapter_model(adapter_dir, model_dir) if adapter_dir is not None
             else load_causal_lm(model_dir)[0]).eval()
    with torch.no_grad():
        output = model.generate(input_ids=torch.tensor([prompt_ids]),
                                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=model.config.pad_token_id)
    return output[0, len(prompt_ids):].tolist()


async def run_generation(runtime, model: str, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                         after_first=None) -> tuple[dict[int, list[int]], dict[int, str], dict[int, str]]:
    """(token ids, text, finish reason) per choice index."""
    generation = runtime.submit(model, prompts, params, n, asyncio.get_running_loop())
    tokens: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    async for batch in generation.events():
        for event in batch:
            assert event.error is None, event.error
            tokens.setdefault(event.index, []).extend(event.token_ids)
            texts[event.index] = texts.get(event.index, "") + event.text
            if event.finish_reason:
                reasons[event.index] = event.finish_reason
        if after_first is not None:
            await after_first()
            after_first = None
    return tokens, texts, reasons


def greedy(max_tokens: int, **extra) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **extra)
