"""`kubeforge deploy kserve`: the InferenceService of a run, for clusters that serve through KServe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def deploy_kserve(
    source: Annotated[Path, typer.Argument(help="a run directory or a model directory")],
    image: Annotated[str, typer.Option("--image", "-t", help="the serving image built from the Bento "
                                                              "(repository:tag or @sha256:...)")],
    name: Annotated[str, typer.Option(help="InferenceService name (DNS-1035 label)")] = "classifier",
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="namespace to set (default: none, as in "
                                                                      "a GitOps release)")] = "",
    profile: Annotated[str | None, typer.Option(
        "--profile", help="scheduling profile: resources, GPUs and placement (cpu, gpu-t4, gpu-a100, ...)")] = None,
    min_replicas: Annotated[int, typer.Option(help="fewest predictor pods (0 only in Knative mode)")] = 1,
    max_replicas: Annotated[int, typer.Option(help="most predictor pods (KServe scales between the two)")] = 1,
    deployment_mode: Annotated[str, typer.Option(
        help="Standard (a Deployment and an HPA) or Knative (scales to zero; needs Knative Serving)")] = "Standard",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")] = None,
    validate: Annotated[bool, typer.Option(
        help="check the object against KServe's CRD, unknown fields included (fetches the CRD through the Go "
             "module proxy)")] = False,
    platform_config: Annotated[Path | None, typer.Option(
        "--platform-config", help="platform file with profiles and image (default: $KUBEFORGE_PLATFORM_CONFIG or "
                                  "built-in)")] = None,
) -> None:
    """Print a KServe InferenceService for a run: the Bento image as a v2-protocol custom predictor, placed by a
    profile as the serving chart would be (check it with `kubectl apply --dry-run=server -f -`)."""
    from kubeforge.cli import fail, platform_or_fail
    from kubeforge.config import ConfigError, ServeConfig
    from kubeforge.deploy.kserve import KServeOptions, render_inference_service, schema_errors
    from kubeforge.deploy.schemas import KSERVE_CRD, SchemaSourceError
    from kubeforge.models import ModelError

    platform = platform_or_fail(platform_config)
    options = KServeOptions(min_replicas=min_replicas, max_replicas=max_replicas,
                            deployment_mode=deployment_mode)  # type: ignore[arg-type] - checked by KServeOptions
    try:
        obj, text = render_inference_service(source, platform, profile, image, name=name,
                                             serve=ServeConfig.from_env(), namespace=namespace or None,
                                             options=options)
    except (ConfigError, ModelError) as exc:
        fail(str(exc))
    if validate:
        try:
            errors = schema_errors(obj)
        except SchemaSourceError as exc:
            fail(f"{exc} (or leave out --validate)", code=1)
        if errors:
            fail("the InferenceService does not match KServe's CRD:\n  " + "\n  ".join(errors), code=1)
        typer.echo(f"valid against {KSERVE_CRD[0]}@{KSERVE_CRD[1]} {KSERVE_CRD[2].rsplit('/', 1)[-1]}", err=True)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    typer.echo(f"wrote {output}")
