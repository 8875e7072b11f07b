"""compress: build and measure compressed candidates, gate on accuracy, hand the chosen one to packaging."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def compress(
    splits: Input[Dataset],
    trained_model: Input[Model],
    compress_methods: list,
    max_accuracy_drop: float,
    objective: str,
    prune_fraction: float,
    target_sparsity: float,
    finetune_epochs: int,
    student_hidden_sizes: list,
    distill_epochs: int,
    distill_temperature: float,
    distill_alpha: float,
    calibration_batches: int,
    bench_runs: int,
    bench_threads: int,
    compressed_model: Output[Model],
    compression_metrics: Output[Metrics],
    compression_report: Output[Markdown],
    compression_json: Output[Artifact],
):
    """Fails (and so stops the pipeline before packaging) when no candidate passes the accuracy gate."""
    import shutil

    from kubeforge.artifacts import label
    from kubeforge.compression.step import REPORT_FILE, compress_step, summary_metrics, to_markdown
    from kubeforge.config import CompressConfig

    config = CompressConfig(
        compress_methods=compress_methods, max_accuracy_drop=max_accuracy_drop, objective=objective,
        prune_fraction=prune_fraction, target_sparsity=target_sparsity, finetune_epochs=finetune_epochs,
        student_hidden_sizes=student_hidden_sizes, distill_epochs=distill_epochs,
        distill_temperature=distill_temperature, distill_alpha=distill_alpha,
        calibration_batches=calibration_batches, bench_runs=bench_runs, bench_threads=bench_threads)
    report = compress_step(splits.path, trained_model.path, compressed_model.path, config)
    shutil.copyfile(f"{compressed_model.path}/{REPORT_FILE}", compression_json.path)
    label(compression_json, "Compression report (JSON)")
    chosen = next(m for m in report["candidates"] if m["name"] == report["chosen"])
    compressed_model.metadata.update({"method": report["chosen"], "format": chosen["kind"],
                                      "precision": chosen["precision"], "accuracy": chosen["accuracy"]})
    label(compressed_model, f"Compressed model ({report['chosen']})")
    for name, value in summary_metrics(report).items():
        compression_metrics.log_metric(name, value)
    label(compression_metrics, "Compression metrics")
    with open(compression_report.path, "w") as handle:
        handle.write(to_markdown(report))
    label(compression_report, "Compression report")
