"""Orchestration overhead: preprocess -> train -> evaluate called directly vs the same components through kfp.local.

Both sides start from a fresh interpreter, so the difference is what kfp.local adds: one interpreter per step
(re-importing torch), executor start-up, and artifact bookkeeping. The overhead is fixed per step, so the ratio
depends on how much work the steps do; both the default demo workload and a longer training run are reported.

    python -m bench.pipeline_overhead [--repeats 2]
Target: kfp.local / direct <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap

from bench._harness import interleaved, median, write

DIRECT = textwrap.dedent("""
    import sys
    from kubeforge.config import RunConfig
    from kubeforge.steps import evaluate_step, preprocess_step, train_step
    config = RunConfig.from_flat({overrides})
    root = sys.argv[1]
    preprocess_step(config.data, root + "/splits")
    train_step(root + "/splits", root + "/model", config.model, config.train, progress=False)
    evaluate_step(root + "/splits", root + "/model", root + "/evaluation.json")
""")

THROUGH_KFP = textwrap.dedent("""
    import sys
    from kfp import dsl, local
    from kubeforge.config import RunConfig
    from kubeforge_components.evaluate import evaluate
    from kubeforge_components.preprocess import preprocess
    from kubeforge_components.train import train
    sections = ("data", "model", "train")
    params = RunConfig.from_flat({overrides}, sections).to_flat(sections)
    data_keys = ("dataset", "label_column", "val_fraction", "test_fraction", "split_seed")

    @dsl.pipeline(name="overhead")
    def three_steps():
        data = preprocess(**{{k: params[k] for k in data_keys}})
        trained = train(splits=data.outputs["splits"], **{{k: v for k, v in params.items() if k not in data_keys}})
        evaluate(splits=data.outputs["splits"], trained_model=trained.outputs["trained_model"], seed=params["seed"])

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[1])
    three_steps()
""")


def timed_script(source: str):
    def run() -> None:
        with tempfile.TemporaryDirectory() as root:
            subprocess.run([sys.executable, "-c", source, root], check=True, capture_output=True)
    return run


def measure(overrides: dict, repeats: int) -> dict:
    literal = json.dumps(overrides)
    timings = interleaved({"direct": timed_script(DIRECT.format(overrides=literal)),
                           "kfp_local": timed_script(THROUGH_KFP.format(overrides=literal))}, repeats)
    direct, through = median(timings["direct"]), median(timings["kfp_local"])
    return {"overrides": overrides, "seconds": timings, "direct_median_s": round(direct, 2),
            "kfp_local_median_s": round(through, 2), "overhead_s": round(through - direct, 2),
            "ratio": round(through / direct, 3), "meets_target": through / direct <= 1.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    workloads = {
        "default demo (digits, MLP, default epochs)": {},
        "longer training (digits, CNN 32-64, 60 epochs)": {"model": "cnn", "channels": [32, 64], "epochs": 60,
                                                            "patience": 60},
    }
    results = {name: measure(overrides, args.repeats) for name, overrides in workloads.items()}
    write("pipeline_overhead", {"target": "kfp.local / direct <= 1.15", "workloads": results},
          command=f"python -m bench.pipeline_overhead --repeats {args.repeats}")


if __name__ == "__main__":
    main()
