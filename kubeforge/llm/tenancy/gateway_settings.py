"""The gateway's settings (KUBEFORGE_GATEWAY_<FIELD>) and its upstreams: OpenAI-compatible servers (vLLM's, KServe's
Hugging Face runtime, kubeforge's own) by URL.

Upstreams come from KUBEFORGE_GATEWAY_UPSTREAMS, ``name=url`` entries separated by commas (each serves any model,
``*``), or from the YAML file KUBEFORGE_GATEWAY_CONFIG, which can also say which models each one serves:

    upstreams:
      - {name: pool-a, url: "http://vllm-a:8000", base_models: [llama-8b], models: [team-a/support], max_in_flight: 64}
      - {name: pool-b, url: "http://vllm-b:8000", models: ["*"], api_key_env: POOL_B_KEY}

A request goes to the upstream that lists its model, else to the first ``*`` one. ``base_models`` (and the models a
``*`` upstream lists without a ``parent``) are callable by every tenant; adapters follow the tenants file
(kubeforge.llm.tenancy.policy). ``api_key_env`` names the variable holding the upstream's own key (vLLM
``--api-key``): the tenant's key is never forwarded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kubeforge.config import DNS_LABEL_PATTERN, ConfigError, EnvSection, describe_validation_error
from kubeforge.llm.tenancy.settings import TenancySettings

PREFIX = "KUBEFORGE_GATEWAY_"
ANY_MODEL = "*"


class UpstreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63)
    url: str = Field(description="base URL of the OpenAI-compatible server (its /v1 routes are under it)")
    models: tuple[str, ...] = ()  # with base_models also empty: any model ("*")
    base_models: tuple[str, ...] = ()
    max_in_flight: int = Field(64, ge=1, le=100_000, description="requests forwarded at once (per gateway worker); "
                               "the rest wait in the weighted fair queue")
    api_key_env: str = ""

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url.rstrip("/").removesuffix("/v1")

    @property
    def any_model(self) -> bool:
        return ANY_MODEL in self.models or not (self.models or self.base_models)

    @property
    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class GatewaySettings(EnvSection):
    upstreams: str = Field("", description="name=url,... (each serves any model); or use config")
    config: str = Field("", description="a YAML file with upstreams: [{name, url, models, base_models, ...}]")
    max_queue_wait_s: float = Field(30.0, gt=0.0, description="longest wait in the fair queue before a 503")
    connect_timeout_s: float = Field(3.0, gt=0.0, description="connecting to an upstream; beyond it: 502")
    timeout_s: float = Field(600.0, gt=0.0, description="longest silence from an upstream mid-response")
    max_payload_bytes: int = Field(1024 * 1024, ge=1024, description="largest accepted request body")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens reserved for a request that sets none "
                                    "(the upstream's usage settles the difference)")
    chars_per_token: float = Field(4.0, gt=0.0, description="estimate of prompt tokens reserved before the "
                                   "upstream counts them")
    models_refresh_s: float = Field(10.0, gt=0.0, description="how often '*' upstreams' /v1/models are read")
    retry_after_s: int = Field(1, ge=0, le=3600, description="the Retry-After of the gateway's own 503s")

    ENV_PREFIX: ClassVar[str] = PREFIX
    ENV_LABEL: ClassVar[str] = "gateway settings"


    def upstream_list(self) -> list[UpstreamConfig]:
        """The upstreams, checked: names unique, a model routed to one upstream only."""
        entries: list[dict] = []
        if self.config:
            try:
                data = yaml.safe_load(Path(self.config).read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"gateway config {self.config} ({PREFIX}CONFIG): {exc}") from None
            if not isinstance(data, dict) or not isinstance(data.get("upstreams"), list):
                raise ConfigError(f"gateway config {self.config}: expected 'upstreams: [{{name, url, ...}}]'")
            entries.extend(data["upstreams"])
        for entry in filter(None, (part.strip() for part in self.upstreams.split(","))):
            name, equals, url = entry.partition("=")
            if not equals:
                raise ConfigError(f"{PREFIX}UPSTREAMS entry {entry!r}: expected name=url")
            entries.append({"name": name.strip(), "url": url.strip()})
        if not entries:
            raise ConfigError(f"the gateway has no upstream: set {PREFIX}UPSTREAMS (name=url,...) or {PREFIX}CONFIG")
        upstreams = []
        for index, entry in enumerate(entries):
            try:
                upstreams.append(UpstreamConfig(**entry) if isinstance(entry, dict) else UpstreamConfig(name=""))
            except (ValidationError, TypeError) as exc:
                detail = describe_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
                raise ConfigError(f"upstream {entry.get('name', index) if isinstance(entry, dict) else index}: "
                                  f"{detail}") from None
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise ConfigError(f"upstream names must be unique: {', '.join(names)}")
        routed: dict[str, str] = {}
        for upstream in upstreams:
            for model in (*upstream.models, *upstream.base_models):
                if model != ANY_MODEL and routed.setdefault(model, upstream.name) != upstream.name:
                    raise ConfigError(f"model {model!r} is routed to both {routed[model]} and {upstream.name}")
        return upstreams


def gateway_tenancy(environ: Mapping[str, str] | None = None) -> TenancySettings:
    """The gateway's tenant settings: the same fields as the service's, always with keys (it exists to apply them)."""
    settings = TenancySettings.from_env(environ, prefix=PREFIX)
    if settings.auth == "off":
        raise ConfigError(f"{PREFIX}AUTH=off: the gateway always checks keys (it is the tenant layer); point "
                          "an unauthenticated client at the upstream directly")
    settings = settings.model_copy(update={"auth": "required"})
    if not (settings.tenants_file and settings.keys_dir):
        raise ConfigError(f"the gateway needs {PREFIX}TENANTS_FILE and {PREFIX}KEYS_DIR (the tenants file and the "
                          "keys directory that `kubeforge tenant key add` writes)")
    return settings
