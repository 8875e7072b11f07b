"""The BentoML service that serves a kubeforge model directory (ONNX or safetensors; never a pickle).

Configuration comes from KUBEFORGE_SERVE_* variables (kubeforge.config.ServeConfig; the Helm chart renders them).
The model is found through KUBEFORGE_MODEL_DIR, or, inside a built Bento, through the BentoML model tag in
KUBEFORGE_MODEL_TAG (default ``kubeforge-model:latest``), which `bentoml build` copies into the Bento.

Endpoints: POST /predict (kubeforge.serving.http, mounted on the service), GET /livez, GET /readyz (200 only after the
model loaded and a warm-up inference ran), GET /metrics (Prometheus), GET /docs.json (OpenAPI).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
import time

import bentoml

from kubeforge.config import ServeConfig
from kubeforge.serving.http import PREDICT_PATH, PredictAPI, ServingState
from kubeforge.serving.limits import ConcurrencyLimit, PayloadLimit
from kubeforge.serving.runtime import ModelRuntime

MODEL_DIR_ENV = "KUBEFORGE_MODEL_DIR"
MODEL_TAG_ENV = "KUBEFORGE_MODEL_TAG"
WARMUP_DELAY_ENV = "KUBEFORGE_SERVE_WARMUP_DELAY_S"  # lets tests observe the not-ready window; 0 in production
DEFAULT_MODEL_TAG = "kubeforge-model:latest"

CONFIG = ServeConfig.from_env()
STATE = ServingState()
logger = logging.getLogger("kubeforge.serving")


def _traces_are_collected() -> bool:
    from bentoml._internal.configuration.containers import BentoMLContainer

    tracing = BentoMLContainer.config.tracing
    return tracing.exporter_type.get() is not None and (tracing.sample_rate.get() or 0) > 0


def _batch_rows_histogram():
    """Rows per inference call, in /metrics: shows whether batching merges requests under the live load."""
    from prometheus_client import Histogram  # imported in the worker, after BentoML set up multiprocess metrics

    return Histogram("kubeforge_inference_batch_rows", "rows per inference call (requests merged by batching)",
                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))


def _model_dir() -> str:
    if os.environ.get(MODEL_DIR_ENV):
        return os.environ[MODEL_DIR_ENV]
    return bentoml.models.get(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG)).path


@bentoml.service(
    name="kubeforge-classifier",
    workers=CONFIG.workers,
    traffic={"timeout": CONFIG.timeout_s},  # max_concurrency: ConcurrencyLimit below (503, not BentoML's 429)
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    # one log line per request costs more than an int8 inference; request counts and latency are in /metrics
    logging={"access": {"enabled": False}},
    # a span per prediction costs more than the inference: make spans only when BentoML's config sends them somewhere
    tracing={} if _traces_are_collected() else {"excluded_urls": [PREDICT_PATH]},
)
@bentoml.asgi_app(PredictAPI(STATE), path="/")
class KubeforgeClassifier:
    """Loads the model in the background; /predict is served by the mounted route in kubeforge.serving.http."""

    def __init__(self) -> None:
        # Load in the background so the server answers at once: /readyz says 503 (not a connection timeout) until
        # the model is loaded and warmed up, and /livez fails if loading failed, so Kubernetes restarts the pod.
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    @staticmethod
    def _load() -> None:
        try:
            runtime = ModelRuntime.load(_model_dir(), CONFIG)
            time.sleep(float(os.environ.get(WARMUP_DELAY_ENV, "0")))
            runtime.warm_up()
            # Everything alive now lives as long as the worker: move it out of the collector's reach, so a full
            # collection walks only per-request garbage instead of every module and model object (no tail stalls).
            gc.collect()
            gc.freeze()
            STATE.serve(runtime, on_batch=_batch_rows_histogram().observe)
        except Exception as exc:  # surfaced through /livez and the log
            STATE.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("model failed to load: %s", STATE.load_error)

    async def __is_ready__(self) -> bool:
        return STATE.runtime is not None

    async def __is_alive__(self) -> bool:
        return STATE.load_error is None


KubeforgeClassifier.add_asgi_middleware(ConcurrencyLimit, limit=math.ceil(CONFIG.max_concurrency / CONFIG.workers))
KubeforgeClassifier.add_asgi_middleware(PayloadLimit, max_bytes=CONFIG.max_payload_bytes)
