import math

import pytest
import torch

from kubeforge.data import DataError
from kubeforge.lm.evaluation import evaluate_causal_lm, greedy_completions
from kubeforge.lm.tokenizer import train_tokenizer
from tests.kubeforge.lm.rank_worker import ragged_sequences, tiny_config, tiny_model, token_batches


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.", "x = [1, 2, 3]"] * 20
    return train_tokenizer(texts, 300)


@pytest.fixture
def chat_model(tokenizer):
    import transformers

    torch.manual_seed(0)
    config = tiny_config()
    config.vocab_size = len(tokenizer)
    return transformers.LlamaForCausalLM(config)


def test_scores_match_a_hand_computation():
    model = tiny_model()
    data = ragged_sequences(5, length=10, seed=3)
    scores = evaluate_causal_lm(model, data, batch_size=2)

    total, count, correct = 0.0, 0, 0
    with torch.no_grad():
        for row in range(5):
            logits = model(input_ids=data.input_ids[row:row + 1]).logits[0].double()
            for position in range(9):
                target = int(data.labels[row, position + 1])
                if target == -100:
                    continue
                total -= float(torch.log_softmax(logits[position], dim=-1)[target])
                count += 1
                correct += int(int(logits[position].argmax()) == target)
    assert scores["tokens"] == count == int((data.labels[:, 1:] != -100).sum())
    assert scores["loss"] == pytest.approx(total / count, rel=1e-5)
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]), rel=1e-12)
    assert scores["next_token_accuracy"] == pytest.approx(correct / count)
    assert scores["tokens_per_second"] > 0


def test_evaluation_keeps_the_training_mode_and_refuses_data_without_loss_tokens():
    model = tiny_model()
    model.train()
    evaluate_causal_lm(model, ragged_sequences(3))
    assert model.training
    ids = torch.full((2, 6), 5)
    with pytest.raises(DataError, match="no loss tokens"):
        evaluate_causal_lm(model, token_batches(ids, torch.ones_like(ids), torch.full_like(ids, -100)))


def test_batched_greedy_completions_equal_one_at_a_time(chat_model, tokenizer):
    prompts = ["def add(a, b):", "The quick", "x = [1, 2"]
    batched = greedy_completions(chat_model, tokenizer, prompts, max_new_tokens=6)
    alone = [greedy_completions(chat_model, tokenizer, [prompt], max_new_tokens=6)[0] for prompt in prompts]
    assert batched == alone
    assert greedy_completions(chat_model, tokenizer, prompts, max_new_tokens=6) == batched
    assert all(text and not text.startswith(prompt) for text, prompt in zip(batched, prompts))
    assert greedy_completions(chat_model, tokenizer, [], max_new_tokens=6) == []


def _successor_model(tokenizer, successor: dict[int, int], default: int):
    """A Llama without decoder layers whose next token is a fixed function of the current one (one-hot embeddings,
    a lm_head that is the function's matrix), so the expected greedy text is known exactly."""
    import transformers

    vocab = len(tokenizer)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=4, num_hidden_layers=0,
                                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        model.lm_head.weight.zero_()
        for token in range(vocab):
            model.lm_head.weight[successor.get(token, default), token] = 1.0
    return model


def test_completions_hold_only_the_new_text_and_stop_at_eos(tokenizer):
    x, y, z = (tokenizer.convert_tokens_to_ids(letter) for letter in "xyz")
    eos = tokenizer.eos_token_id
    model = _successor_model(tokenizer, {x: y, y: eos, eos: z, z: x}, default=x)  # ... -> x -> y -> EOS -> z -> x
    # a row that reaches EOS first waits (padded) while the other finishes; nothing after EOS is returned
    assert greedy_completions(model, tokenizer, ["The quick", "y"], max_new_tokens=6) == ["xy", ""]
    assert greedy_completions(model, tokenizer, ["The quick"], max_new_tokens=1) == ["x"]
