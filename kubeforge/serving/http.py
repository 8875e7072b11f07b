"""kubeforge's own routes, as raw ASGI handlers: POST /predict, the Open Inference Protocol v2 and the OpenAPI document.

The front door (kubeforge.serving.frontdoor) calls them before BentoML's middleware stack, so a request costs one
admission decision, one body read, stdlib ``json``, the contract checks, a (batched) inference and pre-assembled JSON
bytes. A request is admitted or shed (kubeforge.serving.admission) before its body is read; an admitted one whose
deadline passes before its batch is formed is dropped before inference. Each handler returns the status it sent, for
the front door's request metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from kubeforge.serving import oip
from kubeforge.serving.admission import SHED_DEADLINE, Admission, Parked, Shed, Ticket, retry_headers
from kubeforge.serving.batching import MicroBatcher, Overloaded
from kubeforge.serving.limits import (JSON_BYTES, PayloadTooLarge, declared_too_large, error_body, read_body,
                                      route_path, send_json)
from kubeforge.serving.openapi import openapi_document
from kubeforge.serving.rawasgi import drain_unread, header
from kubeforge.serving.runtime import ModelRuntime, RequestError

logger = logging.getLogger("kubeforge.serving")
PREDICT_PATH = "/predict"
OCTET_STREAM = b"application/octet-stream"
NOT_LOADED = "the model is still loading; retry when /readyz is 200"
INFERENCE_FAILED = "inference failed; see the server log"


@dataclass
class ServingState:
    """What one worker serves with; filled by the model loader, read by every request."""

    admission: Admission
    model_name: str
    max_payload_bytes: int
    runtime: ModelRuntime | None = None
    batcher: MicroBatcher | None = None
    load_error: str | None = None
    model_json: bytes = b"{}"
    _documents: dict[bool, bytes] = field(default_factory=dict)

    def serve(self, runtime: ModelRuntime, on_batch: Callable[[int], None] | None = None) -> None:
        config = runtime.config
        admission = self.admission
        self.batcher = batcher = MicroBatcher(runtime.predict_proba, config.max_batch_size, on_batch,
                                              clock=admission.clock, slice_answers=admission.slice_answers)
        admission.leaving = lambda: batcher.pending
        self.model_json = json.dumps(runtime.describe(), separators=(",", ":")).encode()
        self._documents.clear()
        self.runtime = runtime  # last: a request sees a runtime only once everything else is in place

    def document(self) -> bytes:
        """The OpenAPI document, with the loaded model's exact request and response shapes once it is loaded."""
        loaded = self.runtime is not None
        if loaded not in self._documents:
            self._documents[loaded] = json.dumps(openapi_document(
                self.runtime, self.model_name, self.max_payload_bytes)).encode()
        return self._documents[loaded]


def retry_after(shed: Shed) -> list[tuple[bytes, bytes]]:
    return retry_headers(shed.retry_after_s)


def predict_rows(runtime: ModelRuntime, body: bytes) -> np.ndarray:
    """The rows of a /predict body, or RequestError naming what is wrong with it."""
    try:
        payload = orjson.loads(body)
    except ValueError:
        # orjson refuses NaN/Infinity literals and integers beyond 64 bits; the stdlib reads them, so the row checks
        # can name the feature, and words a truly malformed body for the client
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict) or "instances" not in payload:
        raise RequestError('the body must be a JSON object {"instances": [row, ...]}')
    return runtime.parse(payload["instances"])


def v2_request(runtime: ModelRuntime, body: bytes, length: bytes | None) -> oip.InferRequest:
    """An Open Inference Protocol v2 infer request (JSON, or binary tensors after a JSON header of ``length``)."""
    if length is not None and not length.isdigit():
        raise RequestError(f"Inference-Header-Content-Length must be a byte count, not {length!r}")
    return oip.parse_infer_request(body, int(length) if length is not None else None, runtime.spec,
                                   runtime.config.max_instances)


def v2_answer(runtime: ModelRuntime, request: oip.InferRequest, probabilities: np.ndarray, model_name: str
              ) -> tuple[bytes, list[tuple[bytes, bytes]] | None]:
    """The 200 body of a v2 infer request and, when an output is binary, the header giving its JSON part's length."""
    payload, header_length = oip.encode_infer_response(request, probabilities, runtime.spec.class_names, model_name)
    return payload, ([(oip.HEADER_LENGTH, header_length)] if header_length else None)


def v2_content_type(headers: list[tuple[bytes, bytes]] | None) -> bytes:
    return OCTET_STREAM if headers and headers[0][0] == oip.HEADER_LENGTH else JSON_BYTES


def check_finite(probabilities: np.ndarray) -> None:
    """Finite float32 inputs far outside the training range can overflow the model: refuse, naming the row."""
    if not np.isfinite(probabilities).all():
        index = int(np.argwhere(~np.isfinite(probabilities))[0][0])
        raise RequestError(f"instance {index}: the model's output is not finite for this row; its values are "
                           "likely far outside the range of the training data")


class Handlers:
    """The routes of one worker, bound to its state."""

    def __init__(self, state: ServingState):
        self.state = state

    async def _admit(self, scope: dict, receive: Any, send: Any, errors: Callable[[str], bytes]
                     ) -> tuple[ModelRuntime, MicroBatcher, Ticket] | int:
        """Size check, readiness and admission, all before the body is read; the status sent when refused."""
        state = self.state
        too_large = declared_too_large(scope, state.max_payload_bytes)
        if too_large is not None:
            await drain_unread(scope, receive)
            await send_json(send, 413, errors(too_large))
            return 413
        runtime, batcher = state.runtime, state.batcher
        if state.admission.policy.max_queue == 0 or runtime is None or batcher is None:
            admitted = self.admit_now()
        else:  # the queueing policy: wait for a slot
            ticket = await state.admission.enter()
            admitted = ticket if isinstance(ticket, Shed) else (runtime, batcher, ticket)
        if isinstance(admitted, Shed):
            await send_json(send, 503, errors(admitted.message), retry_after(admitted))
            return 503
        return admitted

    def admit_now(self, park: Parked | None = None) -> tuple[ModelRuntime, MicroBatcher, Ticket] | Shed | None:
        """Readiness and admission without waiting (the policy has no queue): the fast path's, and ``_admit``'s.
        None: parked (kubeforge.serving.admission), ``park`` resumes with a ticket or expires with a refusal."""
        runtime, batcher = self.state.runtime, self.state.batcher
        if runtime is None or batcher is None:
            return self.state.admission.refuse_not_ready(NOT_LOADED)
        ticket = self.state.admission.admit(park)
        return ticket if ticket is None or isinstance(ticket, Shed) else self.admitted(ticket)

    def admitted(self, ticket: Ticket) -> tuple[ModelRuntime, MicroBatcher, Ticket]:
        """What an admitted request works with: admit_now's, and a parked request's once given a slot (a loaded
        model stays loaded)."""
        runtime, batcher = self.state.runtime, self.state.batcher
        assert runtime is not None and batcher is not None
        return runtime, batcher, ticket

    def overloaded(self, exc: Overloaded) -> Shed:
        """The 503 for a request whose deadline passed before its batch was formed (counted as timed out)."""
        admission = self.state.admission
        admission.timed_out()
        return Shed(SHED_DEADLINE, f"overloaded: {exc}; retry later", admission.policy.retry_after_s)

    async def _infer(self, batcher: MicroBatcher, rows: np.ndarray, ticket: Ticket) -> np.ndarray | Shed:
        """Probabilities, a Shed when the deadline passed first, or RequestError for rows the model cannot take."""
        try:
            probabilities = await batcher.predict(rows, ticket.deadline)
        except Overloaded as exc:
            return self.overloaded(exc)
        check_finite(probabilities)
        return probabilities

    async def predict(self, scope: dict, receive: Any, send: Any) -> int:
        admitted = await self._admit(scope, receive, send, error_body)
        if isinstance(admitted, int):
            return admitted
        runtime, batcher, ticket = admitted
        headers = None
        try:
            try:
                body = await read_body(scope, receive, self.state.max_payload_bytes)
            except PayloadTooLarge as exc:
                status, payload = 413, error_body(str(exc))
            else:
                status, payload, headers = await self._predict(runtime, batcher, body, ticket)
        finally:
            self.state.admission.done(ticket)
        await send_json(send, status, payload, headers)
        return status

    async def _predict(self, runtime: ModelRuntime, batcher: MicroBatcher, body: bytes, ticket: Ticket
                       ) -> tuple[int, bytes, list | None]:
        self.state.admission.received(ticket)
        try:
            rows = predict_rows(runtime, body)
        except RequestError as exc:
            return exc.status, error_body(str(exc)), None
        try:
            probabilities = await self._infer(batcher, rows, ticket)
        except RequestError as exc:
            return exc.status, error_body(str(exc)), None
        except Exception:  # a broken model must not take the worker down; the cause goes to the log
            logger.exception("inference failed")
            return 500, error_body(INFERENCE_FAILED), None
        if isinstance(probabilities, Shed):
            return 503, error_body(probabilities.message), retry_after(probabilities)
        return 200, self.predict_answer(runtime, probabilities), None

    def predict_answer(self, runtime: ModelRuntime, probabilities: np.ndarray) -> bytes:
        """The 200 body of /predict for finite probabilities."""
        return (b'{"predictions":' + runtime.predictions_json(probabilities) + b',"model":' + self.state.model_json
                + b"}")

    async def document(self, scope: dict, receive: Any, send: Any) -> int:
        await send_json(send, 200, self.state.document())
        return 200

    async def v2(self, scope: dict, receive: Any, send: Any) -> int:
        """/v2, /v2/health/{live,ready}, /v2/models/{name}[/versions/1][/ready|/infer]."""
        parts = route_path(scope).rstrip("/").split("/")[2:]
        method = scope["method"]
        if parts[:1] == ["models"] and len(parts) >= 2:
            name, rest = parts[1], parts[2:]
            if rest[:1] == ["versions"]:
                if rest[1:2] != [oip.MODEL_VERSION]:
                    return await self._v2_error(send, 404, f"model {name!r} has no version {'/'.join(rest[1:2])!r}; "
                                                           f"it has {oip.MODEL_VERSION!r}")
                rest = rest[2:]
            if name != self.state.model_name:
                return await self._v2_error(send, 404, f"unknown model {name!r}; this server serves "
                                                       f"{self.state.model_name!r}")
            if rest == ["infer"]:
                return await self._allow(send, method, "POST") or await self.v2_infer(scope, receive, send)
            if rest == ["ready"]:
                return await self._allow(send, method, "GET") or await self._v2_ready(send, {"name": name})
            if not rest:
                return await self._allow(send, method, "GET") or await self._v2_metadata(send)
        elif parts == ["health", "live"]:
            if self.state.load_error is not None:
                return await self._allow(send, method, "GET") or await self._v2_error(
                    send, 503, f"the model failed to load: {self.state.load_error}")
            return await self._allow(send, method, "GET") or await self._v2_json(send, 200, {"live": True})
        elif parts == ["health", "ready"]:
            return await self._allow(send, method, "GET") or await self._v2_ready(send, {})
        elif not parts:
            from kubeforge import __version__

            return await self._allow(send, method, "GET") or await self._v2_json(
                send, 200, {"name": "kubeforge", "version": __version__, "extensions": ["binary_tensor_data"]})
        return await self._v2_error(send, 404, f"no such route: {route_path(scope)}")

    async def _allow(self, send: Any, method: str, allowed: str) -> int:
        if method == allowed or (allowed == "GET" and method == "HEAD"):
            return 0
        await send_json(send, 405, oip.error_json(f"method {method} not allowed; use {allowed}"),
                        [(b"allow", allowed.encode())])
        return 405

    async def _v2_json(self, send: Any, status: int, body: dict) -> int:
        await send_json(send, status, json.dumps(body).encode())
        return status

    async def _v2_error(self, send: Any, status: int, message: str) -> int:
        await send_json(send, status, oip.error_json(message))
        return status

    async def _v2_ready(self, send: Any, body: dict) -> int:
        if self.state.runtime is None:
            return await self._v2_error(send, 503, NOT_LOADED)
        return await self._v2_json(send, 200, {**body, "ready": True})

    async def _v2_metadata(self, send: Any) -> int:
        runtime = self.state.runtime
        if runtime is None:
            return await self._v2_error(send, 503, NOT_LOADED)
        return await self._v2_json(send, 200, oip.model_metadata(self.state.model_name, runtime.spec, runtime.engine))

    async def v2_infer(self, scope: dict, receive: Any, send: Any) -> int:
        admitted = await self._admit(scope, receive, send, oip.error_json)
        if isinstance(admitted, int):
            return admitted
        runtime, batcher, ticket = admitted
        headers, content_type = None, JSON_BYTES
        try:
            try:
                body = await read_body(scope, receive, self.state.max_payload_bytes)
            except PayloadTooLarge as exc:
                status, payload = 413, oip.error_json(str(exc))
            else:
                status, payload, headers = await self._v2_infer(runtime, batcher, scope, body, ticket)
                content_type = v2_content_type(headers)
        finally:
            self.state.admission.done(ticket)
        await send_json(send, status, payload, headers, content_type)
        return status

    async def _v2_infer(self, runtime: ModelRuntime, batcher: MicroBatcher, scope: dict, body: bytes,
                        ticket: Ticket) -> tuple[int, bytes, list | None]:
        self.state.admission.received(ticket)
        try:
            request = v2_request(runtime, body, header(scope, oip.HEADER_LENGTH))
        except RequestError as exc:
            return exc.status, oip.error_json(str(exc)), None
        try:
            probabilities = await self._infer(batcher, request.rows, ticket)
        except RequestError as exc:
            return exc.status, oip.error_json(str(exc)), None
        except Exception:
            logger.exception("inference failed")
            return 500, oip.error_json(INFERENCE_FAILED), None
        if isinstance(probabilities, Shed):
            return 503, oip.error_json(probabilities.message), retry_after(probabilities)
        return (200, *v2_answer(runtime, request, probabilities, self.state.model_name))
