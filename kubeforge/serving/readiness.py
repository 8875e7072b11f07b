"""A pod is ready when every one of its server's workers has loaded its model, not when the first one has.

BentoML answers /readyz in whichever worker accepted the probe. With several workers a pod turned Ready once one of
them had loaded, and the requests that reached a worker still loading got 503 just after a rollout (a language model
loads for minutes). So each worker marks itself in a directory its siblings share, named after their parent, the
server's arbiter process, and its start time (a reused pid never sees another server's marks); a worker that is
restarted unmarks itself before it loads again. One worker, or a process that is not a BentoML worker, needs no marks.
Each worker takes its mark back when it stops (the shutdown hook in kubeforge.serving.lifecycle) and the last one out
removes the directory; a worker killed outright leaves its mark behind (in a pod, the temp dir goes with the pod).
Shared by both services (kubeforge.serving.service, kubeforge.llm.service).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _arbiter_key() -> str:
    """The parent's pid and start time (Linux /proc; elsewhere the pid alone)."""
    parent = os.getppid()
    try:
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return f"{parent}-{started}"


def _worker_index() -> int | None:
    """BentoML's 1-based index of this worker, None outside a BentoML worker."""
    try:
        from bentoml._internal.context import server_context
    except ImportError:
        return None
    return server_context.worker_index


class WorkerReadiness:
    """One worker's view: its own state and its siblings' marks (indices 1..workers, as BentoML numbers them)."""

    def __init__(self, workers: int, index: int | None = None, root: Path | None = None):
        self.workers = workers
        self.index = index
        shared = workers > 1 and index is not None
        self.directory = (root or Path(tempfile.gettempdir())) / f"kubeforge-ready-{_arbiter_key()}" if shared else None
        self.loaded = False

    @classmethod
    def of_this_worker(cls, workers: int) -> WorkerReadiness:
        """Called in the worker, once its BentoML context knows the worker's index (the service's __init__)."""
        return cls(workers, _worker_index())

    def loading(self) -> None:
        """This worker is (again) loading: unmark it."""
        self.loaded = False
        if self.directory is not None:
            (self.directory / str(self.index)).unlink(missing_ok=True)

    def ready(self) -> None:
        """This worker serves: mark it."""
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / str(self.index)).touch()
        self.loaded = True

    def release(self) -> None:
        """This worker is leaving: unmark it, and remove the directory once no sibling is marked."""
        self.loading()
        if self.directory is not None:
            try:
                self.directory.rmdir()
            except OSError:  # a sibling is still marked, or the directory was never made
                pass

    def pod_ready(self) -> bool:
        """This worker and every sibling serve."""
        if not self.loaded:
            return False
        if self.directory is None:
            return True
        return all((self.directory / str(index)).exists() for index in range(1, self.workers + 1))
