"""Incremental text for a stream of token ids, with stop strings.

Text is released as soon as it is whole: a token that ends inside a multi-byte character waits for the next one,
and text that could be the start of a stop string is held back until it is clearly not one (a stop string is never
sent, not even in part, and is not part of the answer, as in OpenAI's API).
"""

from __future__ import annotations

from typing import Any


class _OffsetDecoder:
    """For tokenizers without a Rust backend: decode a short window and release what grew (TGI's method)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def step(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        after = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before):]
        return ""


class _StreamDecoder:
    """For fast tokenizers: tokenizers' own DecodeStream (Rust), one call per token."""

    def __init__(self, tokenizer: Any):
        from tokenizers.decoders import DecodeStream

        self.backend = tokenizer.backend_tokenizer
        self.stream = DecodeStream(skip_special_tokens=True)

    def step(self, token_id: int) -> str:
        return self.stream.step(self.backend, token_id) or ""


class TextAssembler:
    """The text of one choice, token by token; ``stopped`` once a stop string appeared."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        fast = getattr(tokenizer, "is_fast", False) and hasattr(tokenizer, "backend_tokenizer")
        self.decoder = _StreamDecoder(tokenizer) if fast else _OffsetDecoder(tokenizer)
        self.stop = tuple(s for s in stop if s)
        self.longest_stop = max((len(s) for s in self.stop), default=0)
        self.text = ""
        self.sent = 0  # characters of ``text`` already released
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Text that became safe to send after ``token_id`` (often empty)."""
        self.ids.append(token_id)
        piece = self.decoder.step(token_id)
        if not piece:
            return ""
        if not self.stop:
            self.text += piece
            self.sent = len(self.text)
            return piece
        start = max(0, len(self.text) - self.longest_stop + 1)
        self.text += piece
        hits = [found for found in (self.text.find(s, start) for s in self.stop) if found >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self.stopped = True
            return self._release(len(self.text))
        return self._release(len(self.text) - self._held_back())

    def flush(self) -> str:
        """At the end of the choice (not by a stop string): what was held back as a possible stop string, and
        bytes of an unfinished character, decoded as the whole-sequence decode would (U+FFFD)."""
        whole = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(whole) > len(self.text) and whole.startswith(self.text):
            self.text = whole
        return self._release(len(self.text))

    def _held_back(self) -> int:
        """Length of the longest tail of ``text`` that starts some stop string."""
        for size in range(min(self.longest_stop - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self.stop):
                return size
        return 0

    def _release(self, upto: int) -> str:
        upto = max(upto, self.sent)
        released, self.sent = self.text[self.sent:upto], upto
        return released
