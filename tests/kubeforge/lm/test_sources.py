import fnmatch
import json
import pickle
import pickletools
import re
import uuid
from pathlib import Path

import pytest
import torch

from kubeforge.config.language import SCRATCH_PRESETS as PRESET_NAMES
from kubeforge.config.language import LMModelConfig
from kubeforge.lm.sources import (ALLOWED_PATTERNS, SCRATCH_PRESETS, ModelSource, check_checkpoint_files,
                                  fetch_fsspec, fetch_hf_snapshot, load_adapter_model, load_causal_lm,
                                  model_context_length, parse_hf_reference, parse_model_source, resolve_model_source)
from kubeforge.models import ModelError
from tests.kubeforge.lm.conftest import TEST_CONTEXT, TEST_VOCAB

PROMPT = "The for statement is used to iterate"


def logits_of(model, tokenizer, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


# --- references -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, expected", [
    ("scratch:tiny", ModelSource("scratch", "tiny")),
    ("hf://HuggingFaceTB/SmolLM2-135M", ModelSource("hf", "HuggingFaceTB/SmolLM2-135M")),
    ("hf://org/name@v1.0", ModelSource("hf", "org/name", "v1.0")),
    ("hf://org/name@refs/pr/3", ModelSource("hf", "org/name", "refs/pr/3")),
    ("s3://bucket/models/llama", ModelSource("fsspec", "s3://bucket/models/llama")),
    ("memory://models/x", ModelSource("fsspec", "memory://models/x")),
    ("pvc://models-claim/runs/7/model", ModelSource("pvc", "models-claim/runs/7/model")),
    ("/srv/models/llama", ModelSource("local", "/srv/models/llama")),
    ("./run:1/model", ModelSource("local", "./run:1/model")),
])
def test_references_parse_to_their_scheme(uri, expected):
    source = parse_model_source(uri)
    assert source == expected
    assert parse_model_source(source.uri) == source


@pytest.mark.parametrize("uri, problem", [
    ("", "empty"),
    ("hf://", "owner and a name"),
    ("hf://just-a-name", "owner and a name"),
    ("hf://org/", "owner and a name"),
    ("hf://org/na me", "not a valid Hugging Face name"),
    ("hf://org/a--b", "not a valid Hugging Face name"),
    ("hf://org/name@", "empty revision"),
    ("hf://org/name@bad rev", "revision"),
    ("hf://datasets/org/corpus", "dataset repository, not a model"),
    ("pvc://models-claim", "no path inside the claim"),
    ("pvc://models-claim/", "no path inside the claim"),
    ("pvc://Models_Claim/x", "not a PersistentVolumeClaim name"),
    ("pvc://claim/a/../../etc", "'..'"),
    ("scratch:huge", "unknown scratch preset 'huge'"),
    ("s3://", "no path after s3://"),
    ("nosuchproto://bucket/x", "unknown storage protocol 'nosuchproto'"),
    ("scrach:tiny", "unknown source form 'scrach'"),
])
def test_malformed_references_name_the_problem(uri, problem):
    with pytest.raises(ModelError, match=re.escape(problem)):
        parse_model_source(uri)


def test_hf_reference_knows_dataset_repositories():
    assert parse_hf_reference("hf://datasets/org/corpus@main") == ("dataset", "org/corpus", "main")
    assert parse_hf_reference("hf://org/model") == ("model", "org/model", None)


def test_allowed_patterns_fetch_weights_configs_and_tokenizers_never_pickles():
    def allowed(name):
        return any(fnmatch.fnmatch(name, pattern) for pattern in ALLOWED_PATTERNS)

    for name in ("model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
                 "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "tokenizer.model", "vocab.txt", "merges.txt", "chat_template.jinja"):
        assert allowed(name), name
    for name in ("pytorch_model.bin", "model.pt", "weights.pth", "state.pkl", "training_args.bin", "run.py"):
        assert not allowed(name), name


# --- scratch presets and builds ------------------------------------------------------------------------------

def test_presets_match_the_config_names_and_grow_in_size():
    from transformers import LlamaConfig, LlamaForCausalLM

    assert tuple(SCRATCH_PRESETS) == PRESET_NAMES
    counts = {}
    for name, sizes in SCRATCH_PRESETS.items():
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**sizes, vocab_size=2048, max_position_embeddings=256))
        counts[name] = sum(p.numel() for p in model.parameters())
    assert 500_000 <= counts["tiny"] <= 1_000_000, counts
    assert counts["small"] >= 4 * counts["tiny"], counts
    assert 10_000_000 <= counts["base"] <= 30_000_000, counts


def test_scratch_build_reloads_offline_with_identical_logits(make_scratch_model, tmp_path):
    from transformers import AutoConfig, LlamaForCausalLM

    directory = resolve_model_source("scratch:tiny", tmp_path / "built", corpus=["def f(x):\n    return x\n"] * 50
                                     + [PROMPT] * 20, model_config=LMModelConfig(tokenizer_vocab=300,
                                                                                 context_length=48), seed=3)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in directory.iterdir()}
    model, tokenizer = load_causal_lm(directory)
    assert model.config.vocab_size == len(tokenizer)
    assert model_context_length(model) == model_context_length(model.config) == 48
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(3)
    in_memory = LlamaForCausalLM(AutoConfig.from_pretrained(directory, local_files_only=True)).eval()
    assert torch.equal(logits_of(model, tokenizer), logits_of(in_memory, tokenizer))
    other_seed, _ = load_causal_lm(make_scratch_model(vocab=300, seed=4))
    assert not torch.equal(logits_of(model, tokenizer)[..., :200], logits_of(other_seed, tokenizer)[..., :200])


def test_scratch_without_corpus_is_refused(tmp_path):
    with pytest.raises(ModelError, match="needs a corpus"):
        resolve_model_source("scratch:tiny", tmp_path / "m")


# --- local, pvc, fsspec -----------------------------------------------------------------------------------------

def test_local_directory_is_used_in_place(tiny_lm_dir, tmp_path):
    assert resolve_model_source(str(tiny_lm_dir), tmp_path / "unused") == tiny_lm_dir
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ModelError, match="no such directory"):
        resolve_model_source(str(tmp_path / "absent"), tmp_path / "unused")


def test_pvc_source_is_the_mounted_claim_path(tiny_lm_dir, copy_model, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBEFORGE_PVC_ROOT", str(tmp_path / "pvc"))
    (tmp_path / "pvc" / "models").mkdir(parents=True)
    mounted = copy_model(tiny_lm_dir, "pvc/models/run-7")
    assert resolve_model_source("pvc://models/run-7", tmp_path / "unused") == mounted
    with pytest.raises(ModelError, match=f"no such directory .*{tmp_path / 'pvc' / 'models' / 'gone'}"):
        resolve_model_source("pvc://models/gone", tmp_path / "unused")


@pytest.mark.parametrize("protocol", ["memory", "file"])
def test_fsspec_copies_only_allowed_files(protocol, tiny_lm_dir, tmp_path):
    import fsspec

    root = f"memory://models-{uuid.uuid4().hex}" if protocol == "memory" else f"file://{tmp_path / 'remote'}"
    fs, base = fsspec.core.url_to_fs(root)
    fs.makedirs(f"{base}/extra", exist_ok=True)
    for path in tiny_lm_dir.iterdir():
        fs.pipe_file(f"{base}/{path.name}", path.read_bytes())
    fs.pipe_file(f"{base}/pytorch_model.bin", b"not fetched")
    fs.pipe_file(f"{base}/extra/optimizer.pt", b"not fetched")
    try:
        local = resolve_model_source(root, tmp_path / "fetched")
    finally:
        if protocol == "memory":
            fs.rm(base, recursive=True)
    assert local == tmp_path / "fetched"
    assert sorted(p.name for p in local.rglob("*")) == sorted(p.name for p in tiny_lm_dir.iterdir())
    model, tokenizer = load_causal_lm(local)
    reference, _ = load_causal_lm(tiny_lm_dir)
    assert torch.equal(logits_of(model, tokenizer), logits_of(reference, tokenizer))


def test_fsspec_missing_or_empty_directory_is_an_error(tmp_path):
    with pytest.raises(ModelError, match="not a directory"):
        fetch_fsspec(f"file://{tmp_path / 'absent'}", tmp_path / "out")
    (tmp_path / "only-pickles").mkdir()
    (tmp_path / "only-pickles" / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="no file matches the allowed patterns"):
        fetch_fsspec(f"file://{tmp_path / 'only-pickles'}", tmp_path / "out")


# --- Hugging Face cache ----------------------------------------------------------------------------------------

def test_hf_source_resolves_from_the_cache_by_ref_and_by_commit(fake_hf_cache, tiny_lm_dir, make_scratch_model,
                                                                tmp_path):
    first = fake_hf_cache.add("kubeforge/tiny", tiny_lm_dir)
    second = fake_hf_cache.add("kubeforge/tiny", make_scratch_model(seed=1))  # main now points here
    assert first != second
    snapshots = fake_hf_cache.hub / "models--kubeforge--tiny" / "snapshots"
    assert resolve_model_source("hf://kubeforge/tiny", tmp_path / "unused") == snapshots / second
    pinned = resolve_model_source(f"hf://kubeforge/tiny@{first}", tmp_path / "unused")
    assert pinned == snapshots / first
    model, tokenizer = load_causal_lm(pinned)
    reference, _ = load_causal_lm(tiny_lm_dir)
    assert torch.equal(logits_of(model, tokenizer), logits_of(reference, tokenizer))


def test_hf_source_absent_from_the_cache_names_repo_and_cache(fake_hf_cache, tiny_lm_dir, tmp_path):
    fake_hf_cache.add("kubeforge/tiny", tiny_lm_dir)
    with pytest.raises(ModelError, match=f"'kubeforge/absent' is not in the local cache {fake_hf_cache.hub}"):
        resolve_model_source("hf://kubeforge/absent", tmp_path / "unused")
    with pytest.raises(ModelError, match="revision 'v9'.* not in the local cache"):
        resolve_model_source("hf://kubeforge/tiny@v9", tmp_path / "unused")


def test_hf_dataset_snapshot_for_the_data_loader(fake_hf_cache):
    commit = fake_hf_cache.add("org/corpus", {"data/train.jsonl": b'{"text": "hello"}\n'}, repo_type="dataset")
    folder = fetch_hf_snapshot("org/corpus", revision=None, repo_type="dataset")
    assert folder == fake_hf_cache.hub / "datasets--org--corpus" / "snapshots" / commit
    assert (folder / "data" / "train.jsonl").read_text() == '{"text": "hello"}\n'


# --- refusals ----------------------------------------------------------------------------------------------------

def _explode_if_unpickled():
    raise AssertionError("a user pickle was unpickled")


class _PickleTrap:
    def __reduce__(self):
        return _explode_if_unpickled, ()


def test_pickle_only_directory_is_refused_without_unpickling(tiny_lm_dir, tmp_path, monkeypatch):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_bytes((tiny_lm_dir / "config.json").read_bytes())
    trap = pickle.dumps({"model.embed_tokens.weight": _PickleTrap()})
    # the trap is armed: the pickle calls _explode_if_unpickled (read from its opcodes, never by unpickling it)
    opcodes = [(opcode.name, argument) for opcode, argument, _ in pickletools.genops(trap)]
    assert ("SHORT_BINUNICODE", _explode_if_unpickled.__name__) in opcodes and ("REDUCE", None) in opcodes
    (directory / "pytorch_model.bin").write_bytes(trap)

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load called on a user file")

    monkeypatch.setattr(torch, "load", no_torch_load)
    for attempt in (check_checkpoint_files, load_causal_lm,
                    lambda d: resolve_model_source(str(d), tmp_path / "unused")):
        with pytest.raises(ModelError, match="pytorch_model.bin holds pickled weights, which are refused"):
            attempt(directory)


def test_missing_config_or_weights_is_refused(tiny_lm_dir, copy_model):
    no_config = copy_model(tiny_lm_dir, "no-config")
    (no_config / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json"):
        check_checkpoint_files(no_config)
    no_weights = copy_model(tiny_lm_dir, "no-weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no weights \(\*.safetensors\)"):
        load_causal_lm(no_weights)


def test_tokenizer_bigger_than_the_model_vocab_is_refused(tiny_lm_dir, copy_model, lm_corpus):
    from kubeforge.lm.tokenizer import train_tokenizer

    directory = copy_model(tiny_lm_dir, "mismatched")
    train_tokenizer(lm_corpus, TEST_VOCAB + 80).save_pretrained(directory)
    with pytest.raises(ModelError, match=f"tokenizer's vocabulary \\({TEST_VOCAB + 80} tokens\\) does not fit"):
        load_causal_lm(directory)


# --- LoRA adapters ---------------------------------------------------------------------------------------------

def _save_adapter(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_causal_lm(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # B starts at zero: make the adapter change the output
    peft_model.eval()
    peft_model.save_pretrained(adapter_dir)
    return logits_of(peft_model, tokenizer)


def test_lora_adapter_loads_on_its_base(tiny_lm_dir, copy_model, tmp_path):
    base = copy_model(tiny_lm_dir, "base")
    expected = _save_adapter(base, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(base)
    model, tokenizer = load_causal_lm(tmp_path / "adapter")
    assert torch.allclose(logits_of(model, tokenizer), expected, atol=1e-6)
    plain, _ = load_causal_lm(base)
    assert not torch.allclose(logits_of(plain, tokenizer), expected, atol=1e-3)
    explicit = load_adapter_model(tmp_path / "adapter", base)
    assert torch.allclose(logits_of(explicit, tokenizer), expected, atol=1e-6)


def test_lora_adapter_whose_base_is_gone_or_pickled_is_refused(tiny_lm_dir, copy_model, tmp_path):
    import shutil

    base = copy_model(tiny_lm_dir, "base")
    _save_adapter(base, tmp_path / "adapter")
    shutil.rmtree(base)
    with pytest.raises(ModelError, match="base model .* does not resolve to a local directory"):
        load_causal_lm(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").rename(tmp_path / "adapter" / "adapter_model.bin")
    with pytest.raises(ModelError, match="adapter_model.bin is a pickle and is refused"):
        load_causal_lm(tmp_path / "adapter", base_dir=tiny_lm_dir)


def test_lora_adapter_base_may_be_a_cached_hub_repo(fake_hf_cache, tiny_lm_dir, copy_model, tmp_path):
    base = copy_model(tiny_lm_dir, "base")
    expected = _save_adapter(base, tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "base_model_name_or_path": "kubeforge/tiny"}))
    fake_hf_cache.add("kubeforge/tiny", tiny_lm_dir)
    model, tokenizer = load_causal_lm(tmp_path / "adapter")
    assert torch.allclose(logits_of(model, tokenizer), expected, atol=1e-6)


def test_context_length_needs_a_position_limit():
    from transformers import LlamaConfig, PretrainedConfig

    assert model_context_length(LlamaConfig(max_position_embeddings=TEST_CONTEXT)) == TEST_CONTEXT
    with pytest.raises(ModelError, match="no context length"):
        model_context_length(PretrainedConfig())
