"""The outermost ASGI layer of a worker: kubeforge's routes are answered here, everything else goes to BentoML.

BentoML wraps every request in Starlette's error and exception middlewares, its Prometheus traffic middleware, the
OpenTelemetry middleware, a timeout middleware that runs the request in a new task, the context middleware and the
router: together several times the cost of an int8 inference, and paid by a shed request too. The front door sits in
front of that stack (``FrontDoorService.to_asgi``, through ``bentoml.service(service_class=...)``), so /predict and
the v2 routes cost uvicorn's HTTP handling plus their own work, and a 503 from admission control costs little more
than uvicorn's part. BentoML still serves /livez, /readyz, /metrics, the UI and anything mounted, and its metrics
gain kubeforge's own (kubeforge.serving.meters), including request counts and latency per route.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from bentoml import Service

from kubeforge.serving.limits import route_path
from kubeforge.serving.meters import LocalCounter, LocalHistogram, Meters

Handler = Callable[[dict, Any, Any], Awaitable[int]]
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class RequestMeters:
    def __init__(self, meters: Meters):
        self.requests = meters.add(LocalCounter("kubeforge_http_requests_total",
                                                "requests answered by kubeforge's routes", ["route", "status"]))
        self.latency = meters.add(LocalHistogram("kubeforge_http_request_duration_seconds",
                                                 "time from the request's arrival to its answer", LATENCY_BUCKETS,
                                                 ["route"]))


class FrontDoor:
    """Exact routes (method-agnostic: a handler answers 405 itself), path prefixes, then the wrapped app."""

    def __init__(self, app: Any, routes: dict[str, Handler], prefixes: dict[str, Handler], meters: Meters):
        self.app = app
        self.routes = routes
        self.prefixes = tuple(prefixes.items())
        self.meters = meters
        self.request_meters = RequestMeters(meters)
        self._labels: dict[str, tuple[str, ...]] = {}

    def _handler(self, path: str) -> tuple[Handler, str] | None:
        handler = self.routes.get(path)
        if handler is not None:
            return handler, path
        for prefix, handler in self.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return handler, prefix
        return None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        found = self._handler(route_path(scope)) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        self.meters.start()
        handler, route = found
        self.record(route, await handler(scope, receive, send), started)

    def record(self, route: str, status: int, started: float) -> None:
        """Count one answered request and its latency since ``started`` (perf_counter); also the fast path's."""
        meters = self.request_meters
        meters.requests.inc((route, _STATUS.get(status) or str(status)))
        meters.latency.observe(time.perf_counter() - started, self._labels.get(route) or self._label(route))

    def _label(self, route: str) -> tuple[str, ...]:
        self._labels[route] = (route,)
        return self._labels[route]


_STATUS = {code: str(code) for code in (200, 400, 404, 405, 413, 500, 503)}


class FrontDoorService(Service):
    """A BentoML service whose ASGI app is wrapped by a front door (``front_door`` is set by the service module)."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True) -> Any:
        app = super().to_asgi(is_main)
        build = getattr(self.inner, "__front_door__", None)
        return build(app) if build is not None else app
