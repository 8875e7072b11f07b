"""One upstream as the gateway sees it: a pooled HTTP client (aiohttp: measured lighter per request and per chunk
than httpx here, which matters when the gateway shares the upstream's machine), a fair gate in front of it, the
models it lists, and the two ways a response comes back: whole (usage read from its body) or as a stream passed on
event by event (usage read from the last chunk, which the gateway asks for and drops again if the client did not).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kubeforge.llm.errors import SERVER_ERROR, APIError
from kubeforge.llm.tenancy.fair import FairGate
from kubeforge.llm.tenancy.gateway_settings import ANY_MODEL, GatewaySettings, UpstreamConfig

logger = logging.getLogger("kubeforge.llm")
USAGE_MARKERS = (b'"usage":{', b'"usage": {')
# framed by the gateway itself (uvicorn adds date and server)
HOP_HEADERS = {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"date", b"server"}


def unavailable(upstream: UpstreamConfig, detail: str) -> APIError:
    return APIError(502, f"upstream {upstream.name} is unavailable: {detail}; other models keep being served",
                    type=SERVER_ERROR, code="upstream_unavailable")


class Upstream:
    def __init__(self, config: UpstreamConfig, settings: GatewaySettings):
        self.config = config
        self.settings = settings
        self.gate = FairGate(config.max_in_flight, settings.max_queue_wait_s)
        self.base_models: set[str] = set(config.base_models)
        self.listed: dict[str, dict] = {}  # what a '*' upstream's /v1/models said, by id
        self.up = True
        self._session: Any = None

    @property
    def serves_anything(self) -> bool:
        return self.config.any_model

    def serves(self, model: str) -> bool:
        return model in self.config.models or model in self.config.base_models

    def session(self) -> Any:
        if self._session is None:  # created on the worker's running loop
            import aiohttp

            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s,
                                            sock_read=self.settings.timeout_s)
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(self.config.url, timeout=timeout, connector=connector,
                                                  auto_decompress=False, skip_auto_headers=("User-Agent",))
        return self._session

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
                   "accept-encoding": "identity"}  # usage is read from the body: no compression
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return headers

    async def refresh_models(self) -> None:
        """Read a '*' upstream's /v1/models (base models: the entries without a parent)."""
        import aiohttp

        try:
            async with self.session().get("/v1/models", headers=self.headers()) as response:
                if response.status != 200:
                    raise aiohttp.ClientError(f"HTTP {response.status}")
                data = json.loads(await response.read())
            self.listed = {entry["id"]: entry for entry in data.get("data", []) if isinstance(entry, dict)}
            self.base_models = set(self.config.base_models) | {i for i, e in self.listed.items() if not e.get("parent")}
            self.up = True
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError) as exc:
            if self.up:
                logger.warning("upstream %s: /v1/models failed: %s", self.config.name, exc)
            self.up = False

    def model_ids(self) -> list[str]:
        static = [m for m in (*self.config.base_models, *self.config.models) if m != ANY_MODEL]
        return list(dict.fromkeys([*static, *self.listed]))

    async def post(self, path: str, body: bytes) -> Any:
        """The upstream's response (not yet read); 502 when it cannot be reached."""
        import aiohttp

        try:
            response = await self.session().post(path, data=body, headers=self.headers())
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, asyncio.TimeoutError, OSError) as exc:
            self.up = False
            raise unavailable(self.config, f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        self.up = True
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def response_headers(response: Any) -> list[tuple[bytes, bytes]]:
    """The upstream's headers minus hop-by-hop ones (the gateway frames its own response)."""
    return [(k.lower(), v) for k, v in response.raw_headers if k.lower() not in HOP_HEADERS]


async def pass_whole(response: Any, send: Callable[[dict], Awaitable[None]]) -> dict | None:
    """Forward a complete (non-stream or error) response; its ``usage``, if any."""
    body = await response.read()
    await send({"type": "http.response.start", "status": response.status,
                "headers": [*response_headers(response), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
    try:
        usage = json.loads(body).get("usage") if response.status == 200 else None
    except (ValueError, AttributeError):
        usage = None
    return usage if isinstance(usage, dict) else None


class StreamUsage:
    """What a passed-through stream said: its usage and when its first event went out."""

    def __init__(self) -> None:
        self.usage: dict | None = None
        self.first_event_at: float | None = None


def _usage_events(events: bytes, keep_usage_chunk: bool, seen: StreamUsage) -> bytes:
    """Read the usage out of complete events; drop the usage-only chunk the client did not ask for."""
    kept = []
    for event in events.split(b"\n\n"):
        if not event:
            continue
        if any(marker in event for marker in USAGE_MARKERS) and event.startswith(b"data: "):
            try:
                chunk = json.loads(event[6:])
            except ValueError:
                chunk = None
            if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                seen.usage = chunk["usage"]
                if not keep_usage_chunk and not chunk.get("choices"):
                    continue
        kept.append(event + b"\n\n")
    return b"".join(kept)


async def pass_stream(response: Any, send: Callable[[dict], Awaitable[None]], keep_usage_chunk: bool) -> StreamUsage:
    """Forward a server-sent-event stream as it arrives: every complete event goes out at once (a trailing partial
    event waits for its end, never more)."""
    seen = StreamUsage()
    await send({"type": "http.response.start", "status": response.status,
                "headers": [*response_headers(response), (b"x-accel-buffering", b"no")]})
    pending = b""
    async for data in response.content.iter_any():
        data = pending + data if pending else data
        end = data.rfind(b"\n\n")
        if end < 0:
            pending = data
            continue
        complete, pending = data[:end + 2], data[end + 2:]
        if any(marker in complete for marker in USAGE_MARKERS):
            complete = _usage_events(complete, keep_usage_chunk, seen)
        if complete:
            if seen.first_event_at is None:
                seen.first_event_at = time.perf_counter()
            await send({"type": "http.response.body", "body": complete, "more_body": True})
    await send({"type": "http.response.body", "body": pending, "more_body": False})
    return seen
