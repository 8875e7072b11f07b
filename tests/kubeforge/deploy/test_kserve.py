import pytest
import yaml
from typer.testing import CliRunner

from kubeforge.cli import app
from kubeforge.config import ConfigError, ServeConfig, load_platform
from kubeforge.deploy.gitops import PromotionError, promote, promote_to_remote
from kubeforge.deploy.kserve import (CONTAINER_SECURITY_CONTEXT, POD_SECURITY_CONTEXT, KServeOptions,
                                     inference_service, inference_service_from_values, schema_errors)
from kubeforge.deploy.schemas import KSERVE_CRD, validate_objects
from kubeforge.deploy.values import values_for_run
from tests.charts.conftest import CHART, pod_spec
from tests.kubeforge.deploy.conftest import build, git

PLATFORM = load_platform()
IMAGE = "registry.example.com/team-a/classifier:1.2.3"
RELEASE = "manifests/apps/team-a/prod/classifier"


def predictor(service: dict) -> dict:
    return service["spec"]["predictor"]


def quantities(resources: dict) -> dict:
    """The chart renders the GPU count as a number; the API treats 1 and "1" alike."""
    return {part: {name: str(amount) for name, amount in amounts.items()} for part, amounts in resources.items()}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


@pytest.mark.parametrize("profile", [p.name for p in PLATFORM.profiles])
def test_every_profile_gives_a_valid_v2_custom_predictor_with_its_gpu_block(run_dir, profile):
    chosen = PLATFORM.profile(profile)
    service = inference_service(run_dir, chosen, IMAGE, name="classifier",
                                options=KServeOptions(min_replicas=2, max_replicas=5))
    assert schema_errors(service) == []
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    spec = predictor(service)
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 5)
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    assert container["ports"] == [{"name": "http1", "containerPort": 3000, "protocol": "TCP"}]
    env = env_of(container)
    assert env["PROTOCOL"] == "v2"
    assert ServeConfig.from_env(env) == ServeConfig()
    resources = container["resources"]
    assert resources["requests"] == {"cpu": chosen.cpu_request, "memory": chosen.memory_request}
    if chosen.uses_gpu:
        assert resources["limits"][chosen.gpu_resource] == str(chosen.gpu_count)
        assert spec["nodeSelector"] == chosen.node_selector
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["priorityClassName"] == chosen.priority_class
        assert env["BENTOML_DISABLE_GPU_ALLOCATION"] == "true"
    else:
        assert not any("gpu" in name for name in resources.get("limits", {}))
        assert "nodeSelector" not in spec and "tolerations" not in spec
        assert "BENTOML_DISABLE_GPU_ALLOCATION" not in env


@pytest.mark.parametrize("profile", ["cpu", "gpu-t4", "mig-1g.10gb"])
def test_the_predictor_pod_is_the_chart_pod(render, run_dir, profile, tmp_path):
    """The same values through the chart and through KServe: placement, resources, environment and security agree."""
    serve = ServeConfig(workers=3, timeout_s=2.5, max_batch_size=16)
    values = values_for_run(run_dir, PLATFORM.profile(profile), IMAGE, serve)
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    chart_pod = pod_spec(render.objects("-f", str(tmp_path / "values.yaml")))
    spec = predictor(inference_service_from_values(values, name="classifier"))
    chart_container, (container,) = chart_pod["containers"][0], spec["containers"]
    for field in ("nodeSelector", "tolerations", "priorityClassName", "securityContext"):
        assert spec.get(field) == chart_pod.get(field), field
    assert container["image"] == chart_container["image"]
    assert container["securityContext"] == chart_container["securityContext"]
    assert container["volumeMounts"] == chart_container["volumeMounts"]
    assert [v["name"] for v in spec["volumes"]] == [v["name"] for v in chart_pod["volumes"]]
    assert quantities(container["resources"]) == quantities(chart_container["resources"])
    assert container["ports"][0]["containerPort"] == chart_container["ports"][0]["containerPort"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == chart_container[probe]["httpGet"]["path"]
    chart_env, env = env_of(chart_container), env_of(container)
    assert ServeConfig.from_env(env) == ServeConfig.from_env(chart_env) == serve
    assert set(chart_env) == set(env) - {"PROTOCOL"}
    assert spec["annotations"] == values["podAnnotations"]


def test_security_defaults_are_the_charts():
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert POD_SECURITY_CONTEXT == chart_values["podSecurityContext"]
    assert CONTAINER_SECURITY_CONTEXT == chart_values["securityContext"]


def test_strict_validation_names_unknown_fields_and_wrong_types(run_dir):
    service = inference_service(run_dir, PLATFORM.profile("gpu-t4"), IMAGE, name="classifier")
    predictor(service)["containers"][0]["imagee"] = "typo"
    predictor(service)["minReplicas"] = "two"
    predictor(service)["protocolVersion"] = "v2"  # a field of model-format predictors only, not of custom ones
    errors = schema_errors(service)
    assert any("spec/predictor/containers/0" in e and "'imagee' was unexpected" in e for e in errors), errors
    assert "InferenceService/classifier: spec/predictor/minReplicas: 'two' is not of type 'integer'" in errors
    assert any("'protocolVersion' was unexpected" in e for e in errors), errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="Classifier"), "must be a DNS-1035 label"),
    (dict(name="1st"), "must be a DNS-1035 label"),
    (dict(name="x" * 48), "at most 47 characters"),
    (dict(options=KServeOptions(min_replicas=0)), "scaling to zero needs the Knative deployment mode"),
    (dict(options=KServeOptions(min_replicas=3, max_replicas=2)), "max replicas 2 is below min replicas 3"),
    (dict(options=KServeOptions(deployment_mode="Serverless")), "is not Standard or Knative"),
    (dict(image="registry.example.com/team-a/classifier"), "needs a tag or a digest"),
])
def test_bad_settings_are_named(run_dir, kwargs, message):
    arguments = {"name": "classifier", "image": IMAGE, **kwargs}
    with pytest.raises(ConfigError, match=message):
        inference_service(run_dir, PLATFORM.profile("cpu"), arguments.pop("image"), **arguments)


def test_knative_scales_to_zero_and_a_digest_pins_the_image(run_dir):
    image = "registry.example.com/team-a/classifier@sha256:" + "c" * 64
    service = inference_service(run_dir, PLATFORM.profile("cpu"), image, name="classifier", namespace="team-a",
                                options=KServeOptions(min_replicas=0, max_replicas=3, deployment_mode="Knative"))
    assert schema_errors(service) == []
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert service["metadata"]["namespace"] == "team-a"
    assert predictor(service)["minReplicas"] == 0 and predictor(service)["containers"][0]["image"] == image


def test_cli_prints_a_valid_service_and_names_bad_input(run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBEFORGE_SERVE_WORKERS", "2")
    runner = CliRunner()
    result = runner.invoke(app, ["deploy", "kserve", str(run_dir), "-t", IMAGE, "--profile", "gpu-a100",
                                 "--max-replicas", "4", "--name", "churn", "--validate"])
    assert result.exit_code == 0, result.output
    assert "valid against github.com/kserve/kserve@v0.20.0" in result.stderr
    service = yaml.safe_load(result.stdout)
    assert result.stdout.startswith("# kubeforge deploy kserve: profile gpu-a100\n")
    assert service["metadata"]["name"] == "churn" and predictor(service)["maxReplicas"] == 4
    assert env_of(predictor(service)["containers"][0])["KUBEFORGE_SERVE_WORKERS"] == "2"
    written = runner.invoke(app, ["deploy", "kserve", str(run_dir), "-t", IMAGE, "-o", str(tmp_path / "isvc.yaml")])
    assert written.exit_code == 0, written.output
    assert yaml.safe_load((tmp_path / "isvc.yaml").read_text()) == inference_service(
        run_dir, PLATFORM.profile("cpu"), IMAGE, name="classifier", serve=ServeConfig(workers=2))
    bad = runner.invoke(app, ["deploy", "kserve", str(run_dir), "-t", IMAGE, "--min-replicas", "0"])
    assert bad.exit_code == 2 and "scaling to zero needs the Knative deployment mode" in bad.output


def promote_prod(repo, run_dir, **kwargs):
    return promote(run_dir, **{"tenant": "team-a", "env": "prod", "repo": repo, "image": IMAGE,
                               "platform": PLATFORM, "profile": "gpu-t4", **kwargs})


def changed_files(repo) -> list[str]:
    return sorted(git(repo, "show", "--name-status", "--format=", "HEAD").splitlines())


def test_a_release_can_be_an_inference_service_and_switch_back_to_helm(repo, run_dir):
    promote_prod(repo, run_dir)
    result = promote_prod(repo, run_dir, kserve=KServeOptions(min_replicas=1, max_replicas=3))
    assert changed_files(repo) == [f"A\t{RELEASE}/inferenceservice.yaml", f"D\t{RELEASE}/helmrelease.yaml",
                                   f"D\t{RELEASE}/kustomizeconfig.yaml", f"D\t{RELEASE}/values.yaml",
                                   f"M\t{RELEASE}/kustomization.yaml"]
    assert "release: KServe InferenceService (Standard mode, replicas 1-3)" in result.message
    assert run_dir.name in result.message
    # Flux applies the env's kustomization: exactly the InferenceService, in the tenant's namespace
    (service,) = build(repo / "manifests" / "apps" / "team-a" / "prod")
    assert validate_objects([service], (KSERVE_CRD,), builtin=False) == []
    assert service["kind"] == "InferenceService" and service["metadata"]["namespace"] == "team-a"
    annotations = predictor(service)["annotations"]
    assert annotations["kubeforge.io/run-id"] == run_dir.name and "kubeforge.io/model-dir" not in annotations
    assert predictor(service)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    with pytest.raises(PromotionError, match="already holds exactly this release"):
        promote_prod(repo, run_dir, kserve=KServeOptions(min_replicas=1, max_replicas=3))
    promote_prod(repo, run_dir)
    assert changed_files(repo) == [f"A\t{RELEASE}/helmrelease.yaml", f"A\t{RELEASE}/kustomizeconfig.yaml",
                                   f"A\t{RELEASE}/values.yaml", f"D\t{RELEASE}/inferenceservice.yaml",
                                   f"M\t{RELEASE}/kustomization.yaml"]
    assert {o["kind"] for o in build(repo / "manifests" / "apps" / "team-a" / "prod")} == {"HelmRelease",
                                                                                           "ConfigMap"}


def test_kserve_release_refusals_come_before_anything_is_written(repo, run_dir, tmp_path):
    before = git(repo, "rev-parse", "HEAD")
    with pytest.raises(PromotionError, match="app '9lives' as a KServe release: .* DNS-1035"):
        promote_prod(repo, run_dir, app="9lives", kserve=KServeOptions())
    assert git(repo, "rev-parse", "HEAD") == before and not git(repo, "status", "--porcelain")
    report = next(run_dir.glob("compress/compressed_model/compression.json"))
    with pytest.raises(ConfigError, match="needs a tag or a digest"):  # checked before any clone
        promote_to_remote(report.parent, report, repo_url="file:///nonexistent", branch="main", tenant="team-a",
                          env="prod", image="registry.example.com/team-a/classifier", platform=PLATFORM,
                          profile="cpu", run_id="r1", kserve=KServeOptions())
