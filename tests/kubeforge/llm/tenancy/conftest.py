"""Tenants, keys and the processes the tenancy tests talk to: the gateway (in front of the issue-13 LLM service as
its upstream) and an LLM service with keys, budgets and two workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kubeforge.llm.tenancy.keys import key_file_text, new_key
from tests.kubeforge.llm.server import LLMServer, free_port


@dataclass
class Tenancy:
    """A tenants file and a keys directory on disk, and the keys (plain text) the tests use."""

    root: Path
    tenants: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict)  # tenant -> [KeyRecord]
    keys: dict = field(default_factory=dict)  # tenant -> the first key

    @property
    def tenants_file(self) -> Path:
        return self.root / "tenants.yaml"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    def write(self) -> None:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self.tenants_file.write_text(yaml.safe_dump({"tenants": self.tenants}))
        for tenant, records in self.records.items():
            (self.keys_dir / f"{tenant}.json").write_text(key_file_text(tenant, records))

    def add_key(self, tenant: str) -> str:
        key, record = new_key(tenant)
        self.records.setdefault(tenant, []).append(record)
        self.keys.setdefault(tenant, key)
        self.write()
        return key

    def revoke(self, tenant: str, key: str) -> None:
        from kubeforge.llm.tenancy.keys import hash_key

        self.records[tenant] = [r for r in self.records[tenant] if r.sha256 != hash_key(key)]
        self.write()

    def env(self, prefix: str) -> dict[str, str]:
        return {f"{prefix}TENANTS_FILE": str(self.tenants_file), f"{prefix}KEYS_DIR": str(self.keys_dir),
                f"{prefix}AUTH": "required", f"{prefix}RELOAD_INTERVAL_S": "0.2",
                f"{prefix}AUDIT_LOG": str(self.root / "audit.jsonl")}

    def audit(self) -> list[dict]:
        path = self.root / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def audit_since(self, before: int, expected: int, tenant: str | None = None, timeout: float = 5.0) -> list[dict]:
        """The audit lines after the first ``before`` (of ``tenant``), once ``expected`` are there: a line is written
        when its request ends, which can be just after the client has read the answer."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.audit()[before:] if tenant is None or line["tenant"] == tenant]
            if len(lines) >= expected or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


def make_tenancy(root: Path, tenants: dict) -> Tenancy:
    tenancy = Tenancy(root, tenants=tenants)
    for name in tenants:
        tenancy.add_key(name)
    return tenancy


class Gateway(LLMServer):
    """``python -m kubeforge.llm.tenancy.gateway`` on a free port."""

    def __init__(self, tmp: Path, workers: int = 1, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"gateway-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kubeforge.llm.tenancy.gateway", "--port", str(self.port), "--workers",
             str(workers)], env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)


GATEWAY_TENANTS = {"team-a": {"tokens_per_minute": 100_000, "max_concurrent": 8, "adapters": ["alpha"]},
                   "team-b": {"tokens_per_minute": 100_000, "max_concurrent": 8},
                   "team-small": {"tokens_per_minute": 300, "max_concurrent": 8}}


@pytest.fixture(scope="session")
def gateway_tenancy(tmp_path_factory) -> Tenancy:
    return make_tenancy(tmp_path_factory.mktemp("gateway-tenancy"), GATEWAY_TENANTS)


@pytest.fixture(scope="session")
def gateway(llm_server, gateway_tenancy, tmp_path_factory):
    """The gateway with two upstreams: the LLM service (every model) and one that is down (model 'ghost')."""
    root = tmp_path_factory.mktemp("gateway")
    config = root / "upstreams.yaml"
    config.write_text(yaml.safe_dump({"upstreams": [
        {"name": "ghost-pool", "url": f"http://127.0.0.1:{free_port()}", "base_models": ["ghost"]},
        {"name": "engine", "url": llm_server.url, "models": ["*"]}]}))
    running = Gateway(root, KUBEFORGE_GATEWAY_CONFIG=str(config), KUBEFORGE_GATEWAY_MODELS_REFRESH_S="0.5",
                      **gateway_tenancy.env("KUBEFORGE_GATEWAY_"))
    try:
        running.wait("/readyz", 200, timeout=60)
        yield running
    finally:
        running.stop()
