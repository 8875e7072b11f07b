"""The LLM service's tenant objects in the GitOps repository, under ``manifests/llm/``:

- ``tenants.yaml``: ConfigMap ``kubeforge-llm-tenants`` (key ``tenants.yaml``): budgets and weights, generated from
  the tenant overlays (``kubeforge tenant add --llm-...``, the same source as the namespace quota); per-tenant
  ``adapters``/``admin`` and ``shared_models`` edited in it by hand are kept when it is regenerated.
- ``keys.yaml``: Secret ``kubeforge-llm-keys``, one ``<tenant>.json`` entry of key ids and SHA-256 hashes per
  tenant, as ``stringData`` so a review shows which key ids were added or removed.

Why a plain Secret of hashes in git rather than a SealedSecret or an ExternalSecret reference: what it holds cannot
be used to authenticate (the keys are 256 random bits; their hashes cannot be inverted or guessed), so nothing in
it needs hiding, and a plain object keeps the change reviewable line by line and needs no controller, cluster key
or external store. The keys themselves exist only in the command's output. It stays a Secret (not a ConfigMap) so
that the namespace's RBAC for secrets applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from kubeforge.config import ConfigError
from kubeforge.llm.tenancy.keys import KeyRecord, key_file_text, new_key, records_from_text
from kubeforge.llm.tenancy.policy import TenancyPolicy, TenantPolicy, parse_policy, policy_text

LLM_DIR = Path("manifests") / "llm"
TENANTS_CONFIGMAP, KEYS_SECRET = "kubeforge-llm-tenants", "kubeforge-llm-keys"
DEFAULT_NAMESPACE = "kubeforge-llm"
HEADER = ("# Written by `kubeforge tenant add` / `kubeforge tenant key`: budgets come from the tenant overlays; "
          "adapters, admin and shared_models may be edited here.\n")
KEYS_HEADER = "# Written by `kubeforge tenant key add|rotate|revoke`: key ids and SHA-256 hashes only, never keys.\n"


@dataclass(frozen=True)
class KeyChange:
    tenant: str
    key: str | None  # the new key (print it once), or None for a revocation
    key_id: str
    written: list[str]


def _read_documents(path: Path) -> dict:
    if not path.is_file():
        return {}
    document = yaml.safe_load(path.read_text()) or {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected one Kubernetes object")
    return document


def namespace(root: Path) -> str:
    kustomization = _read_documents(root / LLM_DIR / "kustomization.yaml")
    return kustomization.get("namespace") or DEFAULT_NAMESPACE


def current_policy(root: Path) -> TenancyPolicy | None:
    data = _read_documents(root / LLM_DIR / "tenants.yaml").get("data") or {}
    return parse_policy(yaml.safe_load(data["tenants.yaml"]), str(root / LLM_DIR / "tenants.yaml")) \
        if "tenants.yaml" in data else None


def policy_from_overlays(root: Path) -> TenancyPolicy:
    """Budgets from every tenant overlay that has one; hand-kept fields from the current ConfigMap."""
    from kubeforge.deploy.tenants import list_tenants

    previous = current_policy(root)
    tenants = {}
    for info in list_tenants(root):
        if info.llm_tokens_per_minute is None:
            continue
        kept = previous.tenants.get(info.name) if previous else None
        tenants[info.name] = TenantPolicy(name=info.name, tokens_per_minute=info.llm_tokens_per_minute,
                                          max_concurrent=int(info.llm_max_concurrent), weight=info.llm_weight,
                                          adapters=kept.adapters if kept else frozenset(),
                                          admin=kept.admin if kept else False)
    policy = TenancyPolicy(tenants=tenants, shared_models=previous.shared_models if previous else frozenset())
    return parse_policy(yaml.safe_load(policy_text(policy)))  # the same checks the service runs at start


def _write(path: Path, text: str, written: list[str], root: Path) -> None:
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    written.append(str(path.relative_to(root)))


def write_tenants(repo_root: str | Path) -> list[str]:
    """(Re)write manifests/llm/{tenants,kustomization}.yaml from the overlays; the paths that changed."""
    root = Path(repo_root)
    ns, written = namespace(root), []
    policy = policy_from_overlays(root)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": TENANTS_CONFIGMAP, "labels": {"app.kubernetes.io/part-of": "kubeforge"}},
                 "data": {"tenants.yaml": policy_text(policy)}}
    _write(root / LLM_DIR / "tenants.yaml", HEADER + _dump(configmap), written, root)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": ns,
                     "resources": ["tenants.yaml", "keys.yaml"]}
    if not (root / LLM_DIR / "keys.yaml").is_file():
        _write_keys(root, {}, written)
    _write(root / LLM_DIR / "kustomization.yaml", _dump(kustomization), written, root)
    return written


def read_keys(root: Path) -> dict[str, list[KeyRecord]]:
    secret = _read_documents(root / LLM_DIR / "keys.yaml")
    entries = secret.get("stringData") or {}
    return {name.removesuffix(".json"): records_from_text(name.removesuffix(".json"), text)
            for name, text in sorted(entries.items())}


def _write_keys(root: Path, keys: dict[str, list[KeyRecord]], written: list[str]) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": KEYS_SECRET, "labels": {"app.kubernetes.io/part-of": "kubeforge"}},
              "stringData": {f"{tenant}.json": key_file_text(tenant, records)
                             for tenant, records in sorted(keys.items())}}
    _write(root / LLM_DIR / "keys.yaml", KEYS_HEADER + _dump(secret), written, root)


class _Literal(yaml.SafeDumper):
    """Multi-line strings (the embedded JSON and YAML) as literal blocks, readable in review."""


_Literal.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def _dump(document: dict) -> str:
    return yaml.dump(document, Dumper=_Literal, sort_keys=False, width=1000)


def _tenant_with_budget(root: Path, tenant: str) -> None:
    policy = policy_from_overlays(root)
    if tenant not in policy.tenants:
        raise ConfigError(f"tenant {tenant} has no LLM budget in manifests/tenants/{tenant}: run `kubeforge tenant "
                          f"add {tenant} ... --llm-tokens-per-minute N --llm-max-concurrent N` first")


def add_key(repo_root: str | Path, tenant: str) -> KeyChange:
    root = Path(repo_root)
    _tenant_with_budget(root, tenant)
    keys = read_keys(root)
    key, record = new_key(tenant)
    keys.setdefault(tenant, []).append(record)
    written = write_tenants(root)
    _write_keys(root, keys, written)
    return KeyChange(tenant, key, record.id, written)


def revoke_key(repo_root: str | Path, tenant: str, key_id: str) -> KeyChange:
    root = Path(repo_root)
    keys = read_keys(root)
    records = keys.get(tenant, [])
    if key_id not in {r.id for r in records}:
        listed = ", ".join(r.id for r in records) or "none"
        raise ConfigError(f"tenant {tenant} has no key {key_id!r} (its keys: {listed})")
    keys[tenant] = [r for r in records if r.id != key_id]
    written: list[str] = []
    _write_keys(root, keys, written)
    return KeyChange(tenant, None, key_id, written)


def rotate_key(repo_root: str | Path, tenant: str, key_id: str | None = None) -> KeyChange:
    """A new key in place of ``key_id`` (or of the tenant's only key), in one change."""
    root = Path(repo_root)
    records = read_keys(root).get(tenant, [])
    if key_id is None:
        if len(records) != 1:
            raise ConfigError(f"tenant {tenant} has {len(records)} keys ({', '.join(r.id for r in records) or 'none'})"
                              "; say which to rotate with --key-id")
        key_id = records[0].id
    revoke_key(root, tenant, key_id)
    added = add_key(root, tenant)
    return KeyChange(tenant, added.key, added.key_id, sorted(set(added.written) | {str(LLM_DIR / "keys.yaml")}))
