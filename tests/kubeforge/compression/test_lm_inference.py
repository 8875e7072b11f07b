"""The one LM inference module on torch models: prefill/decode with the KV cache gives what a full forward and
transformers' own generate give, for left-padded batches too, and a directory opens as its kind says."""

import numpy as np
import pytest
import torch

from kubeforge.lm.inference import (DecodeState, LightTokenizer, TorchRunner, complete, greedy_generate, left_pad,
                                    open_runner, positions_from_mask)
from tests.kubeforge.compression.lm_fixtures import corpus_tokenizer, offline_one_thread, random_llama  # noqa: F401

pytestmark = pytest.mark.usefixtures("offline_one_thread")


@pytest.fixture(scope="module")
def model():
    return random_llama(hidden=32, layers=2)


def test_positions_count_only_real_tokens_so_left_padding_does_not_shift_them():
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    ids, padded = left_pad([[5, 6], [7, 8, 9]], pad_id=0)
    assert ids.tolist() == [[0, 5, 6], [7, 8, 9]] and padded.tolist() == [[0, 1, 1], [1, 1, 1]]


def test_prefill_then_decode_equals_one_full_forward(model):
    runner = TorchRunner(model)
    ids = np.random.RandomState(0).randint(3, 300, (2, 6))
    logits, state = runner.prefill(ids[:, :5])
    step, state = runner.decode(ids[:, 5], state)
    with torch.no_grad():
        full = model(torch.tensor(ids)).logits.numpy()
    assert np.abs(logits - full[:, :5]).max() < 1e-5 and np.abs(step - full[:, 5]).max() < 1e-5
    assert isinstance(state, DecodeState) and state.attention_mask.shape == (2, 6)
    assert state.next_positions.tolist() == [6, 6]


def test_greedy_tokens_equal_transformers_generate_alone_and_in_a_padded_batch(model):
    runner = TorchRunner(model)
    prompts = [[5, 9, 17, 33, 60], [7, 8], [100, 101, 102]]
    batched = greedy_generate(runner, prompts, 8, pad_id=0).tokens
    for prompt, tokens in zip(prompts, batched):
        alone = greedy_generate(runner, [prompt], 8, pad_id=0).tokens[0]
        with torch.no_grad():
            reference = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert alone == reference[0, len(prompt):].tolist() == tokens


def test_generation_stops_at_eos_and_times_only_decode_steps(model):
    runner = TorchRunner(model)
    free = greedy_generate(runner, [[5, 6, 7]], 6, pad_id=0, stop_at_eos=False)
    assert len(free.tokens[0]) == 6 and free.decode_steps == 5 and free.decode_tokens_per_second > 0
    eos = free.tokens[0][2]
    stopped = greedy_generate(runner, [[5, 6, 7]], 6, pad_id=0, eos_id=eos)
    assert stopped.tokens[0] == free.tokens[0][:free.tokens[0].index(eos)] and stopped.rows_at_eos == [True]


def test_prompts_that_do_not_fit_are_refused_with_the_numbers(model):
    runner = TorchRunner(model)
    with pytest.raises(ValueError, match="60 prompt tokens \\+ 8 new tokens exceed the model's context of 64"):
        greedy_generate(runner, [[5] * 60], 8, pad_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        greedy_generate(runner, [[]], 4, pad_id=0)


def test_a_saved_directory_reopens_with_the_same_completions_and_a_torch_free_tokenizer(model, tmp_path):
    tokenizer = corpus_tokenizer()
    saved = random_llama(hidden=32, layers=2, vocab=len(tokenizer))
    saved.config.eos_token_id, saved.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    saved.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    light = LightTokenizer(tmp_path / "plain")
    for text in ("def mean(data):", "Return the <|eos|> value", " spaces  kept"):
        assert light.encode(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert light.eos_token_id == tokenizer.eos_token_id and light.pad_token_id == tokenizer.pad_token_id
    runner = open_runner(tmp_path / "plain")
    assert runner.kind == "torch"
    prompts = ["def mean(data):", "Return"]
    assert complete(runner, light, prompts, 6) == complete(TorchRunner(saved), light, prompts, 6)
