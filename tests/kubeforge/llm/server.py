"""The real LLM service (``bentoml serve kubeforge.llm.service:KubeforgeLLM``) on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.prometheus_text import sample

STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SERVICE_COMMAND = [str(Path(sys.executable).parent / "bentoml"), "serve", "kubeforge.llm.service:KubeforgeLLM"]


class LLMServer:
    """``command`` (the service module by default; a Bento tag, or `kubeforge serve RUN`) on a free port."""

    def __init__(self, tmp: Path, command: list[str] | None = None, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"llm-server-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [*(command or SERVICE_COMMAND), "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
                 "HF_HUB_OFFLINE": "1", **env},
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp)

    def tail(self) -> str:
        return self.log_path.read_text()[-4000:]

    def wait(self, path: str, status: int, timeout: float = STARTUP_TIMEOUT_S, in_a_row: int = 1) -> None:
        """Until ``path`` answers ``status`` ``in_a_row`` times, each on a new connection: with several workers one
        answer comes from whichever worker accepted it, and another may still be loading its model."""
        seen = set()
        streak = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.tail()
            try:
                code = httpx.get(self.url + path, timeout=2).status_code
                seen.add(code)
                streak = streak + 1 if code == status else 0
                if streak >= in_a_row:
                    return
                if code == status:
                    continue
            except httpx.TransportError:
                streak = 0
            time.sleep(0.2)
        raise AssertionError(f"{path} never returned {status}; seen {sorted(seen)}\n{self.tail()}")

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
