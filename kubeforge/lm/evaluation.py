"""Held-out scores of a causal LM (loss, perplexity, next-token accuracy) and greedy completions to read.

Labels follow the Hugging Face convention: ``labels`` line up with ``input_ids`` and the loss compares the logits
at position t with the label at t + 1; -100 marks a position without loss (padding, prompt tokens). Every mean is
over loss tokens, not sequences, so long and short sequences weigh by what they contribute.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from kubeforge.errors import DataError

IGNORE_INDEX = -100
GENERATION_BATCH = 16


def next_token_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[summed cross-entropy, loss tokens, correct argmax] over the loss tokens of one batch (float32)."""
    predicted = logits[:, :-1].float()
    targets = labels[:, 1:]
    counted = targets != IGNORE_INDEX
    loss = F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((predicted.argmax(dim=-1) == targets) & counted).sum()
    return torch.stack([loss, counted.sum().to(loss.dtype), correct.to(loss.dtype)])


def forward_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def trim_padding(attention_mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the trailing columns no row attends to. Fine-tuning sets are padded to their longest example, so a
    batch of short ones would otherwise pay for the longest's columns; for a causal model the dropped columns
    change nothing in the kept ones."""
    used = attention_mask.any(dim=0).nonzero()
    width = int(used.max()) + 1 if len(used) else attention_mask.shape[1]
    return tuple(t[:, :width] for t in (attention_mask, *tensors))


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def evaluate_causal_lm(model: Any, batches: Any, *, batch_size: int = 16) -> dict[str, float]:
    """Scores over every loss token of ``batches`` (a TokenBatches); the model's train/eval mode is put back."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    device = _device_of(model)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)
    processed = 0
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            for start in range(0, len(batches.input_ids), batch_size):
                mask, ids, labels = trim_padding(*(t[start:start + batch_size].to(device) for t in (
                    batches.attention_mask, batches.input_ids, batches.labels)))
                sums += next_token_sums(forward_logits(model, ids, mask), labels).double().cpu()
                processed += int(mask.sum())
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    loss_sum, tokens, correct = (float(v) for v in sums)
    if tokens == 0:
        raise DataError("the evaluation batches have no loss tokens (every label is -100)")
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": perplexity(loss), "next_token_accuracy": correct / tokens,
            "tokens": int(tokens), "tokens_per_second": processed / seconds if seconds > 0 else 0.0}


def greedy_completions(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Only the generated text of each prompt, up to its first EOS; batched with left padding (the new tokens of
    every row then start at the same column)."""
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if not prompts:
        return []
    device = _device_of(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise DataError("the tokenizer has neither a pad nor an EOS token, so prompts cannot be batched")
    encoded = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    for index, ids in enumerate(encoded):
        if not ids:
            if tokenizer.bos_token_id is None:
                raise DataError(f"prompt {index} is empty and the tokenizer has no BOS token to start from")
            ids.append(tokenizer.bos_token_id)
    was_training = model.training
    model.eval()
    completions: list[str] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(encoded), GENERATION_BATCH):
                group = encoded[start:start + GENERATION_BATCH]
                width = max(len(ids) for ids in group)
                ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in group], device=device)
                mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in group], device=device)
                output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                        do_sample=False, num_beams=1, pad_token_id=pad_id,
                                        eos_token_id=tokenizer.eos_token_id)
                for row in output[:, width:].tolist():
                    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in row:
                        row = row[:row.index(tokenizer.eos_token_id)]
                    completions.append(tokenizer.decode(row, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return completions
