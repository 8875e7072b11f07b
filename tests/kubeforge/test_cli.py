import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kubeforge.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("args, message", [
    (["run", "no-such-pipeline"], "unknown pipeline 'no-such-pipeline'; known: "),
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
    (["run", "train-evaluate", "-p", "dataset=missing.csv", "-p", "label_column=y"], "missing.csv: file not found"),
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


def test_bad_data_is_refused_in_one_line_before_the_run_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gap.csv").write_text("a,b,y\n1,2,0\n3,,1\n5,6,0\n7,8,1\n")
    result = invoke("run", "-p", "dataset=gap.csv", "-p", "label_column=y")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: gap.csv: feature column 'b' has 1 NaN/inf value(s)"
    assert not (tmp_path / "runs").exists()


def lm_summary():
    return {"pipeline": "lm-pretrain-finetune", "run_id": "lm-pretrain-finetune-2026-12-01-00-00-00-000000",
            "profile": "gpu-a100", "wall_seconds": 61.04, "params": {},
            "training": {"pretrain_steps": 300, "pretrain_tokens_per_second": 2100.5, "device": "cpu"},
            "test": {"perplexity": 41.71, "base_perplexity": 670.2, "next_token_accuracy": 0.31},
            "compression": None, "artifacts": {}}


def test_the_summary_prints_whatever_rows_a_language_model_run_carries():
    import io

    from rich.console import Console

    from kubeforge.cli import print_summary

    out = Console(file=io.StringIO(), width=140)
    print_summary(lm_summary(), out)
    text = out.file.getvalue()
    for row in ("test perplexity", "41.7100", "test base_perplexity", "670.2000", "pretrain tokens per second",
                "2,100.5", "wall time", "61.0 s"):
        assert row in text, row
    assert text.count("apply on a Kubeflow cluster") == 1 and "the gpu-a100 profile" in text


def kubeforge_command() -> str:
    import shutil
    from pathlib import Path

    return shutil.which("kubeforge") or str(Path(sys.executable).parent / "kubeforge")


@pytest.mark.slow
def test_run_succeeds_and_prints_the_summary(tmp_path):
    done = subprocess.run([kubeforge_command(), "run", "train-evaluate", "-p", "dataset=iris", "-p", "epochs=20",
                           "-p", "hidden_sizes=[16]", "--runs-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test accuracy" in done.stdout and "report:" in done.stdout
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("train-evaluate-")]
    assert (run_dir / "report.html").is_file() and (run_dir / "summary.json").is_file()
    # calm: one line per step event (plain text: stdout is a pipe), no executor dumps, no expected kfp warnings
    lines = done.stdout.splitlines()
    assert lines[0] == "train-evaluate (4 steps, profile cpu): preprocess, train, evaluate, report"
    for step in ("preprocess", "train", "evaluate", "report"):
        assert f"{step}: running" in lines and any(line.startswith(f"{step}: done in ") for line in lines)
        assert (run_dir / step / "log.txt").is_file()
    assert any(line.startswith("train: epoch 20/20") or "epoch" in line for line in lines if line.startswith("train:"))
    assert "KFP Executor" not in done.stdout and "\x1b[" not in done.stdout
    assert "Warning" not in done.stderr, done.stderr[-2000:]
    assert done.stdout.count("apply on a Kubeflow cluster") == 1
    assert len(lines) < 60


@pytest.mark.slow
def test_a_failing_step_ends_with_its_cause_and_verbose_streams_the_steps(tmp_path):
    few = tmp_path / "few.csv"
    few.write_text("a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(6)))
    done = subprocess.run([kubeforge_command(), "run", "train-evaluate", "-p", f"dataset={few}", "-p",
                           "label_column=y", "--runs-dir", str(tmp_path / "runs"), "--verbose"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    *_, log_line, last = done.stderr.strip().splitlines()
    assert last == (f"error: {few}: class '0' has 3 rows; a stratified split with val_fraction=0.15 and "
                    "test_fraction=0.2 needs at least 8")
    log = log_line.removeprefix("step preprocess failed; its log: ")
    assert "kubeforge.errors.DataError" in open(log).read()
    assert "[KFP Executor" in done.stdout and "Traceback (most recent call last)" in done.stdout  # streamed


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
