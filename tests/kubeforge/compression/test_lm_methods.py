"""LM compression methods one by one: the checks that refuse a bad request before any work, torchao directories that
reload to the same numbers without a pickle, structured layer pruning, and distillation with a frozen teacher."""

import json

import numpy as np
import pytest
import torch

from kubeforge.compression import CompressionError
from kubeforge.compression.lm_candidates import validate_chains
from kubeforge.compression.lm_distill import student_config, train_student
from kubeforge.compression.lm_prune import drop_layers, layer_importance, layers_to_drop, prune_lm
from kubeforge.compression.lm_quantize import (_pack_int4, _unpack_int4, load_torchao_model, quantize_lm,
                                               save_torchao_dir, torch_parameters)
from kubeforge.lm.inference import TorchRunner, greedy_generate, open_runner
from kubeforge.lm.sequences import TokenBatches
from tests.kubeforge.compression.lm_fixtures import (corpus_tokenizer, lm_settings, offline_one_thread,  # noqa: F401
                                                     random_llama)

pytestmark = pytest.mark.usefixtures("offline_one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return corpus_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return random_llama(hidden=64, layers=4, vocab=len(tokenizer))


def rows(count=8, width=16, seed=0):
    ids = torch.randint(3, 300, (count, width), generator=torch.Generator().manual_seed(seed))
    return TokenBatches(ids, torch.ones_like(ids), ids.clone())


@pytest.mark.parametrize("chains, settings, message", [
    (["int8-weight+distill"], {}, "distill cannot follow int8-weight"),
    (["onnx+int8-weight"], {}, "int8-weight cannot follow onnx"),
    (["prune-layers"], {"prune_layer_fraction": 0.9}, "removes 4 and leaves none"),
    (["distill"], {"student_layers": 6}, "student \\(6 layers, hidden 64\\) is larger than its teacher"),
    (["distill"], {"student_hidden_size": 128}, "larger than its teacher"),
    (["distill"], {"student_layers": 4}, "has the teacher's size"),
    (["int4-weight"], {"int4_group_size": 48}, "does not divide the input width 64 .*Int4WeightOnlyConfig is refused "
                                               "on CPU: its packed int4 formats need CUDA"),
    (["prune-layers", "prune-layers"], {}, "requested twice"),
])
def test_bad_requests_are_refused_before_any_work(model, chains, settings, message):
    with pytest.raises(CompressionError, match=message):
        validate_chains(chains, model.config, lm_settings(**settings))


def test_unknown_methods_fail_in_the_config_and_in_the_step(model):
    from kubeforge.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="unknown LM compression method 'gptq'"):
        RunConfig.from_flat({"lm_compress_methods": ["int8-weight+gptq"]})
    with pytest.raises(CompressionError, match="unknown LM compression method 'gptq' in 'gptq'; known: int8-weight"):
        validate_chains(["gptq"], model.config, lm_settings().model_construct(lm_compress_methods=["gptq"]))


def test_checks_run_on_the_shape_each_step_produces(model):
    # the teacher's 64-wide layers take group 64; a 48-wide student does not, which is found before distilling
    validate_chains(["int4-weight", "distill+int4-weight"], model.config, lm_settings(int4_group_size=64))
    with pytest.raises(CompressionError, match="int4_group_size 64 does not divide the input width 48"):
        validate_chains(["distill+int4-weight"], model.config, lm_settings(int4_group_size=64, student_hidden_size=48))


def test_an_architecture_the_onnx_export_cannot_handle_is_named():
    from transformers import GPT2Config

    with pytest.raises(CompressionError, match="cannot handle GPT2LMHeadModel \\(model_type 'gpt2'\\); it supports "
                                               "LlamaForCausalLM"):
        validate_chains(["int8-weight", "onnx-int8"], GPT2Config(n_embd=32, n_layer=2, n_head=4), lm_settings())


def test_int4_values_pack_two_per_byte_and_back():
    values = torch.randint(-8, 8, (5, 7), dtype=torch.int8)
    packed = _pack_int4(values)
    assert packed.dtype == torch.uint8 and packed.numel() == 18
    assert torch.equal(_unpack_int4(packed, [5, 7]), values)


@pytest.mark.parametrize("method, smaller", [("int8-weight", 3.0), ("int4-weight", 4.0)])
def test_torchao_directories_reload_to_the_same_logits_and_hold_no_pickle(model, tokenizer, tmp_path, method,
                                                                          smaller):
    quantized, notes = quantize_lm(model, method, 16)
    directory = tmp_path / method
    weights = save_torchao_dir(quantized, tokenizer, directory, method, 16)
    files = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "torchao.json", "tokenizer.json"} <= files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".pkl"))]
    record = json.loads((directory / "torchao.json").read_text())
    assert record["method"] == method and record["embedding"] == "model.embed_tokens.weight"
    assert "lm_head.weight" in record["quantized_weights"]
    reloaded = load_torchao_model(directory)
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after, exact = quantized(ids).logits, reloaded(ids).logits, model(ids).logits
    assert torch.equal(before, after)
    assert 0 < (before - exact).abs().max() < (0.05 if method == "int8-weight" else 0.5)
    fp32_bytes = sum(p.numel() for p in model.parameters()) * 4
    assert fp32_bytes / weights.stat().st_size > smaller  # the tied table is stored once, int4 two per byte
    assert torch_parameters(reloaded) == torch_parameters(model) == sum(p.numel() for p in model.parameters())
    assert open_runner(directory).kind == "torch"
    if method == "int4-weight":
        assert any("Int4WeightOnlyConfig is refused" in note for note in notes)


def test_layer_pruning_drops_the_least_important_layers_and_keeps_a_working_cache(model, tokenizer, tmp_path):
    assert [layers_to_drop(4, f) for f in (0.1, 0.25, 0.5, 0.6)] == [1, 1, 2, 2]
    calibration = rows()
    importance = layer_importance(model, calibration)
    assert len(importance) == 4 and len(model.model.layers) == 4  # measured by skipping, then put back
    pruned, notes = prune_lm(model, calibration, rows(seed=1), fraction=0.25, heal_steps=2, seed=0)
    dropped = int(np.argmin(importance))
    assert pruned.config.num_hidden_layers == 3 and f"dropped layer(s) [{dropped}] of 4" in notes[0]
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    assert len(model.model.layers) == 4  # the teacher is untouched
    pruned.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")
    reopened = open_runner(tmp_path / "pruned")
    tokens = greedy_generate(reopened, [[5, 6, 7, 8]], 6, pad_id=0).tokens[0]
    with torch.no_grad():
        reference = pruned.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert tokens == reference[0, 4:].tolist()
    kept = drop_layers(model, [0, 3])
    assert torch.equal(kept.model.layers[1].mlp.down_proj.weight, model.model.layers[3].mlp.down_proj.weight)


def test_distillation_trains_a_smaller_student_against_a_frozen_teacher(model):
    config = student_config(model.config, 0, 32)
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim, config.intermediate_size) == (2, 32, 8, 64)
    from kubeforge.compression.lm_distill import build_student

    same_width, start = build_student(model, student_config(model.config, 2, 0), seed=0)
    assert "layers [0, 3]" in start
    copied = same_width.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(copied, model.model.layers[3].self_attn.q_proj.weight)
    teacher_state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = rows(count=16)
    losses = train_student(same_width, batches, steps=12, seed=0, teacher=model, temperature=2.0, alpha=0.5)
    assert losses[-1] < losses[0]
    assert not model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in teacher_state.items())
    assert all(p.requires_grad for p in model.parameters())  # frozen by no_grad, not by flipping its flags
    with pytest.raises(ValueError, match="a KL term needs a teacher"):
        train_student(same_width, batches, steps=1, seed=0, alpha=0.5)
    assert isinstance(TorchRunner(same_width).prefill(np.array([[5, 6]]))[0], np.ndarray)
