"""The project image's Dockerfile, checked statically: no image builder runs on this machine (docs/kubeflow.md
says how to build it), so what can be verified here is that it installs exactly the pinned, CUDA-capable set."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "images" / "runtime" / "Dockerfile").read_text()
INSTRUCTIONS = [line for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines() if line and not line.startswith("#")]


def test_installs_kubeforge_with_the_pinned_constraints_at_build_time_only():
    runs = [line for line in INSTRUCTIONS if line.startswith("RUN ")]
    assert any("pip install -c constraints.txt ." in run for run in runs)
    entry = next(line for line in INSTRUCTIONS if line.startswith("ENTRYPOINT"))
    assert "pip" not in entry
    copied = {line.split()[1] for line in INSTRUCTIONS if line.startswith("COPY ")}
    assert {"kubeforge", "components", "pipelines", "pyproject.toml"} <= copied


def test_the_pinned_torch_is_the_cuda_build():
    constraints = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\d", constraints, re.M)
    for runtime in ("nvidia-cuda-runtime", "nvidia-cudnn", "nvidia-nccl", "nvidia-cublas"):
        assert re.search(rf"^{runtime}[-\w]*==", constraints, re.M), runtime
    assert "--index-url" not in constraints and "+cpu" not in constraints


def test_runs_as_non_root_and_owns_the_kfp_launcher_artifact_directories():
    assert any(line.strip() == "USER 10001" for line in INSTRUCTIONS)
    assert re.search(r"mkdir -p /gcs /minio /s3 /oci", DOCKERFILE)
    assert re.search(r"chown 10001:0 /gcs /minio /s3 /oci", DOCKERFILE)
