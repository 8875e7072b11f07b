"""The LM service's settings, read from KUBEFORGE_LLM_<FIELD> variables (the Helm chart renders exactly these).

Bounds that protect the server (max_tokens, n, prompt count, body size, queue length, token budget) live here, so a
request beyond them is refused with a message that names the bound and its variable.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from kubeforge.config import ConfigError, EnvSection


class LLMServeConfig(EnvSection):
    """How the LLM service runs and what it accepts."""

    workers: int = Field(1, ge=1, le=16, description="server worker processes (each loads the model once)")
    threads: int = Field(0, ge=0, le=256, description="torch intra-op threads per worker; 0 keeps torch's default")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': CUDA when available, else CPU")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; 'auto': bfloat16 on CUDA, float32 on CPU")
    base_name: str = Field("base", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
                           description="the `model` name that selects the base model")
    adapters: str = Field("", description="LoRA adapters at start-up: name=source,... (directories or URIs)")
    adapters_dir: str = Field("", description="a directory watched for adapters: each sub-directory is one adapter")
    watch_interval_s: float = Field(5.0, gt=0.0, le=3600.0, description="how often adapters_dir is rescanned")
    admin_api: bool = Field(False, description="enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter")
    max_running: int = Field(32, ge=1, le=4096, description="sequences decoded together (rows of the batch)")
    max_waiting: int = Field(256, ge=0, le=100_000, description="queued sequences; beyond them requests get 503")
    max_batch_tokens: int = Field(65_536, ge=16, description="token budget of the running batch: the sum of "
                                  "prompt + max_tokens over running sequences (bounds the KV cache)")
    max_prefill_tokens: int = Field(4096, ge=16, description="prompt tokens prefilled between two decode steps")
    max_tokens_limit: int = Field(1024, ge=1, le=1_000_000, description="largest max_tokens a request may ask")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens when a request sets none (capped by the "
                                    "context left after the prompt)")
    max_n: int = Field(8, ge=1, le=128, description="largest n (choices per prompt)")
    max_prompts: int = Field(16, ge=1, le=1024, description="prompts in one /v1/completions request")
    max_stop: int = Field(4, ge=0, le=64, description="stop strings per request")
    max_queue_wait_s: float = Field(60.0, gt=0.0, le=86_400.0, description="a request still queued for the batch "
                                    "after this long gets 503 (before its prefill)")
    max_concurrency: int = Field(512, ge=1, le=100_000, description="admission: HTTP requests in flight per pod "
                                 "(split across workers); the excess gets 503 before its body is read")
    retry_after_s: int = Field(1, ge=0, le=3600, description="the Retry-After of a 503")
    max_payload_bytes: int = Field(1024 * 1024, ge=1024, description="largest accepted request body")
    timeout_s: float = Field(600.0, gt=0.0, le=86_400.0, description="BentoML's request timeout for the routes it "
                             "serves (GET /v1/models, probes); generation is bounded by max_tokens and max_queue_wait_s")

    ENV_PREFIX: ClassVar[str] = "KUBEFORGE_LLM_"
    ENV_LABEL: ClassVar[str] = "LLM serving environment"

    @model_validator(mode="after")
    def _consistent(self) -> LLMServeConfig:
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens {self.default_max_tokens} exceeds max_tokens_limit "
                             f"{self.max_tokens_limit}")
        return self


def parse_adapter_list(text: str) -> dict[str, str]:
    """``name=source,name2=source2`` -> {name: source}; a malformed entry is a ConfigError naming it."""
    adapters: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, equals, source = entry.partition("=")
        if not equals or not name.strip() or not source.strip():
            raise ConfigError(f"adapter entry {entry!r}: expected name=source (a directory or URI)")
        if name.strip() in adapters:
            raise ConfigError(f"adapter {name.strip()!r} is listed twice")
        adapters[name.strip()] = source.strip()
    return adapters
