"""Gateway mode: the tenant layer as a standalone ASGI service in front of OpenAI-compatible upstreams.

Per request: key (401) and concurrency (429) in the layer, then the model (404 unless the tenant may call it and an
upstream serves it), the token reservation (429; prompt estimated from its length, then settled from the upstream's
``usage``), the upstream's weighted fair queue (503 after ``max_queue_wait_s``), and the forward: a whole response
is relayed with its status, a stream event by event as the upstream produces it. An upstream that cannot be
reached answers 502 in the OpenAI shape, only for the models it serves; its own 503 (overloaded) passes through
with its Retry-After.

Routes: POST /v1/completions, /v1/chat/completions; GET /v1/models (the tenant's models across upstreams),
/livez, /readyz, /metrics. Run it with ``python -m kubeforge.llm.tenancy.gateway``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from kubeforge.llm import asgi
from kubeforge.llm.errors import NOT_FOUND, OVERLOADED, APIError, bad_request, model_not_found
from kubeforge.llm.tenancy.gateway_settings import GatewaySettings, gateway_tenancy
from kubeforge.llm.tenancy.gateway_upstream import Upstream, pass_stream, pass_whole, unavailable
from kubeforge.llm.tenancy.layer import TenantLayer, TenantRequest, current_tenant_request
from kubeforge.llm.tenancy.settings import TenancySettings
from kubeforge.serving.meters import Meters
from kubeforge.serving.rawasgi import drain_unread, header

logger = logging.getLogger("kubeforge.llm")
GENERATION_ROUTES = ("/v1/completions", "/v1/chat/completions")


class UpstreamGauges:
    """Per-upstream gauges (label ``upstream``), sampled at each flush of the worker's meters."""

    GAUGES = (("kubeforge:gateway_upstream_in_flight", "requests forwarded and not done", "livesum",
               lambda u: u.gate.in_flight),
              ("kubeforge:gateway_upstream_waiting", "requests in the fair queue", "livesum", lambda u: u.gate.waiting),
              ("kubeforge:gateway_upstream_up", "1 while the upstream answers", "livemax", lambda u: float(u.up)))

    def __init__(self, upstreams: list[Upstream]):
        self.upstreams = upstreams
        self.registry: Any = None
        self._gauges: list[Any] | None = None

    def flush(self) -> None:
        if self._gauges is None:
            from prometheus_client import Gauge

            extra = {} if self.registry is None else {"registry": self.registry}
            self._gauges = [Gauge(name, text, ["upstream"], multiprocess_mode=mode, **extra)
                            for name, text, mode, _ in self.GAUGES]
        for gauge, (_, _, _, read) in zip(self._gauges, self.GAUGES, strict=True):
            for upstream in self.upstreams:
                gauge.labels(upstream.config.name).set(read(upstream))


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_length(v.get("text", "")) if isinstance(v, dict) else _text_length(v) for v in value)
    return 0


def reservation(payload: dict, settings: GatewaySettings) -> int:
    """Tokens to reserve before the upstream counts them: the prompt estimated from its length (token ids
    counted), plus max_tokens for every choice of every prompt."""
    prompt, prompts = payload.get("prompt"), 1
    if "messages" in payload:
        messages = payload["messages"] if isinstance(payload["messages"], list) else []
        prompt_tokens = sum(4 + math.ceil(_text_length(m.get("content")) / settings.chars_per_token)
                            for m in messages if isinstance(m, dict))
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        prompt_tokens = len(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        prompt_tokens, prompts = sum(len(p) for p in prompt), len(prompt)
    elif isinstance(prompt, list):
        prompt_tokens = sum(math.ceil(_text_length(p) / settings.chars_per_token) for p in prompt)
        prompts = max(1, len(prompt))
    else:
        prompt_tokens = math.ceil(_text_length(prompt) / settings.chars_per_token)
    asked = payload.get("max_completion_tokens") or payload.get("max_tokens")
    max_tokens = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 \
        else settings.default_max_tokens
    n = payload.get("n") if isinstance(payload.get("n"), int) and payload.get("n") > 0 else 1
    return max(1, prompt_tokens) + prompts * n * max_tokens


class GatewayApp:
    def __init__(self, settings: GatewaySettings, tenancy: TenancySettings, meters: Meters | None = None):
        self.settings = settings
        self.meters = meters or Meters()
        self.upstreams = [Upstream(config, settings) for config in settings.upstream_list()]
        self.layer = TenantLayer.from_settings(tenancy, self.meters)
        self.meters.add(UpstreamGauges(self.upstreams))
        self._refresher: asyncio.Task | None = None

    @classmethod
    def from_env(cls) -> GatewayApp:
        return cls(GatewaySettings.from_env(), gateway_tenancy())

    # ---- routing ---------------------------------------------------------------------------------------------

    def route(self, model: str) -> Upstream | None:
        for upstream in self.upstreams:
            if upstream.serves(model):
                return upstream
        return next((u for u in self.upstreams if u.serves_anything), None)

    def base_models(self) -> set[str]:
        return set().union(*(u.base_models for u in self.upstreams))

    def model_ids(self) -> list[str]:
        return list(dict.fromkeys(m for u in self.upstreams for m in u.model_ids()))

    async def _refresh(self) -> None:
        while True:
            await asyncio.gather(*(u.refresh_models() for u in self.upstreams if u.serves_anything))
            await asyncio.sleep(self.settings.models_refresh_s)

    # ---- ASGI ------------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self._start()
        path, method = scope["path"], scope["method"]
        if method == "POST" and path in GENERATION_ROUTES:
            await self.layer.serve(scope, receive, send, self._forward, self.settings.max_payload_bytes)
        elif method == "GET" and path == "/v1/models":
            await self._models(scope, send)
        elif method == "GET" and path in ("/livez", "/readyz"):
            await asgi.send_bytes(send, 200, b'{"status":"ok"}')
        elif method == "GET" and path == "/metrics":
            await self._metrics(send)
        else:
            await drain_unread(scope, receive, self.settings.max_payload_bytes)
            await asgi.send_error(send, APIError(404, f"no route {method} {path}", type=NOT_FOUND,
                                                 code="unknown_route"))

    def _start(self) -> None:
        self.meters.start()
        if self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh())

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._refresher is not None:
                    self._refresher.cancel()
                await asyncio.gather(*(u.close() for u in self.upstreams), return_exceptions=True)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _models(self, scope: dict, send: Any) -> None:
        try:
            visible = self.layer.visible_models(header(scope, b"authorization"), self.model_ids(),
                                                list(self.base_models()))
        except APIError as exc:
            await asgi.send_error(send, exc)
            return
        listed = {m: u.listed.get(m, {}) for u in self.upstreams for m in u.model_ids()}
        data = [{"id": m, "object": "model", "created": listed[m].get("created", 0),
                 "owned_by": listed[m].get("owned_by", "kubeforge-gateway"), "parent": listed[m].get("parent")}
                for m in visible]
        await asgi.send_bytes(send, 200, json.dumps({"object": "list", "data": data}).encode())

    async def _metrics(self, send: Any) -> None:
        import os

        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

        self.meters.flush()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        await asgi.send_bytes(send, 200, generate_latest(registry), CONTENT_TYPE_LATEST.encode())

    # ---- one generation request ------------------------------------------------------------------------------

    async def _forward(self, scope: dict, receive: Any, send: Any) -> None:
        request = current_tenant_request()
        try:
            body = await asgi.read_body(scope, receive, self.settings.max_payload_bytes)
            if body is None:
                return
            payload = self._parse(body)
            upstream, forward, keep_usage = self._admit(request, payload, body)
        except APIError as exc:
            request.error = exc.code
            await asgi.send_error(send, exc)
            return
        if not await upstream.gate.enter(request.share, request.reserved):
            request.error = "queue_timeout"
            await asgi.send_error(send, APIError(503, f"overloaded: waited {self.settings.max_queue_wait_s:g} s for "
                                                 f"upstream {upstream.config.name}; retry later", type=OVERLOADED,
                                                 code="queue_timeout", retry_after_s=self.settings.retry_after_s))
            return
        try:
            await self._relay(request, upstream, scope["path"], forward, keep_usage, receive, send)
        finally:
            upstream.gate.leave()

    def _parse(self, body: bytes) -> dict:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise bad_request(f"malformed JSON: {exc}", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise bad_request("the request body must be a JSON object", code="invalid_type")
        if not isinstance(payload.get("model"), str) or not payload["model"]:
            raise bad_request("model: a model name is required (GET /v1/models lists yours)", param="model",
                              code="missing_field")
        return payload

    def _admit(self, request: TenantRequest, payload: dict, body: bytes) -> tuple[Upstream, bytes, bool]:
        """Model, route and token reservation; the body to forward (a stream is asked for its usage) and whether
        the client itself asked for the usage chunk."""
        model = payload["model"]
        request.stream = payload.get("stream") is True
        request.authorise(model, self.base_models(), self.model_ids())
        upstream = self.route(model)
        if upstream is None:
            raise model_not_found(model, request.visible(self.model_ids(), self.base_models()))
        request.reserve(reservation(payload, self.settings))
        if not request.stream:
            return upstream, body, True
        options = payload.get("stream_options") if isinstance(payload.get("stream_options"), dict) else {}
        if options.get("include_usage") is True:
            return upstream, body, True
        return upstream, json.dumps({**payload, "stream_options": {**options, "include_usage": True}}).encode(), False

    async def _relay(self, request: TenantRequest, upstream: Upstream, path: str, body: bytes, keep_usage: bool,
                     receive: Any, send: Any) -> None:
        import aiohttp

        try:
            response = await upstream.post(path, body)
        except APIError as exc:
            request.error = exc.code
            await asgi.send_error(send, exc)
            return
        streaming = request.stream and response.status == 200 and \
            response.headers.get("content-type", "").startswith("text/event-stream")
        watcher = asgi.watch_disconnect(receive, response.close) if streaming else None
        usage = None
        try:
            if streaming:
                seen = await pass_stream(response, send, keep_usage)
                usage, request.first_token_at = seen.usage, seen.first_event_at
            else:
                usage = await pass_whole(response, send)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            request.error = "upstream_broken"
            if request.status is None:
                await asgi.send_error(send, unavailable(upstream.config, f"{type(exc).__name__}: {exc}"))
            else:  # mid-stream: say so in the stream's own way, then end it
                error = unavailable(upstream.config, f"the stream broke off ({type(exc).__name__})")
                await send({"type": "http.response.body", "body": b"data: " + error.body() + b"\n\n",
                            "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
            response.release()
        if usage is not None:
            request.used(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        elif response.status == 200:  # answered but no usage came back (a cut stream): charge the reservation
            request.used(request.reserved, 0)


def create_app() -> GatewayApp:
    """uvicorn's factory (one call per worker process)."""
    return GatewayApp.from_env()
