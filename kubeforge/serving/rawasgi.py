"""Raw ASGI pieces every kubeforge HTTP layer shares: the classifier's front door (kubeforge.serving.limits, .http),
the LLM routes and the LLM gateway (kubeforge.llm.asgi, .tenancy). No BentoML import, so the gateway starts without it.

Why drain before a refusal: a client such as Python's urllib sends the whole body before it reads the answer, often
with ``Connection: close``; a server that answers and closes while body bytes are still unread makes the kernel reset
the connection, and that client sees a reset instead of the 413 or 503. So the rest of the body is read and dropped
(never buffered) up to a bound, then the refusal goes out; beyond the bound the connection is closed: nobody should
have to swallow gigabytes to say no. A client that waits for ``Expect: 100-continue`` never sends a body the server
has not asked for, so a refusal before the body is read does not read it (reading would ask for it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# The most of a refused body any kubeforge HTTP layer reads and drops before it answers anyway.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


def find_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a header, by its lower-case name (ASGI scopes and uvicorn's protocol lower-case them)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def header(scope: dict, name: bytes) -> bytes | None:
    return find_header(scope.get("headers", ()), name)


async def drain(receive: Any, limit: int = DRAIN_LIMIT_BYTES) -> bool:
    """Read and drop the rest of a body that is arriving, up to ``limit`` bytes; False if the client disconnected."""
    dropped = 0
    while dropped <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return False
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return True


async def drain_unread(scope: dict, receive: Any, limit: int = DRAIN_LIMIT_BYTES) -> bool:
    """``drain`` for a refusal before any of the body was read: nothing to read from a client that waits for
    ``100 Continue`` (receive() would send it)."""
    expect = header(scope, b"expect")
    if expect is not None and expect.lower() == b"100-continue":
        return True
    return await drain(receive, limit)
