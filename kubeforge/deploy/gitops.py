"""Promotion as a git commit: a model reaches an environment by a reviewed change whose message carries the evidence
(run id, accuracy and its delta, size, latency, compression method), never by someone running kubectl.

One release is one directory, ``manifests/apps/<tenant>/<env>/<app>/``, that both GitOps engines read:
Argo CD renders the chart with ``values.yaml`` (a multi-source Application made by the tenant's ApplicationSet), Flux
applies the directory's kustomization (a HelmRelease whose values come from a ConfigMap generated from
``values.yaml``). ``manifests/apps/<tenant>/<env>/kustomization.yaml`` lists the env's releases for Flux.
A release can instead be a KServe InferenceService (``inferenceservice.yaml``, rendered from the same values), which
the engines apply as a plain manifest.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubeforge.config import DNS_LABEL, ConfigError, PlatformConfig, ServeConfig
from kubeforge.deploy.kserve import (KServeOptions, check_name, image_reference, inference_service_from_values,
                                    to_yaml)
from kubeforge.deploy.values import image_values, values_for_run

APPS_DIR = Path("manifests") / "apps"
CLUSTERS_DIR = Path("manifests") / "clusters"
CHART_PATH = "charts/kubeforge-serving"  # the chart travels in the GitOps repository, next to manifests/
FLUX_SOURCE = "kubeforge-gitops"  # the GitRepository in each tenant namespace
FLUX_ACCOUNT = "kubeforge-gitops"  # the ServiceAccount Flux impersonates for a tenant's objects
FLUX_ENV_VARIABLE = "cluster_env"  # substituted by the cluster's Flux Kustomization (postBuild)
RELEASE_HEADER = "# Written by `kubeforge promote`; change it by promoting again, not by hand.\n"
KSERVE_MANIFEST = "inferenceservice.yaml"
# every file either kind of release writes: switching kinds deletes the other kind's files in the same commit
RELEASE_FILE_NAMES = ("values.yaml", "helmrelease.yaml", "kustomization.yaml", "kustomizeconfig.yaml", KSERVE_MANIFEST)

# The cluster pipeline's promote step reads its credentials from these variables (a Kubernetes Secret mounted as
# env): HTTPS basic auth, sent as a header through git's environment config, never in argv, the URL or on disk.
CREDENTIALS_SECRET = "kubeforge-gitops-credentials"
SECRET_KEY_TO_ENV = {"username": "GITOPS_USERNAME", "token": "GITOPS_TOKEN"}
AUTHOR_ENV = ("GITOPS_AUTHOR_NAME", "GITOPS_AUTHOR_EMAIL")
DEFAULT_AUTHOR = ("kubeforge pipeline", "kubeforge-pipeline@users.noreply.kubeforge.io")


class PromotionError(ConfigError):
    """Promotion was refused; nothing was written or committed."""


@dataclass(frozen=True)
class PromotionResult:
    commit: str
    path: str
    message: str
    pushed: bool


@dataclass(frozen=True)
class Evidence:
    """What the commit message proves: which run, how accurate, and what compression did to it."""
    run_id: str
    pipeline: str
    profile: str
    accuracy: float  # the trained (uncompressed) model on the test split
    compression: dict | None  # compression.json of the chosen model, None when the pipeline did not compress


def release_dir(tenant: str, env: str, app: str) -> Path:
    return APPS_DIR / tenant / env / app


def environments(repo: str | Path) -> list[str]:
    """The environments of a GitOps repository: one per cluster entry point."""
    root = Path(repo) / CLUSTERS_DIR
    return sorted(p.parent.name for p in root.glob("*/kustomization.yaml"))


def env_kustomization(tenant: str, releases: list[str]) -> str:
    """Flux's path for a tenant in one env: every release promoted there (none yet is a valid, empty build)."""
    return RELEASE_HEADER + yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                                            "namespace": tenant, "resources": sorted(releases)}, sort_keys=False)


def release_files(tenant: str, env: str, app: str, values_text: str) -> dict[Path, str]:
    """The release directory's files, relative to the repository root; deterministic apart from the values."""
    helm_release = {
        "apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "metadata": {"name": app},
        "spec": {"interval": "10m", "releaseName": app,
                 "serviceAccountName": FLUX_ACCOUNT,  # helm-controller acts as the tenant, not as itself
                 "chart": {"spec": {"chart": f"./{CHART_PATH}", "reconcileStrategy": "Revision",
                                    "sourceRef": {"kind": "GitRepository", "name": FLUX_SOURCE}}},
                 "install": {"remediation": {"retries": 3}},
                 "upgrade": {"remediation": {"retries": 3, "remediateLastFailure": True}},
                 "valuesFrom": [{"kind": "ConfigMap", "name": f"{app}-values", "valuesKey": "values.yaml"}]}}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": ["helmrelease.yaml"],
                     "configMapGenerator": [{"name": f"{app}-values", "files": ["values.yaml"]}],
                     "configurations": ["kustomizeconfig.yaml"]}
    # the generated ConfigMap's name carries a content hash; this makes the HelmRelease follow it, so a promotion
    # changes the HelmRelease itself and Flux upgrades at once
    name_reference = {"nameReference": [{"kind": "ConfigMap", "version": "v1", "fieldSpecs": [
        {"kind": "HelmRelease", "path": "spec/valuesFrom/name"}]}]}
    directory = release_dir(tenant, env, app)  # the objects are the same in every env; the directory differs
    files = {"values.yaml": values_text,
             "helmrelease.yaml": RELEASE_HEADER + yaml.safe_dump(helm_release, sort_keys=False),
             "kustomization.yaml": RELEASE_HEADER + yaml.safe_dump(kustomization, sort_keys=False),
             "kustomizeconfig.yaml": RELEASE_HEADER + yaml.safe_dump(name_reference, sort_keys=False)}
    return {directory / name: content for name, content in files.items()}


def kserve_release_files(tenant: str, env: str, app: str, service: dict) -> dict[Path, str]:
    """A release that is one InferenceService: the kustomization makes it a plain manifest for Flux."""
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [KSERVE_MANIFEST]}
    files = {KSERVE_MANIFEST: RELEASE_HEADER + to_yaml(service),
             "kustomization.yaml": RELEASE_HEADER + yaml.safe_dump(kustomization, sort_keys=False)}
    return {release_dir(tenant, env, app) / name: content for name, content in files.items()}


def _git(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, timeout=300)


def _check_gate(compression: dict | None, run_id: str) -> None:
    if compression is not None and compression.get("gate") != "passed":
        raise PromotionError(f"run {run_id} failed the accuracy gate "
                             f"(max drop {compression.get('max_accuracy_drop')} points); it cannot be promoted")


def evidence_from_run(run_dir: str | Path) -> Evidence:
    """The evidence of a local run directory (summary.json and the compression report, if any)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PromotionError(f"run directory {run_dir} does not exist")
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        raise PromotionError(f"{run_dir} has no summary.json: the run did not finish")
    summary = json.loads(summary_file.read_text())
    reports = sorted(run_dir.glob("compress*/compressed_model/compression.json"))
    compression = json.loads(reports[0].read_text()) if reports else None
    run_id = summary.get("run_id", run_dir.name)
    _check_gate(compression, run_id)
    return Evidence(run_id=run_id, pipeline=summary["pipeline"], profile=summary["profile"],
                    accuracy=summary["test"]["accuracy"], compression=compression)


def evidence_from_model(report_file: str | Path, *, run_id: str, pipeline: str, profile: str) -> Evidence:
    """The evidence of a compressed model on a cluster, where there is no run directory: its compression report."""
    report_file = Path(report_file)
    if not report_file.is_file():
        raise PromotionError(f"compression report {report_file} does not exist")
    try:
        compression = json.loads(report_file.read_text())
        accuracy = compression["baseline"]["accuracy"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PromotionError(f"{report_file} is not a kubeforge compression report: {exc}") from None
    if not run_id.strip():
        raise PromotionError("run_id must not be empty: it is the evidence that names the run")
    _check_gate(compression, run_id)
    return Evidence(run_id=run_id, pipeline=pipeline, profile=profile, accuracy=accuracy, compression=compression)


def commit_message(tenant: str, env: str, app: str, evidence: Evidence) -> str:
    lines = [f"promote {tenant}/{app} to {env}: run {evidence.run_id}", "",
             f"run: {evidence.run_id} (pipeline {evidence.pipeline}, profile {evidence.profile})",
             f"test accuracy (trained model): {evidence.accuracy:.4f}"]
    compression = evidence.compression
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


def _check_names(tenant: str, env: str, app: str, kserve: KServeOptions | None = None) -> None:
    for label, value, limit in (("tenant", tenant, 63), ("env", env, 63), ("app", app, 53)):  # 53: Helm release
        if not DNS_LABEL.match(value) or len(value) > limit:
            raise PromotionError(f"{label} {value!r} is not a DNS-1123 label of at most {limit} characters")
    if kserve is not None:
        try:
            check_name(app)  # the app names the InferenceService
            kserve.check()
        except ConfigError as exc:
            raise PromotionError(f"app {app!r} as a KServe release: {exc}") from None


def _commit_release(repo: Path, model_source: Path, evidence: Evidence, *, tenant: str, env: str, app: str,
                    image: str, platform: PlatformConfig, profile: str | None,
                    kserve: KServeOptions | None = None) -> PromotionResult:
    """Check everything, then write the release directory and the env list and commit exactly those paths."""
    if _git(repo, "rev-parse", "--show-toplevel").returncode != 0:
        raise PromotionError(f"{repo} is not a git repository")
    if not (repo / "manifests" / "tenants" / tenant / "kustomization.yaml").is_file():
        raise PromotionError(f"unknown tenant {tenant!r}: add it first with `kubeforge tenant add`")
    known = environments(repo)
    if env not in known:
        raise PromotionError(f"unknown env {env!r}: no cluster entry point {CLUSTERS_DIR / env} "
                             f"(known: {', '.join(known) or 'none'})")
    values = values_for_run(model_source, platform.profile(profile or platform.default_profile), image,
                            ServeConfig())
    values["podAnnotations"]["kubeforge.io/run-id"] = evidence.run_id
    values["podAnnotations"].pop("kubeforge.io/model-dir", None)  # a local path means nothing in the cluster
    env_dir = APPS_DIR / tenant / env
    if _git(repo, "status", "--porcelain", "--", str(env_dir)).stdout.strip():
        raise PromotionError(f"{env_dir} has uncommitted changes; commit or discard them first")
    if kserve is None:
        values_text = f"# promoted by kubeforge from run {evidence.run_id}\n" + yaml.safe_dump(values, sort_keys=False)
        planned = release_files(tenant, env, app, values_text)
    else:
        planned = kserve_release_files(tenant, env, app, inference_service_from_values(values, name=app,
                                                                                      options=kserve))
    stale = [path for path in (release_dir(tenant, env, app) / name for name in RELEASE_FILE_NAMES)
             if path not in planned and (repo / path).exists()]
    env_list = env_dir / "kustomization.yaml"
    releases = set(yaml.safe_load((repo / env_list).read_text()).get("resources") or []) \
        if (repo / env_list).is_file() else set()
    planned[env_list] = env_kustomization(tenant, sorted(releases | {app}))
    if not stale and all((repo / path).is_file() and (repo / path).read_text() == content
                         for path, content in planned.items()):
        raise PromotionError(f"{release_dir(tenant, env, app)} already holds exactly this release; nothing to commit")
    for relative, content in planned.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(content)
    for path in stale:
        (repo / path).unlink()
    message = commit_message(tenant, env, app, evidence)
    if kserve is not None:
        message += f"release: KServe InferenceService ({kserve.deployment_mode} mode, replicas " \
                   f"{kserve.min_replicas}-{kserve.max_replicas})\n"
    paths = [str(p) for p in [*planned, *stale]]
    _git(repo, "add", "--", *paths)
    committed = _git(repo, "commit", "--quiet", "-m", message, "--", *paths)
    if committed.returncode != 0:
        _git(repo, "reset", "--quiet", "--", *paths)
        raise PromotionError(f"git commit failed: {(committed.stderr or committed.stdout).strip()}")
    commit = _git(repo, "rev-parse", "HEAD").stdout.strip()
    return PromotionResult(commit=commit, path=str(release_dir(tenant, env, app)), message=message, pushed=False)


def promote(run_dir: str | Path, *, tenant: str, env: str, repo: str | Path, image: str, platform: PlatformConfig,
            profile: str | None = None, app: str = "classifier", push: bool = False,
            kserve: KServeOptions | None = None) -> PromotionResult:
    """Promote a local run into a checkout of the GitOps repository (``kubeforge promote``); with ``kserve`` the
    release is an InferenceService instead of the Helm release."""
    _check_names(tenant, env, app, kserve)
    evidence = evidence_from_run(run_dir)
    result = _commit_release(Path(repo), Path(run_dir), evidence, tenant=tenant, env=env, app=app, image=image,
                             platform=platform, profile=profile, kserve=kserve)
    if push:
        pushing = _git(Path(repo), "push")
        if pushing.returncode != 0:
            raise PromotionError(f"committed {result.commit[:12]} but git push failed: {pushing.stderr.strip()}")
        result = PromotionResult(commit=result.commit, path=result.path, message=result.message, pushed=True)
    return result


def git_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """git's environment with the HTTPS credentials (if any) as an Authorization header, kept out of argv and disk."""
    env = {key: value for key, value in environ.items() if not key.startswith("GIT_CONFIG_")}
    env["GIT_TERMINAL_PROMPT"] = "0"  # fail, never wait for a password nobody will type
    user, token = environ.get(SECRET_KEY_TO_ENV["username"], ""), environ.get(SECRET_KEY_TO_ENV["token"], "")
    if token:
        basic = base64.b64encode(f"{user or 'git'}:{token}".encode()).decode()
        env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}"})
    return env


def _redact(text: str, environ: Mapping[str, str]) -> str:
    token = environ.get(SECRET_KEY_TO_ENV["token"], "")
    return text.replace(token, "***") if token else text


def promote_to_remote(model_dir: str | Path, report_file: str | Path, *, repo_url: str, branch: str, tenant: str,
                      env: str, image: str, platform: PlatformConfig, profile: str | None, run_id: str,
                      pipeline: str = "train-compress", app: str = "classifier",
                      environ: Mapping[str, str] | None = None, attempts: int = 3,
                      kserve: KServeOptions | None = None) -> PromotionResult:
    """Clone the GitOps repository, commit the release with its evidence and push it (the pipeline's promote step).

    Every check that needs no clone runs first. A push that lost a race with another commit is rebased and retried:
    our commit touches only its release directory, so a rebase conflicts only with a concurrent promotion of the
    very same release, and that is refused.
    """
    environ = os.environ if environ is None else environ
    _check_names(tenant, env, app, kserve)
    if kserve is None:
        image_values(image)
    else:
        image_reference(image_values(image))  # KServe has no chart default tag: the image must be pinned
    if not Path(model_dir).is_dir():
        raise PromotionError(f"model directory {model_dir} does not exist")
    profile_name = platform.profile(profile or platform.default_profile).name
    evidence = evidence_from_model(report_file, run_id=run_id, pipeline=pipeline, profile=profile_name)
    if not branch.strip() or branch.startswith("-"):
        raise PromotionError(f"branch {branch!r} is not a branch name")
    git_env = git_environment(environ)
    author = [environ.get(key) or default for key, default in zip(AUTHOR_ENV, DEFAULT_AUTHOR)]
    with tempfile.TemporaryDirectory(prefix="kubeforge-promote-") as workdir:
        checkout = Path(workdir) / "repo"
        cloned = subprocess.run(["git", "clone", "--quiet", "--single-branch", "--branch", branch, "--", repo_url,
                                 str(checkout)], capture_output=True, text=True, env=git_env, timeout=600)
        if cloned.returncode != 0:
            raise PromotionError(f"git clone of {repo_url} (branch {branch}) failed: "
                                 f"{_redact(cloned.stderr.strip(), environ)}")
        for key, value in zip(("user.name", "user.email"), author):
            _git(checkout, "config", key, value)
        result = _commit_release(checkout, Path(model_dir), evidence, tenant=tenant, env=env, app=app, image=image,
                                 platform=platform, profile=profile_name, kserve=kserve)
        for attempt in range(attempts):
            pushing = _git(checkout, "push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", env=git_env)
            if pushing.returncode == 0:
                commit = _git(checkout, "rev-parse", "HEAD").stdout.strip()
                return PromotionResult(commit=commit, path=result.path, message=result.message, pushed=True)
            if attempt + 1 == attempts:
                break
            rebased = _git(checkout, "pull", "--quiet", "--rebase", "origin", branch, env=git_env)
            if rebased.returncode != 0:
                _git(checkout, "rebase", "--abort")
                raise PromotionError(f"{result.path} changed on {branch} while promoting (rebase failed); "
                                     "nothing was pushed: promote again")
        raise PromotionError(f"git push to {repo_url} (branch {branch}) failed after {attempts} attempts: "
                             f"{_redact(pushing.stderr.strip(), environ)}")


def summarise(result: PromotionResult, repo_url: str, branch: str) -> str:
    """Markdown for the pipeline UI: what was pushed where, and the evidence."""
    return (f"# Promotion\n\nCommit `{result.commit[:12]}` on `{branch}` of `{repo_url}` writes `{result.path}/`."
            f"\n\n```\n{result.message}```\n")

