"""What a request and the engine share: a Generation (the request's side), its Choices (one sequence each) and the
Events each decode step delivers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from kubeforge.llm.detokenize import TextAssembler
from kubeforge.llm.sampling import RowSampler


@dataclass(frozen=True)
class Event:
    """What one step produced for one choice (``error`` ends the whole generation)."""

    index: int
    text: str = ""
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    error: str | None = None
    status: int = 500  # of an error
    code: str | None = None  # of an error


@dataclass(eq=False)
class Choice:
    """One sequence: a prompt and everything generated for it so far."""

    generation: Generation
    index: int
    prompt_ids: list[int]
    max_tokens: int
    sampler: RowSampler
    text: TextAssembler
    slot: int
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    last_token_at: float = 0.0


@dataclass(eq=False)
class Group:
    """The n choices of one prompt: prefilled once, then n rows."""

    choices: list[Choice]

    @property
    def prompt_ids(self) -> list[int]:
        return self.choices[0].prompt_ids

    @property
    def tokens(self) -> int:
        return sum(len(c.prompt_ids) + c.max_tokens for c in self.choices)


class Generation:
    """A request's view of its choices; iterate ``events()`` on the loop that submitted it."""

    def __init__(self, model_name: str, loop: asyncio.AbstractEventLoop, max_queue_wait_s: float = float("inf")):
        self.model_name = model_name
        self.loop = loop
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.arrival = time.perf_counter()
        self.queue_deadline = self.arrival + max_queue_wait_s  # dropped with 503 if still queued then
        self.first_token_at: float | None = None
        self.cancelled = False
        self.finished = False
        self.choices: list[Choice] = []
        self.on_cancel: Callable[[], None] = lambda: None
        self.share: Any = None  # kubeforge.llm.tenancy.fair.Share: whose request, for weighted fair admission

    def cancel(self) -> None:
        """Stop generating (client gone, timeout): the engine frees the rows before its next step. Call it on the
        loop that iterates ``events()``."""
        if not self.finished and not self.cancelled:
            self.cancelled = True
            self.queue.put_nowait([])  # wakes `events()`, which then ends: no more events come
            self.on_cancel()

    async def events(self) -> AsyncIterator[list[Event]]:
        """Batches of events until every choice finished (or an error event)."""
        pending = len(self.choices)
        while pending:
            batch = await self.queue.get()
            if self.cancelled:
                return
            yield batch
            for event in batch:
                if event.error is not None:
                    return
                pending -= event.finish_reason is not None
