"""ASGI middlewares that protect a worker before any work starts: a body-size limit and a concurrency limit."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException

JSON_BYTES = b"application/json"


def error_body(message: str) -> bytes:
    """The documented error shape, ``[{"error": "..."}]`` (the one BentoML's own 4xx answers use)."""
    return json.dumps([{"error": message}]).encode()


def route_path(scope: dict) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def send_json(send: Any, status: int, body: bytes) -> None:
    """One complete raw ASGI response with a JSON body."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON_BYTES), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def refuse(send: Any, status: int, message: str) -> None:
    await send_json(send, status, error_body(message))


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class PayloadLimit:
    """ASGI middleware: refuse bodies over the limit with 413 before they are buffered (no memory growth)."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    await refuse(send, 413, f"payload of {value.decode()} bytes exceeds the limit of "
                                            f"{self.max_bytes} bytes")
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
            await refuse(send, 503, f"overloaded: {self.limit} requests in flight in this worker (max_concurrency)")
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
