"""The `kubeforge` command. Bad input (settings, data, models: also when a step finds it) prints the cause as the
last line and exits 2; an internal failure exits 1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from kubeforge.config import ConfigError, PlatformConfig, RunConfig, load_platform, parse_param_assignments
from kubeforge.cli_kserve import deploy_kserve
from kubeforge.cli_runs import app as runs_app
from kubeforge.cli_tenant_keys import key_app
from kubeforge.cli_usage import usage

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Kubernetes-native MLOps: train, compress, package and deploy models through KFP pipelines.")
console = Console()
errors = Console(stderr=True)

USAGE_ERROR = 2

ParamOption = Annotated[list[str] | None, typer.Option(
    "--param", "-p", help="pipeline parameter as key=value (repeatable), e.g. -p epochs=10 -p hidden_sizes=[64,32]")]
ProfileOption = Annotated[str | None, typer.Option(
    "--profile", help="scheduling profile for the heavy step (cpu, gpu-t4, gpu-a100, ...)")]
PlatformOption = Annotated[Path | None, typer.Option(
    "--platform-config", help="platform file with profiles and image (default: $KUBEFORGE_PLATFORM_CONFIG or built-in)")]


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def platform_or_fail(path: Path | None) -> PlatformConfig:
    try:
        return load_platform(path)
    except ConfigError as exc:
        fail(str(exc))


def _default_pipeline(name: str | None) -> str:
    from kubeforge_pipelines import DEFAULT_PIPELINE

    return name or DEFAULT_PIPELINE


def print_summary(summary: dict, out: Console | None = None) -> None:
    """The run's table: classifier runs get their usual rows; other runs (language models) every row they carry."""
    from kubeforge.runs import format_value

    table = Table(title=summary["pipeline"], show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    for name, value in summary["test"].items():
        table.add_row(f"test {name}", format_value(value))
    training = summary["training"]
    if "best_epoch" in training:
        table.add_row("best epoch / epochs run", f"{training['best_epoch']} / {training['epochs_run']}")
        table.add_row("parameters", f"{training['parameters']:,}")
        table.add_row("device", training["device"])
        table.add_row("training samples/s", f"{training['samples_per_second']:,.0f}")
    else:
        for name, value in training.items():
            table.add_row(name.replace("_", " "), format_value(value))
    compression = summary.get("compression")
    if compression and "accuracy_drop" in compression:
        table.add_row("compressed with", f"{compression['chosen']} ({compression['kind']}, {compression['precision']})")
        table.add_row("compressed accuracy (drop)",
                      f"{compression['accuracy']:.4f} ({compression['accuracy_drop']:+.2f} pt)")
        table.add_row("size reduction", f"{compression['size_ratio']:.1f}×")
        table.add_row("latency p50 / p99 (batch 1)",
                      f"{compression['p50_ms_b1']:.3f} / {compression['p99_ms_b1']:.3f} ms")
    elif compression:
        for name, value in compression.items():
            table.add_row(f"compression {name.replace('_', ' ')}", format_value(value))
    table.add_row("profile", summary["profile"])
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s")
    (out or console).print(table)
    (out or console).print(f"note: the {summary['profile']} profile's resources, GPUs and node placement apply on a "
                           "Kubeflow cluster; kfp.local ran every step on this machine", highlight=False, soft_wrap=True)


@app.command()
def run(
    pipeline: Annotated[str | None, typer.Argument(help="pipeline name (default: the default pipeline)")] = None,
    param: ParamOption = None,
    profile: ProfileOption = None,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="where run directories are created")] = Path("runs"),
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="reuse cached step outputs")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="stream every step's output (it always goes to "
                                                                  "RUNS_DIR/<run>/<step>/log.txt)")] = False,
    platform_config: PlatformOption = None,
) -> None:
    """Run a pipeline locally through kfp.local into RUNS_DIR/<pipeline>-<timestamp>/ and write report.html.

    Bad settings, data or models exit 2 with the cause as the last line (also from inside a step); an internal
    failure exits 1."""
    import sys

    from rich.markup import escape

    from kubeforge import orchestration
    from kubeforge.live import make_view

    platform = platform_or_fail(platform_config)
    try:
        from kubeforge_pipelines import build_pipeline, pipeline_entry

        name = _default_pipeline(pipeline)
        overrides = parse_param_assignments(param or [], pipeline_entry(name).sections)
        orchestration.resolve_params(name, overrides)
        build_pipeline(name, platform, profile)
    except ConfigError as exc:
        fail(str(exc))
    view = make_view(Console(file=sys.stdout), verbose=verbose)  # bound now: the run reroutes sys.stdout
    try:
        outcome = orchestration.run_local(name, overrides, platform, profile=profile, runs_dir=runs_dir,
                                          enable_caching=cache, listener=view)
    except orchestration.PipelineRunError as exc:
        if exc.step:
            errors.print(f"step {exc.step} failed; its log: {exc.log or 'not written'}", highlight=False,
                         markup=False, soft_wrap=True)
        if exc.details:
            errors.print(exc.details, highlight=False, markup=False, soft_wrap=True)
        fail(escape(str(exc)), code=USAGE_ERROR if exc.user_error else 1)
    except ConfigError as exc:
        fail(escape(str(exc)))
    except ValueError as exc:  # the preflight check's DataError (kubeforge.data is imported only when needed)
        from kubeforge.data import DataError

        if not isinstance(exc, DataError):
            raise
        fail(escape(str(exc)))
    print_summary(outcome.summary)
    console.print(f"run directory: {outcome.run_dir}\nstep logs: {outcome.run_dir}/<step>/log.txt\n"
                  f"report: {outcome.report}", highlight=False, soft_wrap=True)


@app.command("compile")
def compile_command(
    pipeline: Annotated[str, typer.Argument(help="pipeline name")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the KFP IR YAML")],
    profile: ProfileOption = None,
    platform_config: PlatformOption = None,
) -> None:
    """Compile a pipeline to KFP IR YAML, with the heavy step placed by PROFILE."""
    from kubeforge import orchestration

    platform = platform_or_fail(platform_config)
    try:
        path = orchestration.compile_pipeline(pipeline, output, platform, profile)
    except ConfigError as exc:
        fail(str(exc))
    console.print(f"wrote {path}")


@app.command()
def submit(
    pipeline: Annotated[str, typer.Argument(help="pipeline name, e.g. train-compress-cluster")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="the tenant's namespace (Kubeflow profile)")],
    host: Annotated[str, typer.Option(help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")] = "",
    experiment: Annotated[str, typer.Option(help="experiment (created if missing)")] = "kubeforge",
    param: ParamOption = None,
    profile: ProfileOption = None,
    run_name: Annotated[str, typer.Option(help="run display name (default: '<pipeline> <UTC time>')")] = "",
    service_account: Annotated[str, typer.Option(help="ServiceAccount of the run's pods")] = "",
    enable_caching: Annotated[bool, typer.Option(help="let the training step reuse cached results")] = False,
    dry_run: Annotated[bool, typer.Option(help="write the package and print the API calls; send nothing")] = False,
    token: Annotated[str | None, typer.Option(envvar="KUBEFORGE_KFP_TOKEN", show_default=False,
                                              help="bearer token for the KFP API ($KUBEFORGE_KFP_TOKEN)")] = None,
    kube_context: Annotated[str, typer.Option(help="reach KFP through this kubeconfig context (no --host)")] = "",
    kfp_namespace: Annotated[str, typer.Option(help="namespace of ml-pipeline (with --kube-context)")] = "kubeflow",
    ui_host: Annotated[str, typer.Option(help="Kubeflow UI address for the printed link (default: --host)")] = "",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="where to write the compiled package "
                                                                      "(default: build/<pipeline>.yaml)")] = None,
    platform_config: PlatformOption = None,
) -> None:
    """Compile PIPELINE and start a run of it on a Kubeflow Pipelines endpoint, in the tenant's namespace."""
    from pydantic import ValidationError

    from kubeforge import orchestration
    from kubeforge.config import SubmitConfig, describe_validation_error
    from kubeforge.submission import SubmitError, SubmitRequest, describe_auth, planned_calls
    from kubeforge.submission import submit as submit_request

    platform = platform_or_fail(platform_config)
    try:
        config = SubmitConfig(host=host, namespace=namespace, experiment=experiment, run_name=run_name,
                              service_account=service_account, enable_caching=enable_caching,
                              kube_context=kube_context, kfp_namespace=kfp_namespace, ui_host=ui_host)
    except ValidationError as exc:
        fail(describe_validation_error(exc))
    try:
        from kubeforge_pipelines import pipeline_entry

        overrides = parse_param_assignments(param or [], pipeline_entry(pipeline).sections)
        orchestration.resolve_params(pipeline, overrides)
        package = orchestration.compile_pipeline(pipeline, output or Path("build") / f"{pipeline}.yaml", platform,
                                                 profile, cache_training=enable_caching)
    except ConfigError as exc:
        fail(str(exc))
    request = SubmitRequest(config=config, pipeline=pipeline, package=package, params=overrides, token=token)
    if dry_run:
        console.print(f"dry run: nothing sent. compiled {pipeline} (profile "
                      f"{profile or platform.default_profile}) to {package}\nendpoint: {request.endpoint}\n"
                      f"auth: {describe_auth(request)}\nnamespace: {namespace}   experiment: {experiment}   "
                      f"training cache: {'on' if enable_caching else 'off'}\nrequests it would make:",
                      highlight=False, soft_wrap=True)
        for number, call in enumerate(planned_calls(request), 1):
            console.print(f"  {number}. {call}", highlight=False, soft_wrap=True)
        return
    try:
        submitted = submit_request(request)
    except SubmitError as exc:
        fail(str(exc))
    console.print(f"run {submitted.run_id} started in {namespace} (experiment {experiment}; created: "
                  f"{', '.join(submitted.created)})\n{submitted.run_url}", highlight=False, soft_wrap=True)


@app.command()
def profiles(platform_config: PlatformOption = None) -> None:
    """List the scheduling profiles of the platform file."""
    platform = platform_or_fail(platform_config)
    table = Table("profile", "GPU", "node selector", "cpu/memory request", "description")
    for p in platform.profiles:
        gpu = f"{p.gpu_count}× {p.gpu_resource}" if p.uses_gpu else "-"
        selector = ", ".join(f"{k}={v}" for k, v in p.node_selector.items()) or "-"
        marker = " (default)" if p.name == platform.default_profile else ""
        table.add_row(p.name + marker, gpu, selector, f"{p.cpu_request} / {p.memory_request}", p.description)
    console.print(table)


@app.command()
def build(
    source: Annotated[Path, typer.Argument(help="a run directory (packages its compressed model, else the trained "
                                                 "one; an LM run: its base model and adapter) or a model directory")],
    output: Annotated[Path, typer.Option("--output", "-o", help="where the .bento and its Docker context go")] =
    Path("build/bento"),
) -> None:
    """Build the serving Bento offline: a .bento archive plus a Dockerfile context any OCI builder can use."""
    from kubeforge.llm.source import is_lm_source
    from kubeforge.models import ModelError

    if source.exists() and is_lm_source(source):
        from kubeforge.llm.package import build_llm_bento
        from kubeforge.llm.source import resolve_lm_source

        try:
            served = resolve_lm_source(source)
            llm = build_llm_bento(served, output)
        except (ConfigError, ModelError) as exc:
            fail(str(exc))
        console.print(f"bento {llm.bento_tag} ({served.why}; models {llm.base_tag}"
                      f"{', ' + llm.adapters_tag if llm.adapters_tag else ''})\narchive: {llm.archive}\n"
                      f"docker context: {llm.context} (Dockerfile: {llm.dockerfile})")
        return
    from kubeforge.serving.package import build_bento
    from kubeforge.serving.source import resolve_model_dir

    try:
        built = build_bento(resolve_model_dir(source), output)
    except (ConfigError, ModelError) as exc:
        fail(str(exc))
    console.print(f"bento {built.bento_tag} (model {built.model_tag})\narchive: {built.archive}\n"
                  f"docker context: {built.context} (Dockerfile: {built.dockerfile})")


@app.command()
def containerize(
    context: Annotated[Path, typer.Argument(help="the docker context written by `kubeforge build` (…/context)")],
    image: Annotated[str, typer.Option("--image", "-t", help="image reference to build")],
) -> None:
    """Build the serving image with docker, podman, buildah or buildctl — whichever actually works here."""
    from kubeforge.serving.containerize import NoBuilderError
    from kubeforge.serving.containerize import containerize as build_image

    try:
        builder = build_image(context, image)
    except FileNotFoundError as exc:
        fail(str(exc))
    except NoBuilderError as exc:
        fail(str(exc), code=1)
    console.print(f"built {image} with {builder}")


@app.command("image-job")
def image_job(
    image: Annotated[str, typer.Option("--image", "-t", help="image reference the Job pushes")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="namespace of the build Job")],
    builder: Annotated[str, typer.Option(help="kaniko or buildkit (rootless)")] = "kaniko",
    context_pvc: Annotated[str | None, typer.Option(help="PVC holding the build context")] = None,
    context_subpath: Annotated[str, typer.Option(help="sub-directory of the PVC with the context")] = "",
    context_uri: Annotated[str | None, typer.Option(help="s3://, gs:// or tar:// context (kaniko)")] = None,
    registry_secret: Annotated[str, typer.Option(help="dockerconfigjson Secret for the push")] =
    "registry-credentials",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the YAML here (default stdout)")] =
    None,
) -> None:
    """Render a Kubernetes Job that builds and pushes the serving image in the cluster (Kaniko or BuildKit)."""
    import yaml

    from kubeforge.serving.image_job import render_image_job

    try:
        job = render_image_job(image, namespace=namespace, builder=builder, context_pvc=context_pvc,
                               context_subpath=context_subpath, context_uri=context_uri,
                               registry_secret=registry_secret)
    except ConfigError as exc:
        fail(str(exc))
    text = yaml.safe_dump(job, sort_keys=False)
    if output:
        output.write_text(text)
        console.print(f"wrote {output}")
    else:
        print(text, end="")


@app.command()
def serve(
    source: Annotated[Path, typer.Argument(help="a run directory (serves its compressed model, else the trained "
                                                 "one; an LM run: its base model and adapter) or a model directory")],
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 3000,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="a language model without API keys, budgets or audit "
                                                            "(local use only; prints a warning)")] = False,
) -> None:
    """Serve a model over HTTP with the BentoML service (settings from KUBEFORGE_SERVE_* variables; for a language
    model, the OpenAI-compatible API with KUBEFORGE_LLM_* variables, and tenants' keys from
    KUBEFORGE_LLM_TENANTS_FILE and KUBEFORGE_LLM_KEYS_DIR unless --no-auth)."""
    import os
    import sys

    from kubeforge.config import ServeConfig
    from kubeforge.llm.source import is_lm_source
    from kubeforge.serving.source import resolve_model_dir

    bentoml = Path(sys.executable).parent / "bentoml"
    if source.exists() and is_lm_source(source):
        from kubeforge.llm.launch import ROUTES, SERVICE, serve_environment
        from kubeforge.llm.source import resolve_lm_source
        from kubeforge.llm.tenancy.settings import NO_AUTH_WARNING, serve_auth_environment

        try:
            served = resolve_lm_source(source)
            environment = serve_auth_environment(serve_environment(served, os.environ), no_auth)
        except ConfigError as exc:
            fail(str(exc))
        if no_auth:
            errors.print(NO_AUTH_WARNING, highlight=False, markup=False, soft_wrap=True)
        console.print(f"serving {served.why} on http://{host}:{port} ({ROUTES})")
        os.execve(str(bentoml), [str(bentoml), "serve", SERVICE, "--host", host, "--port", str(port)], environment)
    try:
        model_dir = resolve_model_dir(source)
        ServeConfig.from_env()
    except ConfigError as exc:
        fail(str(exc))
    console.print(f"serving {model_dir} on http://{host}:{port} (POST /predict, GET /readyz)")
    os.execve(str(bentoml), [str(bentoml), "serve", "kubeforge.serving.service:KubeforgeClassifier",
                             "--host", host, "--port", str(port)],
              {**os.environ, "KUBEFORGE_MODEL_DIR": str(model_dir.resolve())})


deploy_app = typer.Typer(no_args_is_help=True, help="Deployment helpers for the kubeforge-serving chart.")
app.add_typer(deploy_app, name="deploy")
deploy_app.command("kserve")(deploy_kserve)


@deploy_app.command("values")
def deploy_values(
    source: Annotated[Path, typer.Argument(help="a run directory or a model directory")],
    image: Annotated[str, typer.Option("--image", "-t", help="the serving image (repository:tag or @sha256:...)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="values file to write")] = Path("values.yaml"),
    profile: ProfileOption = None,
    platform_config: PlatformOption = None,
) -> None:
    """Write charts/kubeforge-serving values for a run: image, resources and GPU placement from a profile."""
    from kubeforge.config import ServeConfig
    from kubeforge.deploy.values import write_values
    from kubeforge.models import ModelError

    platform = platform_or_fail(platform_config)
    try:
        path = write_values(source, output, platform, profile, image, ServeConfig.from_env())
    except (ConfigError, ModelError) as exc:
        fail(str(exc))
    console.print(f"wrote {path}")


tenant_app = typer.Typer(no_args_is_help=True, help="Tenants: namespaces with GPU quotas, written as GitOps overlays.")
app.add_typer(tenant_app, name="tenant")
RepoOption = Annotated[Path, typer.Option("--repo", help="root of the GitOps repository (holds manifests/)")]


@tenant_app.command("add")
def tenant_add(
    name: Annotated[str, typer.Argument(help="tenant name = namespace (DNS-1123 label)")],
    gpus: Annotated[int, typer.Option(help="GPU quota (requests)")],
    cpu: Annotated[str, typer.Option(help="CPU quota, e.g. 16 or 500m")],
    memory: Annotated[str, typer.Option(help="memory quota, e.g. 64Gi")],
    owner: Annotated[str, typer.Option(help="the tenant's group (RBAC and Argo CD project role)")],
    gpu_resource: Annotated[str, typer.Option(help="nvidia.com/gpu or a MIG resource")] = "nvidia.com/gpu",
    kubeflow: Annotated[bool, typer.Option(help="a Kubeflow Profile creates the namespace (Kubeflow clusters)")] =
    False,
    queue: Annotated[bool, typer.Option(help="add a Kueue LocalQueue 'default' in the platform ClusterQueue")] =
    False,
    pod_security: Annotated[str, typer.Option(
        help="Pod Security level the namespace enforces: restricted, or baseline to allow the in-cluster image "
             "build (Kaniko runs as root)")] = "restricted",
    force: Annotated[bool, typer.Option(help="overwrite hand-edited files")] = False,
    repo: RepoOption = Path("."),
    llm_tokens_per_minute: Annotated[int | None, typer.Option(
        help="LLM service budget: prompt + completion tokens per minute")] = None,
    llm_max_concurrent: Annotated[int | None, typer.Option(help="LLM service budget: requests at once")] = None,
    llm_weight: Annotated[float, typer.Option(help="LLM service: share of the batch against other tenants")] = 1.0,
) -> None:
    """Write the tenant's overlay, Argo CD project and app set, Flux objects and per-env release lists (and, with an
    LLM budget, the LLM service's tenants ConfigMap); idempotent; commit the result for review."""
    from kubeforge.deploy.tenants import add_tenant
    from kubeforge.llm.tenancy.gitops import LLM_DIR, write_tenants

    try:
        result = add_tenant(repo, name, gpus=gpus, cpu=cpu, memory=memory, owner=owner, gpu_resource=gpu_resource,
                            kubeflow=kubeflow, queue=queue, pod_security=pod_security, force=force,
                            llm_tokens_per_minute=llm_tokens_per_minute, llm_max_concurrent=llm_max_concurrent,
                            llm_weight=llm_weight)
        if llm_tokens_per_minute is not None or (repo / LLM_DIR).is_dir():
            result.written.extend(write_tenants(repo))
    except ConfigError as exc:
        fail(str(exc))
    if not result.written:
        console.print(f"tenant {name}: unchanged")
    for path in result.written:
        console.print(f"wrote {path}")


@tenant_app.command("list")
def tenant_list(repo: RepoOption = Path(".")) -> None:
    """Tenants in the GitOps repository and their quotas."""
    from kubeforge.deploy.tenants import list_tenants

    table = Table("tenant", "owner", "GPUs", "CPU", "memory", "pod security")
    for tenant in list_tenants(repo):
        table.add_row(tenant.name, tenant.owner, f"{tenant.gpus} {tenant.gpu_resource}", tenant.cpu, tenant.memory,
                      tenant.pod_security)
    console.print(table)


tenant_app.add_typer(key_app, name="key")
app.command("usage")(usage)


job_app = typer.Typer(help="Distributed training jobs: what the train-distributed step creates.",
                      no_args_is_help=True)
app.add_typer(job_app, name="job")


@job_app.command("render")
def job_render(
    name: Annotated[str, typer.Argument(help="job name (DNS-1035: lowercase, starts with a letter, at most 40)")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="the tenant's namespace")],
    profile: ProfileOption = None,
    param: ParamOption = None,
    image: Annotated[str, typer.Option(help="training image (default: the platform file's image)")] = "",
    service_account: Annotated[str, typer.Option(help="ServiceAccount of the job's pods")] = "",
    kind: Annotated[str, typer.Option(
        "--kind", help="classifier: the train-distributed job; lm: the lm-train-distributed job (LM fine-tuning "
                       "with FSDP, kubeforge.lm.worker reading the volume lm-fetch filled: -p checkpoint_pvc=...)")] = (
        "classifier"),
    platform_config: PlatformOption = None,
) -> None:
    """Print the TrainJob (or PyTorchJob) objects the train-distributed (or, with --kind lm, lm-train-distributed)
    step would create, with the distributed settings from -p (nodes, procs_per_node, job_kind, checkpoint_pvc, ...):
    for review, or `kubectl apply --dry-run=server -f -`."""
    from kubeforge.distributed.jobs import JobSpecError, manifests_yaml
    from kubeforge.distributed.step import plan_job
    from kubeforge.lm.cluster import plan_lm_job

    planners = {"classifier": plan_job, "lm": plan_lm_job}
    if kind not in planners:
        fail(f"--kind {kind!r}: use classifier or lm")
    platform = platform_or_fail(platform_config)
    try:
        settings = RunConfig.from_flat(parse_param_assignments(param or [], ["distributed"]), ["distributed"])
        request = planners[kind](name, settings.distributed, profile=profile or platform.default_profile,
                                 image=image, namespace=namespace, job_name=name, service_account=service_account,
                                 platform=platform)
    except (ConfigError, JobSpecError) as exc:
        fail(str(exc))
    typer.echo(manifests_yaml(request), nl=False)


@app.command()
def promote(
    run_dir: Annotated[Path, typer.Argument(help="the run directory to promote")],
    tenant: Annotated[str, typer.Option(help="tenant (namespace) that serves it")],
    env: Annotated[str, typer.Option(help="environment: a cluster entry point under manifests/clusters/ (dev, prod)")],
    image: Annotated[str, typer.Option("--image", "-t", help="the serving image built from this run")],
    repo: RepoOption = Path("."),
    app_name: Annotated[str, typer.Option(
        "--app", help="release name: manifests/apps/<tenant>/<env>/<app>/ (DNS-1123, at most 53 characters)")] = (
        "classifier"),
    profile: ProfileOption = None,
    push: Annotated[bool, typer.Option(help="git push after committing")] = False,
    kserve: Annotated[bool, typer.Option(
        "--kserve", help="release a KServe InferenceService (inferenceservice.yaml) instead of the Helm chart; "
                         "the image needs a tag or digest")] = False,
    min_replicas: Annotated[int | None, typer.Option(
        help="with --kserve: fewest predictor pods (0 only in Knative mode) [default: 1]")] = None,
    max_replicas: Annotated[int | None, typer.Option(
        help="with --kserve: most predictor pods, KServe scales between the two [default: 1]")] = None,
    deployment_mode: Annotated[str | None, typer.Option(
        help="with --kserve: Standard (a Deployment and an HPA) or Knative (scales to zero) [default: Standard]")] = (
        None),
    platform_config: PlatformOption = None,
) -> None:
    """Write the serving values for TENANT/ENV (or, with --kserve, its InferenceService) and commit them with the
    run's evidence in the message."""
    from kubeforge.deploy.gitops import promote as promote_run
    from kubeforge.deploy.kserve import KServeOptions
    from kubeforge.models import ModelError

    kserve_settings = {"min_replicas": min_replicas, "max_replicas": max_replicas, "deployment_mode": deployment_mode}
    given = {name: value for name, value in kserve_settings.items() if value is not None}
    if given and not kserve:
        fail(", ".join(f"--{name.replace('_', '-')}" for name in given) + " only apply with --kserve")
    options = KServeOptions(**given) if kserve else None  # KServeOptions.check() refuses bad bounds and modes
    platform = platform_or_fail(platform_config)
    try:
        result = promote_run(run_dir, tenant=tenant, env=env, repo=repo, image=image, platform=platform,
                             profile=profile, app=app_name, push=push, kserve=options)
    except (ConfigError, ModelError) as exc:
        fail(str(exc))
    console.print(f"committed {result.commit[:12]} {result.path}" + (" and pushed" if result.pushed else ""))
    console.print(result.message, highlight=False)


app.add_typer(runs_app, name="runs")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
