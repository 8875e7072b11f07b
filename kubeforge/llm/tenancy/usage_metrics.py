"""Per-tenant Prometheus metrics (label ``tenant``), counted in Python and flushed in the background by
kubeforge.serving.meters, so the tenant layer adds no locked multiprocess-file writes to a request's path.

Exported names (the LLM service and the gateway alike):
``kubeforge:tenant_requests_total{tenant,status}``, ``kubeforge:tenant_prompt_tokens_total{tenant,model_name}``,
``kubeforge:tenant_generation_tokens_total{tenant,model_name}``, ``kubeforge:tenant_rate_limited_total{tenant,reason}``,
``kubeforge:tenant_time_to_first_token_seconds{tenant}`` and ``kubeforge:tenant_request_latency_seconds{tenant}``
(histograms). Refusals before a tenant is known (no key, a wrong key) count under ``tenant="-"``.
"""

from __future__ import annotations

from kubeforge.llm.metrics import E2E_BUCKETS, TTFT_BUCKETS
from kubeforge.serving.meters import LocalCounter, LocalHistogram, Meters

UNKNOWN_TENANT = "-"


class TenantMetrics:
    def __init__(self, meters: Meters):
        self.requests = meters.add(LocalCounter("kubeforge:tenant_requests", "requests answered, by tenant and "
                                                "HTTP status", ["tenant", "status"]))
        self.prompt_tokens = meters.add(LocalCounter("kubeforge:tenant_prompt_tokens", "prompt tokens by tenant",
                                                     ["tenant", "model_name"]))
        self.generation_tokens = meters.add(LocalCounter("kubeforge:tenant_generation_tokens",
                                                         "generated tokens by tenant", ["tenant", "model_name"]))
        self.rate_limited = meters.add(LocalCounter("kubeforge:tenant_rate_limited", "429s by tenant and budget "
                                                    "(tokens, concurrency)", ["tenant", "reason"]))
        self.ttft = meters.add(LocalHistogram("kubeforge:tenant_time_to_first_token_seconds",
                                              "arrival to first generated token, by tenant", TTFT_BUCKETS,
                                              ["tenant"]))
        self.latency = meters.add(LocalHistogram("kubeforge:tenant_request_latency_seconds",
                                                 "arrival to the end of the response, by tenant", E2E_BUCKETS,
                                                 ["tenant"]))

    def finished(self, tenant: str | None, status: int, model: str | None, prompt_tokens: int,
                 completion_tokens: int, ttft_s: float | None, latency_s: float) -> None:
        name = tenant or UNKNOWN_TENANT
        self.requests.inc((name, str(status)))
        if model is not None and (prompt_tokens or completion_tokens):
            self.prompt_tokens.inc((name, model), prompt_tokens)
            self.generation_tokens.inc((name, model), completion_tokens)
        if ttft_s is not None:
            self.ttft.observe(ttft_s, (name,))
        self.latency.observe(latency_s, (name,))
