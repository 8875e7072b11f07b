import json

import pytest
import torch

from kubeforge.config import ConfigError, LMRuntimeConfig, LMTrainConfig, LoRAConfig
from kubeforge.lm.lora import linear_layer_names, prepare_for_finetuning, save_finetuned
from kubeforge.lm.tokenizer import train_tokenizer
from kubeforge.lm.training import train_causal_lm, trainable_parameters
from kubeforge.models import ModelError
from tests.kubeforge.lm.rank_worker import counting_sequences, tiny_config, tiny_model

HIDDEN = 32
KV_WIDTH = 2 * (32 // 4)  # key/value heads x head size: v_proj maps 32 -> 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["def add(a, b):\n    return a + b\n", "print('hello world')"] * 10, 300)


def test_lora_trains_r_times_in_plus_out_per_target():
    base_total = sum(p.numel() for p in tiny_model().parameters())
    model = prepare_for_finetuning(tiny_model(), LoRAConfig(lora_rank=8, lora_target_modules=["q_proj", "v_proj"]),
                                   "cpu")
    per_layer = 8 * (HIDDEN + HIDDEN) + 8 * (HIDDEN + KV_WIDTH)
    assert trainable_parameters(model) == (tiny_config().num_hidden_layers * per_layer,
                                           base_total + tiny_config().num_hidden_layers * per_layer)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert all("lora_A" in name or "lora_B" in name for name in trainable) and len(trainable) == 8


def test_unknown_target_modules_list_the_linear_layers_the_model_has():
    assert linear_layer_names(tiny_model()) == ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj",
                                                "up_proj", "v_proj"]
    with pytest.raises(ConfigError) as raised:
        prepare_for_finetuning(tiny_model(), LoRAConfig(lora_target_modules=["q_proj", "query_key_value"]), "cpu")
    message = str(raised.value)
    assert "['query_key_value']" in message and "k_proj, lm_head, o_proj, q_proj, up_proj, v_proj" in message


def test_full_finetuning_trains_every_weight():
    model = tiny_model()
    model.model.embed_tokens.weight.requires_grad_(False)
    model = prepare_for_finetuning(model, LoRAConfig(finetune_method="full"), "cpu")
    trainable, total = trainable_parameters(model)
    assert trainable == total == sum(p.numel() for p in tiny_model().parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_qlora_without_cuda_says_what_to_use_instead():
    with pytest.raises(ModelError) as raised:
        prepare_for_finetuning(tiny_model(), LoRAConfig(finetune_method="qlora"), "cpu")
    assert str(raised.value) == ("QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); use finetune_method=lora "
                                 "on CPU")


def test_lora_training_moves_only_the_adapter(tmp_path):
    base = {name: p.clone() for name, p in tiny_model().named_parameters()}
    model = prepare_for_finetuning(tiny_model(), LoRAConfig(lora_rank=4, lora_target_modules=["q_proj", "v_proj"]), "cpu")
    config = LMTrainConfig(steps=6, learning_rate=1e-2, warmup_steps=1, batch_size=8)
    runtime = LMRuntimeConfig(lm_device="cpu", eval_interval=3, checkpoint_interval=3)
    result = train_causal_lm(model, counting_sequences(32), counting_sequences(8, seed=1), config, runtime, tmp_path,
                             progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    for name, value in model.get_base_model().state_dict().items():
        if "lora_" not in name:
            plain = name.replace(".base_layer", "")
            assert torch.equal(value, base[plain]), name
    assert any(p.abs().sum() > 0 for name, p in model.named_parameters() if "lora_B" in name)
    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    params = [name for group in state["optimizer"]["param_groups"] for name in group["params"]]
    assert len(params) == 8 and all("lora_" in name for name in params)  # 2 layers x 2 targets x (A, B); the frozen base is not checkpointed


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_the_merged_model_gives_the_adapter_on_base_logits(tmp_path, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_model()
    base.save_pretrained(tmp_path / "base")
    model = prepare_for_finetuning(base, LoRAConfig(lora_rank=4, lora_dropout=0.0), "cpu")
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: lora_B starts at zero, which would merge to nothing
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    ids = torch.randint(3, 300, (2, 12))
    before = _logits(model, ids)

    written = save_finetuned(model, tokenizer, tmp_path / "out", LoRAConfig(lora_rank=4))
    adapter, merged = tmp_path / "out" / "adapter", tmp_path / "out" / "merged"
    assert written == {"adapter": str(adapter), "merged": str(merged),
                       "adapter_bytes": (adapter / "adapter_model.safetensors").stat().st_size}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in merged.iterdir()}
    assert not (merged / "adapter_config.json").exists()
    assert isinstance(model, PeftModel) and torch.equal(_logits(model, ids), before)  # the caller's model kept

    plain = AutoModelForCausalLM.from_pretrained(merged)
    on_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), adapter)
    assert not torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), ids), before)
    assert torch.allclose(_logits(plain, ids), _logits(on_base, ids), atol=1e-5)
    assert torch.allclose(_logits(plain, ids), before, atol=1e-5)
    assert AutoTokenizer.from_pretrained(merged).encode("print") == tokenizer.encode("print")


def test_what_each_method_writes(tmp_path, tokenizer):
    adapter_only = save_finetuned(prepare_for_finetuning(tiny_model(), LoRAConfig(), "cpu"), tokenizer,
                                  tmp_path / "lora", LoRAConfig(merge_adapter=False))
    assert set(adapter_only) == {"adapter", "adapter_bytes"} and not (tmp_path / "lora" / "merged").exists()
    full = save_finetuned(prepare_for_finetuning(tiny_model(), LoRAConfig(finetune_method="full"), "cpu"),
                          tokenizer, tmp_path / "full", LoRAConfig(finetune_method="full"))
    assert full == {"merged": str(tmp_path / "full" / "merged")} and not (tmp_path / "full" / "adapter").exists()
    with pytest.raises(ModelError, match="has no adapter"):
        save_finetuned(tiny_model(), tokenizer, tmp_path / "bad", LoRAConfig())
