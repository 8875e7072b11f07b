"""What `kubeforge run` shows while a pipeline runs.

On a terminal: a live region with one line per step (waiting / running / done / failed, duration) and a progress
bar under a running step for each bar it reports (training epochs or steps with the loss, compression candidates).
Off a terminal (CI, a pipe): plain lines without ANSI codes, one per event and one per quarter of a bar.
``--verbose``: every line the steps print, as kfp.local streams it. The steps' own output always goes to their
log files (kubeforge.run_output), so none of these views loses anything.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from kubeforge.progress import Progress

SYMBOLS = {"waiting": ("·", "dim"), "running": ("▶", "bold cyan"), "done": ("✓", "green"),
           "cached": ("✓", "green"), "failed": ("✗", "bold red"), "skipped": ("-", "dim")}


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


@dataclass
class StepState:
    name: str
    status: str = "waiting"
    started: float | None = None
    seconds: float | None = None
    bars: dict[str, Progress] = field(default_factory=dict)

    def elapsed(self, now: float) -> float | None:
        if self.seconds is not None:
            return self.seconds
        return now - self.started if self.started is not None else None

    def status_text(self, now: float) -> str:
        elapsed = self.elapsed(now)
        if self.status == "waiting" or elapsed is None:
            return self.status
        word = {"done": "", "cached": "cached ", "failed": "failed after ", "running": "", "skipped": ""}[self.status]
        return "skipped" if self.status == "skipped" else f"{word}{format_seconds(elapsed)}"

    def last_progress(self) -> str:
        return "   ".join(bar.describe() for bar in self.bars.values())


class RunView:
    """Keeps the state of every step; subclasses draw it. Implements kubeforge.run_output.RunListener."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.steps: dict[str, StepState] = {}
        self.title = ""
        self._lock = threading.Lock()

    def begin(self, pipeline: str, steps: list[str], profile: str) -> None:
        self.steps = {name: StepState(name) for name in steps}
        self.title = f"{pipeline} ({len(steps)} steps, profile {profile})"

    def end(self) -> None:
        """Called once, whether the run succeeded or not."""

    def _state(self, step: str) -> StepState:
        return self.steps.setdefault(step, StepState(step))

    def step_started(self, step: str) -> None:
        with self._lock:
            state = self._state(step)
            state.status, state.started, state.seconds, state.bars = "running", time.monotonic(), None, {}

    def step_line(self, step: str, line: str) -> None:
        pass

    def step_progress(self, step: str, progress: Progress) -> None:
        with self._lock:
            self._state(step).bars[progress.bar] = progress

    def step_finished(self, step: str, status: str, seconds: float) -> None:
        with self._lock:
            state = self._state(step)
            state.status, state.seconds = status, seconds

    def other_line(self, line: str) -> None:
        pass


class LiveView(RunView):
    """The rich live region (terminals)."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self._live: Live | None = None

    def begin(self, pipeline: str, steps: list[str], profile: str) -> None:
        super().begin(pipeline, steps, profile)
        self._live = Live(console=self.console, get_renderable=self.render, refresh_per_second=4,
                          redirect_stdout=False, redirect_stderr=False, transient=False)
        self._live.start()

    def end(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def render(self) -> RenderableType:
        now = time.monotonic()
        with self._lock:
            states = list(self.steps.values())
        grid = Table.grid(padding=(0, 1))
        for _ in range(4):
            grid.add_column(no_wrap=True)
        for state in states:
            symbol, style = SYMBOLS.get(state.status, ("?", ""))
            detail = Text("")
            if state.status in ("done", "cached", "failed") and state.bars:
                detail = Text(state.last_progress(), style="dim")
            grid.add_row(Text(symbol, style=style), Text(state.name, style="bold" if state.status == "running"
                                                          else ""),
                         Text(state.status_text(now), style=style if state.status != "done" else ""), detail)
            if state.status == "running":
                for bar in state.bars.values():
                    grid.add_row("", "", ProgressBar(total=bar.total or None, completed=bar.done, width=24,
                                                     pulse=not bar.total), Text(bar.describe()))
        return Group(Text(self.title, style="bold"), grid)


class PlainView(RunView):
    """Plain lines, one per event (pipes, CI logs): no ANSI codes, no redrawing."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self._quarters: dict[tuple[str, str], int] = {}

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def begin(self, pipeline: str, steps: list[str], profile: str) -> None:
        super().begin(pipeline, steps, profile)
        self._say(f"{self.title}: {', '.join(steps)}")

    def step_started(self, step: str) -> None:
        super().step_started(step)
        self._say(f"{step}: running")

    def step_progress(self, step: str, progress: Progress) -> None:
        super().step_progress(step, progress)
        fraction = progress.fraction
        if fraction is None:
            return
        quarter = int(fraction * 4)
        key = (step, progress.bar)
        if quarter > self._quarters.get(key, 0):
            self._quarters[key] = quarter
            self._say(f"{step}: {progress.describe()}")

    def step_finished(self, step: str, status: str, seconds: float) -> None:
        super().step_finished(step, status, seconds)
        state = self.steps[step]
        suffix = f" ({state.last_progress()})" if state.bars else ""
        self._say(f"{step}: {status}" + ("" if status == "skipped" else f" in {format_seconds(seconds)}") + suffix)


class VerboseView(RunView):
    """Every line as kfp.local streams it (``--verbose``), ANSI colours removed."""

    def _echo(self, line: str) -> None:
        self.console.file.write(line + "\n")
        self.console.file.flush()

    def step_line(self, step: str, line: str) -> None:
        self._echo("    " + line)

    def other_line(self, line: str) -> None:
        self._echo(line)


def make_view(console: Console, *, verbose: bool = False) -> RunView:
    if verbose:
        return VerboseView(console)
    return LiveView(console) if console.is_terminal else PlainView(console)
