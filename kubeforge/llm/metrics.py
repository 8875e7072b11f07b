"""Prometheus metrics named like vLLM's (``vllm:`` -> ``kubeforge:``), so its dashboards and alerts translate by
renaming the prefix. Token-level observations are made once per decode step, not once per token: every row that
gets a token in a step waits the same interval, so one weighted observation stands for all of them (prometheus'
per-call cost in BentoML's multiprocess mode is ~15 µs, which per token would cost 10 % of a small model's step).
"""

from __future__ import annotations

from typing import Any

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0)


def observe_many(histogram: Any, value: float, count: int) -> None:
    """``count`` observations of one value (prometheus_client has no weighted observe; its internals are used
    when they look as expected, else the public call is repeated)."""
    buckets, bounds, total = (getattr(histogram, name, None) for name in ("_buckets", "_upper_bounds", "_sum"))
    if count == 1 or buckets is None or bounds is None or total is None or len(buckets) != len(bounds):
        for _ in range(count):
            histogram.observe(value)
        return
    total.inc(value * count)
    for bucket, bound in zip(buckets, bounds, strict=True):
        if value <= bound:
            bucket.inc(count)
            return


class LLMMetrics:
    """The service's metrics; ``registry=None`` is prometheus' default (what BentoML's /metrics exports)."""

    def __init__(self, registry: Any = None):
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = REGISTRY if registry is None else registry
        labels = ["model_name"]
        self.running = Gauge("kubeforge:num_requests_running", "requests with sequences in the running batch",
                             registry=registry, multiprocess_mode="livesum")
        self.waiting = Gauge("kubeforge:num_requests_waiting", "requests queued for the running batch",
                             registry=registry, multiprocess_mode="livesum")
        self.adapters = Gauge("kubeforge:lora_adapters_loaded", "LoRA adapters served beside the base model",
                              registry=registry, multiprocess_mode="livemax")
        self.batch_rows = Histogram("kubeforge:batch_rows", "sequences decoded together per step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=registry)
        self.ttft = Histogram("kubeforge:time_to_first_token_seconds", "arrival to first generated token",
                              labels, buckets=TTFT_BUCKETS, registry=registry)
        self.itl = Histogram("kubeforge:inter_token_latency_seconds", "time between two tokens of a sequence",
                             labels, buckets=ITL_BUCKETS, registry=registry)
        self.e2e = Histogram("kubeforge:e2e_request_latency_seconds", "arrival to last token", labels,
                             buckets=E2E_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("kubeforge:prompt_tokens", "prefilled prompt tokens", labels, registry=registry)
        self.generation_tokens = Counter("kubeforge:generation_tokens", "generated tokens", labels,
                                         registry=registry)
        self.request_success = Counter("kubeforge:request_success", "finished requests by finish reason "
                                       "(abort: cancelled, or dropped from the queue)", labels + ["finished_reason"],
                                       registry=registry)
