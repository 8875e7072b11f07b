"""A watched adapters directory: each sub-directory holding adapter_config.json and adapter_model.safetensors is
served under its directory name; a new one is loaded, a removed one unloaded, a changed one reloaded, all without
a restart. Copy an adapter in under a temporary name and rename it into place, so a half-written one is never seen
(one that fails to load is retried only when its files change)."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from kubeforge.llm.errors import APIError
from kubeforge.llm.runtime import LLMRuntime

logger = logging.getLogger("kubeforge.llm")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
WATCHED_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _signature(directory: Path) -> tuple[tuple[int, int], ...] | None:
    try:
        stats = [(directory / name).stat() for name in WATCHED_FILES]
    except OSError:
        return None
    return tuple((stat.st_mtime_ns, stat.st_size) for stat in stats)


class AdapterWatcher:
    def __init__(self, runtime: LLMRuntime, directory: str | Path, interval_s: float):
        self.runtime = runtime
        self.directory = Path(directory)
        self.interval_s = interval_s
        self.loaded: dict[str, tuple] = {}  # adapters this watcher loaded -> their file signature
        self.failed: dict[str, tuple] = {}  # signatures that failed to load (not retried until they change)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.scan_once()
        self._thread = threading.Thread(target=self._run, name="adapter-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.scan_once()
            except Exception:  # keep watching; the cause goes to the log
                logger.exception("scanning %s failed", self.directory)

    def scan_once(self) -> None:
        found: dict[str, tuple] = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.iterdir()):
                signature = _signature(path) if path.is_dir() else None
                if signature is not None and ADAPTER_NAME.match(path.name) and not path.name.startswith("."):
                    found[path.name] = signature
        for name in [n for n in self.loaded if n not in found or found[n] != self.loaded[n]]:
            self._unload(name)
        for name, signature in found.items():
            if name not in self.loaded and self.failed.get(name) != signature:
                self._load(name, signature)

    def _load(self, name: str, signature: tuple) -> None:
        try:
            self.runtime.load_adapter(name, str(self.directory / name))
        except APIError as exc:
            if exc.status == 409 and name not in self.runtime.adapter_names():
                return  # the previous version is still draining: retry next scan
            self.failed[name] = signature
            logger.error("adapter %s in %s not loaded: %s", name, self.directory, exc.message)
            return
        self.loaded[name] = signature
        self.failed.pop(name, None)
        logger.info("adapter %s loaded from %s", name, self.directory / name)

    def _unload(self, name: str) -> None:
        self.loaded.pop(name, None)
        try:
            self.runtime.unload_adapter(name)
            logger.info("adapter %s unloaded (gone or changed in %s)", name, self.directory)
        except APIError:  # already unloaded through the admin API
            pass
