"""The BentoML service that serves a kubeforge model directory (ONNX or safetensors; never a pickle).

Configuration comes from KUBEFORGE_SERVE_* variables (kubeforge.config.ServeConfig; the Helm chart renders them).
The model is found through KUBEFORGE_MODEL_DIR, or, inside a built Bento, through the BentoML model tag in
KUBEFORGE_MODEL_TAG (default ``kubeforge-model:latest``), which `bentoml build` copies into the Bento.

Endpoints: POST /predict and the Open Inference Protocol v2 (/v2/...), answered by kubeforge's front door
(kubeforge.serving.frontdoor, kubeforge.serving.http) after admission control (kubeforge.serving.admission); GET
/schema.json and /docs.json (OpenAPI 3); and BentoML's GET /livez, GET /readyz (200 only after the model loaded and a
warm-up inference ran, in every worker of the pod: kubeforge.serving.readiness) and GET /metrics (Prometheus).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time

import bentoml

from kubeforge.config import ServeConfig
from kubeforge.serving.admission import Admission, AdmissionPolicy
from kubeforge.serving.frontdoor import FrontDoor, FrontDoorService
from kubeforge.serving.http import PREDICT_PATH, Handlers, ServingState
from kubeforge.serving.lifecycle import BackgroundLoading
from kubeforge.serving.limits import PayloadLimit
from kubeforge.serving.meters import LocalHistogram, Meters
from kubeforge.serving.readiness import WorkerReadiness
from kubeforge.serving.runtime import ModelRuntime

MODEL_DIR_ENV = "KUBEFORGE_MODEL_DIR"
MODEL_TAG_ENV = "KUBEFORGE_MODEL_TAG"
# lets tests observe the not-ready window; comma-separated: per worker (the last value for the rest); 0 in production
WARMUP_DELAY_ENV = "KUBEFORGE_SERVE_WARMUP_DELAY_S"
DEFAULT_MODEL_TAG = "kubeforge-model:latest"

CONFIG = ServeConfig.from_env()
METERS = Meters()


def admission_policy(config: ServeConfig) -> AdmissionPolicy:
    """The pod-wide settings split evenly across the pod's workers (each worker admits on its own)."""
    def per_worker(count: int) -> int:
        return math.ceil(count / config.workers)

    return AdmissionPolicy(max_concurrency=per_worker(config.max_concurrency), max_queue=per_worker(config.max_queue),
                           deadline_s=config.max_latency_ms / 1000, mode=config.limit_mode,
                           latency_target_s=config.latency_target_ms / 1000,
                           min_concurrency=per_worker(config.min_concurrency), retry_after_s=config.retry_after_s)


STATE = ServingState(admission=Admission(admission_policy(CONFIG), METERS, service="classifier"),
                     model_name=CONFIG.model_name, max_payload_bytes=CONFIG.max_payload_bytes)
HANDLERS = Handlers(STATE)
logger = logging.getLogger("kubeforge.serving")


BATCH_ROWS = METERS.add(LocalHistogram("kubeforge_inference_batch_rows",
                                       "rows per inference call (requests merged by batching)",
                                       (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)))


def front_door(app):
    """BentoML's app behind kubeforge's routes (FrontDoorService calls this in each worker, before uvicorn starts)."""
    door = FrontDoor(app, routes={PREDICT_PATH: HANDLERS.predict, "/schema.json": HANDLERS.document,
                                  "/docs.json": HANDLERS.document},
                     prefixes={"/v2": HANDLERS.v2}, meters=METERS)
    if CONFIG.fast_path:
        try:
            from kubeforge.serving import fastpath  # needs httptools
        except ImportError:
            logger.info("kubeforge: no httptools, so /predict is served through ASGI")
        else:
            fastpath.install(HANDLERS, door.record, METERS)
    return door


def _model_dir() -> str:
    if os.environ.get(MODEL_DIR_ENV):
        return os.environ[MODEL_DIR_ENV]
    return bentoml.models.get(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG)).path


def _warmup_delay(worker: int | None) -> float:
    delays = [float(value) for value in os.environ.get(WARMUP_DELAY_ENV, "0").split(",")]
    return delays[min((worker or 1) - 1, len(delays) - 1)]


@bentoml.service(
    name="kubeforge-classifier",
    service_class=FrontDoorService,
    workers=CONFIG.workers,
    traffic={"timeout": CONFIG.timeout_s},  # max_concurrency: kubeforge's admission (503, not BentoML's 429)
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    # one log line per request costs more than an int8 inference; request counts and latency are in /metrics
    logging={"access": {"enabled": False}},
)
class KubeforgeClassifier(BackgroundLoading):
    """Loads the model in the background; /predict and /v2 are served by the front door (kubeforge.serving.http)."""

    __front_door__ = staticmethod(front_door)

    def __init__(self) -> None:
        self.start_loading(STATE, CONFIG.workers, self._load, "model-loader")  # kubeforge.serving.lifecycle

    @staticmethod
    def _load(readiness: WorkerReadiness) -> None:
        try:
            runtime = ModelRuntime.load(_model_dir(), CONFIG)
            time.sleep(_warmup_delay(readiness.index))
            runtime.warm_up()
            # Everything alive now lives as long as the worker: move it out of the collector's reach, so a full
            # collection walks only per-request garbage instead of every module and model object (no tail stalls).
            gc.collect()
            gc.freeze()
            STATE.serve(runtime, on_batch=BATCH_ROWS.observe)
            readiness.ready()
        except Exception as exc:  # surfaced through /livez and the log
            STATE.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("model failed to load: %s", STATE.load_error)


KubeforgeClassifier.add_asgi_middleware(PayloadLimit, max_bytes=CONFIG.max_payload_bytes)
