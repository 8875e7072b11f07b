"""Compression on the reference model: an MLP 64-1024-1024-10 trained on digits, every method measured side by side
by the same harness the compress step uses (1 intra-op thread, >= 300 timed runs per batch size in 5 interleaved
rounds, each re-warmed; every candidate returns class probabilities).

    python -m bench.compression [--runs 300]
Targets: int8 >= 3.9x smaller with <= 0.5 pt accuracy drop; best int8 path >= 5x lower p50 at batch 1 than torch fp32;
50 % structured pruning >= 1.5x faster at batch 32; a student with <= 25 % of the parameters keeps >= 97 % of the
teacher's accuracy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from bench._harness import write
from kubeforge.compression import Candidate
from kubeforge.onnx_inference import onnx_predictor, onnx_session
from kubeforge.compression.bench import ROUNDS, measure_all
from kubeforge.compression.distill import distill
from kubeforge.compression.onnx_int8 import onnx_int8
from kubeforge.compression.prune import prune_structured
from kubeforge.compression.quantize import int8_dynamic
from kubeforge.config import DataConfig, ModelConfig, TrainConfig
from kubeforge.data import load_table, split_table
from kubeforge.models import ModelSpec, build_model
from kubeforge.training import set_seed, train_model


def session_run_floor_us(runs: int) -> float:
    """p50 of one batch-1 call through the same predictor on a graph that only copies its input: the fixed cost of
    ``session.run`` from Python that no int8 kernel can remove."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["features"], ["probabilities"])], "copy",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 10])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    predict = onnx_predictor(onnx_session(model.SerializeToString(), threads=1))
    row = np.zeros((1, 10), dtype=np.float32)
    for _ in range(50):
        predict(row)
    times = np.empty(runs)
    for i in range(runs):
        started = time.perf_counter_ns()
        predict(row)
        times[i] = (time.perf_counter_ns() - started) / 1e3
    return float(np.percentile(times, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved timing rounds")
    args = parser.parse_args()
    if args.runs < 100 or args.rounds < 1:
        parser.error("--runs must be >= 100 and --rounds >= 1")
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
        "onnx-int8": onnx_int8(teacher, splits.X_train, calibration_batches=8),
        "prune-structured 50%": prune_structured(teacher, data, fraction=0.5, finetune_epochs=5),
        "distill [256, 256]": distill(teacher, data, hidden_sizes=[256, 256], epochs=30, temperature=3.0,
                                      alpha=0.5),
    }

    for name, candidate in candidates.items():
        candidate.name = name
    load_before = os.getloadavg()
    base, *measured = measure_all([teacher, *candidates.values()], splits.X_test, splits.y_test, threads=1,
                                  runs=args.runs, rounds=args.rounds)
    results = {"torch fp32": base, **dict(zip(candidates, measured, strict=True))}
    floor_us = session_run_floor_us(args.runs)
    load_after = os.getloadavg()
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
        "load_average_1_5_15": {"before": [round(v, 2) for v in load_before],
                                "after": [round(v, 2) for v in load_after]},
        "onnx_session_run_floor_us_b1": round(floor_us, 2),
        "meets_target": met,
        "measurements": {name: m.to_dict() for name, m in results.items()},
    }, command=f"python -m bench.compression --runs {args.runs} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
