"""The tenant layer's settings: KUBEFORGE_LLM_<FIELD> for the LLM service, KUBEFORGE_GATEWAY_<FIELD> for the
gateway (the same fields, so both read the same mounted files the same way).

``auth``: ``required`` (the chart, `kubeforge serve` unless --no-auth) refuses to start without a tenants file and a
keys directory; ``off`` serves without keys and logs a warning line; ``auto`` (the bare module) turns the layer on
exactly when a tenants file is set.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import Field

from kubeforge.config import ConfigError, EnvSection

logger = logging.getLogger("kubeforge.llm")
NO_AUTH_WARNING = ("WARNING: authentication is OFF: anyone who can reach this port may use every model, with no "
                   "budget and no audit trail")


class TenancySettings(EnvSection):
    auth: Literal["auto", "required", "off"] = Field("auto", description="required | off | auto (on when "
                                                     "tenants_file is set)")
    tenants_file: str = Field("", description="tenants.yaml: budgets, weights, adapters (the mounted ConfigMap)")
    keys_dir: str = Field("", description="directory of <tenant>.json key hashes (the mounted Secret)")
    reload_interval_s: float = Field(5.0, gt=0.0, le=300.0, description="how often the tenants file and the keys "
                                     "are checked for changes (with the kubelet's Secret refresh, this bounds how "
                                     "long a revoked key keeps working)")
    budget_file: str = Field("", description="the ledger shared by the pod's workers (default: one per server "
                                             "session in $TMPDIR)")
    budget_fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of every tenant budget this pod "
                                   "enforces: 1/replicas when several pods serve")
    audit_log: str = Field("-", description="audit lines: a file path, '-' for standard output, '' for none")
    audit_include_text: bool = Field(False, description="also write prompts and completions into the audit log")
    fair_burst_rows: int = Field(32, ge=0, le=1024, description="at most this many rows beyond max_running for a "
                                 "tenant below its weighted share when busier tenants fill the batch (0: off)")
    fair_prefill_tokens: int = Field(512, ge=0, description="prompt tokens one tenant may prefill per step while "
                                     "other tenants are active (0: no cap; at least one request per step)")
    fair_window_s: float = Field(10.0, gt=0.0, description="a tenant seen within this long counts toward the shares")

    ENV_PREFIX: ClassVar[str] = "KUBEFORGE_LLM_"
    ENV_LABEL: ClassVar[str] = "tenant settings"

    @property
    def enabled(self) -> bool:
        return self.auth == "required" or (self.auth == "auto" and bool(self.tenants_file))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, prefix: str | None = None) -> TenancySettings:
        settings = super().from_env(environ, prefix)
        prefix = prefix or cls.ENV_PREFIX
        if settings.enabled and not (settings.tenants_file and settings.keys_dir):
            missing = [f"{prefix}{n.upper()}" for n in ("tenants_file", "keys_dir") if not getattr(settings, n)]
            raise ConfigError(f"authentication is required but {' and '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} not set: point them at the tenants file and "
                              "the keys directory (`kubeforge tenant key add`), or serve with --no-auth "
                              f"({prefix}AUTH=off) on a machine nobody else can reach")
        return settings


def serve_auth_environment(environ: Mapping[str, str], no_auth: bool) -> dict[str, str]:
    """`kubeforge serve`'s environment: authentication off only when asked (--no-auth); otherwise required, with the
    tenants file and keys checked now so a bad budget or key file is refused before the server starts."""
    if no_auth:
        return {**environ, "KUBEFORGE_LLM_AUTH": "off"}
    env = {**environ, "KUBEFORGE_LLM_AUTH": "required"}
    settings = TenancySettings.from_env(env)
    from pathlib import Path

    from kubeforge.llm.tenancy.store import load_snapshot

    load_snapshot(Path(settings.tenants_file), Path(settings.keys_dir))
    return env
