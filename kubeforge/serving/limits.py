"""Request-size limits and the raw ASGI responses every kubeforge route sends.

A body over the limit is refused with 413 before it is buffered (no memory growth), and the refusal reaches every
client: one that waits for ``Expect: 100-continue`` gets it at once and never sends the body; one that sends the whole
body before reading (Python's urllib, requests) would see a connection reset if the server answered and closed with
the body still arriving, so the rest of the body is read and discarded first (kubeforge.serving.rawasgi).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException

from kubeforge.serving.rawasgi import drain, drain_unread, header

JSON_BYTES = b"application/json"


def error_body(message: str) -> bytes:
    """The documented error shape of /predict, ``[{"error": "..."}]`` (the one BentoML's own 4xx answers use)."""
    return json.dumps([{"error": message}]).encode()


def route_path(scope: dict) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def send_json(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                    content_type: bytes = JSON_BYTES) -> None:
    """One complete raw ASGI response."""
    start = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": start + headers if headers else start})
    await send({"type": "http.response.body", "body": body})


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def declared_too_large(scope: dict, max_bytes: int) -> str | None:
    """The 413 message when the Content-Length header alone is over the limit, else None."""
    value = header(scope, b"content-length")
    if value is not None and value.isdigit() and int(value) > max_bytes:
        return f"payload of {value.decode()} bytes exceeds the limit of {max_bytes} bytes"
    return None


async def read_body(scope: dict, receive: Any, max_bytes: int) -> bytes:
    """The whole body, or PayloadTooLarge once it grows past the limit, raised after the rest was drained."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ConnectionAbortedError("the client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > max_bytes:
            if more:
                await drain(receive)
            raise PayloadTooLarge(f"payload exceeds the limit of {max_bytes} bytes")
        if not more:
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)


class PayloadLimit:
    """ASGI middleware for the routes BentoML serves itself: the same 413 rule as kubeforge's own routes."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = declared_too_large(scope, self.max_bytes)
        if message is not None:
            await drain_unread(scope, receive)
            await send_json(send, 413, error_body(message))
            return
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise PayloadTooLarge(f"payload exceeds the limit of {self.max_bytes} bytes")
            return message

        await self.app(scope, counting_receive, send)
