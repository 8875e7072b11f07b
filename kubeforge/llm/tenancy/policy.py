"""Who may do what: each tenant's budgets, fair-share weight and models, read from ``tenants.yaml`` (the ConfigMap
that `kubeforge tenant` generates from the tenant overlays, the same source as the namespace quota).

Which models a tenant may call: the base model(s) and ``shared_models`` (every tenant), adapters named
``<tenant>/...`` and those listed under the tenant's ``adapters``. Any other adapter answers **404, exactly as a model
that does not exist** (not 403): a 403 would tell a tenant that another tenant's adapter of that name exists, and
adapter names often carry customer or project names.

    shared_models: [summariser]
    tenants:
      team-a: {tokens_per_minute: 60000, max_concurrent: 16, weight: 2, adapters: [support-bot]}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeforge.config import DNS_LABEL, ConfigError

REQUIRED_BUDGETS = ("tokens_per_minute", "max_concurrent")


@dataclass(frozen=True)
class TenantPolicy:
    name: str
    tokens_per_minute: int
    max_concurrent: int
    weight: float = 1.0
    adapters: frozenset[str] = frozenset()
    admin: bool = False  # may call the adapter admin routes and sees every model

    def owns(self, model: str) -> bool:
        return model.startswith(self.name + "/") or model in self.adapters


@dataclass(frozen=True)
class TenancyPolicy:
    tenants: dict[str, TenantPolicy]
    shared_models: frozenset[str] = frozenset()
    source: str = ""
    owners: dict[str, str] = field(default_factory=dict)  # listed adapter -> tenant

    def may_call(self, tenant: TenantPolicy, model: str, base_models: Iterable[str]) -> bool:
        return tenant.admin or model in self.shared_models or model in base_models or tenant.owns(model)


def _number(tenant: str, name: str, value: Any, *, integer: bool) -> float:
    if value is None:
        raise ConfigError(f"tenant {tenant}: {name} is missing; every tenant needs tokens_per_minute and "
                          "max_concurrent (kubeforge tenant add --llm-tokens-per-minute N --llm-max-concurrent N)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
        raise ConfigError(f"tenant {tenant}: {name} must be a {'whole ' if integer else ''}number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"tenant {tenant}: {name} must be greater than 0, got {value!r} (a negative or zero "
                          "budget would refuse every request)")
    return value


def _tenant(name: str, entry: Any) -> TenantPolicy:
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        raise ConfigError(f"tenant name {name!r} is not a DNS-1123 label")
    if not isinstance(entry, dict):
        raise ConfigError(f"tenant {name}: expected a mapping with tokens_per_minute and max_concurrent, got "
                          f"{entry!r}")
    unknown = set(entry) - {*REQUIRED_BUDGETS, "weight", "adapters", "admin"}
    if unknown:
        raise ConfigError(f"tenant {name}: unknown field(s) {', '.join(sorted(unknown))}")
    adapters = entry.get("adapters") or []
    if not isinstance(adapters, list) or not all(isinstance(a, str) and a for a in adapters):
        raise ConfigError(f"tenant {name}: adapters must be a list of adapter names")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise ConfigError(f"tenant {name}: admin must be true or false")
    return TenantPolicy(name=name,
                        tokens_per_minute=int(_number(name, "tokens_per_minute", entry.get("tokens_per_minute"),
                                                      integer=True)),
                        max_concurrent=int(_number(name, "max_concurrent", entry.get("max_concurrent"),
                                                   integer=True)),
                        weight=float(_number(name, "weight", entry.get("weight", 1.0), integer=False)),
                        adapters=frozenset(adapters), admin=admin)


def parse_policy(data: Any, source: str = "") -> TenancyPolicy:
    """The policy from its YAML document; every problem is a ConfigError naming the tenant and the field."""
    where = f"{source}: " if source else ""
    if not isinstance(data, dict) or not isinstance(data.get("tenants"), dict):
        raise ConfigError(f"{where}expected a mapping with 'tenants: {{name: {{tokens_per_minute, "
                          "max_concurrent, ...}}}}'")
    unknown = set(data) - {"tenants", "shared_models"}
    if unknown:
        raise ConfigError(f"{where}unknown top-level field(s) {', '.join(sorted(unknown))}")
    shared = data.get("shared_models") or []
    if not isinstance(shared, list) or not all(isinstance(s, str) and s for s in shared):
        raise ConfigError(f"{where}shared_models must be a list of model names")
    try:
        tenants = {name: _tenant(name, entry) for name, entry in data["tenants"].items()}
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    owners: dict[str, str] = {}
    for tenant in tenants.values():
        for adapter in tenant.adapters:
            if adapter in owners:
                raise ConfigError(f"{where}adapter {adapter!r} is listed by tenants {owners[adapter]} and "
                                  f"{tenant.name}; an adapter has one owner (or goes into shared_models)")
            if adapter in shared:
                raise ConfigError(f"{where}adapter {adapter!r} is both shared and listed by tenant {tenant.name}")
            owners[adapter] = tenant.name
    return TenancyPolicy(tenants=tenants, shared_models=frozenset(shared), source=source, owners=owners)


def read_policy(path: Path) -> TenancyPolicy:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the tenants file {path} (KUBEFORGE_LLM_TENANTS_FILE): {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML ({exc})") from None
    return parse_policy(data, str(path))


def policy_text(policy: TenancyPolicy) -> str:
    """The YAML the tooling writes (sorted, so a regenerated file changes only where a tenant changed)."""
    tenants = {}
    for name in sorted(policy.tenants):
        t = policy.tenants[name]
        entry: dict[str, Any] = {"tokens_per_minute": t.tokens_per_minute, "max_concurrent": t.max_concurrent,
                                 "weight": int(t.weight) if t.weight == int(t.weight) else t.weight}
        if t.adapters:
            entry["adapters"] = sorted(t.adapters)
        if t.admin:
            entry["admin"] = True
        tenants[name] = entry
    document: dict[str, Any] = {"tenants": tenants}
    if policy.shared_models:
        document["shared_models"] = sorted(policy.shared_models)
    return yaml.safe_dump(document, sort_keys=False)
