"""lm-data: load and validate the pre-training corpus and the fine-tuning set, split both by document."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_data(
    corpus: str,
    finetune_dataset: str,
    max_length: int,
    holdout_fraction: float,
    holdout_seed: int,
    eval_prompts: int,
    max_new_tokens: int,
    lm_splits: Output[Dataset],
    lm_data_stats: Output[Metrics],
    need_corpus: bool = True,
):
    """Writes corpus/{train,heldout}.jsonl, finetune/{train,heldout}.jsonl and stats.json into one Dataset."""
    from kubeforge.artifacts import label
    from kubeforge.config import RunConfig
    from kubeforge.lm.steps import data_metrics, lm_data_step

    config = RunConfig.from_component_args(locals(), ["lm_data"]).lm_data
    stats = lm_data_step(config, lm_splits.path, need_corpus=need_corpus)
    label(lm_splits, "Corpus and fine-tuning splits")
    for name, value in data_metrics(stats).items():
        lm_data_stats.log_metric(name, value)
    label(lm_data_stats, "Data statistics")
