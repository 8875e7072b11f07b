"""The pipeline's steps as plain functions over directories.

A KFP component is one call to one of these; the benchmark and the tests call them directly. Each step reads what
an earlier step wrote and writes its own directory, so the same code runs under kfp.local, on a cluster, or bare.
Heavy libraries (torch, matplotlib) are imported inside the steps that need them: every component starts a fresh
interpreter, and preprocessing should not pay torch's import time.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from typing import TYPE_CHECKING

from kubeforge.config import DataConfig, ModelConfig, TrainConfig
from kubeforge.data import Splits, prepare, read_splits

if TYPE_CHECKING:
    from kubeforge.evaluation import Evaluation
    from kubeforge.models import ModelSpec
    from kubeforge.report import Section
    from kubeforge.training import TrainResult

TRAINING_RECORD = "training"  # sub-directory of the model directory: checkpoint, history.json, result.json


def preprocess_step(config: DataConfig, splits_dir: str | Path) -> Splits:
    return prepare(config, splits_dir)


def model_spec_for(splits: Splits, config: ModelConfig) -> ModelSpec:
    from kubeforge.models import ModelSpec

    return ModelSpec(config=config, input_dim=splits.num_features, num_classes=splits.num_classes,
                     feature_names=list(splits.feature_names), class_names=list(splits.class_names),
                     scaler_mean=[float(v) for v in splits.scaler.mean],
                     scaler_scale=[float(v) for v in splits.scaler.scale],
                     image_shape=splits.image_shape)


def train_step(splits_dir: str | Path, model_dir: str | Path, model_config: ModelConfig, train_config: TrainConfig,
               *, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train and save weights + config; resumes from the record's checkpoint when one exists (a restarted pod)."""
    from kubeforge.models import build_model, count_parameters, save_model
    from kubeforge.training import set_seed, train_model

    model_dir = Path(model_dir)
    splits = read_splits(splits_dir)
    spec = model_spec_for(splits, model_config)
    set_seed(train_config.seed)  # initialisation is part of the seeded run
    model = build_model(spec)
    record = model_dir / TRAINING_RECORD
    record.mkdir(parents=True, exist_ok=True)
    result = train_model(model, splits.X_train, splits.y_train, splits.X_val, splits.y_val, train_config, record,
                         resume=resume, warm_start=train_config.warm_start or None, progress=progress)
    save_model(model, spec, model_dir)
    summary = {**asdict(result), "parameters": count_parameters(model)}
    (record / "result.json").write_text(json.dumps(summary, indent=2))
    return result


def load_train_result(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / TRAINING_RECORD / "result.json").read_text())


def evaluate_step(splits_dir: str | Path, model_dir: str | Path, evaluation_file: str | Path, *,
                  seed: int = 0) -> Evaluation:
    from kubeforge.evaluation import evaluate
    from kubeforge.models import load_model, predict_proba

    splits = read_splits(splits_dir)
    model, _ = load_model(model_dir)
    result = evaluate(lambda X: predict_proba(model, X), splits.X_test, splits.y_test, list(splits.class_names),
                      list(splits.feature_names), seed=seed)
    result.save(evaluation_file)
    return result


def report_sections(splits_dir: str | Path, model_dir: str | Path, evaluation_file: str | Path) -> list[Section]:
    from kubeforge.evaluation import Evaluation
    from kubeforge.report import data_section, evaluation_section, training_section

    schema = json.loads((Path(splits_dir) / "schema.json").read_text())
    trained = load_train_result(model_dir)
    return [data_section(schema),
            training_section(trained["history"], best_epoch=trained["best_epoch"]),
            evaluation_section(Evaluation.load(evaluation_file))]


def report_step(splits_dir: str | Path, model_dir: str | Path, evaluation_file: str | Path, report_file: str | Path,
                *, compressed_dir: str | Path | None = None, title: str = "kubeforge run report") -> None:
    from kubeforge.report import render_report

    sections = report_sections(splits_dir, model_dir, evaluation_file)
    if compressed_dir is not None:
        from kubeforge.compression.step import load_report, report_section

        sections.append(report_section(load_report(compressed_dir)))
    Path(report_file).write_text(render_report(title, sections))
