import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kubeforge.config import TrainConfig
from kubeforge.models import build_model, save_model
from kubeforge.training import set_seed, train_model
from tests.kubeforge.conftest import spec_for
from tests.prometheus_text import sample

STARTUP_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def served_model_dir(digits, tmp_path_factory):
    """A small trained digits MLP saved as a kubeforge model directory (safetensors + model.json)."""
    spec = spec_for(digits, hidden_sizes=[64])
    set_seed(0)
    model = build_model(spec)
    root = tmp_path_factory.mktemp("served")
    train_model(model, digits.X_train, digits.y_train, digits.X_val, digits.y_val,
                TrainConfig(epochs=8, device="cpu"), root / "training", progress=False)
    save_model(model, spec, root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def served_onnx_dir(served_model_dir, tmp_path_factory):
    """The same model as ONNX Runtime int8 (what the compress step usually picks), saved as a model directory."""
    from kubeforge.compression import Candidate
    from kubeforge.compression.artifact import save_candidate
    from kubeforge.compression.onnx_int8 import onnx_int8
    from kubeforge.models import load_model

    model, spec = load_model(served_model_dir)
    directory = tmp_path_factory.mktemp("served-onnx") / "model"
    save_candidate(onnx_int8(Candidate(name="onnx-int8", spec=spec, module=model.eval())), directory)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, model_dir: Path, tmp: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bentoml = Path(sys.executable).parent / "bentoml"
        self.log = open(tmp / f"server-{self.port}.log", "w")
        self.process = subprocess.Popen(
            [str(bentoml), "serve", "kubeforge.serving.service:KubeforgeClassifier", "--host", "127.0.0.1",
             "--port", str(self.port)],
            env={**os.environ, "KUBEFORGE_MODEL_DIR": str(model_dir), "BENTOML_HOME": str(tmp / "bentoml"),
                 "KUBEFORGE_SERVE_MAX_INSTANCES": "8", "KUBEFORGE_SERVE_MAX_PAYLOAD_BYTES": "65536", **env},
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)

    def wait(self, path: str, status: int, timeout: float = STARTUP_TIMEOUT_S) -> list[int]:
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(self.log.name).read_text()[-3000:]
            try:
                code = httpx.get(self.url + path, timeout=2).status_code
                seen.append(code)
                if code == status:
                    return seen
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} never returned {status}; seen {sorted(set(seen))}\n"
                             + Path(self.log.name).read_text()[-3000:])

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (0 when absent)."""
        return sample(httpx.get(self.url + "/metrics", timeout=5).text, name, **labels)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(served_model_dir, tmp_path_factory):
    """One real BentoML server for the session's server tests (8 rows and 64 KiB per request at most)."""
    running = Server(served_model_dir, tmp_path_factory.mktemp("server"))
    try:
        running.wait("/readyz", 200)
        yield running
    finally:
        running.stop()
