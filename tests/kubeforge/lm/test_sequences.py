import copy

import pytest
import torch

from kubeforge.config import ConfigError
from kubeforge.data import DataError
from kubeforge.lm.corpus import Document, Example
from kubeforge.lm.sequences import (IGNORE_INDEX, check_max_length, encode_examples, pack_documents,
                                    prompts_for_evaluation)
from kubeforge.lm.tokenizer import CHAT_TEMPLATE, EOS, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from pydoc_data.topics import topics

    return train_tokenizer([topics[name][:2000] for name in sorted(topics)[:10]], 400)


def learnt_text(tokenizer, batches, row):
    keep = batches.labels[row] != IGNORE_INDEX
    assert torch.equal(batches.labels[row][keep], batches.input_ids[row][keep])  # labels are the ids, unshifted
    return tokenizer.decode(batches.input_ids[row][keep])


def ignored_text(tokenizer, batches, row):
    keep = (batches.labels[row] == IGNORE_INDEX) & (batches.attention_mask[row] == 1)
    return tokenizer.decode(batches.input_ids[row][keep])


PAIR = Example("p", "prompt_completion", prompt='def add(a, b):\n    """', completion="Return the sum of a and b.")
TEXT = Example("t", "text", text="The assert statement is a convenient way to insert debugging assertions.")
CHAT = Example("c", "chat", messages=(
    {"role": "system", "content": "You answer in one line."}, {"role": "user", "content": "What is a tuple?"},
    {"role": "assistant", "content": "An immutable sequence."}, {"role": "user", "content": "And a list?"},
    {"role": "assistant", "content": "A mutable one."}))


def test_prompt_completion_learns_exactly_the_completion_and_eos(tokenizer):
    batches = encode_examples([PAIR, TEXT], tokenizer, max_length=128)
    assert learnt_text(tokenizer, batches, 0) == PAIR.completion + EOS
    assert ignored_text(tokenizer, batches, 0) == PAIR.prompt
    prompt_ids = tokenizer(PAIR.prompt, add_special_tokens=False)["input_ids"]  # as greedy_completions encodes it
    assert batches.input_ids[0, :len(prompt_ids)].tolist() == prompt_ids
    assert learnt_text(tokenizer, batches, 1) == TEXT.text + EOS
    assert ignored_text(tokenizer, batches, 1) == ""
    assert batches.stats["kinds"] == {"prompt_completion": 1, "text": 1}
    assert batches.stats["loss_tokens"] == int((batches.labels != IGNORE_INDEX).sum())


def test_chat_learns_only_the_assistant_turns(tokenizer):
    batches = encode_examples([CHAT], tokenizer, max_length=256)
    assert learnt_text(tokenizer, batches, 0) == "An immutable sequence." + EOS + "A mutable one." + EOS
    full = tokenizer.apply_chat_template(list(CHAT.messages), tokenize=False)
    assert tokenizer.decode(batches.input_ids[0]) == full


def test_chat_without_generation_markers_falls_back_to_prefix_rendering(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    marked = encode_examples([CHAT], tokenizer, max_length=256)
    fallback = encode_examples([CHAT], plain, max_length=256)
    assert torch.equal(marked.input_ids, fallback.input_ids)
    # The diff of two renders also takes the newline the template writes after each turn
    assert learnt_text(plain, fallback, 0) == "An immutable sequence." + EOS + "\nA mutable one." + EOS + "\n"
    assert "user" not in learnt_text(plain, fallback, 0) and "<|assistant|>" not in learnt_text(plain, fallback, 0)


def test_chat_needs_a_chat_template(tokenizer):
    bare = copy.deepcopy(tokenizer)
    bare.chat_template = None
    with pytest.raises(DataError, match="chat examples but the tokenizer has no chat template"):
        encode_examples([PAIR, CHAT], bare, max_length=64)
    assert len(encode_examples([PAIR], bare, max_length=64)) == 1  # other kinds do not need one


def test_right_padding_is_masked(tokenizer):
    short = Example("s", "prompt_completion", prompt="Q:", completion=" yes")
    batches = encode_examples([PAIR, short], tokenizer, max_length=128)
    length = int(batches.attention_mask[1].sum())
    assert batches.input_ids.shape[1] == int(batches.attention_mask[0].sum()) > length
    assert (batches.input_ids[1, length:] == tokenizer.pad_token_id).all()
    assert (batches.labels[1, length:] == IGNORE_INDEX).all() and (batches.attention_mask[1, length:] == 0).all()
    assert batches.input_ids.dtype == batches.labels.dtype == batches.attention_mask.dtype == torch.long


def test_truncation_is_counted_and_examples_without_loss_are_reported(tokenizer):
    prompt_length = len(tokenizer(PAIR.prompt, add_special_tokens=False)["input_ids"])
    cut = encode_examples([PAIR], tokenizer, max_length=prompt_length + 2)
    assert cut.input_ids.shape == (1, prompt_length + 2)
    assert cut.stats["truncated"] == 1 and cut.stats["loss_tokens"] == 2
    whole = len(tokenizer(PAIR.completion, add_special_tokens=False)["input_ids"]) + 1 + prompt_length
    assert cut.stats["truncated_tokens"] == whole - (prompt_length + 2)

    short = Example("s", "prompt_completion", prompt="Q:", completion=" yes")
    mixed = encode_examples([PAIR, short], tokenizer, max_length=prompt_length)
    assert mixed.stats["examples"] == 2 and mixed.stats["sequences"] == 1
    assert mixed.stats["examples_without_loss"] == 1 and mixed.stats["truncated"] == 1
    assert learnt_text(tokenizer, mixed, 0) == short.completion + EOS
    with pytest.raises(DataError, match=r"none of the 1 examples keeps a learnt token within max_length"):
        encode_examples([PAIR], tokenizer, max_length=prompt_length)
    with pytest.raises(DataError, match="no fine-tuning examples"):
        encode_examples([], tokenizer, max_length=16)


def test_packing_joins_documents_with_eos_and_drops_the_tail(tokenizer):
    documents = [Document(str(i), f"Document number {i} talks about for loops and while loops.") for i in range(12)]
    batches = pack_documents(documents, tokenizer, max_length=32)
    stream = [tokenizer(d.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
              for d in documents]
    total = sum(map(len, stream))
    assert batches.input_ids.shape == (total // 32, 32)
    assert batches.stats["truncated_tokens"] == total % 32 and batches.stats["tokens"] == total - total % 32
    flat = batches.input_ids.flatten().tolist()
    assert flat == [token for ids in stream for token in ids][:len(flat)]
    boundaries = [sum(map(len, stream[:i + 1])) - 1 for i in range(len(stream))]
    assert all(flat[b] == tokenizer.eos_token_id for b in boundaries if b < len(flat))
    assert flat.count(tokenizer.eos_token_id) == sum(b < len(flat) for b in boundaries)
    assert tokenizer.decode(flat).startswith(documents[0].text + EOS + documents[1].text + EOS)
    assert torch.equal(batches.labels, batches.input_ids) and bool(batches.attention_mask.all())


def test_packing_a_corpus_too_short_says_how_short(tokenizer):
    tokens = len(tokenizer("tiny", add_special_tokens=False)["input_ids"]) + 1
    with pytest.raises(DataError, match=rf"the corpus has {tokens} tokens \(1 documents, with EOS separators\); "
                                        r"one sequence needs max_length 64"):
        pack_documents([Document("a", "tiny")], tokenizer, max_length=64)


def test_max_length_must_fit_the_context():
    check_max_length(64, 64)
    with pytest.raises(ConfigError, match=r"max_length 65 exceeds the model's context \(64 tokens\)"):
        check_max_length(65, 64)


def test_prompts_for_evaluation(tokenizer):
    pairs = prompts_for_evaluation([PAIR, CHAT, TEXT, PAIR], 3, tokenizer)
    assert pairs == prompts_for_evaluation([PAIR, CHAT, TEXT, PAIR], 3, tokenizer)
    assert pairs[0] == (PAIR.prompt, PAIR.completion)
    chat_prompt, reference = pairs[1]
    assert reference == "A mutable one."
    assert chat_prompt == tokenizer.apply_chat_template(list(CHAT.messages[:4]), tokenize=False,
                                                        add_generation_prompt=True)
    assert chat_prompt.endswith("And a list?" + EOS + "\n<|assistant|>\n") and "A mutable" not in chat_prompt
    prompt_ids = tokenizer(chat_prompt, add_special_tokens=False)["input_ids"]
    trained = encode_examples([CHAT], tokenizer, max_length=256)
    assert trained.input_ids[0, :len(prompt_ids)].tolist() == prompt_ids  # generation starts where training learnt
    assert trained.labels[0, len(prompt_ids) - 1] == IGNORE_INDEX != trained.labels[0, len(prompt_ids)]
    assert "".join(pairs[2]) == TEXT.text and pairs[2][0] and pairs[2][1]
    assert len(pairs) == 3 and prompts_for_evaluation([PAIR], 0) == []
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        prompts_for_evaluation([CHAT], 1)
