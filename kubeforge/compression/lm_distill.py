"""distill: a causal-LM student with fewer decoder layers and/or a smaller hidden size learns from its teacher.

loss = alpha * CE(student, next tokens) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)); the
CE counts the sequence's loss tokens, the KL every real (unpadded) position, and T^2 keeps the soft-target gradients
on the scale of the hard ones. The teacher stays frozen in eval mode under no_grad. A student of the teacher's width
starts from the teacher's embeddings, final norm and evenly spaced layers (it learns far faster than from scratch);
a narrower one starts from a fresh initialisation. The same loop, with alpha = 1 and no teacher, heals a pruned model.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F

from kubeforge.compression.candidate import CompressionError
from kubeforge.lm.evaluation import next_token_sums

LEARNING_RATE = 2e-3  # students and healed models: AdamW peak, linear warm-up over 10 % of the steps, cosine to 10 %
BATCH_SIZE = 16
CLIP_NORM = 1.0


def student_config(teacher_config: Any, layers: int, hidden_size: int) -> Any:
    """The student's transformers config; 0 means half the layers / the teacher's width. Refuses a student that
    is not smaller than its teacher, before any training."""
    teacher_layers, teacher_hidden = teacher_config.num_hidden_layers, teacher_config.hidden_size
    layers = layers or max(1, teacher_layers // 2)
    hidden = hidden_size or teacher_hidden
    if layers > teacher_layers or hidden > teacher_hidden:
        raise CompressionError(f"distill: the student ({layers} layers, hidden {hidden}) is larger than its teacher "
                               f"({teacher_layers} layers, hidden {teacher_hidden}); student_layers and "
                               "student_hidden_size must not exceed the teacher's")
    if layers == teacher_layers and hidden == teacher_hidden:
        raise CompressionError(f"distill: the student has the teacher's size ({layers} layers, hidden {hidden}); "
                               "set student_layers or student_hidden_size smaller")
    heads = teacher_config.num_attention_heads
    if hidden % heads or (hidden // heads) % 2:
        raise CompressionError(f"distill: student_hidden_size {hidden} must be a multiple of 2 x the teacher's "
                               f"{heads} attention heads (each head keeps an even rotary width)")
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    if hidden != teacher_hidden:
        config.hidden_size = hidden
        config.head_dim = hidden // heads
        intermediate = teacher_config.intermediate_size * hidden / teacher_hidden
        config.intermediate_size = max(32, int(round(intermediate / 32)) * 32)
    return config


def evenly_spaced(count: int, total: int) -> list[int]:
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def build_student(teacher: Any, config: Any, seed: int) -> tuple[Any, str]:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    student = AutoModelForCausalLM.from_config(config)
    if config.hidden_size != teacher.config.hidden_size:
        return student, "fresh initialisation (narrower than the teacher)"
    chosen = evenly_spaced(config.num_hidden_layers, teacher.config.num_hidden_layers)
    state = teacher.state_dict()
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if "layers" in parts:
            where = parts.index("layers")
            source = int(parts[where + 1])
            if source not in chosen:
                continue
            parts[where + 1] = str(chosen.index(source))
        mapped[".".join(parts)] = value
    student.load_state_dict(mapped, strict=True)
    return student, f"initialised from the teacher's embeddings and layers {chosen}"


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 10)
    if step <= warmup:
        return step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_student(student: Any, batches: Any, *, steps: int, seed: int, teacher: Any = None, temperature: float = 2.0,
                  alpha: float = 1.0, learning_rate: float = LEARNING_RATE, batch_size: int = BATCH_SIZE
                  ) -> list[float]:
    """Train ``student`` in place on ``batches`` (TokenBatches) for ``steps`` AdamW steps; the loss per step."""
    if teacher is None and alpha < 1.0:
        raise ValueError("a KL term needs a teacher")
    student.train()
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    if teacher is not None:
        teacher.eval()  # its forward runs under no_grad below: frozen without touching its parameters' flags
    optimizer = torch.optim.AdamW(student.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: _lr_factor(done + 1, steps))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(batches), generator=generator)
    cursor, losses = 0, []
    for _ in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(batches), generator=generator), 0
        rows = order[cursor:cursor + batch_size]
        cursor += batch_size
        ids, mask, labels = batches.input_ids[rows], batches.attention_mask[rows], batches.labels[rows]
        logits = student(input_ids=ids, attention_mask=mask, use_cache=False).logits
        sums = next_token_sums(logits, labels)
        loss = alpha * sums[0] / sums[1].clamp(min=1)
        if teacher is not None and alpha < 1.0:
            with torch.no_grad():
                soft = F.log_softmax(teacher(input_ids=ids, attention_mask=mask, use_cache=False).logits
                                     / temperature, dim=-1)
            kl = F.kl_div(F.log_softmax(logits / temperature, dim=-1), soft, log_target=True,
                          reduction="none").sum(-1)
            real = mask.to(kl.dtype)
            loss = loss + (1 - alpha) * temperature ** 2 * (kl * real).sum() / real.sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP_NORM)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    student.eval()
    return losses


def distill_lm(teacher: Any, batches: Any, *, layers: int, hidden_size: int, steps: int, temperature: float,
               alpha: float, seed: int) -> tuple[Any, list[str]]:
    config = student_config(teacher.config, layers, hidden_size)
    student, start = build_student(teacher, config, seed)
    losses = train_student(student, batches, steps=steps, seed=seed, teacher=teacher, temperature=temperature,
                           alpha=alpha)
    share = sum(p.numel() for p in student.parameters()) / sum(p.numel() for p in teacher.parameters())
    return student, [f"student {config.num_hidden_layers} layers, hidden {config.hidden_size} ({share:.0%} of the "
                     f"teacher's parameters), {start}; {steps} steps, T={temperature}, alpha={alpha}, final loss "
                     f"{losses[-1]:.3f}"]
