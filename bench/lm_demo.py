"""Wall time and outcome of `kubeforge run lm-pretrain-finetune` as a user runs it (fresh process, defaults).

    python -m bench.lm_demo [--repeats 1]
Targets on a 2-core CPU machine: <= 180 s wall; the fine-tuned model's held-out perplexity on the fine-tuning set
<= 0.8 x its base's (the pre-trained model before fine-tuning), both measured by the run's own evaluation step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._harness import interleaved, median, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    kubeforge = shutil.which("kubeforge") or str(Path(sys.executable).parent / "kubeforge")
    outcomes: list[dict] = []

    def demo() -> None:
        with tempfile.TemporaryDirectory() as runs:
            subprocess.run([kubeforge, "run", "lm-pretrain-finetune", "--runs-dir", runs], check=True,
                           capture_output=True)
            summary = json.loads(next(Path(runs).glob("*/summary.json")).read_text())
            outcomes.append({**summary["test"], "pipeline_wall_s": summary["wall_seconds"]})

    load_before = os.getloadavg()
    seconds = interleaved({"kubeforge run lm-pretrain-finetune": demo}, args.repeats)
    seconds = seconds["kubeforge run lm-pretrain-finetune"]
    ratios = [outcome["perplexity_ratio"] for outcome in outcomes]
    write("lm_demo", {"seconds": seconds, "median_s": round(median(seconds), 2), "target_s": 180,
                      "perplexity_ratio": ratios, "target_ratio": 0.8, "outcomes": outcomes,
                      "meets_targets": median(seconds) <= 180 and max(ratios) <= 0.8,
                      "load_average_before": load_before, "load_average_after": os.getloadavg()},
          command=f"python -m bench.lm_demo --repeats {args.repeats}")


if __name__ == "__main__":
    main()
