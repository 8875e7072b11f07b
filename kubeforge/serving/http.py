"""The lean /predict route: raw body -> JSON -> contract checks -> (batched) inference -> JSON bytes.

It is a FastAPI app mounted on the BentoML service, so it still runs inside BentoML's request metrics, tracing,
timeout and max-concurrency middlewares, and its OpenAPI paths are merged into the service's document; what it skips
is the per-request IO-descriptor work of ``@bentoml.api`` (pydantic input model, a JSON schema rebuilt for every
response's media type, a thread-pool hop), which cost more than the int8 inference itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from kubeforge.serving.batching import MicroBatcher, Overloaded
from kubeforge.serving.runtime import ModelRuntime, RequestError

logger = logging.getLogger("kubeforge.serving")
JSON = "application/json"
JSON_BYTES = JSON.encode()
PREDICT_PATH = "/predict"


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class PayloadLimit:
    """ASGI middleware: refuse bodies over the limit with 413 before they are buffered (no memory growth)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Any, size: str) -> None:
        body = error_body(f"payload of {size} bytes exceeds the limit of {self.max_bytes} bytes")
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    await self._refuse(send, value.decode())
                    return
                break
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise PayloadTooLarge(f"payload exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)


class ConcurrencyLimit:
    """ASGI middleware: at most ``limit`` requests in flight per worker; the excess gets 503 at once, not a queue.

    BentoML's own max_concurrency answers 429, which tells a client it is at fault and keeps load balancers from
    retrying elsewhere; an overloaded server means 503. Probes and /metrics are never limited.
    """

    EXEMPT = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or route_path(scope) in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            body = error_body(f"overloaded: {self.limit} requests in flight in this worker (max_concurrency)")
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", JSON_BYTES), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


@dataclass
class ServingState:
    """What one worker serves with; filled by the model loader, read by every request."""

    runtime: ModelRuntime | None = None
    batcher: MicroBatcher | None = None
    load_error: str | None = None
    model_json: bytes = b"{}"

    def serve(self, runtime: ModelRuntime, on_batch: Callable[[int], None] | None = None) -> None:
        config = runtime.config
        self.batcher = MicroBatcher(runtime.predict_proba, config.max_batch_size, config.max_latency_ms, on_batch)
        self.model_json = json.dumps(runtime.describe(), separators=(",", ":")).encode()
        self.runtime = runtime  # last: a request sees a runtime only once everything else is in place


def error_body(message: str) -> bytes:
    """The documented error shape, ``[{"error": "..."}]`` (the one BentoML's own 4xx answers use)."""
    return json.dumps([{"error": message}]).encode()



class PredictRequest(BaseModel):
    instances: list[list[float] | dict[str, float]] = Field(
        description="rows of raw features: lists in training order, or objects of named features")


class Prediction(BaseModel):
    class_index: int
    class_name: str
    probabilities: list[float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: dict[str, Any]


ERRORS = {400: "malformed JSON or a bad row (the message names it)", 413: "too many rows or too large a body",
          503: "not ready yet, over max_concurrency, or queued past max_latency_ms"}


def route_path(scope: dict) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def answer(state: ServingState, body: bytes) -> tuple[int, bytes]:
    """Status and JSON body for one /predict request; every refusal names its problem."""
    runtime, batcher = state.runtime, state.batcher
    if runtime is None or batcher is None:
        return 503, error_body("the model is still loading; retry when /readyz is 200")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return 400, error_body(f"malformed JSON: {exc}")
    if not isinstance(payload, dict) or "instances" not in payload:
        return 400, error_body('the body must be a JSON object {"instances": [row, ...]}')
    try:
        rows = runtime.parse(payload["instances"])
    except RequestError as exc:
        return exc.status, error_body(str(exc))
    try:
        probabilities = await batcher.predict(rows)
    except Overloaded as exc:
        return 503, error_body(f"overloaded: {exc}")
    except Exception:  # a broken model must not take the worker down; the cause goes to the log
        logger.exception("inference failed")
        return 500, error_body("inference failed; see the server log")
    predictions = json.dumps(runtime.predictions(probabilities), separators=(",", ":")).encode()
    return 200, b'{"predictions":' + predictions + b',"model":' + state.model_json + b"}"


class PredictAPI(FastAPI):
    """A FastAPI app (so BentoML mounts it and merges its OpenAPI paths) whose POST /predict skips FastAPI's
    per-request machinery (middleware stack, routing, dependency solving): the route is one raw ASGI exchange."""

    def __init__(self, state: ServingState):
        super().__init__(title="kubeforge-classifier", openapi_url=None, docs_url=None, redoc_url=None)
        self.state = state

        @self.post(PREDICT_PATH, response_model=PredictResponse, summary="predict classes for rows of raw features",
                   responses={code: {"description": text} for code, text in ERRORS.items()},
                   openapi_extra={"requestBody": {"required": True, "content": {
                       JSON: {"schema": PredictRequest.model_json_schema()}}}})
        async def predict(request: Request) -> Response:
            """The same exchange through FastAPI, for callers that run this app on its own."""
            try:
                status, body = await answer(state, await request.body())
            except PayloadTooLarge as exc:
                status, body = 413, error_body(str(exc))
            return Response(body, status_code=status, media_type=JSON)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) != PREDICT_PATH:
            await super().__call__(scope, receive, send)
            return
        chunks = []
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except PayloadTooLarge as exc:
            status, body = 413, error_body(str(exc))
        else:
            status, body = await answer(self.state, b"".join(chunks))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", JSON_BYTES), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
