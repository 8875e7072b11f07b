"""The OpenAI response shapes (kubeforge.llm.protocol documents them), built as dicts from engine events."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kubeforge.llm.generation import Event
from kubeforge.llm.prepare import PreparedRequest


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class ResponseBuilder:
    """One request's id, timestamps and running totals; ``chat`` picks the chat shapes."""

    request: PreparedRequest
    chat: bool
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    texts: dict[int, list[str]] = field(default_factory=dict)
    tokens: dict[int, list[int]] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.choices = len(self.request.prompts) * self.request.n
        head = dumps(self._head("chat.completion.chunk" if self.chat else "text_completion"))
        self._chunk_head = head[:-1] + b',"choices":['
        self._chunk_tail = b'],"usage":null}' if self.request.include_usage else b"]}"

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def add(self, event: Event) -> None:
        self.texts.setdefault(event.index, []).append(event.text)
        self.tokens.setdefault(event.index, []).extend(event.token_ids)
        if event.finish_reason is not None:
            self.reasons[event.index] = event.finish_reason

    def usage(self) -> dict[str, int]:
        prompt = sum(len(ids) for ids in self.request.prompts)
        completion = sum(len(ids) for ids in self.tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.request.model}

    # ---- whole responses --------------------------------------------------------------------------------------

    def response(self) -> dict[str, Any]:
        choices = []
        for index in range(self.choices):
            text = "".join(self.texts.get(index, []))
            choice: dict[str, Any] = ({"index": index, "message": {"role": "assistant", "content": text}}
                                      if self.chat else {"index": index, "text": text})
            choice.update(logprobs=None, finish_reason=self.reasons.get(index, "length"))
            if self.request.return_token_ids:
                choice["token_ids"] = self.tokens.get(index, [])
            choices.append(choice)
        return {**self._head(self.object), "choices": choices, "usage": self.usage()}

    # ---- stream chunks ---------------------------------------------------------------------------------------

    def chunk(self, event: Event) -> bytes | None:
        """The serialized chunk for one event, or None when there is nothing to say yet (the request's part of
        every chunk is serialized once, in ``_chunk_head``)."""
        first = self.chat and event.index not in self.started
        if not (event.text or event.finish_reason or first or (self.request.return_token_ids and event.token_ids)):
            return None
        self.started.add(event.index)
        choice: dict[str, Any] = {"index": event.index}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if event.text or first:
                delta["content"] = event.text
            choice["delta"] = delta
        else:
            choice["text"] = event.text
        choice.update(logprobs=None, finish_reason=event.finish_reason)
        if self.request.return_token_ids:
            choice["token_ids"] = list(event.token_ids)
        return self._chunk_head + dumps(choice) + self._chunk_tail

    def usage_chunk(self) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [],
                "usage": self.usage()}
