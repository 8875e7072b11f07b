"""The tenant layer around one request, shared by the LLM service and the gateway.

Order of checks, each before any work it would waste: the key (401, before the body is read), the tenant's
concurrency budget (429), an early token check (429 before the body is read and tokenized, when the bucket could not
hold even the smallest of the tenant's recent requests: a flooding tenant's excess costs microseconds), then, once
the body is parsed, the model (404 for a model the tenant may not see, exactly as for one that does not exist) and
the token budget (429: prompt + max_tokens over every choice is reserved from the tenant's bucket, the unused part
given back when the request ends). Every request then leaves one audit line and its metrics, whatever its outcome.

The request's state travels in a context variable, so route handlers reach it (``current_tenant_request()``)
without new parameters; it is None where the layer is off.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kubeforge.llm import asgi
from kubeforge.llm.errors import APIError
from kubeforge.llm.tenancy import refusals
from kubeforge.llm.tenancy.audit import AuditLog
from kubeforge.llm.tenancy.fair import Share
from kubeforge.llm.tenancy.keys import MalformedCredentials, bearer_token
from kubeforge.llm.tenancy.ledger import BudgetLedger
from kubeforge.llm.tenancy.policy import TenantPolicy
from kubeforge.llm.tenancy.settings import TenancySettings
from kubeforge.llm.tenancy.store import TenancyStore
from kubeforge.llm.tenancy.usage_metrics import TenantMetrics
from kubeforge.serving.meters import Meters
from kubeforge.serving.rawasgi import drain_unread, header

logger = logging.getLogger("kubeforge.llm")
_CURRENT: contextvars.ContextVar[TenantRequest | None] = contextvars.ContextVar("kubeforge_tenant", default=None)
RECENT = 32  # reservations remembered per tenant for the early check
ASGIApp = Callable[[dict, Any, Any], Awaitable[Any]]


def current_tenant_request() -> TenantRequest | None:
    """The tenant request being served in this task, or None (the layer is off)."""
    return _CURRENT.get()


@dataclass(eq=False)
class TenantRequest:
    layer: TenantLayer
    tenant: TenantPolicy
    key_id: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None
    stream: bool = False
    reserved: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_at: float | None = None
    status: int | None = None
    error: str | None = None
    prompt: Any = None
    completion: Any = None

    @property
    def share(self) -> Share:
        return Share(self.tenant.name, self.tenant.weight)

    def authorise(self, model: str, base_models: Iterable[str], served: Iterable[str]) -> None:
        """404 (the shape of an unknown model, listing only what this tenant may call) unless it may call it."""
        self.model = model
        base = list(base_models)
        policy = self.layer.store.snapshot.policy
        if not policy.may_call(self.tenant, model, base):
            raise refusals.model_not_visible(model, self.visible(served, base))

    def visible(self, served: Iterable[str], base_models: Iterable[str]) -> list[str]:
        base = list(base_models)
        policy = self.layer.store.snapshot.policy
        return [name for name in served if policy.may_call(self.tenant, name, base)]

    def reserve(self, tokens: int) -> None:
        """Take ``tokens`` (prompt + max_tokens over every choice) from the tenant's bucket, or refuse."""
        self.layer.reserve(self, tokens)

    def reserve_for(self, prepared: Any) -> None:
        """The engine's request (kubeforge.llm.prepare.PreparedRequest): its prompts are counted exactly."""
        self.stream = prepared.stream
        self.reserve(sum(len(p) for p in prepared.prompts) + len(prepared.prompts) * prepared.n
                     * prepared.params.max_tokens)

    def used_by(self, builder: Any, generation: Any, tokenizer: Any) -> None:
        """What the engine's request used (kubeforge.llm.responses.ResponseBuilder's usage), when it ends."""
        usage = builder.usage()
        prompt = completion = None
        if self.layer.audit is not None and self.layer.audit.include_text:
            prompt = [tokenizer.decode(ids) for ids in builder.request.prompts]
            completion = ["".join(builder.texts.get(i, [])) for i in range(builder.choices)]
        self.used(usage["prompt_tokens"], usage["completion_tokens"], generation.first_token_at, prompt, completion)

    def used(self, prompt_tokens: int, completion_tokens: int, first_token_at: float | None = None,
             prompt: Any = None, completion: Any = None) -> None:
        """What the request really used (called once its response is complete, or broken off)."""
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        if first_token_at is not None:
            self.first_token_at = first_token_at
        self.prompt, self.completion = prompt, completion

    def require_admin(self) -> None:
        if not self.tenant.admin:
            raise refusals.not_admin(self.tenant.name)


class TenantLayer:
    """Keys, budgets, usage and audit for one worker; the ledger and reload thread start with the first request."""

    def __init__(self, settings: TenancySettings, meters: Meters, store: TenancyStore,
                 ledger_factory: Callable[[], BudgetLedger] | None = None, audit: AuditLog | None = None):
        self.settings = settings
        self.store = store
        self.metrics = TenantMetrics(meters)
        self.audit = audit
        self._ledger_factory = ledger_factory or (lambda: BudgetLedger(settings.budget_file or None))
        self._ledger: BudgetLedger | None = None
        self._recent: dict[str, collections.deque] = {}  # tenant -> its last reservations (this worker)

    @classmethod
    def from_settings(cls, settings: TenancySettings, meters: Meters) -> TenantLayer:
        """Reads the tenants file and the keys now: a bad budget or key file is a ConfigError (refuse to start)."""
        store = TenancyStore(settings.tenants_file, settings.keys_dir, settings.reload_interval_s)
        audit = AuditLog(settings.audit_log, settings.audit_include_text) if settings.audit_log else None
        return cls(settings, meters, store, audit=audit)

    @property
    def ledger(self) -> BudgetLedger:
        if self._ledger is None:  # opened in the worker, not in the process that imported the service first
            self._ledger = self._ledger_factory()
            self.store.start()
        return self._ledger

    def tokens_per_minute(self, tenant: TenantPolicy) -> float:
        return tenant.tokens_per_minute * self.settings.budget_fraction

    def max_concurrent(self, tenant: TenantPolicy) -> int:
        return max(1, math.floor(tenant.max_concurrent * self.settings.budget_fraction))

    # ---- keys ------------------------------------------------------------------------------------------------

    def authenticate(self, authorization: bytes | None) -> tuple[TenantPolicy, str]:
        """(tenant, key id) for an ``Authorization: Bearer`` header, or a 401."""
        try:
            key = bearer_token(authorization)
        except MalformedCredentials as exc:
            raise refusals.malformed(str(exc)) from None
        if key is None:
            raise refusals.missing_key()
        snapshot = self.store.snapshot
        record = snapshot.keys.verify(key)
        if record is None:
            orphan = snapshot.orphans.verify(key) if len(snapshot.orphans) else None
            raise refusals.orphaned_key(orphan.tenant) if orphan else refusals.invalid_key()
        return snapshot.policy.tenants[record.tenant], record.id

    # ---- budgets ---------------------------------------------------------------------------------------------

    def reserve(self, request: TenantRequest, tokens: int) -> None:
        tenant = request.tenant
        limit = self.tokens_per_minute(tenant)
        if tokens > limit:
            request.error = "request_too_large"
            raise refusals.too_large(tenant.name, tokens, int(limit))
        wait = self.ledger.reserve(tenant.name, tokens, limit)
        if wait > 0:
            level = self.ledger.level(tenant.name, limit)
            request.error = refusals.RATE_LIMITED
            raise refusals.over_tokens(tenant.name, tokens, int(limit), level, wait)
        request.reserved += tokens
        self._recent.setdefault(tenant.name, collections.deque(maxlen=RECENT)).append(tokens)

    def early_refusal(self, tenant: TenantPolicy) -> APIError | None:
        """429 now when the bucket holds less than the smallest of the tenant's recent reservations."""
        recent = self._recent.get(tenant.name)
        if not recent:
            return None
        smallest, limit = min(recent), self.tokens_per_minute(tenant)
        level = self.ledger.level(tenant.name, limit)
        if level >= smallest:
            return None
        return refusals.over_tokens(tenant.name, smallest, int(limit), level, (smallest - level) * 60.0 / limit)

    # ---- one request -----------------------------------------------------------------------------------------

    async def serve(self, scope: dict, receive: Any, send: Any, inner: ASGIApp, drain_limit: int) -> int:
        """Run ``inner`` (the route's exchange) as the key's tenant, within its concurrency budget; the status
        sent."""
        ledger = self.ledger
        started = time.perf_counter()
        try:
            tenant, key_id = self.authenticate(header(scope, b"authorization"))
        except APIError as exc:
            await self._refuse(exc, receive, send, drain_limit, None, None, scope, started)
            return exc.status
        if not ledger.acquire(tenant.name, self.max_concurrent(tenant), self.tokens_per_minute(tenant)):
            exc = refusals.over_concurrency(tenant.name, self.max_concurrent(tenant))
            await self._refuse(exc, receive, send, drain_limit, tenant, key_id, scope, started)
            return exc.status
        early = self.early_refusal(tenant)
        if early is not None:
            ledger.release(tenant.name)
            await self._refuse(early, receive, send, drain_limit, tenant, key_id, scope, started)
            return early.status
        request = TenantRequest(self, tenant, key_id, scope.get("path", ""), started=started)

        async def watched(message: dict) -> None:
            if message["type"] == "http.response.start":
                request.status = message["status"]
            await send(message)

        token = _CURRENT.set(request)
        try:
            await inner(scope, receive, watched)
            return request.status or 499
        finally:
            _CURRENT.reset(token)
            ledger.release(tenant.name)
            self.finish(request)

    async def _refuse(self, exc: APIError, receive: Any, send: Any, drain_limit: int, tenant: TenantPolicy | None,
                      key_id: str | None, scope: dict, started: float) -> None:
        await drain_unread(scope, receive, drain_limit)  # small: the client reads the refusal, not a reset
        await asgi.send_error(send, exc)
        if isinstance(exc, refusals.RateLimited) and tenant is not None:
            self.metrics.rate_limited.inc((tenant.name, exc.reason))
        self._account(tenant.name if tenant else None, key_id, None, exc.status, 0, 0, None,
                      time.perf_counter() - started, False, exc.code, scope.get("path", ""))

    def finish(self, request: TenantRequest) -> None:
        """Give back the unused reservation, count the usage, write the audit line."""
        tenant = request.tenant
        if request.reserved:
            used = request.prompt_tokens + request.completion_tokens
            self.ledger.settle(tenant.name, request.reserved - used, self.tokens_per_minute(tenant))
        status = request.status or 499  # nothing was sent: the client went away first
        if status == 429:
            self.metrics.rate_limited.inc((tenant.name, refusals.TOKENS))
        ttft = None if request.first_token_at is None else request.first_token_at - request.started
        self._account(tenant.name, request.key_id, request.model, status, request.prompt_tokens,
                      request.completion_tokens, ttft, time.perf_counter() - request.started, request.stream,
                      request.error, request.path, request.prompt, request.completion)

    def _account(self, tenant: str | None, key_id: str | None, model: str | None, status: int, prompt: int,
                 completion: int, ttft: float | None, latency: float, stream: bool, error: str | None, path: str,
                 prompt_text: Any = None, completion_text: Any = None) -> None:
        self.metrics.finished(tenant, status, model, prompt, completion, ttft, latency)
        if self.audit is not None:
            try:
                self.audit.record(tenant=tenant, key_id=key_id, model=model, prompt_tokens=prompt,
                                  completion_tokens=completion, status=status, latency_s=latency, ttft_s=ttft,
                                  stream=stream, error=error, prompt=prompt_text, completion=completion_text,
                                  path=path)
            except OSError:  # a full disk must not fail the request that was already answered
                logger.exception("writing the audit line failed")

    def visible_models(self, authorization: bytes | None, served: list[str], base_models: list[str]) -> list[str]:
        """What GET /v1/models lists for the key's tenant (401 without a valid key)."""
        tenant, _ = self.authenticate(authorization)
        policy = self.store.snapshot.policy
        return [name for name in served if policy.may_call(tenant, name, base_models)]


def layer_from_env(meters: Meters) -> TenantLayer | None:
    """The LLM service's layer from KUBEFORGE_LLM_* (ConfigError on a bad tenants or key file: refuse to start);
    None, with a warning line, when authentication is off."""
    from kubeforge.llm.tenancy.settings import NO_AUTH_WARNING

    settings = TenancySettings.from_env()
    if not settings.enabled:
        logger.warning(NO_AUTH_WARNING)
        return None
    return TenantLayer.from_settings(settings, meters)


def fair_scheduler(layer: TenantLayer) -> Any:
    from kubeforge.llm.tenancy.fair import FairScheduler

    settings = layer.settings
    return FairScheduler(burst_rows=settings.fair_burst_rows, active_window_s=settings.fair_window_s,
                         prefill_tokens=settings.fair_prefill_tokens)
