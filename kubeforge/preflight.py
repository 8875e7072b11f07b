"""Data problems found before any pipeline step starts.

kfp.local needs seconds to start a step, and a bad file would otherwise fail the first step after them, so the local
data of a run is read here first, with the same functions and messages as the preprocess steps (kubeforge.data for
tables, kubeforge.lm.corpus for text): a missing file or column, a NaN, a single class, an unreadable row is refused
in well under a second, before kfp starts. Bundled and built-in sets are known to be good, and remote sources (s3://,
hf://, ...) or files over PREFLIGHT_MAX_BYTES are left to the step, which reads them anyway. Whether a table has
enough rows per class for the stratified split is left to preprocess too: kubeforge.data checks it after importing
scikit-learn, which alone takes longer than this whole check.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PREFLIGHT_MAX_BYTES = 64 * 2**20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # s3://, hf://, memory://, pydoc:topics ...


def local_path(source: str) -> Path | None:
    """The local file a data source names, or None for a remote, bundled or built-in source."""
    if source.startswith("file://"):
        return Path(source.removeprefix("file://"))
    if _SCHEME.match(source):
        return None
    return Path(source)


def _small_enough(path: Path) -> bool:
    """A missing path is checked (that is the error to report); a big file or a directory is left to the step."""
    if not path.exists():
        return True
    return path.is_file() and path.stat().st_size <= PREFLIGHT_MAX_BYTES


def check_table(params: dict[str, Any]) -> None:
    """The classifier's data, loaded and validated as the preprocess step does (raises DataError)."""
    from kubeforge.config import BUNDLED_DATASETS, DataConfig

    config = DataConfig(**{name: params[name] for name in DataConfig.model_fields if name in params})
    if config.dataset in BUNDLED_DATASETS:
        return
    path = local_path(config.dataset)
    if path is None or not _small_enough(path):
        return
    from kubeforge.data import load_table

    load_table(config.dataset, config.label_column)


def check_text(params: dict[str, Any]) -> None:
    """A language model's local corpus and fine-tuning set: loaded and split by document as the lm-data step does."""
    sources = [(params.get("corpus", ""), "load_documents"), (params.get("finetune_dataset", ""), "load_examples")]
    wanted = [(source, loader) for source, loader in sources
              if source and (path := local_path(source)) is not None and _small_enough(path)]
    if not wanted:
        return
    from kubeforge.errors import DataError
    from kubeforge.lm import corpus

    for source, loader in wanted:
        items = getattr(corpus, loader)(source)
        try:
            corpus.split_by_document(items, params.get("holdout_fraction", 0.1), params.get("holdout_seed", 0))
        except DataError as exc:
            raise DataError(f"{source}: {exc}") from None


def preflight(params: dict[str, Any]) -> None:
    """Check the data a run's resolved parameters name (raises kubeforge.data.DataError naming the problem) and,
    for a language model, its model settings (ConfigError/ModelError: context, LoRA targets, pickle-only weights)."""
    if "dataset" in params:
        check_table(params)
    if "corpus" in params or "finetune_dataset" in params:
        check_text(params)
    if "base_model" in params:
        from kubeforge.lm.preflight import check_lm_params

        check_lm_params(params)
