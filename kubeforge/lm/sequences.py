"""Token sequences for causal-LM training: packed pre-training blocks and loss-masked fine-tuning examples.

Labels are the input ids where a token is learnt and -100 where it is not (the prompt, the user's turns, padding);
the model shifts them itself. Prompt and completion are tokenised separately, so the boundary in the labels is
exactly where the completion's text starts, and generation from the prompt alone sees the same prompt tokens.
No special tokens are added but EOS (and what a chat template writes itself), the same as
``kubeforge.lm.evaluation.greedy_completions`` tokenises its prompts, so training and generation see one layout.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kubeforge.config import ConfigError
from kubeforge.errors import DataError
from kubeforge.lm.corpus import Document, Example

IGNORE_INDEX = -100
_GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")


@dataclass
class TokenBatches:
    input_ids: torch.Tensor  # int64 [N, L]
    attention_mask: torch.Tensor  # int64 [N, L]
    labels: torch.Tensor  # int64 [N, L], IGNORE_INDEX where no loss
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def check_max_length(max_length: int, context_length: int) -> None:
    if max_length > context_length:
        raise ConfigError(f"max_length {max_length} exceeds the model's context ({context_length} tokens)")


def _eos_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no end-of-sequence token; causal-LM sequences need one to mark ends")
    return int(tokenizer.eos_token_id)


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    # verbose=False: documents longer than model_max_length are expected here; they are cut later
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]


def pack_documents(documents: Sequence[Document], tokenizer: Any, max_length: int) -> TokenBatches:
    """Documents joined by EOS and cut into full blocks of max_length; the tail shorter than one block is dropped."""
    eos = _eos_id(tokenizer)
    stream: list[int] = []
    for ids in _encode(tokenizer, [document.text for document in documents]):
        stream.extend(ids)
        stream.append(eos)
    count = len(stream) // max_length
    if count == 0:
        raise DataError(f"the corpus has {len(stream)} tokens ({len(documents)} documents, with EOS separators); "
                        f"one sequence needs max_length {max_length}")
    input_ids = torch.tensor(stream[:count * max_length], dtype=torch.long).view(count, max_length)
    dropped = len(stream) - count * max_length
    stats = {"kind": "packed", "documents": len(documents), "sequences": count, "tokens": count * max_length,
             "loss_tokens": count * max_length, "truncated": int(dropped > 0), "truncated_tokens": dropped}
    return TokenBatches(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=input_ids.clone(),
                        stats=stats)


def _has_generation_markers(tokenizer: Any) -> bool:
    template = tokenizer.chat_template
    templates = template.values() if isinstance(template, dict) else [template]
    return any(_GENERATION_MARKER.search(text or "") for text in templates)


def _render(tokenizer: Any, messages: list[dict[str, str]], **kwargs: Any) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def _chat_tokens(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    """(ids, mask) with mask 1 on the assistant's tokens."""
    messages = [dict(message) for message in example.messages]
    if _has_generation_markers(tokenizer):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return list(out["input_ids"]), list(out["assistant_masks"])
    # No markers: an assistant turn is what rendering it adds to the conversation before it (with the generation
    # prompt, so the role header stays outside the loss). Needs a template that renders prefixes as prefixes.
    ids = _render(tokenizer, messages)
    mask = [0] * len(ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_ids = _render(tokenizer, messages[:index], add_generation_prompt=True) if index else []
        end_ids = _render(tokenizer, messages[:index + 1])
        start = len(start_ids)
        if end_ids != ids[:len(end_ids)] or start_ids != ids[:start] or start > len(end_ids):
            raise DataError(f"{example.doc_id}: the tokenizer's chat template does not render a conversation's "
                            "beginning as a prefix of the whole; add {% generation %} markers to the template")
        mask[start:len(end_ids)] = [1] * (len(end_ids) - start)
    return ids, mask


def _example_tokens(tokenizer: Any, example: Example, eos: int) -> tuple[list[int], list[int]]:
    """(ids, labels) before truncation."""
    if example.kind == "chat":
        ids, mask = _chat_tokens(tokenizer, example)
        return ids, [token if learnt else IGNORE_INDEX for token, learnt in zip(ids, mask)]
    if example.kind == "text":
        ids = _encode(tokenizer, [example.text])[0] + [eos]
        return ids, list(ids)
    prompt, completion = _encode(tokenizer, [example.prompt, example.completion])
    completion = completion + [eos]
    return prompt + completion, [IGNORE_INDEX] * len(prompt) + completion


def encode_examples(examples: Sequence[Example], tokenizer: Any, max_length: int) -> TokenBatches:
    """One right-padded sequence per example; examples cut past max_length are counted, and those left with no
    learnt token are dropped (and counted) rather than fed as all-ignored rows."""
    if not examples:
        raise DataError("no fine-tuning examples to encode")
    if any(example.kind == "chat" for example in examples) and not tokenizer.chat_template:
        raise DataError("the data holds chat examples but the tokenizer has no chat template; use a tokenizer "
                        "with one, or prompt/completion rows")
    eos = _eos_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos  # masked out either way
    rows: list[tuple[list[int], list[int]]] = []
    truncated = truncated_tokens = without_loss = 0
    for example in examples:
        ids, labels = _example_tokens(tokenizer, example, eos)
        if len(ids) > max_length:
            truncated += 1
            truncated_tokens += len(ids) - max_length
            ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            without_loss += 1
            continue
        rows.append((ids, labels))
    if not rows:
        raise DataError(f"none of the {len(examples)} examples keeps a learnt token within max_length {max_length} "
                        "(prompts fill the whole sequence): raise max_length or shorten the prompts")
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_tensor = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, labels) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
        label_tensor[row, :len(labels)] = torch.tensor(labels, dtype=torch.long)
    stats = {"kind": "examples", "kinds": dict(sorted(Counter(e.kind for e in examples).items())),
             "examples": len(examples), "sequences": len(rows), "tokens": int(attention_mask.sum()),
             "loss_tokens": int((label_tensor != IGNORE_INDEX).sum()), "truncated": truncated,
             "truncated_tokens": truncated_tokens, "examples_without_loss": without_loss}
    return TokenBatches(input_ids=input_ids, attention_mask=attention_mask, labels=label_tensor, stats=stats)


def _split_text(text: str) -> tuple[str, str]:
    """A plain text's first half (ending at a space) as the prompt, the rest as the reference."""
    middle = text.rfind(" ", 0, len(text) // 2 + 1)
    middle = middle if middle > 0 else len(text) // 2
    return text[:middle], text[middle:]


def prompts_for_evaluation(examples: Sequence[Example], n: int, tokenizer: Any = None) -> list[tuple[str, str]]:
    """(prompt, reference) of the first n examples, in order. Chat prompts are the conversation before its last
    assistant turn, rendered by the tokenizer's template with the generation prompt: they already hold the
    template's special tokens, so tokenise them with add_special_tokens=False."""
    pairs: list[tuple[str, str]] = []
    for example in examples[:max(n, 0)]:
        if example.kind == "prompt_completion":
            pairs.append((example.prompt, example.completion))
        elif example.kind == "text":
            pairs.append(_split_text(example.text))
        else:
            if tokenizer is None or not tokenizer.chat_template:
                raise DataError(f"{example.doc_id}: a chat example's prompt needs a tokenizer with a chat template")
            last = max(i for i, message in enumerate(example.messages) if message["role"] == "assistant")
            history = [dict(message) for message in example.messages[:last]]
            prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True) \
                if history else ""
            pairs.append((prompt, example.messages[last]["content"]))
    return pairs
