"""Prometheus metrics named like vLLM's (``vllm:`` -> ``kubeforge:``), so its dashboards and alerts translate by
renaming the prefix.

They are counted in plain Python by the engine thread and written to Prometheus by that same thread every
FLUSH_INTERVAL_S and whenever it goes idle (kubeforge.serving.meters: in BentoML's multiprocess mode one Prometheus
write costs ~15 µs here, which per decode step was a visible share of a small model's step). One thread both counts
and flushes, so no increment is lost to a race.
"""

from __future__ import annotations

from typing import Any

from kubeforge.serving.meters import FLUSH_INTERVAL_S, LocalCounter, LocalHistogram, Meters, SampledGauge

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
               240.0, 480.0, 960.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MODEL = ["model_name"]


class LLMMetrics:
    """The engine's metrics; ``registry=None`` is prometheus' default (what BentoML's /metrics exports)."""

    def __init__(self, registry: Any = None):
        self.meters = Meters(registry)
        add = self.meters.add
        self.running_requests = 0  # set by the engine each step, read at flush
        self.waiting_requests = 0
        add(SampledGauge("kubeforge:num_requests_running", "requests with sequences in the running batch",
                         lambda: self.running_requests, {}))
        add(SampledGauge("kubeforge:num_requests_waiting", "requests queued for the running batch",
                         lambda: self.waiting_requests, {}))
        self.batch_rows = add(LocalHistogram("kubeforge:batch_rows", "sequences decoded together per step",
                                             ROW_BUCKETS))
        self.ttft = add(LocalHistogram("kubeforge:time_to_first_token_seconds", "arrival to first generated token",
                                       TTFT_BUCKETS, MODEL))
        self.itl = add(LocalHistogram("kubeforge:inter_token_latency_seconds", "time between two tokens of a "
                                      "sequence", ITL_BUCKETS, MODEL))
        self.e2e = add(LocalHistogram("kubeforge:e2e_request_latency_seconds", "arrival to last token",
                                      E2E_BUCKETS, MODEL))
        self.prompt_tokens = add(LocalCounter("kubeforge:prompt_tokens_total", "prefilled prompt tokens", MODEL))
        self.generation_tokens = add(LocalCounter("kubeforge:generation_tokens_total", "generated tokens", MODEL))
        self.request_success = add(LocalCounter("kubeforge:request_success_total", "finished requests by finish "
                                                "reason (abort: cancelled, or dropped from the queue)",
                                                [*MODEL, "finished_reason"]))
        self._next_flush = 0.0

    def flush(self, now: float, force: bool = False) -> None:
        """Write to Prometheus when the interval passed, or now (``force``: the engine is about to idle)."""
        if force or now >= self._next_flush:
            self.meters.flush()
            self._next_flush = now + FLUSH_INTERVAL_S
