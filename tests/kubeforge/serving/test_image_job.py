import pytest
import yaml
from typer.testing import CliRunner

from kubeforge.cli import app
from kubeforge.config import ConfigError
from kubeforge.serving.containerize import NoBuilderError, containerize, probe_builders
from kubeforge.serving.image_job import BUILDER_IMAGES, render_image_job

IMAGE = "registry.example.com/team-a/classifier:1.0"


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_kaniko_job_from_a_pvc():
    job = render_image_job(IMAGE, namespace="team-a", context_pvc="bento-ctx", context_subpath="runs/1/context")
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["metadata"]["namespace"] == "team-a"
    kaniko = container(job)
    assert kaniko["image"] == BUILDER_IMAGES["kaniko"]
    assert "--context=dir:///workspace" in kaniko["args"] and f"--destination={IMAGE}" in kaniko["args"]
    assert "--dockerfile=env/docker/Dockerfile" in kaniko["args"]
    mounts = {m["name"]: m for m in kaniko["volumeMounts"]}
    assert mounts["context"]["subPath"] == "runs/1/context" and mounts["registry"]["mountPath"] == "/kaniko/.docker"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["context"]["persistentVolumeClaim"]["claimName"] == "bento-ctx"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert kaniko["resources"]["requests"]  # a tenant quota refuses pods without requests


def test_kaniko_job_from_an_object_store_uri():
    job = render_image_job(IMAGE, namespace="team-a", context_uri="s3://bucket/ctx.tar.gz")
    assert "--context=s3://bucket/ctx.tar.gz" in container(job)["args"]
    assert "context" not in {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}


def test_rootless_buildkit_job():
    job = render_image_job(IMAGE, namespace="team-a", builder="buildkit", context_pvc="ctx")
    buildkit = container(job)
    assert buildkit["command"] == ["buildctl-daemonless.sh"]
    assert f"type=image,name={IMAGE},push=true" in buildkit["args"]
    assert buildkit["securityContext"]["runAsUser"] == 1000


@pytest.mark.parametrize("kwargs, message", [
    ({"image": "Bad Image"}, "is not a valid image reference"),
    ({"namespace": "Team_A"}, "namespace 'Team_A' is not a valid DNS-1123 label"),
    ({"context_pvc": None}, "exactly one build context source"),
    ({"context_uri": "s3://b/c"}, "exactly one build context source"),
    ({"builder": "buildkit", "context_pvc": None, "context_uri": "s3://b/c"}, "--context-uri needs the kaniko"),
    ({"builder": "docker"}, "unknown builder 'docker'"),
])
def test_bad_requests_are_refused(kwargs, message):
    arguments = {"image": IMAGE, "namespace": "team-a", "context_pvc": "ctx", **kwargs}
    with pytest.raises(ConfigError, match=message):
        render_image_job(arguments.pop("image"), **arguments)


def test_cli_renders_yaml_and_reports_errors():
    runner = CliRunner()
    result = runner.invoke(app, ["image-job", "-t", IMAGE, "-n", "team-a", "--context-pvc", "ctx"])
    assert result.exit_code == 0 and yaml.safe_load(result.output)["kind"] == "Job"
    result = runner.invoke(app, ["image-job", "-t", IMAGE, "-n", "team-a"])
    assert result.exit_code == 2 and "exactly one build context source" in result.output


def test_containerize_says_plainly_when_no_builder_works(tmp_path):
    dockerfile = tmp_path / "env" / "docker" / "Dockerfile"
    dockerfile.parent.mkdir(parents=True)
    dockerfile.write_text("FROM scratch\n")
    if any(p.working for p in probe_builders()):
        pytest.skip("this machine has a working image builder")
    with pytest.raises(NoBuilderError, match="no working image builder on this machine .*kubeforge image-job"):
        containerize(tmp_path, IMAGE)
    with pytest.raises(FileNotFoundError, match="has no env/docker/Dockerfile"):
        containerize(tmp_path / "missing", IMAGE)
