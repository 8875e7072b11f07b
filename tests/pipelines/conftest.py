from pathlib import Path

import pytest
import yaml

from kubeforge.config import load_platform
from kubeforge.orchestration import compile_pipeline


class CompiledPipeline:
    """The two documents kfp writes: the pipeline spec and the Kubernetes platform spec."""

    def __init__(self, path: Path):
        documents = list(yaml.safe_load_all(path.read_text()))
        self.spec = documents[0]
        self.kubernetes = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] \
            if len(documents) > 1 else {}

    def resources(self, task: str) -> dict:
        return self.spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"].get("resources", {})

    def k8s(self, task: str) -> dict:
        return self.kubernetes.get(f"exec-{task}", {})

    def dags(self) -> list[dict]:
        """The root DAG and every sub-DAG (dsl.If/Else branches are components with their own DAG)."""
        return [self.spec["root"]["dag"]] + [c["dag"] for c in self.spec["components"].values() if "dag" in c]

    def task(self, task: str) -> dict:
        (found,) = [dag["tasks"][task] for dag in self.dags() if task in dag["tasks"]]
        return found

    def task_named(self, display: str) -> dict:
        (found,) = [t for dag in self.dags() for t in dag["tasks"].values() if t["taskInfo"]["name"] == display]
        return found


@pytest.fixture(scope="session")
def platform():
    return load_platform()


@pytest.fixture(scope="session")
def compile_with(tmp_path_factory, platform):
    cache: dict[tuple[str, str], CompiledPipeline] = {}

    def compile_(pipeline: str, profile: str) -> CompiledPipeline:
        if (pipeline, profile) not in cache:
            out = tmp_path_factory.mktemp("ir") / f"{pipeline}-{profile}.yaml"
            cache[(pipeline, profile)] = CompiledPipeline(compile_pipeline(pipeline, out, platform, profile))
        return cache[(pipeline, profile)]

    return compile_
