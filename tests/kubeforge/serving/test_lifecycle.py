"""The worker lifecycle the two BentoML services share (kubeforge.serving.lifecycle), without a server; the server
tests (tests/kubeforge/serving/test_service.py, tests/kubeforge/llm/test_server.py) run it in real workers."""

import asyncio
import threading
from dataclasses import dataclass

import bentoml

from kubeforge.serving.lifecycle import BackgroundLoading


@dataclass
class State:
    load_error: str | None = None


def test_ready_only_after_the_background_load_marked_the_worker():
    loaded = threading.Event()
    release = threading.Event()

    def load(readiness):
        release.wait(5)
        readiness.ready()
        loaded.set()

    worker = BackgroundLoading()
    worker.start_loading(State(), 1, load, "test-loader")
    assert not asyncio.run(worker.__is_ready__())  # answering probes while the model loads
    assert asyncio.run(worker.__is_alive__())
    release.set()
    assert loaded.wait(5)
    assert asyncio.run(worker.__is_ready__())


def test_a_failed_load_makes_the_worker_not_alive():
    state = State()
    failed = threading.Event()

    def load(readiness):
        state.load_error = "RuntimeError: no model"
        failed.set()

    worker = BackgroundLoading()
    worker.start_loading(state, 1, load, "test-loader")
    assert failed.wait(5)
    assert not asyncio.run(worker.__is_alive__()) and not asyncio.run(worker.__is_ready__())


def test_bentoml_sees_the_probes_and_the_shutdown_hook_on_a_service_that_mixes_it_in():
    @bentoml.service(name="lifecycle-probe")
    class Probe(BackgroundLoading):
        @bentoml.api
        def ping(self) -> str:
            return "pong"

    inner = Probe.inner
    assert inner.__is_ready__ is BackgroundLoading.__is_ready__
    assert inner.__is_alive__ is BackgroundLoading.__is_alive__
    hooks = [name for name in dir(inner) if getattr(getattr(inner, name), "__bentoml_shutdown_hook__", False)]
    assert hooks == ["release_readiness"]
