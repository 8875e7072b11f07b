"""The worker lifecycle both kubeforge BentoML services share (kubeforge.serving.service, kubeforge.llm.service).

The model loads on a thread so the server answers its probes at once: /readyz says 503 (not a connection timeout)
until the model is loaded and warmed up in every worker of the pod (kubeforge.serving.readiness), /livez fails once
loading failed, so Kubernetes restarts the pod, and a stopping worker takes its readiness mark back. BentoML finds
``__is_ready__``, ``__is_alive__`` and ``on_shutdown`` hooks on base classes too, so they are written once here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import bentoml

from kubeforge.serving.readiness import WorkerReadiness


class LoadState(Protocol):
    """A service's shared state: None until loading failed, then why."""

    load_error: str | None


class BackgroundLoading:
    """Mixed into a ``@bentoml.service`` class, whose ``__init__`` calls ``start_loading``."""

    readiness: WorkerReadiness
    _load_state: LoadState

    def start_loading(self, state: LoadState, workers: int, load: Callable[[WorkerReadiness], None],
                      thread_name: str) -> None:
        """Mark this worker as loading and run ``load`` (which marks it ready, or sets ``state.load_error``)."""
        self._load_state = state
        self.readiness = WorkerReadiness.of_this_worker(workers)
        self.readiness.loading()
        threading.Thread(target=load, args=(self.readiness,), name=thread_name, daemon=True).start()

    async def __is_ready__(self) -> bool:
        return self.readiness.pod_ready()

    async def __is_alive__(self) -> bool:
        return self._load_state.load_error is None

    @bentoml.on_shutdown
    def release_readiness(self) -> None:
        self.readiness.release()  # the worker is stopping: take its mark back (the last removes the directory)
