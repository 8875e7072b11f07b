"""The tenants and their keys as the worker sees them now, reloaded without a restart when the files change.

Kubernetes updates a mounted Secret or ConfigMap in place (an atomic swap of its ``..data`` link) within the
kubelet's sync period (``syncFrequency``, 1 min by default) of the object's change; a daemon thread per worker
fingerprints the files every ``reload_interval_s`` (5 s by default) and swaps in the new snapshot. So a revoked key
stops working at most sync period + reload interval (about 65 s by default) after the Secret changes in the cluster,
plus the GitOps engine's sync delay after the merge (its poll interval, or seconds with a webhook). A file that
fails to parse leaves the previous snapshot in place (logged, counted in ``reload_errors``); at start-up the same
failure refuses to start.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from kubeforge.config import ConfigError
from kubeforge.llm.tenancy.keys import KeyRecord, KeyRing, read_key_dir
from kubeforge.llm.tenancy.policy import TenancyPolicy, read_policy

logger = logging.getLogger("kubeforge.llm")


@dataclass(frozen=True)
class Snapshot:
    policy: TenancyPolicy
    keys: KeyRing
    orphans: KeyRing  # keys whose tenant is gone from the policy: refused with a message that says so
    version: int


def load_snapshot(tenants_file: Path, keys_dir: Path, version: int = 0) -> Snapshot:
    policy = read_policy(tenants_file)
    records = read_key_dir(keys_dir)
    current: list[KeyRecord] = [r for r in records if r.tenant in policy.tenants]
    orphans = [r for r in records if r.tenant not in policy.tenants]
    for tenant in sorted({r.tenant for r in orphans}):
        logger.warning("keys of tenant %s are ignored: the tenant is not in %s", tenant, tenants_file)
    return Snapshot(policy=policy, keys=KeyRing(current), orphans=KeyRing(orphans), version=version)


def fingerprint(*paths: Path) -> tuple:
    """What changes when Kubernetes (or an editor) replaces the files: names, sizes, mtimes, link targets."""
    seen = []
    for path in paths:
        entries = sorted(path.iterdir()) if path.is_dir() else [path]
        for entry in entries:
            try:
                stat = entry.stat()
                target = os.readlink(entry) if entry.is_symlink() else ""
            except OSError:
                continue
            seen.append((str(entry), stat.st_size, stat.st_mtime_ns, stat.st_ino, target))
    return tuple(seen)


class TenancyStore:
    """The current snapshot (``.snapshot``: read it once per request) and the reload thread."""

    def __init__(self, tenants_file: str | Path, keys_dir: str | Path, reload_interval_s: float):
        self.tenants_file, self.keys_dir = Path(tenants_file), Path(keys_dir)
        self.reload_interval_s = reload_interval_s
        self._fingerprint = fingerprint(self.tenants_file, self.keys_dir)
        self.snapshot = load_snapshot(self.tenants_file, self.keys_dir)  # ConfigError: refuse to start
        self.reload_errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="tenancy-reload", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; True when a new snapshot is in place."""
        current = fingerprint(self.tenants_file, self.keys_dir)
        if current == self._fingerprint:
            return False
        try:
            snapshot = load_snapshot(self.tenants_file, self.keys_dir, self.snapshot.version + 1)
        except ConfigError as exc:
            self.reload_errors += 1
            self.last_error = str(exc)
            logger.error("tenants or keys changed but cannot be loaded; still serving the previous ones: %s", exc)
            self._fingerprint = current  # retried when the files change again
            return False
        self._fingerprint = current
        self.snapshot = snapshot
        logger.info("tenancy reloaded: %d tenants, %d keys", len(snapshot.policy.tenants), len(snapshot.keys))
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            try:
                self.reload_if_changed()
            except Exception:  # the watcher must outlive a transient filesystem error
                logger.exception("tenancy reload failed")
