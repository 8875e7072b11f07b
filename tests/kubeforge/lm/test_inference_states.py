"""Decode states of the one inference module join and split between steps (what the LM service's continuous batching
does over a runner): a row decodes the same alone, joined to rows of other lengths, after its batch-mates left, and
repeated; for the torch runner's DynamicCache and the ONNX runner's past tensors alike."""

import numpy as np
import pytest
import torch

from kubeforge.lm.inference import DecodeState, OnnxRunner, TorchRunner, concat_states, onnx_session, select_rows
from tests.kubeforge.compression.lm_fixtures import offline_one_thread, random_llama  # noqa: F401

pytestmark = pytest.mark.usefixtures("offline_one_thread")
PROMPTS = [[5, 9, 17, 33, 60, 61], [7, 8], [100, 101, 102]]
STEPS = 6


@pytest.fixture(scope="module")
def model():
    with torch.no_grad():  # larger weights than the default init, so greedy tokens vary from step to step
        llama = random_llama(hidden=32, layers=2)
        for parameter in llama.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3)
    return llama


@pytest.fixture(scope="module")
def onnx_runner(model):
    from kubeforge.compression.lm_onnx import export_lm_onnx

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return OnnxRunner(onnx_session(export_lm_onnx(model)), 64)
    finally:
        torch.set_num_threads(threads)


def alone(runner, prompt: list[int], steps: int) -> list[int]:
    logits, state = runner.prefill(np.array([prompt]))
    tokens = [int(logits[0, -1].argmax())]
    for _ in range(steps - 1):
        logits, state = runner.decode(np.array(tokens[-1:]), state)
        tokens.append(int(logits[0].argmax()))
    return tokens


def joined_and_split(runner) -> list[list[int]]:
    """Row 0 alone for two steps, rows 1 and 2 (prefilled together, left-padded) join it, row 0 leaves after four,
    row 2 is repeated: every row's tokens, in the order the rows were prompted."""
    tokens: list[list[int]] = [[], [], []]

    def step(state: DecodeState, rows: list[int]) -> DecodeState:
        logits, state = runner.decode(np.array([tokens[row][-1] for row in rows]), state)
        for row, logit in zip(rows, logits, strict=True):
            tokens[row].append(int(logit.argmax()))
        return state

    logits, state = runner.prefill(np.array([PROMPTS[0]]))
    tokens[0].append(int(logits[0, -1].argmax()))
    rows = [0]
    state = step(state, rows)
    ids = np.array([[0] + PROMPTS[1], PROMPTS[2]])
    logits, newcomers = runner.prefill(ids, np.array([[0, 1, 1], [1, 1, 1]]), last_only=True)
    assert logits.shape[1] == 1
    for row, logit in zip((1, 2), logits[:, -1], strict=True):
        tokens[row].append(int(logit.argmax()))
    state, rows = concat_states([state, newcomers]), [0, 1, 2]
    assert state.attention_mask.tolist()[1][:5] == [0, 0, 0, 0, 0]  # the newcomers are padded to the older row
    state = step(step(state, rows), rows)
    state, rows = select_rows(state, [1, 2]), [1, 2]
    width = state.attention_mask.shape[1]
    assert width == len(PROMPTS[2]) + len(tokens[2]) - 1  # the columns only row 0 needed are gone
    state = step(state, rows)
    state = select_rows(state, [1, 1])  # the same row twice (n choices of one prompt)
    logits, _ = runner.decode(np.array([tokens[1][-1]] * 2), state)
    assert logits[0].argmax() == logits[1].argmax()
    return tokens


@pytest.mark.parametrize("kind", ["torch", pytest.param("onnx", marks=pytest.mark.slow)])
def test_rows_decode_as_alone_when_joined_split_and_repeated(kind, model, request):
    runner = TorchRunner(model) if kind == "torch" else request.getfixturevalue("onnx_runner")
    tokens = joined_and_split(runner)
    for prompt, produced in zip(PROMPTS, tokens, strict=True):
        assert produced == alone(runner, prompt, len(produced))
    assert len(tokens[0]) == 4 and len(tokens[1]) == 4


def test_states_that_cannot_be_lined_up_are_refused(model):
    with pytest.raises(ValueError, match="nothing"):
        concat_states([])
    _, state = TorchRunner(model).prefill(np.array([[5, 6]]))
    with pytest.raises(ValueError, match="at least one row"):
        select_rows(state, [])
