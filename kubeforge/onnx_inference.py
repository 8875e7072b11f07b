"""ONNX Runtime inference without torch: the one place that opens a kubeforge ONNX model.

Shared by the compression harness (which measures it) and the serving runtime (which serves it), so the latency the
report shows is the latency served; importing it never loads torch, so an ONNX-only worker stays small.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

ONNX_FILE = "model.onnx"
ONNX_INPUT, ONNX_LOGITS, ONNX_PROBABILITIES = "features", "logits", "probabilities"  # graph I/O names
Predictor = Callable[[np.ndarray], np.ndarray]


def onnx_session(onnx: bytes | str | Path, threads: int = 1):
    """One thread per session and no spinning: idle spinning threads steal the cores the HTTP loop needs, and no
    other option moved batch-1 latency here."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # QDQ -> QGemm fusion
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    source = onnx if isinstance(onnx, bytes) else str(onnx)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_predictor(session) -> Predictor:
    """Probabilities straight from the graph when it has them (kubeforge exports since the softmax moved inside);
    older graphs with only ``logits`` get the softmax in numpy."""
    import onnxruntime as ort

    run_options = ort.RunOptions()  # reused: passing None costs ~1.5 us per call in the Python binding
    if ONNX_PROBABILITIES in {output.name for output in session.get_outputs()}:
        def predict(X: np.ndarray) -> np.ndarray:
            return session.run([ONNX_PROBABILITIES], {ONNX_INPUT: np.ascontiguousarray(X, dtype=np.float32)},
                               run_options)[0]

        return predict

    def predict_from_logits(X: np.ndarray) -> np.ndarray:
        logits = session.run([ONNX_LOGITS], {ONNX_INPUT: np.ascontiguousarray(X, dtype=np.float32)}, run_options)[0]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    return predict_from_logits
