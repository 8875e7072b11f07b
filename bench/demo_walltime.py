"""Wall time of the README's main job, `kubeforge run` on the default pipeline, as a user runs it (fresh process).

    python -m bench.demo_walltime [--repeats 2]
Target: <= 60 s on a 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._harness import interleaved, median, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    kubeforge = shutil.which("kubeforge") or str(Path(sys.executable).parent / "kubeforge")
    accuracies: list[float] = []

    def demo() -> None:
        with tempfile.TemporaryDirectory() as runs:
            subprocess.run([kubeforge, "run", "--runs-dir", runs], check=True, capture_output=True)
            summary = json.loads(next(Path(runs).glob("*/summary.json")).read_text())
            accuracies.append(summary["test"]["accuracy"])

    seconds = interleaved({"kubeforge run": demo}, args.repeats)["kubeforge run"]
    write("demo_walltime", {"seconds": seconds, "median_s": round(median(seconds), 2), "target": "<= 60 s",
                            "meets_target": median(seconds) <= 60, "test_accuracy": accuracies},
          command=f"python -m bench.demo_walltime --repeats {args.repeats}")


if __name__ == "__main__":
    main()
