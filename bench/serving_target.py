"""The admission latency target for your model on this node: docs/serving.md's sizing, measured instead of by hand.

The adaptive limit keeps requests within ``latency_target_ms``; sized as the median latency at the concurrency where
goodput stops growing, plus 40 %, it keeps goodput at overload near the peak and admitted requests near their
saturated latency (README), while the 25 ms default suits models nobody measured. This serves a kubeforge model
directory under ``bentoml serve`` as the chart's pods do (one worker, the image's service), on the CPUs given, sweeps
closed-loop clients over it (bench.serving_overload.saturation: 1-128 clients, 2 s each, ``--sweeps`` times) and
prints the saturating concurrency, the median latency there and the sized target, as the environment variable and
the chart value. Run it on the node type that will serve (the same model's latency differed 2x between two hosts'
CPUs here), with request bodies like the real ones (``--payloads``: a JSON list of bodies, as bench.serving_load
reads them; without it, one row of zeros per request).

    python -m bench.serving_target MODEL_DIR [--payloads FILE.json] [--sweeps 3] [--pin]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path

from bench._harness import add_pin_option, pinned_cpus, pinned_name, placement, write
from bench.serving import bentoml_serve, kubeforge_env, start_server, warm_up, write_payloads
from bench.serving_overload import HEADROOM, SATURATION_SWEEP, saturation, sized_target_ms
from kubeforge.serving.runtime import ServedSpec


# client counts swept: bench.serving's 1-32, and beyond, for models and nodes that need more to saturate
LEVELS = SATURATION_SWEEP + (64, 128)


def zero_rows(spec: ServedSpec) -> list[bytes]:
    """One request of one all-zero row, as wide as the model's input: a stand-in for real bodies."""
    return [json.dumps({"instances": [[0.0] * len(spec.feature_names)]}).encode()]


def read_payloads(path: Path) -> list[bytes]:
    bodies = json.loads(path.read_text())
    if not isinstance(bodies, list) or not bodies or not all(isinstance(body, str) for body in bodies):
        raise ValueError(f"{path}: expected a non-empty JSON list of request bodies (strings)")
    return [body.encode() for body in bodies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a kubeforge model directory (model.json and its weights)")
    parser.add_argument("--payloads", type=Path, help="a JSON list of request bodies (default: a row of zeros)")
    parser.add_argument("--sweeps", type=int, default=3, help="sweeps over the client counts; medians are taken")
    parser.add_argument("--name", default="serving_target", help="results file in bench/results")
    add_pin_option(parser)
    args = parser.parse_args()
    if args.sweeps < 1:
        parser.error("--sweeps must be >= 1")
    try:
        spec = ServedSpec.read(args.model_dir)  # not a model directory: ConfigError, a ValueError
        payloads = read_payloads(args.payloads) if args.payloads else zero_rows(spec)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    server_cpus, client_cpus = pinned_cpus(args, parser)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        payload_file = write_payloads(root, payloads)
        url, process, log = start_server(stack, bentoml_serve(), kubeforge_env(args.model_dir.resolve()), root,
                                         server_cpus)
        warm_up(url, process, log, payload_file, client_cpus)
        clients, goodput, median_ms = saturation(url, payload_file, args.sweeps, client_cpus, LEVELS)
    target_ms = sized_target_ms(median_ms)
    if clients == LEVELS[-1]:  # still growing at the last level: the knee may lie beyond, and the target be tight
        print(f"warning: goodput still grew at {clients} clients; the target may be too tight", file=sys.stderr)
    write(pinned_name(args.name, args), {
        "model_dir": str(args.model_dir.resolve()), "cpu_placement": placement(server_cpus, client_cpus),
        "payloads": str(args.payloads) if args.payloads else "one row of zeros", "sweeps": args.sweeps,
        "goodput_per_s_by_clients": goodput, "saturating_clients": clients, "saturated_p50_ms": median_ms,
        "headroom": HEADROOM, "latency_target_ms": target_ms,
        "env": f"KUBEFORGE_SERVE_LATENCY_TARGET_MS={target_ms}",
        "chart_values": {"serving": {"latency_target_ms": target_ms}},
    }, command="python -m bench.serving_target " + str(args.model_dir)
        + (f" --payloads {args.payloads}" if args.payloads else "") + f" --sweeps {args.sweeps}"
        + (" --pin" if args.pin else ""))


if __name__ == "__main__":
    main()
