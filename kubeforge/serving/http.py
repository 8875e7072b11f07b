"""The lean /predict route: raw body -> JSON -> contract checks -> (batched) inference -> JSON bytes.

It is a FastAPI app mounted on the BentoML service, so it still runs inside BentoML's request metrics and timeout
middlewares and kubeforge's limits (kubeforge.serving.limits), and its OpenAPI paths are merged into the service's
document; what it skips
is the per-request IO-descriptor work of ``@bentoml.api`` (pydantic input model, a JSON schema rebuilt for every
response's media type, a thread-pool hop), which cost more than the int8 inference itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from kubeforge.serving.batching import MicroBatcher, Overloaded
from kubeforge.serving.limits import PayloadTooLarge, error_body, route_path, send_json
from kubeforge.serving.runtime import ModelRuntime, RequestError

logger = logging.getLogger("kubeforge.serving")
JSON = "application/json"
PREDICT_PATH = "/predict"


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
        await send_json(send, status, body)
