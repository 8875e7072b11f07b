"""Choosing each row's next token: greedy rows by one batched argmax (what ``generate(do_sample=False)`` does),
sampled rows with temperature and top-p, each from its own generator when the request gave a seed (so a seeded
request repeats whatever else shares its batch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class RowSampler:
    """The sampling state of one sequence: its parameters and, when seeded, its own random stream."""

    def __init__(self, params: SamplingParams, device: torch.device, shared: torch.Generator):
        self.params = params
        if params.greedy:
            self.generator = None
        elif params.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed)
        else:
            self.generator = shared

    def sample(self, logits: torch.Tensor) -> int:
        """One token from a 1-D row of logits."""
        scaled = logits.float() / self.params.temperature
        probabilities = torch.softmax(scaled, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probabilities, order = torch.sort(probabilities, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
            outside = sorted_probabilities.cumsum(-1) - sorted_probabilities > self.params.top_p
            sorted_probabilities = sorted_probabilities.masked_fill(outside, 0.0)
            choice = torch.multinomial(sorted_probabilities, 1, generator=self.generator)
            return int(order[choice])
        return int(torch.multinomial(probabilities, 1, generator=self.generator))


def next_tokens(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """Next token per row of ``logits`` ([rows, vocab])."""
    chosen = logits.argmax(dim=-1).tolist()
    for row, sampler in enumerate(samplers):
        if not sampler.params.greedy:
            chosen[row] = sampler.sample(logits[row])
    return chosen
