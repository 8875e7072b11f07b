"""The BentoML service that serves a kubeforge model directory (ONNX or safetensors; never a pickle).

Configuration comes from KUBEFORGE_SERVE_* variables (kubeforge.config.ServeConfig; the Helm chart renders them).
The model is found through KUBEFORGE_MODEL_DIR, or, inside a built Bento, through the BentoML model tag in
KUBEFORGE_MODEL_TAG (default ``kubeforge-model:latest``), which `bentoml build` copies into the Bento.

Endpoints: POST /predict, GET /livez, GET /readyz (200 only after the model loaded and a warm-up inference ran),
GET /metrics (Prometheus), GET /docs.json (OpenAPI).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException

from kubeforge.config import ServeConfig
from kubeforge.serving.runtime import ModelRuntime, RequestError

MODEL_DIR_ENV = "KUBEFORGE_MODEL_DIR"
MODEL_TAG_ENV = "KUBEFORGE_MODEL_TAG"
WARMUP_DELAY_ENV = "KUBEFORGE_SERVE_WARMUP_DELAY_S"  # lets tests observe the not-ready window; 0 in production
DEFAULT_MODEL_TAG = "kubeforge-model:latest"

CONFIG = ServeConfig.from_env()
logger = logging.getLogger("kubeforge.serving")


class PayloadLimit:
    """ASGI middleware: refuse bodies over the limit with 413 before they are buffered (no memory growth)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Any, size: str) -> None:
        body = json.dumps({"error": f"payload of {size} bytes exceeds the limit of {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, declared.decode())
            return
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BentoMLException(f"payload exceeds the limit of {self.max_bytes} bytes",
                                       error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return message

        await self.app(scope, counting_receive, send)


def _model_dir() -> str:
    if os.environ.get(MODEL_DIR_ENV):
        return os.environ[MODEL_DIR_ENV]
    return bentoml.models.get(os.environ.get(MODEL_TAG_ENV, DEFAULT_MODEL_TAG)).path


@bentoml.service(
    name="kubeforge-classifier",
    workers=CONFIG.workers,
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    # one log line per request costs more than an int8 inference; request counts and latency are in /metrics
    logging={"access": {"enabled": False}},
)
class KubeforgeClassifier:
    """Validates each request, predicts with the loaded runtime, answers 4xx for bad input and keeps serving."""

    def __init__(self) -> None:
        # Load in the background so the server answers at once: /readyz says 503 (not a connection timeout) until
        # the model is loaded and warmed up, and /livez fails if loading failed, so Kubernetes restarts the pod.
        self.ready = False
        self.load_error: str | None = None
        self.runtime: ModelRuntime | None = None
        threading.Thread(target=self._load, name="model-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            runtime = ModelRuntime.load(_model_dir(), CONFIG)
            time.sleep(float(os.environ.get(WARMUP_DELAY_ENV, "0")))
            runtime.warm_up()
            self.runtime = runtime
            self.ready = True
        except Exception as exc:  # surfaced through /livez and the log
            self.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("model failed to load: %s", self.load_error)

    def __is_ready__(self) -> bool:
        return self.ready

    def __is_alive__(self) -> bool:
        return self.load_error is None

    @bentoml.api(route="/predict")
    async def predict(self, instances: list[Any]) -> dict:
        """Body ``{"instances": [[...], ...]}`` or named features; returns one prediction per row."""
        if self.runtime is None:
            raise BentoMLException("the model is still loading; retry when /readyz is 200",
                                   error_code=HTTPStatus.SERVICE_UNAVAILABLE)
        try:
            X = self.runtime.parse(instances)
        except RequestError as error:
            raise BentoMLException(str(error), error_code=error.status) from None
        return {"predictions": self.runtime.predict(X), "model": self.runtime.describe()}


KubeforgeClassifier.add_asgi_middleware(PayloadLimit, max_bytes=CONFIG.max_payload_bytes)
