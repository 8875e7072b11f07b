"""Compression on the reference model: an MLP 64-1024-1024-10 trained on digits, every method measured side by side
by the same harness the compress step uses (warm-up, 1 intra-op thread, >= 300 timed runs per batch size).

    python -m bench.compression [--runs 300]
Targets: int8 >= 3.9x smaller with <= 0.5 pt accuracy drop; best int8 path >= 5x lower p50 at batch 1 than torch fp32;
50 % structured pruning >= 1.5x faster at batch 32; a student with <= 25 % of the parameters keeps >= 97 % of the
teacher's accuracy.
"""

from __future__ import annotations

import argparse
import tempfile

from bench._harness import write
from kubeforge.compression import Candidate
from kubeforge.compression.bench import measure
from kubeforge.compression.distill import distill
from kubeforge.compression.onnx_int8 import onnx_int8
from kubeforge.compression.prune import prune_structured
from kubeforge.compression.quantize import int8_dynamic
from kubeforge.config import DataConfig, ModelConfig, TrainConfig
from kubeforge.data import load_table, split_table
from kubeforge.models import ModelSpec, build_model
from kubeforge.training import set_seed, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    splits = split_table(load_table("digits"), DataConfig())
    spec = ModelSpec(config=ModelConfig(hidden_sizes=[1024, 1024], dropout=0.1), input_dim=64, num_classes=10,
                     feature_names=splits.feature_names, class_names=splits.class_names,
                     scaler_mean=splits.scaler.mean.tolist(), scaler_scale=splits.scaler.scale.tolist())
    set_seed(0)
    model = build_model(spec)
    data = (splits.X_train, splits.y_train, splits.X_val, splits.y_val)
    with tempfile.TemporaryDirectory() as workdir:
        train_model(model, *data, TrainConfig(epochs=20, learning_rate=1e-3, patience=20, device="cpu"), workdir,
                    progress=False)
    teacher = Candidate(name="torch fp32", spec=spec, module=model.eval())
    candidates = {
        "torch int8-dynamic": int8_dynamic(teacher),
        "onnx-int8": onnx_int8(teacher),
        "prune-structured 50%": prune_structured(teacher, data, fraction=0.5, finetune_epochs=5),
        "distill [256, 256]": distill(teacher, data, hidden_sizes=[256, 256], epochs=30, temperature=3.0,
                                      alpha=0.5),
    }

    def run(candidate: Candidate, baseline=None):
        return measure(candidate, splits.X_test, splits.y_test, threads=1, runs=args.runs, baseline=baseline)

    for name, candidate in candidates.items():
        candidate.name = name
    base = run(teacher)
    results = {"torch fp32": base, **{name: run(c, base) for name, c in candidates.items()}}
    int8 = {name: results[name] for name in ("torch int8-dynamic", "onnx-int8")}
    best_int8 = min(int8.values(), key=lambda m: m.p50_ms_b1)
    pruned, student = results["prune-structured 50%"], results["distill [256, 256]"]
    checks = {
        "int8_size_ratio (>= 3.9, best int8 path)": round(best_int8.size_ratio, 2),
        "int8_accuracy_drop_pt (<= 0.5)": best_int8.accuracy_drop,
        "int8_p50_speedup_b1 (>= 5)": round(base.p50_ms_b1 / best_int8.p50_ms_b1, 2),
        "pruned_p50_speedup_b32 (>= 1.5)": round(base.p50_ms_b32 / pruned.p50_ms_b32, 2),
        "student_parameter_share (<= 0.25)": round(student.parameters / base.parameters, 3),
        "student_accuracy_retained (>= 0.97)": round(student.accuracy / base.accuracy, 4),
    }
    met = {
        "int8_size": checks["int8_size_ratio (>= 3.9, best int8 path)"] >= 3.9,
        "int8_drop": checks["int8_accuracy_drop_pt (<= 0.5)"] <= 0.5,
        "int8_speed": checks["int8_p50_speedup_b1 (>= 5)"] >= 5,
        "pruned_speed": checks["pruned_p50_speedup_b32 (>= 1.5)"] >= 1.5,
        "student": checks["student_parameter_share (<= 0.25)"] <= 0.25
        and checks["student_accuracy_retained (>= 0.97)"] >= 0.97,
    }
    write("compression", {
        "model": "MLP 64-1024-1024-10 on digits", "best_int8_path": best_int8.name, "checks": checks,
        "meets_target": met,
        "measurements": {name: {k: v for k, v in m.to_dict().items() if k != "notes"} for name, m in results.items()},
    }, command=f"python -m bench.compression --runs {args.runs}")


if __name__ == "__main__":
    main()
