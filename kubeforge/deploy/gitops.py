"""Promotion as a git commit: a model reaches an environment by a reviewed change whose message carries the evidence
(run id, accuracy and its delta, size, latency, compression method), never by someone running kubectl."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubeforge.config import ConfigError, PlatformConfig, ServeConfig
from kubeforge.deploy.values import values_for_run

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class PromotionError(ConfigError):
    """Promotion was refused; nothing was written or committed."""


@dataclass(frozen=True)
class PromotionResult:
    commit: str
    path: str
    message: str
    pushed: bool


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def _evidence(run_dir: Path) -> tuple[dict, dict | None]:
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        raise PromotionError(f"{run_dir} has no summary.json: the run did not finish")
    summary = json.loads(summary_file.read_text())
    reports = sorted(run_dir.glob("compress*/compressed_model/compression.json"))
    compression = json.loads(reports[0].read_text()) if reports else None
    if compression is not None and compression.get("gate") != "passed":
        raise PromotionError(f"run {summary.get('run_id', run_dir.name)} failed the accuracy gate "
                             f"(max drop {compression.get('max_accuracy_drop')} points); it cannot be promoted")
    return summary, compression


def commit_message(tenant: str, env: str, app: str, summary: dict, compression: dict | None) -> str:
    accuracy = summary["test"]["accuracy"]
    lines = [f"promote {tenant}/{app} to {env}: run {summary['run_id']}", "",
             f"run: {summary['run_id']} (pipeline {summary['pipeline']}, profile {summary['profile']})",
             f"test accuracy (trained model): {accuracy:.4f}"]
    if compression:
        chosen = next(m for m in compression["candidates"] if m["name"] == compression["chosen"])
        base = compression["baseline"]
        lines += [f"compression: {compression['chosen']} ({chosen['precision']}, {chosen['kind']})",
                  f"served accuracy: {chosen['accuracy']:.4f} (delta {-chosen['accuracy_drop']:+.2f} points, "
                  f"gate {compression['max_accuracy_drop']} points)",
                  f"model size: {chosen['size_bytes'] / 1024:.1f} KiB ({chosen['size_ratio']:.2f}x smaller than "
                  f"{base['size_bytes'] / 1024:.1f} KiB)",
                  f"latency batch 1: p50 {chosen['p50_ms_b1']:.3f} ms, p99 {chosen['p99_ms_b1']:.3f} ms"]
    else:
        lines.append("compression: not compressed (the pipeline had no compress step)")
    return "\n".join(lines) + "\n"


def promote(run_dir: str | Path, *, tenant: str, env: str, repo: str | Path, image: str, platform: PlatformConfig,
            profile: str | None = None, app: str = "classifier", push: bool = False) -> PromotionResult:
    run_dir, repo = Path(run_dir), Path(repo)
    if not run_dir.is_dir():
        raise PromotionError(f"run directory {run_dir} does not exist")
    for label, value in (("env", env), ("app", app)):
        if not _DNS_LABEL.match(value):
            raise PromotionError(f"{label} {value!r} is not a DNS-1123 label")
    if _git(repo, "rev-parse", "--show-toplevel").returncode != 0:
        raise PromotionError(f"{repo} is not a git repository")
    if not (repo / "manifests" / "tenants" / tenant / "kustomization.yaml").is_file():
        raise PromotionError(f"unknown tenant {tenant!r}: add it first with `kubeforge tenant add`")
    summary, compression = _evidence(run_dir)
    values = values_for_run(run_dir, platform.profile(profile or platform.default_profile), image,
                            ServeConfig())
    values["podAnnotations"]["kubeforge.io/run-id"] = summary["run_id"]
    values["podAnnotations"].pop("kubeforge.io/model-dir", None)  # a local path means nothing in the cluster
    relative = Path("manifests") / "apps" / tenant / app / f"values-{env}.yaml"
    if _git(repo, "status", "--porcelain", "--", str(relative.parent)).stdout.strip():
        raise PromotionError(f"{relative.parent} has uncommitted changes; commit or discard them first")
    target = repo / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"# promoted by kubeforge from run {summary['run_id']}\n"
                      + yaml.safe_dump(values, sort_keys=False))
    message = commit_message(tenant, env, app, summary, compression)
    _git(repo, "add", "--", str(relative))
    committed = _git(repo, "commit", "--quiet", "-m", message, "--", str(relative))
    if committed.returncode != 0:
        _git(repo, "reset", "--quiet", "--", str(relative))
        raise PromotionError(f"git commit failed: {(committed.stderr or committed.stdout).strip()}")
    commit = _git(repo, "rev-parse", "HEAD").stdout.strip()
    pushed = False
    if push:
        pushing = _git(repo, "push")
        if pushing.returncode != 0:
            raise PromotionError(f"committed {commit[:12]} but git push failed: {pushing.stderr.strip()}")
        pushed = True
    return PromotionResult(commit=commit, path=str(relative), message=message, pushed=pushed)
