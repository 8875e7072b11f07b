"""Shared LM fixtures: a short corpus, tiny scratch model directories and a Hugging Face cache built on disk.

Every LM test runs offline (HF_HUB_OFFLINE=1, an empty HF_HOME): nothing here may reach the Hub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

TEST_VOCAB = 320
TEST_CONTEXT = 64


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    home = tmp_path_factory.mktemp("empty-hf-home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(scope="session")
def lm_corpus() -> list[str]:
    """About 20k characters of Python's own documentation (ships with Python, no download)."""
    from pydoc_data.topics import topics

    return [topics[name][:2000] for name in sorted(topics)[:10]]


def _model_settings(vocab: int, context: int):
    from kubeforge.config.language import LMModelConfig

    return LMModelConfig(base_model="scratch:tiny", tokenizer_vocab=vocab, context_length=context)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, lm_corpus) -> Path:
    """One scratch:tiny model (vocab 320, context 64, seed 0) for the session: read it, copy it, never change it."""
    from kubeforge.lm.sources import build_scratch_model

    return build_scratch_model("tiny", tmp_path_factory.mktemp("tiny-lm") / "model", lm_corpus,
                               _model_settings(TEST_VOCAB, TEST_CONTEXT), seed=0)


@pytest.fixture
def make_scratch_model(tmp_path, lm_corpus) -> Callable[..., Path]:
    """Builds a fresh scratch model directory under tmp_path: make_scratch_model(preset=, vocab=, context=, seed=)."""
    from kubeforge.lm.sources import build_scratch_model

    counter = iter(range(1_000_000))

    def build(destination: Path | None = None, *, preset: str = "tiny", vocab: int = TEST_VOCAB,
              context: int = TEST_CONTEXT, seed: int = 0) -> Path:
        target = destination if destination is not None else tmp_path / f"scratch-{next(counter)}"
        return build_scratch_model(preset, target, lm_corpus, _model_settings(vocab, context), seed=seed)

    return build


@dataclass
class FakeHubCache:
    """huggingface_hub's cache layout: <hub>/<models|datasets>--org--name/{blobs, refs/<ref>, snapshots/<commit>}."""

    hub: Path

    def add(self, repo_id: str, files: Mapping[str, bytes] | Path, *, repo_type: str = "model",
            refs: tuple[str, ...] = ("main",)) -> str:
        """Store one commit of a repository (a directory's files or name -> bytes); return its 40-hex hash."""
        if isinstance(files, Path):
            files = {str(path.relative_to(files)): path.read_bytes()
                     for path in sorted(files.rglob("*")) if path.is_file()}
        commit = hashlib.sha1(b"".join(name.encode() + hashlib.sha256(data).digest()
                                       for name, data in sorted(files.items()))).hexdigest()
        repo = self.hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / commit
        for name, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(os.path.relpath(blob, link.parent))
        for ref in refs:
            ref_file = repo / "refs" / ref
            ref_file.parent.mkdir(parents=True, exist_ok=True)
            ref_file.write_text(commit)  # no trailing newline, as huggingface_hub writes it
        return commit


@pytest.fixture
def fake_hf_cache(tmp_path, monkeypatch) -> FakeHubCache:
    """An offline Hugging Face cache under tmp_path, with HF_HOME / HF_HUB_CACHE pointing at it."""
    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    return FakeHubCache(home / "hub")


@pytest.fixture
def copy_model(tmp_path) -> Callable[[Path, str], Path]:
    """copy_model(source_dir, name) -> a writable copy under tmp_path (for tests that alter a model directory)."""

    def copy(source: Path, name: str) -> Path:
        return Path(shutil.copytree(source, tmp_path / name))

    return copy
