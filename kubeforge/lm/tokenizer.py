"""Byte-level BPE tokenizers for models built here (``scratch:`` sources), trained on the run's own corpus.

Byte-level means every string encodes (no unknown token), so a model pre-trained on Python's documentation can still
be fine-tuned on any text. The chat template marks the assistant's turns with ``{% generation %}`` so that
``apply_chat_template(..., return_assistant_tokens_mask=True)`` tells which tokens the fine-tuning loss counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubeforge.errors import ModelError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = tuple(f"<|{role}|>" for role in ROLES)
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# One turn: a role marker, the content, the end-of-sequence token. The assistant's content and its EOS are the
# generation span, so a fine-tuned model learns to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|eos|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|eos|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, model_max_length: int = 2048) -> Any:
    """A ``PreTrainedTokenizerFast`` with a byte-level BPE of ``vocab_size`` entries learnt from ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ModelError(f"tokenizer_vocab {vocab_size} is too small: a byte-level BPE needs at least "
                         f"{256 + len(SPECIAL_TOKENS)} entries (256 bytes and {len(SPECIAL_TOKENS)} special tokens)")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        additional_special_tokens=list(ROLE_TOKENS),
                                        model_max_length=model_max_length)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def check_tokenizer_fits(tokenizer: Any, model_config: Any) -> None:
    """Every token id the tokenizer can produce must index the model's embedding table."""
    vocab = len(tokenizer)
    model_vocab = int(getattr(model_config, "vocab_size", 0) or 0)
    if model_vocab and vocab > model_vocab:
        raise ModelError(f"the tokenizer's vocabulary ({vocab} tokens) does not fit the model's embedding table "
                         f"(vocab_size {model_vocab}): use the tokenizer the model was trained with")
