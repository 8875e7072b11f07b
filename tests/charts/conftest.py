import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeforge-serving"


@pytest.fixture(scope="session")
def helm() -> str:
    """The pinned helm from scripts/get-helm.sh; failing to get it fails the tests (CI must have it)."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "get-helm.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(Path.home()),
                               "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


class Render:
    def __init__(self, helm: str):
        self.helm = helm

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.helm, "template", "r", str(CHART), "--namespace", "team-a", *args],
                              capture_output=True, text=True)

    def objects(self, *args: str) -> list[dict]:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return [o for o in yaml.safe_load_all(done.stdout) if o]

    def error(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode != 0, "rendering should have failed"
        return done.stderr


@pytest.fixture(scope="session")
def render(helm) -> Render:
    return Render(helm)


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def pod_spec(objects: list[dict]) -> dict:
    (deployment,) = by_kind(objects, "Deployment")
    return deployment["spec"]["template"]["spec"]
