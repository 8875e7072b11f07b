"""Submit a compiled pipeline to a Kubeflow Pipelines API server through kfp.Client, all or nothing.

Before anything is created the API is checked in order: reachable (healthz), in multi-user mode, credentials
accepted and the tenant's namespace usable (a namespaced list). Only then are the pipeline (if missing), a new
pipeline version, the experiment (if missing) and the run created; if a later call fails, what this invocation
created is deleted again, newest first. Every request has a timeout, so an unreachable host fails in seconds.

An orchestration module: it may import kfp (lazily, so the CLI stays fast).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubeforge.config import SubmitConfig

SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
API = "/apis/v2beta1"


class SubmitError(RuntimeError):
    """Submission refused or failed; the message is one line and says what to do."""


@dataclass(frozen=True)
class ApiCall:
    method: str
    path: str
    purpose: str

    def __str__(self) -> str:
        return f"{self.method:6} {self.path}  # {self.purpose}"


@dataclass(frozen=True)
class SubmitRequest:
    """One submission: where (config), what (the compiled package of ``pipeline``) and with which parameters."""

    config: SubmitConfig
    pipeline: str
    package: Path
    params: dict[str, Any] = field(default_factory=dict)
    token: str | None = None

    @property
    def version_name(self) -> str:
        digest = hashlib.sha256(self.package.read_bytes()).hexdigest()[:10]
        return f"{self.pipeline}-{_now():%Y%m%d-%H%M%S}-{digest}"

    @property
    def run_name(self) -> str:
        return self.config.run_name or f"{self.pipeline} {_now():%Y-%m-%d %H:%M:%S} UTC"

    @property
    def endpoint(self) -> str:
        if self.config.host:
            return self.config.host.rstrip("/")
        return (f"kube context {self.config.kube_context!r}: API-server proxy to "
                f"{self.config.kfp_namespace}/ml-pipeline")


@dataclass(frozen=True)
class Submission:
    run_id: str
    run_url: str
    pipeline_id: str
    version_id: str
    experiment_id: str
    created: tuple[str, ...]  # what this invocation created, e.g. ("pipeline", "version", "experiment", "run")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def in_cluster_token_path() -> Path | None:
    path = Path(os.environ.get(SA_TOKEN_ENV, SA_TOKEN_PATH))
    return path if path.is_file() else None


def describe_auth(request: SubmitRequest) -> str:
    if request.token:
        return "bearer token (--token)"
    if request.config.kube_context:
        return f"credentials of kube context {request.config.kube_context!r}"
    path = in_cluster_token_path()
    if path:
        return f"in-cluster ServiceAccount token ({path})"
    return "none (no --token, no in-cluster token, no --kube-context)"


def planned_calls(request: SubmitRequest) -> list[ApiCall]:
    """The requests `submit` makes, in order, for --dry-run."""
    config, ns = request.config, request.config.namespace
    name_filter = "filter=display_name%3D{}"
    return [
        ApiCall("GET", f"{API}/healthz", "reachable, and multi-user mode"),
        ApiCall("GET", f"{API}/experiments?namespace={ns}&{name_filter.format(config.experiment)}",
                "credentials accepted and namespace usable; finds the experiment"),
        ApiCall("GET", f"{API}/pipelines?namespace={ns}&{name_filter.format(request.pipeline)}",
                "finds the pipeline"),
        ApiCall("POST", f"{API}/pipelines", f"only if missing: pipeline {request.pipeline!r} in {ns}"),
        ApiCall("POST", f"{API}/pipelines/upload_version?pipelineid=<id>&name={request.version_name}",
                f"uploads {request.package.name}"),
        ApiCall("POST", f"{API}/experiments", f"only if missing: experiment {config.experiment!r} in {ns}"),
        ApiCall("POST", f"{API}/runs", f"run {request.run_name!r}, parameters {json.dumps(request.params)}"
                + (f", service account {config.service_account}" if config.service_account else "")),
    ]


def _client(request: SubmitRequest):
    import kfp

    config = request.config
    kwargs: dict[str, Any] = {"ui_host": config.ui_host or config.host or None}
    if config.host:
        kwargs.update(host=config.host.rstrip("/"), namespace=config.namespace)
        if request.token:
            kwargs["existing_token"] = request.token
        elif in_cluster_token_path():
            kwargs["credentials"] = kfp.client.ServiceAccountTokenVolumeCredentials(path=str(in_cluster_token_path()))
    else:
        _check_kube_context(config)
        kwargs.update(kube_context=config.kube_context, namespace=config.kfp_namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return kfp.Client(**kwargs)
        except Exception as exc:  # kube-context mode probes healthz while constructing
            raise SubmitError(f"cannot reach the KFP API via {request.endpoint}: {_first_line(exc)}") from None


def _check_kube_context(config: SubmitConfig) -> None:
    """With a kube context the tenant namespace can be checked for real, on the Kubernetes API."""
    from kubernetes import client, config as kube_config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    try:
        api = kube_config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None,
                                                 context=config.kube_context)
    except (ConfigException, FileNotFoundError) as exc:
        raise SubmitError(f"kube context {config.kube_context!r}: {_first_line(exc)}") from None
    try:
        client.CoreV1Api(api).read_namespace(config.namespace, _request_timeout=config.timeout_s)
    except ApiException as exc:
        if exc.status == 404:
            raise SubmitError(f"namespace {config.namespace!r} does not exist in the cluster of kube context "
                              f"{config.kube_context!r}; onboard the tenant first (kubeforge tenant add)") from None
        if exc.status == 401:
            raise SubmitError(f"kube context {config.kube_context!r}: the API server refused the credentials "
                              "(401 Unauthorized)") from None
        if exc.status != 403:  # may not read namespaces: leave the namespace check to the KFP API
            raise SubmitError(f"kube context {config.kube_context!r}: {exc.status} {exc.reason}") from None
    except Exception as exc:
        raise SubmitError(f"kube context {config.kube_context!r}: cannot reach the API server: "
                          f"{_reason(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    try:
        data = json.loads(body) if body else {}
        message = data.get("message") or data.get("error") or ""
    except (ValueError, AttributeError):
        message = ""
    return f"{exc.status} {exc.reason}" + (f": {message.strip().splitlines()[0]}" if message.strip() else "")


class _Api:
    """The generated KFP endpoints of one client, each call with a timeout and errors turned into SubmitError."""

    def __init__(self, client: Any, request: SubmitRequest):
        self.client, self.request = client, request

    def call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        from kfp_server_api.exceptions import ApiException

        config = self.request.config
        try:
            return function(*args, _request_timeout=config.timeout_s, **kwargs)
        except ApiException as exc:
            if not exc.status:  # kfp_server_api reports SSL and some connection errors as status 0
                raise SubmitError(f"cannot reach the KFP API at {self.request.endpoint}: {exc.reason}") from None
            if exc.status == 401:
                raise SubmitError(f"the KFP API at {self.request.endpoint} refused the credentials "
                                  f"({_server_message(exc)}); auth used: {describe_auth(self.request)}") from None
            if what == "health check":
                raise SubmitError(f"{self.request.endpoint} does not serve the KFP API (GET {API}/healthz: "
                                  f"{_server_message(exc)}); point --host at the pipelines endpoint") from None
            if exc.status == 403 and what == "namespace check":
                raise SubmitError(f"namespace {config.namespace!r} cannot be used ({_server_message(exc)}): it "
                                  "does not exist or you are not a contributor of that Kubeflow profile") from None
            raise SubmitError(f"{what} failed: {_server_message(exc)}") from None
        except OSError as exc:
            raise SubmitError(f"cannot reach the KFP API at {self.request.endpoint}: {_reason(exc)}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("urllib3"):
                raise SubmitError(f"cannot reach the KFP API at {self.request.endpoint}: {_reason(exc)}") from None
            raise

    def healthz(self) -> dict:
        response = self.call("health check", self.client.healthzs.healthz_service_get_healthz,
                             _preload_content=False)
        kind = response.headers.get("Content-Type", "")
        try:
            data = json.loads(response.data)
        except ValueError:
            data = None
        if "json" not in kind or not isinstance(data, dict):
            landed = response.geturl() or ""
            raise SubmitError(f"{self.request.endpoint}{API}/healthz answered with {kind or 'no content type'} "
                              f"{'from ' + landed + ' ' if landed else ''}instead of the KFP API: a login page? "
                              "pass --token, or point --host at the KFP API endpoint")
        return data


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return _first_line(reason if isinstance(reason, BaseException) else Exception(str(reason)))


def _by_name(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def submit(request: SubmitRequest) -> Submission:
    """Check, then create; on a failure after the checks, delete what was created here and raise SubmitError."""
    from kfp_server_api import models

    if not request.package.is_file():
        raise SubmitError(f"compiled package {request.package} does not exist")
    config, ns = request.config, request.config.namespace
    api = _Api(_client(request), request)
    client = api.client

    health = api.healthz()
    if not health.get("multi_user"):
        raise SubmitError(f"the KFP API at {request.endpoint} runs in single-user mode: it cannot place runs in "
                          f"namespace {ns!r}; use a multi-user (Kubeflow) installation")
    experiments = api.call("namespace check", client.experiments.experiment_service_list_experiments,
                           namespace=ns, filter=_by_name(config.experiment), page_size=1).experiments or []
    pipelines = api.call("pipeline lookup", client.pipelines.pipeline_service_list_pipelines,
                         namespace=ns, filter=_by_name(request.pipeline), page_size=1).pipelines or []

    created: list[tuple[str, tuple[str, ...]]] = []
    try:
        if pipelines:
            pipeline_id = pipelines[0].pipeline_id
        else:
            pipeline_id = api.call("pipeline creation", client.pipelines.pipeline_service_create_pipeline,
                                   models.V2beta1Pipeline(display_name=request.pipeline, namespace=ns,
                                                          description="submitted by kubeforge")).pipeline_id
            created.append(("pipeline", (pipeline_id,)))
        version_id = api.call("pipeline version upload", client.pipeline_uploads.upload_pipeline_version,
                              str(request.package), name=request.version_name,
                              pipelineid=pipeline_id).pipeline_version_id
        created.append(("version", (pipeline_id, version_id)))
        if experiments:
            experiment_id = experiments[0].experiment_id
        else:
            experiment_id = api.call("experiment creation", client.experiments.experiment_service_create_experiment,
                                     models.V2beta1Experiment(display_name=config.experiment,
                                                              namespace=ns)).experiment_id
            created.append(("experiment", (experiment_id,)))
        run = api.call("run creation", client.runs.run_service_create_run, models.V2beta1Run(
            experiment_id=experiment_id, display_name=request.run_name,
            pipeline_version_reference=models.V2beta1PipelineVersionReference(
                pipeline_id=pipeline_id, pipeline_version_id=version_id),
            runtime_config=models.V2beta1RuntimeConfig(parameters=request.params),
            service_account=config.service_account or None))
    except SubmitError as exc:
        leftovers = _roll_back(api, created)
        raise SubmitError(str(exc) + ("; " + leftovers if leftovers else
                                      f"; nothing was left behind ({len(created)} object(s) removed)")) from None
    ui = (config.ui_host or config.host).rstrip("/")
    return Submission(run_id=run.run_id, run_url=f"{ui}/#/runs/details/{run.run_id}" if ui else
                      f"#/runs/details/{run.run_id} (give --ui-host for a full address)",
                      pipeline_id=pipeline_id, version_id=version_id, experiment_id=experiment_id,
                      created=tuple(kind for kind, _ in created) + ("run",))


def _roll_back(api: _Api, created: list[tuple[str, tuple[str, ...]]]) -> str:
    """Delete newest first; returns what could not be deleted (empty when everything was)."""
    client, failed = api.client, []
    deleters = {"pipeline": client.pipelines.pipeline_service_delete_pipeline,
                "version": client.pipelines.pipeline_service_delete_pipeline_version,
                "experiment": client.experiments.experiment_service_delete_experiment}
    for kind, ids in reversed(created):
        try:
            api.call(f"deleting {kind}", deleters[kind], *ids)
        except SubmitError as exc:
            failed.append(f"could not delete the {kind} {'/'.join(ids)} it created ({exc})")
    return "; ".join(failed)
