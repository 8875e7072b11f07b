"""Reading kfp.local's output while a pipeline runs: which step runs, each step's own log, its progress, and why a
step failed.

kfp.local's SubprocessRunner prints everything through ``print``/``logging`` on this process's ``sys.stdout``: its
own status lines (``HH:MM:SS.mmm - INFO - Executing task 'train'`` ... ``Task 'train' finished with status
SUCCESS``, with ANSI colours) and, between them, each step's merged stdout/stderr, indented by four spaces. So the
stream is split here by those status lines; nothing in kfp is patched. Each step's lines are written to
``<run dir>/<step>/log.txt`` as they arrive and everything (as ``--verbose`` shows it) to ``<run dir>/run.log``.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kubeforge.progress import Progress, parse_progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STEP_LOG = "log.txt"
RUN_LOG = "run.log"
_KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - (?P<level>[A-Z]+) - (?P<message>.*)$")
_TASK_START = re.compile(r"^Executing task '(?P<step>[^']+)'")
_TASK_END = re.compile(r"^Task '(?P<step>[^']+)' finished with status (?P<status>[A-Z]+)")
_CACHE_HIT = re.compile(r"^Task (?P<step>\S+) cache hit")
_SKIPPED = re.compile(r"^Skipping (?:conditional )?task (?P<step>[\w.-]+)")
_OUTPUT_FILE = re.compile(r'"outputFile":\s*"(?P<path>[^"]+)/(?P<step>[^/"]+)/executor_output\.json"')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
_STEP_INDENT = "    "  # kfp.local's indented_print

# Warnings kfp.local gives for every task of a pipeline meant for a cluster: true, expected, and said once by
# the summary instead ("scheduling profiles apply on a cluster").
EXPECTED_KFP_WARNINGS = (
    (UserWarning, r"Task '.*': settings \[.*\] have no effect in the current local runner"),
    (RuntimeWarning, r"You may be attempt?ing to run a task that uses custom or non-Python base image"),
)


class RunListener(Protocol):
    """What a view of a running pipeline is told (all calls come from the thread running the pipeline): ``begin``
    first, ``end`` last whether the run succeeded or not, the step events in between."""

    def begin(self, pipeline: str, steps: list[str], profile: str) -> None: ...
    def end(self) -> None: ...
    def step_started(self, step: str) -> None: ...
    def step_line(self, step: str, line: str) -> None: ...  # every line, progress lines too
    def step_progress(self, step: str, progress: Progress) -> None: ...
    def step_finished(self, step: str, status: str, seconds: float) -> None: ...
    def other_line(self, line: str) -> None: ...


@dataclass
class StepRecord:
    name: str
    status: str = "waiting"  # waiting | running | done | failed | cached | skipped
    started: float | None = None
    seconds: float | None = None
    lines: list[str] = field(default_factory=list)
    written: int = 0  # lines already in its log file


@dataclass(frozen=True)
class StepFailure:
    step: str
    error_type: str  # as Python printed it: 'kubeforge.data.DataError', 'ZeroDivisionError', '' when unknown
    message: str  # the exception's message (may span lines), or the step's last output when there was none
    log: Path | None


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def exception_from_log(lines: list[str]) -> tuple[str, str] | None:
    """(type, message) of the last Python traceback in a step's log: the step's own words for why it failed."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    tail = lines[starts[-1] + 1:]
    for position, line in enumerate(tail):
        if not line or line[0].isspace():
            continue  # frames, source lines and ^^^ markers are indented
        match = _EXCEPTION.match(line)
        if not match:
            return None
        rest = tail[position + 1:]
        while rest and not rest[-1].strip():
            rest.pop()
        message = "\n".join([match["message"] or "", *rest]).strip()
        return match["type"], message
    return None


class KfpOutput(io.TextIOBase):
    """A text stream standing in for sys.stdout/sys.stderr during a local run; splits kfp's output by step."""

    def __init__(self, steps: list[str], listener: RunListener, locate_run_dir: Callable[[], Path | None]) -> None:
        super().__init__()
        self.steps = {name: StepRecord(name) for name in steps}
        self.listener = listener
        self.run_dir: Path | None = None
        self.current: str | None = None
        self._locate = locate_run_dir
        self._streaming = False
        self._partial = ""
        self._pending_run_log: list[str] = []
        self._files: dict[str, io.TextIOWrapper] = {}
        self._next_lookup = 0.0

    # ------------------------------------------------------------------------------------------------ text stream
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._line(line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        for handle in self._files.values():
            handle.flush()

    def close_logs(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""
        self._find_run_dir(force=True)
        for step in self.steps:
            self._sync_log(step)
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    # ---------------------------------------------------------------------------------------------------- parsing
    def _line(self, raw: str) -> None:
        line = strip_ansi(raw)
        record = _KFP_RECORD.match(line)
        if record:
            self._kfp_record(record["message"])
        elif self._streaming and self.current:
            self._step_line(self.current, line[len(_STEP_INDENT):] if line.startswith(_STEP_INDENT) else line)
            self._write_run_log(line)
            return
        self.listener.other_line(line)
        self._write_run_log(line)

    def _kfp_record(self, message: str) -> None:
        if started := _TASK_START.match(message):
            self._start(started["step"])
        elif message.startswith("Streamed logs:"):
            self._streaming = True
        elif ended := _TASK_END.match(message):
            self._finish(ended["step"], "done" if ended["status"] == "SUCCESS" else "failed")
        elif cached := _CACHE_HIT.match(message):
            self._start(cached["step"])
            self._finish(cached["step"], "cached")
        elif skipped := _SKIPPED.match(message):
            record = self._record(skipped["step"])
            record.status = "skipped"
            self.listener.step_finished(record.name, "skipped", 0.0)

    def _record(self, step: str) -> StepRecord:
        return self.steps.setdefault(step, StepRecord(step))

    def _start(self, step: str) -> None:
        record = self._record(step)
        record.status, record.started, record.seconds = "running", time.monotonic(), None
        self.current, self._streaming = step, False
        self.listener.step_started(step)

    def _finish(self, step: str, status: str) -> None:
        record = self._record(step)
        while record.lines and not record.lines[-1].strip():
            record.lines.pop()  # kfp prints blank lines after a step's output
        record.status = status
        record.seconds = time.monotonic() - record.started if record.started is not None else 0.0
        self.current, self._streaming = None, False
        self._find_run_dir(force=True)
        self._sync_log(step)
        self.listener.step_finished(step, status, record.seconds)

    def _step_line(self, step: str, line: str) -> None:
        record = self._record(step)
        if not record.lines and not line.strip():
            return  # kfp's "Streamed logs:" record ends with a blank line
        record.lines.append(line)
        if self.run_dir is None and (found := _OUTPUT_FILE.search(line)):
            self.run_dir = Path(found["path"])
        self._find_run_dir()
        self._sync_log(step)
        self.listener.step_line(step, line)
        progress = parse_progress(line)
        if progress is not None:
            self.listener.step_progress(step, progress)

    # --------------------------------------------------------------------------------------------------- log files
    def _find_run_dir(self, force: bool = False) -> None:
        """The run directory is kfp's choice (``<pipeline>-<timestamp>``): read from the executor input a step
        prints, else found by whoever started the run; until then lines wait in memory."""
        if self.run_dir is None and (force or time.monotonic() >= self._next_lookup):
            self._next_lookup = time.monotonic() + 0.25
            self.run_dir = self._locate()
        if self.run_dir is not None and self._pending_run_log:
            pending, self._pending_run_log = self._pending_run_log, []
            for line in pending:
                self._write_run_log(line)

    def _sync_log(self, step: str) -> None:
        record = self._record(step)
        end = len(record.lines)
        while record.status == "running" and end > record.written and not record.lines[end - 1].strip():
            end -= 1  # blank lines wait for more output: kfp ends every step's output with some
        if self.run_dir is None or record.written >= end:
            return
        handle = self._files.get(step)
        if handle is None:
            path = self.run_dir / step / STEP_LOG
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._files[step] = path.open("w", encoding="utf-8", buffering=1)
        handle.write("".join(line + "\n" for line in record.lines[record.written:end]))
        record.written = end

    def _write_run_log(self, line: str) -> None:
        if self.run_dir is None:
            self._pending_run_log.append(line)
            return
        handle = self._files.get(RUN_LOG)
        if handle is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = self._files[RUN_LOG] = (self.run_dir / RUN_LOG).open("w", encoding="utf-8", buffering=1)
        handle.write(line + "\n")

    # ----------------------------------------------------------------------------------------------------- results
    def log_path(self, step: str) -> Path | None:
        return self.run_dir / step / STEP_LOG if self.run_dir is not None else None

    def failure(self) -> StepFailure | None:
        """The first failed step and its cause, in the step's own words."""
        failed = next((record for record in self.steps.values() if record.status == "failed"), None)
        if failed is None:
            return None
        found = exception_from_log(failed.lines)
        if found is not None:
            return StepFailure(failed.name, found[0], found[1], self.log_path(failed.name))
        last = next((line.strip() for line in reversed(failed.lines) if line.strip()), "")
        message = f"the step exited with an error and no Python traceback; its last output: {last}" if last else (
            "the step exited with an error and printed nothing")
        return StepFailure(failed.name, "", message, self.log_path(failed.name))


@contextlib.contextmanager
def capture_kfp_output(stream: KfpOutput) -> Iterator[KfpOutput]:
    """Route this process's sys.stdout/sys.stderr through ``stream`` for the run; kfp's expected warnings are
    dropped. Whoever draws the live view must hold the real stdout (a rich Console bound to it) before this."""
    saved = sys.stdout, sys.stderr
    with warnings.catch_warnings():
        for category, message in EXPECTED_KFP_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        sys.stdout = sys.stderr = stream  # type: ignore[assignment]
        try:
            yield stream
        finally:
            sys.stdout, sys.stderr = saved
            stream.close_logs()
