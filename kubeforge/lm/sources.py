"""The one resolver of causal-LM references: every step that needs a model turns its source string into a local
Hugging Face-format directory here, and loads it here, so the no-pickle rule and the offline rules hold everywhere.

Sources: a local directory, ``hf://org/name[@revision]``, any fsspec URI (``s3://``, ``gs://``, ...),
``pvc://claim/path`` (a mounted claim) or ``scratch:<preset>`` (a small Llama built from the run's corpus).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from kubeforge.config.base import DNS_LABEL
from kubeforge.lm.tokenizer import check_tokenizer_fits, train_tokenizer
from kubeforge.errors import ModelError

# LlamaConfig sizes. With a 2048 vocabulary: tiny ~0.7M parameters (the local demo), small ~3.4M (about 5x tiny,
# the compression benchmark), base ~18M. Grouped-query attention (kv heads = heads / 2) and tied embeddings keep
# them small; head_dim is hidden / heads in each.
SCRATCH_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, tie_word_embeddings=True),
    "base": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
                 num_key_value_heads=4, tie_word_embeddings=True),
}

# What is ever copied from a remote model: weights as safetensors, configs as JSON, tokenizer files and the chat
# template (transformers writes it as chat_template.jinja). Pickle formats (*.bin, *.pt, *.pth, *.pkl) never are.
ALLOWED_PATTERNS: list[str] = ["*.safetensors", "*.json", "*.model", "*.jinja", "vocab.txt", "merges.txt",
                               "*/vocab.txt", "*/merges.txt"]
# Files a dataset repository may hold that the data loader reads (no pickles, no loading scripts).
DATASET_PATTERNS: list[str] = ["*.parquet", "*.jsonl", "*.json", "*.txt", "*.csv"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

Scheme = Literal["local", "hf", "fsspec", "pvc", "scratch"]
_SOURCE_FORMS = ("a local directory, hf://org/name[@revision], an fsspec URI such as s3://bucket/dir, "
                 "pvc://claim/path or scratch:<preset>")
_HF_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_HF_REVISION = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_BARE_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(?!//)")


@dataclass(frozen=True)
class ModelSource:
    """A parsed model reference; ``location`` is a path, repo id, URI, ``claim/path`` or preset name."""

    scheme: Scheme
    location: str
    revision: str | None = None

    @property
    def uri(self) -> str:
        """The canonical reference string (what a report or a model card should quote)."""
        if self.scheme == "hf":
            return f"hf://{self.location}" + (f"@{self.revision}" if self.revision else "")
        return {"local": self.location, "fsspec": self.location, "pvc": f"pvc://{self.location}",
                "scratch": f"scratch:{self.location}"}[self.scheme]


def parse_hf_reference(uri: str) -> tuple[str, str, str | None]:
    """``hf://[datasets/]org/name[@revision]`` -> (repo_type, repo_id, revision); shared with the data loader."""
    body = uri.strip().removeprefix("hf://")
    repo_type = "model"
    for prefix, kind in (("datasets/", "dataset"), ("models/", "model")):
        if body.startswith(prefix):
            body, repo_type = body.removeprefix(prefix), kind
    repo_id, at, revision = body.partition("@")
    if at and not revision:
        raise ModelError(f"{uri!r}: empty revision after '@' (write hf://org/name@<branch, tag or commit>)")
    if at and (not _HF_REVISION.match(revision) or ".." in revision):
        raise ModelError(f"{uri!r}: revision {revision!r} has characters a git branch, tag or commit cannot have")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ModelError(f"{uri!r}: a Hugging Face reference needs an owner and a name: hf://org/name[@revision]")
    for part in parts:
        if not _HF_NAME.match(part) or "--" in part or ".." in part or len(repo_id) > 96:
            raise ModelError(f"{uri!r}: {part!r} is not a valid Hugging Face name (letters, digits, '-', '_', '.'; "
                             "no '--' or '..', not starting or ending with '-' or '.'; at most 96 characters)")
    return repo_type, repo_id, revision or None


def parse_model_source(uri: str) -> ModelSource:
    """Classify and validate a model reference without touching the network or the disk."""
    text = uri.strip()
    if not text or "\x00" in text:
        raise ModelError(f"model source {uri!r} is empty or has a NUL character; expected {_SOURCE_FORMS}")
    if text.startswith("scratch:"):
        preset = text.removeprefix("scratch:")
        if preset not in SCRATCH_PRESETS:
            raise ModelError(f"unknown scratch preset {preset!r}; known: {', '.join(SCRATCH_PRESETS)}")
        return ModelSource("scratch", preset)
    match = _URI_SCHEME.match(text)
    if match:
        protocol, rest = match.group(1).lower(), match.group(2)
        if protocol == "hf":
            repo_type, repo_id, revision = parse_hf_reference(text)
            if repo_type != "model":
                raise ModelError(f"{uri!r} names a dataset repository, not a model")
            return ModelSource("hf", repo_id, revision)
        if protocol == "pvc":
            return ModelSource("pvc", _parse_pvc(uri, rest))
        if not rest.strip("/"):
            raise ModelError(f"{uri!r}: no path after {protocol}://")
        import fsspec

        if protocol not in fsspec.available_protocols():
            raise ModelError(f"{uri!r}: unknown storage protocol {protocol!r}; expected {_SOURCE_FORMS}")
        return ModelSource("fsspec", text)
    bare = _BARE_SCHEME.match(text)
    if bare:
        raise ModelError(f"{uri!r}: unknown source form {bare.group(1)!r}:; expected {_SOURCE_FORMS} "
                         "(prefix a local path that has a colon with ./)")
    return ModelSource("local", os.path.expanduser(text))


def _parse_pvc(uri: str, rest: str) -> str:
    claim, _, path = rest.partition("/")
    path = path.strip("/")
    if not DNS_LABEL.match(claim):
        raise ModelError(f"{uri!r}: {claim!r} is not a PersistentVolumeClaim name (a DNS label: lowercase letters, "
                         "digits and '-')")
    if not path:
        raise ModelError(f"{uri!r}: no path inside the claim; write pvc://{claim}/<directory>")
    if ".." in PurePosixPath(path).parts:
        raise ModelError(f"{uri!r}: '..' may not leave the claim")
    return f"{claim}/{path}"


def pvc_path(location: str) -> Path:
    """Claims are mounted at $KUBEFORGE_PVC_ROOT/<claim> (default /mnt/pvc/<claim>)."""
    return Path(os.environ.get("KUBEFORGE_PVC_ROOT") or "/mnt/pvc") / location


def hf_cache_dir() -> Path:
    """The hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hf_offline() -> bool:
    return any((os.environ.get(name) or "").upper() in {"1", "ON", "YES", "TRUE"}
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def fetch_hf_snapshot(repo_id: str, *, revision: str | None, repo_type: str = "model",
                      allow_patterns: list[str] | None = None, local_files_only: bool = False) -> Path:
    """Download (or find in the cache) a repository snapshot; only allowed files, token from $HF_TOKEN."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, IncompleteSnapshotError,
                                        LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    if allow_patterns is None:
        allow_patterns = ALLOWED_PATTERNS if repo_type == "model" else DATASET_PATTERNS
    cache = hf_cache_dir()
    offline = local_files_only or hf_offline()
    where = f"{repo_type} repository {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=cache,
                                   allow_patterns=allow_patterns, local_files_only=offline,
                                   token=os.environ.get("HF_TOKEN") or None)
    except HFValidationError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except IncompleteSnapshotError as exc:
        raise ModelError(f"{where}: the copy in the local cache {cache} is incomplete ({exc})") from None
    except LocalEntryNotFoundError:
        reason = "offline (HF_HUB_OFFLINE=1), so nothing is downloaded" if offline else "the Hub cannot be reached"
        raise ModelError(f"{where} is not in the local cache {cache} and {reason}: download it where the Hub is "
                         "reachable, or point HF_HOME / HF_HUB_CACHE at a cache that has it") from None
    except GatedRepoError:
        raise ModelError(f"{where} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise ModelError(f"{where}: no such revision on the Hub") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{where} does not exist on the Hub, or is private and HF_TOKEN does not grant it") from None
    except HfHubHTTPError as exc:
        raise ModelError(f"{where}: the Hub answered {exc}") from None
    except OSError as exc:
        raise ModelError(f"{where}: {exc}") from None
    return Path(folder)


def _allowed(relative: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(relative, pattern) for pattern in patterns)


def fetch_fsspec(uri: str, destination: Path, allow_patterns: list[str] | None = None) -> Path:
    """Copy the allowed files under a remote directory into ``destination``, keeping the layout."""
    import fsspec

    patterns = ALLOWED_PATTERNS if allow_patterns is None else allow_patterns
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        if not fs.isdir(root):
            raise ModelError(f"{uri}: not a directory (a model is a directory with config.json and *.safetensors)")
        remote_files = fs.find(root)
    except ModelError:
        raise
    except (OSError, ValueError, ImportError) as exc:
        raise ModelError(f"{uri}: cannot list ({type(exc).__name__}: {exc})") from None
    root = root.rstrip("/")
    copied = 0
    destination.mkdir(parents=True, exist_ok=True)
    for remote in remote_files:
        relative = remote.rstrip("/")[len(root):].lstrip("/")
        if not relative or ".." in PurePosixPath(relative).parts or not _allowed(relative, patterns):
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(remote, str(target))
        except OSError as exc:
            raise ModelError(f"{uri}: cannot copy {relative} ({exc})") from None
        copied += 1
    if not copied:
        raise ModelError(f"{uri}: no file matches the allowed patterns ({', '.join(patterns)})")
    return destination


def build_scratch_model(preset: str, destination: Path, corpus: Iterable[str], model_config: Any = None,
                        seed: int = 0) -> Path:
    """A freshly initialised Llama and a byte-level BPE trained on ``corpus``, saved as safetensors + JSON."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kubeforge.config.language import LMModelConfig

    settings = model_config if model_config is not None else LMModelConfig()
    tokenizer = train_tokenizer(corpus, settings.tokenizer_vocab, model_max_length=settings.context_length)
    config = LlamaConfig(**SCRATCH_PRESETS[preset], vocab_size=len(tokenizer),
                         max_position_embeddings=settings.context_length, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    destination.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(destination, safe_serialization=True)
    tokenizer.save_pretrained(destination)
    return destination


def resolve_model_source(uri: str, destination: Path, *, corpus: Iterable[str] | None = None,
                         model_config: Any = None, seed: int = 0) -> Path:
    """A local Hugging Face-format directory for ``uri``; local and pvc sources are used in place."""
    source = parse_model_source(uri)
    destination = Path(destination)
    if source.scheme == "scratch":
        if corpus is None:
            raise ModelError(f"{source.uri}: a scratch model needs a corpus to train its tokenizer on")
        return build_scratch_model(source.location, destination, corpus, model_config, seed)
    if source.scheme == "hf":
        directory = fetch_hf_snapshot(source.location, revision=source.revision)
    elif source.scheme == "fsspec":
        directory = fetch_fsspec(source.location, destination)
    else:
        directory = pvc_path(source.location) if source.scheme == "pvc" else Path(source.location)
        if not directory.is_dir():
            raise ModelError(f"{source.uri}: no such directory" + (f" ({directory})" if source.scheme == "pvc"
                                                                     else ""))
    check_checkpoint_files(directory)
    return directory


def _is_adapter_dir(directory: Path) -> bool:
    return (directory / "adapter_config.json").is_file()


def check_checkpoint_files(directory: Path) -> None:
    """Refuse what cannot be loaded safely before transformers looks: pickle weights are never unpickled."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: not a directory")
    adapter = _is_adapter_dir(directory)
    if not adapter and not (directory / "config.json").is_file():
        raise ModelError(f"{directory}: no config.json (a model directory holds config.json and *.safetensors; "
                         "a LoRA adapter holds adapter_config.json and adapter_model.safetensors)")
    files = sorted(path for path in directory.iterdir() if path.is_file())
    safetensors = [path for path in files if path.suffix == ".safetensors"]
    pickles = [path for path in files if path.suffix in PICKLE_SUFFIXES]
    if adapter and not (directory / "adapter_model.safetensors").is_file():
        named = f": {pickles[0].name} is a pickle and is refused (never unpickled)" if pickles else ""
        raise ModelError(f"{directory}: a LoRA adapter needs adapter_model.safetensors{named}")
    if not safetensors and not adapter and (directory / "model.onnx").is_file():
        return  # an ONNX graph (kubeforge.lm.inference.OnnxRunner) holds its own weights; nothing is unpickled
    if not safetensors:
        if pickles:
            raise ModelError(f"{directory}: {pickles[0].name} holds pickled weights, which are refused (never "
                             "unpickled: loading a pickle runs code); convert the model to safetensors")
        raise ModelError(f"{directory}: no weights (*.safetensors); remote sources fetch only safetensors")


def _resolve_adapter_base(adapter_dir: Path) -> Path:
    import json

    try:
        base = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{adapter_dir}/adapter_config.json: unreadable ({exc})") from None
    if not base:
        raise ModelError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path; pass the base "
                         "directory explicitly")
    for candidate in (Path(base).expanduser(), adapter_dir / base):
        if candidate.is_dir():
            return candidate
    detail = ""
    if base.startswith(("hf://", "pvc://")) or _HUB_ID.match(base):
        try:
            source = parse_model_source(base if "://" in base else f"hf://{base}")
            if source.scheme == "hf":
                return fetch_hf_snapshot(source.location, revision=source.revision, local_files_only=True)
            if pvc_path(source.location).is_dir():
                return pvc_path(source.location)
        except ModelError as exc:
            detail = f" ({exc})"
    raise ModelError(f"{adapter_dir}: the adapter's base model {base!r} does not resolve to a local directory "
                     f"(a path, pvc://claim/path or a repo in the Hugging Face cache){detail}; pass the base "
                     "directory")


def _load_tokenizer(*directories: Path) -> Any:
    from transformers import AutoTokenizer

    for directory in directories:
        if (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file():
            return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    raise ModelError(f"{directories[0]}: no tokenizer files (tokenizer.json / tokenizer_config.json)")


def _load_plain(directory: Path, device: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    extra = {} if dtype is None else {"dtype": dtype}
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, use_safetensors=True, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{directory}: cannot load as a causal LM ({type(exc).__name__}: {exc})") from None
    return model.to(device)


def load_adapter_model(adapter_dir: Path, base_dir: Path, *, device: str = "cpu", dtype: Any = None,
                       is_trainable: bool = False) -> Any:
    """The base model with a peft LoRA adapter (safetensors only) applied on top."""
    from peft import PeftModel

    adapter_dir, base_dir = Path(adapter_dir), Path(base_dir)
    check_checkpoint_files(adapter_dir)
    check_checkpoint_files(base_dir)
    base = _load_plain(base_dir, device, dtype)
    try:
        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=is_trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{adapter_dir}: adapter does not fit the base {base_dir} ({type(exc).__name__}: "
                         f"{exc})") from None


def load_causal_lm(directory: Path, *, device: str = "cpu", dtype: Any = None,
                   base_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a checked local directory, never from the network; adapters load on their base."""
    directory = Path(directory)
    check_checkpoint_files(directory)
    if _is_adapter_dir(directory):
        base = Path(base_dir) if base_dir is not None else _resolve_adapter_base(directory)
        model = load_adapter_model(directory, base, device=device, dtype=dtype)
        tokenizer = _load_tokenizer(directory, base)
    else:
        model = _load_plain(directory, device, dtype)
        tokenizer = _load_tokenizer(directory)
    check_tokenizer_fits(tokenizer, model.config)
    return model, tokenizer


def model_context_length(model_or_config: Any) -> int:
    """The longest sequence the model's positions cover."""
    config = getattr(model_or_config, "config", model_or_config)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelError(f"{type(config).__name__} states no context length (max_position_embeddings)")
