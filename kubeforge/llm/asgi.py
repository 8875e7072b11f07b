"""Raw ASGI pieces of the LLM routes: a size-limited body read that still lets the client finish sending (the drain
is kubeforge.serving.rawasgi's, shared with the classifier), JSON and server-sent-event responses, and noticing a
client that went away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kubeforge.llm.errors import APIError
from kubeforge.serving.rawasgi import DRAIN_LIMIT_BYTES, drain, drain_unread, header

JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"
DONE = b"data: [DONE]\n\n"
DRAIN_FACTOR = 16  # read and drop up to this many times the body limit before answering 413 anyway ...


def drain_bound(limit: int) -> int:
    """... and never less than the classifier's bound: a small limit (a test's 64 KiB) must not turn a client's
    few-MB body into a reset depending on the loopback's buffers."""
    return max(limit * DRAIN_FACTOR, DRAIN_LIMIT_BYTES)


def declared_length(scope: dict) -> int | None:
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def read_body(scope: dict, receive: Any, limit: int) -> bytes | None:
    """The request body, or APIError 413 once it is known to exceed ``limit``; None if the client left."""
    too_large = APIError(413, f"the request body exceeds the limit of {limit} bytes (KUBEFORGE_LLM_MAX_PAYLOAD_BYTES)",
                         code="payload_too_large")
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        await drain_unread(scope, receive, drain_bound(limit))
        raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            if message.get("more_body", False):
                await drain(receive, drain_bound(limit))
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_bytes(send: Any, status: int, body: bytes, content_type: bytes = JSON,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, error: APIError, close: bool = False) -> None:
    headers = error.headers() + ([(b"connection", b"close")] if close else [])
    await send_bytes(send, error.status, error.body(), headers=headers)


async def start_event_stream(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", EVENT_STREAM), (b"cache-control", b"no-cache"),
                            (b"x-accel-buffering", b"no")]})


async def send_event(send: Any, data: bytes) -> None:
    await send({"type": "http.response.body", "body": b"data: " + data + b"\n\n", "more_body": True})


async def end_event_stream(send: Any) -> None:
    await send({"type": "http.response.body", "body": DONE, "more_body": False})


def watch_disconnect(receive: Any, on_disconnect: Callable[[], None]) -> asyncio.Task:
    """A task that calls ``on_disconnect`` when the client goes away (cancel it once the response is sent)."""

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                on_disconnect()
                return

    return asyncio.ensure_future(watch())
