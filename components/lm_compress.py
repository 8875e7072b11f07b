"""lm-compress: build and measure compressed candidates of the fine-tuned LM, gate on held-out perplexity and greedy
agreement, and hand the chosen directory (the one measured) to serving."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def lm_compress(
    lm_splits: Input[Dataset],
    finetuned_model: Input[Model],
    corpus: str,
    finetune_dataset: str,
    max_length: int,
    holdout_fraction: float,
    holdout_seed: int,
    eval_prompts: int,
    max_new_tokens: int,
    lm_device: str,
    lm_mixed_precision: bool,
    lm_seed: int,
    lm_weight_decay: float,
    gradient_checkpointing: bool,
    eval_interval: int,
    checkpoint_interval: int,
    parallelism: str,
    cpu_threads: int,
    lm_compress_methods: list,
    max_perplexity_increase: float,
    min_greedy_agreement: float,
    lm_objective: str,
    student_layers: int,
    student_hidden_size: int,
    lm_distill_steps: int,
    lm_distill_temperature: float,
    lm_distill_alpha: float,
    prune_layer_fraction: float,
    heal_steps: int,
    int4_group_size: int,
    lm_bench_rounds: int,
    lm_bench_threads: int,
    compressed_model: Output[Model],
    lm_compression_metrics: Output[Metrics],
    lm_compression_report: Output[Markdown],
    lm_compression_json: Output[Artifact],
    pretrained_model: Input[Model] = None,
):
    """Fails, naming every candidate's figures, when none passes the gate; ``pretrained_model`` is the base an
    unmerged LoRA adapter is merged into."""
    import shutil

    from kubeforge.artifacts import label
    from kubeforge.compression.lm_report import lm_compression_markdown, lm_compression_metrics as metrics_of
    from kubeforge.compression.lm_step import REPORT_FILE, lm_compress_step
    from kubeforge.config import RunConfig

    config = RunConfig.from_component_args(locals(), ["lm_data", "lm_runtime", "lm_compress"])
    report = lm_compress_step(lm_splits.path, finetuned_model.path, compressed_model.path, config.lm_compress,
                              config.lm_data, config.lm_runtime,
                              base_dir=pretrained_model.path if pretrained_model is not None else None)
    shutil.copyfile(f"{compressed_model.path}/{REPORT_FILE}", lm_compression_json.path)
    label(lm_compression_json, "LM compression report (JSON)")
    chosen = next(m for m in report["candidates"] if m["name"] == report["chosen"])
    compressed_model.metadata.update({"method": report["chosen"], "format": chosen["kind"],
                                      "precision": chosen["precision"], "perplexity": chosen["perplexity"],
                                      "greedy_agreement": chosen["greedy_agreement"]})
    label(compressed_model, f"Compressed LM ({report['chosen']})")
    for name, value in metrics_of(report).items():
        lm_compression_metrics.log_metric(name, value)
    label(lm_compression_metrics, "LM compression metrics")
    with open(lm_compression_report.path, "w") as handle:
        handle.write(lm_compression_markdown(report))
    label(lm_compression_report, "LM compression report")
