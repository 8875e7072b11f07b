"""POST /predict and v2 infer answered inside the HTTP protocol, below ASGI: the rules of kubeforge.serving.http.

Measured on 2 cores at 64 connections (bench/serving): a do-nothing ASGI app on uvicorn + httptools answers ~27 k
requests/s, the same protocol answering from its parser callbacks ~85 k. ASGI's per-request task, scope, receive and
send coroutines and two transport writes cost more than an int8 inference of a small MLP, so the inference routes
skip them: on the parser's callbacks a request is admitted (before its body is read), its rows are decoded and
handed to the batcher, and the batcher's callback writes the whole response at once. Admission, the request
contracts, the answers, the deadline rule and the request metrics are the ones the ASGI handlers use
(kubeforge.serving.http, .frontdoor); a FastRoute only says which decoder and answer a route has.

Anything unusual takes uvicorn's ASGI path unchanged, where the front door answers it by the same rules: other
routes and methods, a query string or trailing slash, no Content-Length (chunked) or one over the limit (the 413 path
drains the body), ``Expect: 100-continue``, HTTP/1.0, upgrades, a request pipelined behind a pending one, uvicorn's
own ``limit_concurrency``, and an admission policy with a queue (waiting needs a task). uvicorn's access log is not
written for fast requests (BentoML's is off in kubeforge's service; /metrics counts them).

Installed per worker by the service module (``install``): BentoML builds uvicorn's Config itself, without an ``http``
option, so the worker's "auto" and "httptools" protocol names are pointed at ``FastPathProtocol``. Without httptools
(the h11 stack) the module does not import and nothing changes. ``KUBEFORGE_SERVE_FAST_PATH=false`` turns it off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from kubeforge.serving import oip
from kubeforge.serving.admission import SHED_NOT_READY, Shed, Ticket
from kubeforge.serving.batching import MicroBatcher, Overloaded
from kubeforge.serving.http import (INFERENCE_FAILED, PREDICT_PATH, Handlers, check_finite, predict_rows, retry_after,
                                    v2_answer, v2_content_type, v2_request)
from kubeforge.serving.limits import JSON_BYTES, error_body
from kubeforge.serving.meters import LocalCounter, Meters
from kubeforge.serving.rawasgi import find_header
from kubeforge.serving.runtime import ModelRuntime, RequestError

logger = logging.getLogger("kubeforge.serving")
Record = Callable[[str, int, float], None]  # FrontDoor.record: route, status, perf_counter at arrival


class FastRoute:
    """One route the protocol answers itself: how its body becomes rows and its probabilities an answer, with the
    worker's handlers (admission, batcher) and the front door's request metrics."""

    label = ""  # the route label of kubeforge_http_requests_total, as the front door counts it

    def __init__(self, handlers: Handlers, record: Record, meters: Meters, answered: LocalCounter):
        self.handlers = handlers
        self.on_request = meters.start  # arms the metrics flush on a worker's first request
        self.answered = answered
        self._record = record
        self._refusals: dict[str, bytes] = {}

    @property
    def max_body(self) -> int:
        return self.handlers.state.max_payload_bytes

    @property
    def usable(self) -> bool:
        return self.handlers.state.admission.policy.max_queue == 0

    def record(self, status: int, started: float) -> None:
        self._record(self.label, status, started)
        self.answered.inc((self.label,))

    def decode(self, runtime: ModelRuntime, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[np.ndarray, Any]:
        """The rows, and what the answer needs of the request; RequestError names what is wrong."""
        raise NotImplementedError

    def answer(self, runtime: ModelRuntime, request: Any, probabilities: np.ndarray
               ) -> tuple[bytes, list[tuple[bytes, bytes]] | None, bytes]:
        """Body, extra headers and content type of the 200 answer."""
        raise NotImplementedError

    def error(self, message: str) -> bytes:
        raise NotImplementedError

    def refusal(self, message: str) -> bytes:
        """The body of a 503, encoded once per message: under overload most answers are one of a few refusals."""
        body = self._refusals.get(message)
        if body is None:
            body = self.error(message)
            if len(self._refusals) < 64:
                self._refusals[message] = body
        return body


class FastPredict(FastRoute):
    label = PREDICT_PATH

    def decode(self, runtime: ModelRuntime, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[np.ndarray, Any]:
        return predict_rows(runtime, body), None

    def answer(self, runtime: ModelRuntime, request: Any, probabilities: np.ndarray
               ) -> tuple[bytes, list[tuple[bytes, bytes]] | None, bytes]:
        return self.handlers.predict_answer(runtime, probabilities), None, JSON_BYTES

    def error(self, message: str) -> bytes:
        return error_body(message)


class FastInfer(FastRoute):
    """POST /v2/models/{name}[/versions/1]/infer of the Open Inference Protocol, JSON or binary tensors."""

    label = "/v2"

    def decode(self, runtime: ModelRuntime, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[np.ndarray, Any]:
        request = v2_request(runtime, body, find_header(headers, oip.HEADER_LENGTH))
        return request.rows, request

    def answer(self, runtime: ModelRuntime, request: Any, probabilities: np.ndarray
               ) -> tuple[bytes, list[tuple[bytes, bytes]] | None, bytes]:
        payload, headers = v2_answer(runtime, request, probabilities, self.handlers.state.model_name)
        return payload, headers, v2_content_type(headers)

    def error(self, message: str) -> bytes:
        return oip.error_json(message)


ROUTES: dict[bytes, FastRoute] = {}


class _NoEvent:
    """uvicorn's connection_lost sets its cycle's message event; an exchange has no reader waiting on one."""

    def set(self) -> None:
        pass


# A parked request (kubeforge.serving.admission) with a larger body is not read on until it has a slot: parked requests
# are bounded by connections only, and reading would hold up to max_payload_bytes each in the worker. Smaller bodies
# are in by the time the headers are parsed (one segment), and pausing them would cost two system calls for nothing
PARKED_BODY_READ_BYTES = 64 * 1024


class Exchange:
    """One request on the fast path. To the protocol it looks like uvicorn's RequestResponseCycle
    (``response_complete``, ``keep_alive``, ``disconnected``); to the batcher like an asyncio.Future."""

    __slots__ = ("protocol", "route", "headers", "keep_alive", "started", "chunks", "admitted", "ticket", "request",
                 "response_complete", "disconnected", "complete")
    message_event = _NoEvent()

    def __init__(self, protocol: FastPathProtocol, route: FastRoute, headers: list[tuple[bytes, bytes]],
                 keep_alive: bool):
        self.protocol = protocol
        self.route = route
        self.headers = headers
        self.keep_alive = keep_alive
        self.started = time.perf_counter()
        self.chunks: list[bytes] = []
        self.request: Any = None
        self.response_complete = False
        self.disconnected = False
        self.complete = False  # the whole body is in
        route.on_request()
        if protocol.refused_at:  # this connection's last request was refused: is the client back too soon?
            route.handlers.state.admission.came_back(protocol.refused_at)
            protocol.refused_at = 0.0
        # admitted, shed or parked (None: while refusing is futile) before a byte of the body is looked at
        self.admitted: tuple[ModelRuntime, MicroBatcher, Ticket] | Shed | None = route.handlers.admit_now(self)
        self.ticket: Ticket | None = None if self.admitted is None or isinstance(self.admitted, Shed) \
            else self.admitted[2]

    def refuse_if_shed(self) -> None:
        """A shed request is answered at once, before its body arrives (the rest of it is parsed and dropped)."""
        if isinstance(self.admitted, Shed):
            self.expire(self.admitted)

    def body(self, chunk: bytes) -> None:
        if not self.response_complete:
            self.chunks.append(chunk)

    def received(self) -> None:
        """The whole body is in: refuse a bad body, or hand the rows to the batcher (a parked request: once resumed)."""
        self.complete = True
        admitted = self.admitted
        if self.response_complete or admitted is None or isinstance(admitted, Shed):
            return
        runtime, batcher, ticket = admitted
        self.route.handlers.state.admission.received(ticket)
        try:
            rows, self.request = self.route.decode(runtime, b"".join(self.chunks), self.headers)
        except RequestError as exc:
            self.respond(exc.status, self.route.error(str(exc)))
            return
        self.chunks = []
        batcher.submit(rows, self, ticket.deadline)

    # admission's side while parked (kubeforge.serving.admission.Parked)
    def resume(self, ticket: Ticket) -> None:
        self.admitted = self.route.handlers.admitted(ticket)
        self.ticket = ticket
        self.protocol.flow.resume_reading()  # the rest of the body comes in (an expired one's 503 resumes it too)
        if self.complete:
            self.received()

    def expire(self, refusal: Shed) -> None:
        """Answer the refusal; one that steers the limit is remembered on the connection (``came_back``)."""
        if refusal.reason != SHED_NOT_READY:
            self.protocol.refused_at = self.route.handlers.state.admission.clock()
        self.respond(503, self.route.refusal(refusal.message), retry_after(refusal))

    # the batcher's side (kubeforge.serving.batching.Waiter)
    def cancelled(self) -> bool:
        return self.disconnected

    def done(self) -> bool:
        return self.response_complete or self.disconnected

    def set_result(self, probabilities: np.ndarray) -> None:
        route = self.route
        try:
            check_finite(probabilities)
            runtime = self.admitted[0]  # type: ignore[index]
            body, headers, content_type = route.answer(runtime, self.request, probabilities)
        except RequestError as exc:
            self.respond(exc.status, route.error(str(exc)))
        except Exception:  # raised into the batcher it would stop the loop that answers everyone else
            logger.exception("answering a request failed")
            self.respond(500, route.error(INFERENCE_FAILED))
        else:
            self.respond(200, body, headers, content_type)

    def set_exception(self, exception: BaseException) -> None:
        if isinstance(exception, Overloaded):
            shed = self.route.handlers.overloaded(exception)
            self.respond(503, self.route.refusal(shed.message), retry_after(shed))
            return
        logger.error("inference failed", exc_info=exception)
        self.respond(500, self.route.error(INFERENCE_FAILED))

    def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                content_type: bytes = JSON_BYTES) -> None:
        self._release()
        if self.response_complete or self.disconnected:
            return
        self.response_complete = True
        try:
            self.protocol.write_response(status, body, headers, content_type, self.keep_alive)
            self.route.record(status, self.started)
        except Exception:  # called from the batcher's loop: log, drop this connection, keep answering the others
            logger.exception("writing a response failed")
            self.protocol.transport.close()

    def abandon(self) -> None:
        """The client went away before its answer: free the slot; the batcher skips the rows if not yet run."""
        self.disconnected = True
        self._release()

    def _release(self) -> None:
        if self.ticket is not None:
            ticket, self.ticket = self.ticket, None
            self.route.handlers.state.admission.done(ticket)


class FastPathProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering the routes in ROUTES itself when the request is plain."""

    exchange: Exchange | None = None
    refused_at = 0.0  # when this connection's last request was shed (0: it was not)

    def on_headers_complete(self) -> None:
        route = ROUTES.get(self.url)
        length = None if route is None else self._plain_length(route)
        if length is not None:
            exchange = self.exchange = self.cycle = Exchange(  # type: ignore[assignment]
                self, route, self.headers, self.parser.should_keep_alive())  # type: ignore[arg-type]
            exchange.refuse_if_shed()
            if exchange.admitted is None and length > PARKED_BODY_READ_BYTES:
                self.flow.pause_reading()  # parked: the rest of a large body waits in the socket's buffers
            return
        super().on_headers_complete()

    def _plain_length(self, route: FastRoute) -> int | None:
        """The declared body length of a request the fast path answers; None sends it down the ASGI path."""
        parser = self.parser
        if (parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or self.expect_100_continue
                or parser.should_upgrade() or self.limit_concurrency is not None or not route.usable):
            return None
        if self.cycle is not None and not self.cycle.response_complete:  # pipelined behind a pending request
            return None
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                return None
        if length is None or not length.isdigit():
            return None
        declared = int(length)
        return declared if declared <= route.max_body else None

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is Exchange:
            cycle.body(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if type(cycle) is not Exchange:
            super().on_message_complete()
            return
        try:
            cycle.received()
        except Exception:  # raised into httptools it would become a 400 "invalid HTTP request"
            logger.exception("the fast path failed")
            cycle.respond(500, cycle.route.error(INFERENCE_FAILED))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.exchange is not None and not self.exchange.response_complete:
            self.exchange.abandon()
        super().connection_lost(exc)

    def write_response(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None,
                       content_type: bytes, keep_alive: bool) -> None:
        """The whole response in one write, with uvicorn's default headers (date), then uvicorn's bookkeeping."""
        if self.transport.is_closing():
            return
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += (name, b": ", value, b"\r\n")
        parts += (b"content-type: ", content_type, b"\r\ncontent-length: %d\r\n" % len(body))
        for name, value in headers or ():
            parts += (name, b": ", value, b"\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.transport.write(b"".join(parts))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()


def install(handlers: Handlers, record: Record, meters: Meters) -> None:
    """Answer /predict and the v2 infer routes of this worker's model on the fast path: the routes are registered
    and uvicorn's protocol names pointed at FastPathProtocol (before uvicorn loads its config)."""
    from uvicorn import config

    answered = meters.add(LocalCounter("kubeforge_fast_path_requests_total",
                                       "requests answered inside the HTTP protocol, below ASGI", ["route"]))
    predict, infer = (route(handlers, record, meters, answered) for route in (FastPredict, FastInfer))
    model = f"/v2/models/{handlers.state.model_name}"
    ROUTES.update({PREDICT_PATH.encode(): predict, f"{model}/infer".encode(): infer,
                   f"{model}/versions/{oip.MODEL_VERSION}/infer".encode(): infer})
    config.HTTP_PROTOCOLS["auto"] = config.HTTP_PROTOCOLS["httptools"] = f"{__name__}:{FastPathProtocol.__name__}"
