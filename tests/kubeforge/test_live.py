"""The run's live view and the reading of kfp.local's output: progress lines, per-step logs, the failing step's cause.

Fast tests write kfp.local's output with kfp's own logging helpers (the code its task dispatcher prints with); the
slow one runs a real two-step pipeline through kfp.local's SubprocessRunner."""

import io
import logging
import re
from pathlib import Path

import pytest
from rich.console import Console

from kubeforge.live import LiveView, PlainView, RunView, VerboseView, make_view
from kubeforge.progress import Progress, emit_progress, parse_progress, progress_line
from kubeforge.run_output import KfpOutput, capture_kfp_output, exception_from_log


def test_explicit_progress_lines_round_trip():
    line = progress_line("candidates", 2, 4, unit="candidate", label="onnx-int8", accuracy=0.97)
    assert line.startswith("KUBEFORGE_PROGRESS {")
    assert parse_progress(line) == Progress("candidates", 2, 4, "candidate", {"accuracy": 0.97}, "onnx-int8")
    assert parse_progress('KUBEFORGE_PROGRESS {"bar": "train", "done": 5}') == Progress("train", 5)
    stream = io.StringIO()
    emit_progress("train", 3, 10, unit="step", stream=stream, loss=2.5)
    assert parse_progress(stream.getvalue()) == Progress("train", 3, 10, "step", {"loss": 2.5})


@pytest.mark.parametrize("line", ["KUBEFORGE_PROGRESS {not json", 'KUBEFORGE_PROGRESS {"done": 1}',
                                  "an ordinary line | with 3/4 of a bar", "Epoch 3/40"])
def test_malformed_or_ordinary_lines_are_not_progress(line):
    assert parse_progress(line) is None


def test_tqdm_bars_as_printed_into_a_pipe_are_read():
    classifier = parse_progress("train:  32%|███▎      | 13/40 [00:16<00:47,  1.75s/epoch, val_acc=0.978, "
                                "val_loss=0.0813]")
    assert classifier == Progress("train", 13, 40, "epoch", {"val_acc": 0.978, "val_loss": 0.0813})
    assert classifier.describe() == "epoch 13/40  val_acc 0.978  val_loss 0.0813"
    lm = parse_progress("train:  10%|█         | 20/200 [00:04<00:36,  4.96step/s, loss=6.1234, tok_s=2048]")
    assert lm == Progress("train", 20, 200, "step", {"loss": 6.1234, "tok_s": 2048.0})
    assert parse_progress("train:   0%|          | 0/40 [00:00<?, ?epoch/s]").fraction == 0.0


def kfp_task(step: str, lines: list[str], ok: bool = True) -> None:
    """Print one task the way kfp.local's task dispatcher does (its logging context, indented print, status)."""
    from kfp.local import logging_utils, status

    with logging_utils.local_logger_context():
        name = logging_utils.format_task_name(step)
        logging.info(f"Executing task {name}")
        logging.info("Streamed logs:\n")
        with logging_utils.indented_print():
            for line in lines:
                print(line)
            print("\n")
        result = status.Status.SUCCESS if ok else status.Status.FAILURE
        logging.info(f"Task {name} finished with status {logging_utils.format_status(result)}")
        logging_utils.print_horizontal_line()


TRACEBACK = ["Traceback (most recent call last):", '  File "x.py", line 3, in <module>', "    prepare()",
             "    ^^^^^^^^^", "kubeforge.data.DataError: bad.csv: label column 'y' has a single class ('0')"]


def test_output_is_split_by_step_into_log_files_and_views(tmp_path):
    run_dir = tmp_path / "train-evaluate-2026-01-01-00-00-00-000000"
    console = Console(file=io.StringIO(), width=120)
    view = PlainView(console)
    view.begin("train-evaluate", ["preprocess", "train", "evaluate"], "cpu")
    output = KfpOutput(["preprocess", "train", "evaluate"], view, lambda: run_dir if run_dir.exists() else None)
    with capture_kfp_output(output):
        kfp_task("preprocess", ["[KFP Executor] Got executor_input:",
                                f'        "outputFile": "{run_dir}/preprocess/executor_output.json"', "rows: 10"])
        kfp_task("train", [f"train:  {p * 25}%|##  | {p}/4 [00:01<00:01, 2.0epoch/s, val_loss=0.{9 - p}]"
                           for p in range(5)])
        kfp_task("evaluate", ["something went wrong", *TRACEBACK], ok=False)
        print("kfp's own line outside any step")
    assert (run_dir / "preprocess" / "log.txt").read_text().splitlines()[-1] == "rows: 10"
    train_log = (run_dir / "train" / "log.txt").read_text()
    assert train_log.startswith("train:  0%|") and train_log.endswith("val_loss=0.5]\n")  # no kfp blank lines
    assert "\x1b[" not in (run_dir / "run.log").read_text() and "Executing task 'train'" in (run_dir / "run.log").read_text()
    said = console.file.getvalue().splitlines()
    assert said[0] == "train-evaluate (3 steps, profile cpu): preprocess, train, evaluate"
    assert "train: epoch 2/4  val_loss 0.7" in said and "train: epoch 4/4  val_loss 0.5" in said
    assert re.fullmatch(r"train: done in \d\.\d s \(epoch 4/4  val_loss 0\.5\)", said[said.index("train: running") + 5])
    assert said[-1].startswith("evaluate: failed in ")
    assert not any("KFP Executor" in line or "kfp's own" in line for line in said)
    failure = output.failure()
    assert (failure.step, failure.error_type) == ("evaluate", "kubeforge.data.DataError")
    assert failure.message == "bad.csv: label column 'y' has a single class ('0')"
    assert failure.log == run_dir / "evaluate" / "log.txt" and failure.log.read_text().endswith(TRACEBACK[-1] + "\n")


def test_lines_wait_in_memory_until_the_run_directory_exists(tmp_path):
    run_dir = tmp_path / "run"
    output = KfpOutput(["a"], PlainView(Console(file=io.StringIO())), lambda: run_dir if run_dir.exists() else None)
    with capture_kfp_output(output):
        kfp_task("a", ["first"])
        run_dir.mkdir()  # kfp.local makes it when a step first writes an output
    assert (run_dir / "a" / "log.txt").read_text() == "first\n"
    assert "Executing task 'a'" in (run_dir / "run.log").read_text()


def test_the_expected_local_runner_warnings_are_hidden_and_others_kept(tmp_path):
    import warnings

    output = KfpOutput([], VerboseView(Console(file=io.StringIO())), lambda: tmp_path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with capture_kfp_output(output):
            warnings.warn("Task 'train': settings ['cpu_limit'] have no effect in the current local runner and will "
                          "be ignored.", UserWarning)
            warnings.warn('You may be attemping to run a task that uses custom or non-Python base image "x"',
                          RuntimeWarning)
            warnings.warn("something the user should see", UserWarning)
    assert [str(warning.message) for warning in seen] == ["something the user should see"]


@pytest.mark.parametrize("lines, expected", [
    (TRACEBACK, ("kubeforge.data.DataError", "bad.csv: label column 'y' has a single class ('0')")),
    (["Traceback (most recent call last):", '  File "x", line 1', "kubeforge.compression.candidate.CompressionError: "
      "no candidate passed the accuracy gate:", "candidate  accuracy", "int8  0.5", "", ""],
     ("kubeforge.compression.candidate.CompressionError",
      "no candidate passed the accuracy gate:\ncandidate  accuracy\nint8  0.5")),
    (["Traceback (most recent call last):", '  File "x", line 1', "KeyError", "Traceback (most recent call last):",
      '  File "y", line 2', "ZeroDivisionError: division by zero"], ("ZeroDivisionError", "division by zero")),
    (["no traceback here"], None),
])
def test_the_cause_is_the_last_traceback_in_the_steps_words(lines, expected):
    assert exception_from_log(lines) == expected


def test_live_view_draws_a_line_per_step_and_bars_for_the_running_one():
    console = Console(file=io.StringIO(), width=120, force_terminal=True)
    view = LiveView(console)
    RunView.begin(view, "train-compress", ["preprocess", "train", "compress"], "cpu")  # the state, no live thread
    view.step_started("preprocess")
    view.step_finished("preprocess", "done", 3.25)
    view.step_started("train")
    view.step_progress("train", Progress("train", 13, 40, "epoch", {"val_loss": 0.0813}))
    plain = Console(file=io.StringIO(), width=120)
    plain.print(view.render())
    text = plain.file.getvalue()
    assert re.search(r"✓ preprocess +3\.2 s", text) and re.search(r"▶ train +\d\.\d s", text)
    assert "epoch 13/40  val_loss 0.0813" in text and "━" in text
    assert re.search(r"· compress +waiting", text)


def test_the_view_follows_the_terminal():
    assert isinstance(make_view(Console(file=io.StringIO(), force_terminal=True)), LiveView)
    assert isinstance(make_view(Console(file=io.StringIO())), PlainView)
    assert isinstance(make_view(Console(file=io.StringIO(), force_terminal=True), verbose=True), VerboseView)


@pytest.mark.slow
def test_a_real_kfp_local_run_is_demultiplexed(tmp_path):
    from kfp import dsl, local

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def count(rounds: int) -> int:
        from kubeforge.progress import emit_progress

        for done in range(1, rounds + 1):
            emit_progress("candidates", done, rounds, unit="candidate", label=f"c{done}")
        print("counted")
        return rounds

    @dsl.component(base_image="python:3.11", install_kfp_package=False)
    def refuse(rounds: int):
        from kubeforge.data import DataError

        raise DataError(f"table.csv: {rounds} rounds is not enough")

    @dsl.pipeline(name="demux-check")
    def check():
        refuse(rounds=count(rounds=3).output)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True)
    console = Console(file=io.StringIO(), width=120)
    view = PlainView(console)
    output = KfpOutput(["count", "refuse"], view, lambda: None)
    with pytest.raises(RuntimeError, match="refuse"), capture_kfp_output(output):
        check()
    (run_dir,) = tmp_path.iterdir()
    assert output.run_dir == run_dir  # read from the executor input the step printed
    assert "counted" in (run_dir / "count" / "log.txt").read_text()
    failure = output.failure()
    assert failure.step == "refuse" and failure.message == "table.csv: 3 rounds is not enough"
    assert failure.log == run_dir / "refuse" / "log.txt" and failure.log.is_file()
    said = console.file.getvalue()
    assert "count: candidate 3/3  c3" in said and "count: done in" in said and "refuse: failed in" in said
