"""preprocess: load and validate a dataset, split it, fit standardisation on train."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from kubeforge_components import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def preprocess(
    dataset: str,
    label_column: str,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    splits: Output[Dataset],
    data_stats: Output[Metrics],
    data_report: Output[Markdown],
):
    """Writes train/val/test Parquet splits, scaler.json and schema.json into one Dataset directory."""
    from kubeforge.config import DataConfig
    from kubeforge.data import prepare
    from kubeforge.artifacts import data_markdown, label

    config = DataConfig(dataset=dataset, label_column=label_column, val_fraction=val_fraction,
                        test_fraction=test_fraction, split_seed=split_seed)
    result = prepare(config, splits.path)
    splits.metadata.update({"rows_train": len(result.y_train), "rows_val": len(result.y_val),
                            "rows_test": len(result.y_test), "features": result.num_features,
                            "classes": result.num_classes, "source": result.source})
    label(splits, "Train/val/test splits")
    for name in ("rows_train", "rows_val", "rows_test", "features", "classes"):
        data_stats.log_metric(name, splits.metadata[name])
    label(data_stats, "Data statistics")
    with open(data_report.path, "w") as handle:
        handle.write(data_markdown(splits.path))
    label(data_report, "Data report")
