"""onnx / onnx-int8 for causal LMs: one graph with the KV cache in and out, decoding incrementally like torch, the
tied table stored once, and an ONNX directory served without torch."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kubeforge.compression.lm_candidates import LMCandidate, save_lm_candidate
from kubeforge.compression.lm_onnx import export_lm_onnx, onnx_parameters, quantize_lm_onnx
from kubeforge.lm.inference import (LightTokenizer, OnnxRunner, TorchRunner, complete, greedy_generate, onnx_session,
                                    past_names)
from tests.kubeforge.compression.lm_fixtures import corpus_tokenizer, offline_one_thread, random_llama  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline_one_thread")]


@pytest.fixture(scope="module")
def exported():
    tokenizer = corpus_tokenizer()
    model = random_llama(hidden=64, layers=2, vocab=len(tokenizer))
    model.config.eos_token_id, model.config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    fp32 = export_lm_onnx(model)
    int8, how = quantize_lm_onnx(fp32)
    return model, tokenizer, fp32, int8, how


def test_the_graph_takes_and_returns_the_cache_of_every_layer(exported):
    _, _, fp32, _, _ = exported
    graph = onnx.load_from_string(fp32).graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    assert inputs == ["input_ids", "attention_mask", "position_ids", *past_names(2)]
    assert outputs == ["logits", *past_names(2, "present")]


def test_padded_prefill_and_decode_match_torch(exported):
    model, _, fp32, int8, _ = exported
    torch_runner, onnx_runner = TorchRunner(model), OnnxRunner(onnx_session(fp32), 64)
    quantized = OnnxRunner(onnx_session(int8), 64)
    ids = np.random.RandomState(1).randint(3, 300, (3, 7))
    mask = np.ones_like(ids)
    mask[0, :3] = mask[1, :1] = 0  # left padding
    reference, torch_state = torch_runner.prefill(ids, mask)
    logits, onnx_state = onnx_runner.prefill(ids, mask)
    assert np.abs(logits - reference)[mask == 1].max() < 1e-4
    step_reference, _ = torch_runner.decode(np.array([5, 6, 7]), torch_state)
    step, _ = onnx_runner.decode(np.array([5, 6, 7]), onnx_state)
    assert np.abs(step - step_reference).max() < 1e-4
    rough, _ = quantized.prefill(ids, mask)
    assert np.abs(rough - reference)[mask == 1].max() < 0.1  # int8 weights: close, not equal
    prompts = [[5, 9, 17, 33], [7, 8], [100, 101, 102]]
    assert greedy_generate(onnx_runner, prompts, 10, pad_id=0).tokens == \
        greedy_generate(torch_runner, prompts, 10, pad_id=0).tokens


def test_the_tied_embedding_is_stored_once_and_int8_is_much_smaller(exported):
    model, _, fp32, int8, how = exported
    fp32_bytes = sum(p.numel() for p in model.parameters()) * 4
    assert len(fp32) < 1.15 * fp32_bytes  # no transposed copy of the table, no exporter stack traces
    table_shape = (model.config.vocab_size, model.config.hidden_size)
    float_tables = [i.name for i in onnx.load_from_string(int8).graph.initializer
                    if tuple(i.dims) in (table_shape, table_shape[::-1]) and i.data_type == onnx.TensorProto.FLOAT]
    assert not float_tables and "one int8 table" in how
    assert len(fp32) / len(int8) > 2.5
    assert onnx_parameters(int8) == onnx_parameters(fp32) == sum(
        numpy_helper.to_array(i).size for i in onnx.load_from_string(fp32).graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 1)


def test_an_onnx_directory_serves_the_same_completions_without_importing_torch(exported, tmp_path):
    model, tokenizer, _, int8, _ = exported
    directory = save_lm_candidate(LMCandidate("onnx-int8", model.config, onnx=int8, precision="int8"), tokenizer,
                                  tmp_path / "onnx")
    assert {"model.onnx", "config.json", "tokenizer.json"} <= {p.name for p in directory.iterdir()}
    expected = complete(OnnxRunner(onnx_session(int8), 64), LightTokenizer(directory), ["def mean(data):"], 8)
    probe = textwrap.dedent(f"""
        import sys
        from kubeforge.lm.inference import LightTokenizer, complete, open_runner
        runner = open_runner({str(directory)!r})
        print("completion:", repr(complete(runner, LightTokenizer({str(directory)!r}), ["def mean(data):"], 8)[0]))
        print("kind:", runner.kind, "torch imported:", "torch" in sys.modules, "transformers" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kind: onnx torch imported: False False" in done.stdout
    assert f"completion: {expected[0]!r}" in done.stdout
