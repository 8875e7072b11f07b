"""The BentoML service of the OpenAI-compatible LLM API (one service framework for every kubeforge model).

Settings: KUBEFORGE_LLM_* (kubeforge.llm.settings). The base model comes from KUBEFORGE_LLM_MODEL (a directory or a
URI the one resolver, kubeforge.lm.sources, understands; a compressed ONNX / torchao directory runs through
kubeforge.lm.inference, see kubeforge.llm.backends) or, inside a built Bento, the BentoML model tagged
KUBEFORGE_LLM_MODEL_TAG; adapters from KUBEFORGE_LLM_ADAPTERS (name=source,...), from the Bento's adapters model
(KUBEFORGE_LLM_ADAPTERS_TAG) and from the watched KUBEFORGE_LLM_ADAPTERS_DIR.

Endpoints: /v1/models, /v1/completions, /v1/chat/completions, the adapter admin routes (kubeforge.llm.api),
GET /livez, /readyz (200 after the model loaded and a warm-up generation ran), /metrics, /docs.json.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
from pathlib import Path

import bentoml

from kubeforge.llm.api import LLMAPI, LLMState, admission_policy, front_door_routes
from kubeforge.llm.settings import LLMServeConfig, parse_adapter_list
from kubeforge.llm.tenancy.layer import fair_scheduler, layer_from_env
from kubeforge.serving.admission import Admission
from kubeforge.serving.frontdoor import FrontDoor, FrontDoorService
from kubeforge.serving.lifecycle import BackgroundLoading
from kubeforge.serving.meters import Meters
from kubeforge.serving.readiness import WorkerReadiness

MODEL_ENV = "KUBEFORGE_LLM_MODEL"
MODEL_TAG_ENV = "KUBEFORGE_LLM_MODEL_TAG"
ADAPTERS_TAG_ENV = "KUBEFORGE_LLM_ADAPTERS_TAG"

CONFIG = LLMServeConfig.from_env()
METERS = Meters()
STATE = LLMState(CONFIG, Admission(admission_policy(CONFIG), METERS, service="llm"), METERS,
                 tenancy=layer_from_env(METERS))  # KUBEFORGE_LLM_AUTH, _TENANTS_FILE, _KEYS_DIR (llm.tenancy)
logger = logging.getLogger("kubeforge.llm")


def front_door(app):
    """BentoML's app behind the LLM's POST routes (FrontDoorService calls this in each worker)."""
    return FrontDoor(app, routes=front_door_routes(STATE), prefixes={}, meters=METERS)


def _base_model() -> tuple[Path, str]:
    """(local directory, the reference it came from)."""
    reference = os.environ.get(MODEL_ENV)
    if reference:
        from kubeforge.lm.sources import resolve_model_source

        return resolve_model_source(reference, Path(tempfile.mkdtemp(prefix="kubeforge-llm-base-"))), reference
    tag = os.environ.get(MODEL_TAG_ENV)
    if not tag:
        raise RuntimeError(f"no model: set {MODEL_ENV} (a directory or URI) or {MODEL_TAG_ENV} (a BentoML model)")
    return Path(bentoml.models.get(tag).path), f"bentoml:{tag}"


def _startup_adapters() -> dict[str, str]:
    adapters = parse_adapter_list(CONFIG.adapters)
    tag = os.environ.get(ADAPTERS_TAG_ENV)
    if tag:
        root = Path(bentoml.models.get(tag).path)
        for directory in sorted(p for p in root.iterdir() if (p / "adapter_config.json").is_file()):
            adapters.setdefault(directory.name, str(directory))
    return adapters


@bentoml.service(
    name="kubeforge-llm",
    service_class=FrontDoorService,
    workers=CONFIG.workers,
    # BentoML's timeout covers what it routes (/v1/models, probes); the POST routes are bounded by max_tokens and
    # max_queue_wait_s, and a stream, once started, runs until its choices end or its client leaves
    traffic={"timeout": CONFIG.timeout_s},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(LLMAPI(STATE), path="/")
class KubeforgeLLM(BackgroundLoading):
    """Loads the model in the background: /readyz is 503 until it is ready, /livez 503 if loading failed."""

    __front_door__ = staticmethod(front_door)

    def __init__(self) -> None:
        self.start_loading(STATE, CONFIG.workers, self._load, "llm-loader")  # kubeforge.serving.lifecycle

    @staticmethod
    def _load(readiness: WorkerReadiness) -> None:
        from kubeforge.llm.errors import APIError
        from kubeforge.llm.metrics import LLMMetrics
        from kubeforge.llm.runtime import LLMRuntime
        from kubeforge.llm.watch import AdapterWatcher

        try:
            base_dir, reference = _base_model()
            runtime = LLMRuntime.load(base_dir, CONFIG, LLMMetrics(), base_source=reference)
            if STATE.tenancy is not None:
                runtime.engine.fairness = fair_scheduler(STATE.tenancy)
            for name, source in _startup_adapters().items():
                try:
                    runtime.load_adapter(name, source)
                except APIError as exc:
                    raise RuntimeError(f"adapter {name!r} ({source}): {exc.message}") from None
            runtime.warm_up()
            if CONFIG.adapters_dir:
                AdapterWatcher(runtime, CONFIG.adapters_dir, CONFIG.watch_interval_s).start()
            gc.collect()
            gc.freeze()  # what lives as long as the worker leaves the collector's reach (no full-collection stalls)
            STATE.runtime = runtime
            readiness.ready()
            logger.info("serving %s (%s backend, %d adapters)", reference, runtime.engine.backend.kind,
                        len(runtime.adapter_names()))
        except Exception as exc:  # surfaced through /livez and the log
            STATE.load_error = f"{type(exc).__name__}: {exc}"
            logger.error("the LLM failed to load: %s", STATE.load_error)
