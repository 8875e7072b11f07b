"""What `kubeforge serve` runs for a language model: the BentoML service and the environment that names the run's
base model and adapters (KUBEFORGE_LLM_ADAPTERS already set by the user is kept, beside the run's)."""

from __future__ import annotations

from collections.abc import Mapping

from kubeforge.config import ConfigError
from kubeforge.llm.settings import LLMServeConfig, parse_adapter_list
from kubeforge.llm.source import ServedLM
from kubeforge.lm.inference import artifact_kind

SERVICE = "kubeforge.llm.service:KubeforgeLLM"
ROUTES = "POST /v1/completions, /v1/chat/completions; GET /v1/models, /readyz"


def serve_environment(served: ServedLM, environ: Mapping[str, str]) -> dict[str, str]:
    """The service's environment; a ConfigError names a bad KUBEFORGE_LLM_* value or a clashing adapter name."""
    extra = parse_adapter_list(environ.get("KUBEFORGE_LLM_ADAPTERS", ""))
    kind = artifact_kind(served.base)
    if kind != "torch" and (extra or environ.get("KUBEFORGE_LLM_ADAPTERS_DIR")):
        raise ConfigError(f"{served.base} is a compressed {kind} model, which serves no LoRA adapters (the fine-tune "
                          "is merged into it); unset KUBEFORGE_LLM_ADAPTERS / KUBEFORGE_LLM_ADAPTERS_DIR, or serve "
                          "the uncompressed model")
    clash = sorted(set(extra) & set(served.adapters))
    if clash:
        raise ConfigError(f"KUBEFORGE_LLM_ADAPTERS names {', '.join(clash)}, which the run already serves")
    adapters = {**{name: str(path.resolve()) for name, path in served.adapters.items()}, **extra}
    env = {**environ, "KUBEFORGE_LLM_MODEL": str(served.base.resolve()),
           "KUBEFORGE_LLM_ADAPTERS": ",".join(f"{name}={source}" for name, source in adapters.items())}
    config = LLMServeConfig.from_env(env)
    if config.base_name in adapters:
        raise ConfigError(f"the adapter name {config.base_name!r} is the base model's name (KUBEFORGE_LLM_BASE_NAME)")
    return env
