import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kubeforge.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("args, message", [
    (["run", "no-such-pipeline"], "unknown pipeline 'no-such-pipeline'; known: train-compress, train-compress-cluster, train-evaluate"),
    (["run", "train-evaluate", "-p", "objective=size"], "unknown parameter 'objective'"),
    (["run", "-p", "compress_methods=[zip]"], "unknown compression method 'zip'"),
    (["run", "-p", "epoch=3"], "unknown parameter 'epoch'"),
    (["run", "train-compress-cluster"], "train-compress-cluster runs only on a Kubeflow cluster (kubeforge submit)"),
    (["run", "train-compress-cluster", "-p", "checkpoint_mount=/x"], "parameter 'checkpoint_mount' cannot be set"),
    (["run", "-p", "epochs=many"], "epochs: Input should be a valid integer"),
    (["run", "-p", "epochs"], "'epochs' is not of the form key=value"),
    (["run", "-p", "learning_rate=-1"], "learning_rate: Input should be greater than 0"),
    (["run", "--profile", "gpu-v100"], "unknown profile 'gpu-v100'"),
    (["compile", "nope", "-o", "x.yaml"], "unknown pipeline 'nope'"),
    (["compile", "train-evaluate", "-o", "x.yaml", "--profile", "tpu"], "unknown profile 'tpu'"),
    (["run", "--platform-config", "/nonexistent/platform.yaml"], "platform config /nonexistent/platform.yaml does not exist"),
    (["job", "render", "Bad_Name", "-n", "team-a"], "job name 'Bad_Name' must be a DNS-1035 label"),
    (["job", "render", "ok", "-n", "team-a", "-p", "nodes=0"], "nodes: Input should be greater than or equal to 1"),
    (["job", "render", "ok", "-n", "team-a", "-p", "epochs=3"], "unknown parameter 'epochs'"),
    (["job", "render", "ok", "-n", "team-a", "--profile", "tpu"], "unknown profile 'tpu'"),
])
def test_usage_errors_print_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x.yaml").exists()


def test_job_render_prints_the_training_job_the_profile_asks_for():
    import yaml

    result = invoke("job", "render", "nightly", "-n", "team-a", "--profile", "gpu-a100", "-p", "nodes=2",
                    "-p", "procs_per_node=4", "-p", "checkpoint_pvc=ckpt")
    assert result.exit_code == 0, result.output
    runtime, trainjob = yaml.safe_load_all(result.output)
    assert (runtime["kind"], trainjob["kind"]) == ("TrainingRuntime", "TrainJob")
    assert trainjob["metadata"] == {**trainjob["metadata"], "name": "nightly", "namespace": "team-a"}
    trainer = trainjob["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "ckpt"


def test_compile_writes_ir(tmp_path):
    out = tmp_path / "ir" / "pipeline.yaml"
    result = invoke("compile", "train-evaluate", "-o", str(out), "--profile", "gpu-t4")
    assert result.exit_code == 0, result.output
    assert "pipelineInfo" in out.read_text() and "Tesla-T4" in out.read_text()


def test_profiles_lists_every_profile():
    result = invoke("profiles")
    assert result.exit_code == 0
    for name in ("cpu (default)", "gpu-t4", "gpu-a100", "gpu-h100", "mig-1g.10gb"):
        assert name in result.output


def test_console_script_is_installed_and_reports_usage_errors():
    script = subprocess.run([sys.executable, "-m", "kubeforge.cli", "run", "-p", "bogus=1"],
                            capture_output=True, text=True)
    assert script.returncode == 2 and "unknown parameter 'bogus'" in script.stderr


@pytest.mark.slow
def test_run_succeeds_and_prints_the_summary(tmp_path):
    import shutil
    from pathlib import Path

    kubeforge = shutil.which("kubeforge") or str(Path(sys.executable).parent / "kubeforge")
    done = subprocess.run([kubeforge, "run", "train-evaluate", "-p", "dataset=iris", "-p", "epochs=20",
                           "-p", "hidden_sizes=[16]", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test accuracy" in done.stdout and "report:" in done.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("train-evaluate-")]
    assert (run_dir / "report.html").is_file() and (run_dir / "summary.json").is_file()


def test_serve_refuses_a_directory_without_a_model(tmp_path):
    result = invoke("serve", str(tmp_path))
    assert result.exit_code == 2 and "neither a model directory" in result.output


def test_tenant_add_is_idempotent_and_refuses_bad_names(tmp_path):
    import shutil
    from pathlib import Path

    manifests = Path(__file__).resolve().parents[2] / "manifests"
    shutil.copytree(manifests / "tenants" / "base", tmp_path / "manifests" / "tenants" / "base")
    args = ["tenant", "add", "team-z", "--gpus", "1", "--cpu", "4", "--memory", "8Gi", "--owner", "z",
            "--repo", str(tmp_path)]
    assert invoke(*args).exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0 and "unchanged" in again.output
    bad = invoke("tenant", "add", "Team_Z", "--gpus", "1", "--cpu", "4", "--memory", "8Gi", "--owner", "z",
                 "--repo", str(tmp_path))
    assert bad.exit_code == 2 and "not a DNS-1123 label" in bad.output
    listed = invoke("tenant", "list", "--repo", str(tmp_path))
    assert "team-z" in listed.output and "8Gi" in listed.output
