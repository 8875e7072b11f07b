"""How to size ``latency_target_ms``: the headroom over the saturated median traded against goodput under overload.

docs/serving.md sizes the adaptive limit's latency target as the median latency at the concurrency that saturates the
server plus a margin. Too little margin and noisy windows hold the limit below the clients that would fit (goodput
lost at 8x-16x overload); too much and admitted requests wait (accepted p99 up). This measures the trade side by side
in one run: kubeforge with its defaults and at each ``--headroom`` (0.2 = the median + 20 %), the same model, payloads
and load generator as bench.serving's overload part, clients at 1x, 2x, 8x and 16x the saturating concurrency,
servers interleaved, ``--repeats`` medians; goodput at 8x/16x as a share of the run's peak (all servers), accepted
p99 against twice the defaults' p99 at 1x, 503 p99.

    python -m bench.serving_sizing [--headroom 0.2 0.4 0.7 1.0] [--overload-seconds 3] [--repeats 3] [--pin]
                                   [--saturation N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from bench._harness import add_pin_option, pinned_cpus, pinned_name, placement, write
from bench.serving import bentoml_serve, kubeforge_env, prepare_models, start_server, warm_up, write_payloads
from bench.serving_overload import (MODES, no_loss_reference, pct_of_peak_per_repeat, run_overload,
                                     saturated_median_ms, saturation, sized_target_ms)

DEFAULTS = "kubeforge defaults (25 ms target)"


def headroom_rows(levels_by_name: dict[str, list[dict]], targets: dict[str, float]) -> list[dict]:
    """One row per server: what its target bought at 8x and 16x overload."""
    everything = [level for levels in levels_by_name.values() for level in levels]
    peak = max(level["goodput_per_s"] for level in everything)
    base_p99 = levels_by_name[DEFAULTS][0]["accepted_p99_ms"]
    rows = []
    for name, levels in levels_by_name.items():
        high = [level for level in levels if level["factor"] >= 8]
        rows.append({
            "server": name, "latency_target_ms": targets[name],
            "goodput_per_s": [level["goodput_per_s"] for level in levels],
            "goodput_8x_16x_pct_of_run_peak": [round(100 * level["goodput_per_s"] / peak, 1) for level in high],
            "goodput_8x_16x_pct_of_own_peak_per_repeat": [pct_of_peak_per_repeat(levels, level) for level in high],
            "goodput_no_loss_reference": no_loss_reference(levels),
            "server_cpu_pct": [level["server_cpu_pct"] for level in levels],
            "client_cpu_pct": [level["client_cpu_pct"] for level in levels],
            "goodput_per_server_cpu_s": [level["goodput_per_server_cpu_s"] for level in levels],
            "accepted_p99_ms": [level["accepted_p99_ms"] for level in levels],
            "accepted_p99_le_2x_defaults_1x": all((level["accepted_p99_ms"] or 0) <= 2 * base_p99 for level in levels),
            "shed_p99_ms": [level["shed_p99_ms"] for level in levels],
            "shed_503": sum(level["shed_503"] for level in levels)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headroom", type=float, nargs="+", default=[0.2, 0.4, 0.7, 1.0])
    parser.add_argument("--overload-seconds", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--saturation", type=int, default=0,
                        help="clients that saturate kubeforge (0: measure); its median latency is measured either way")
    add_pin_option(parser)
    args = parser.parse_args()
    if any(headroom < 0 for headroom in args.headroom):
        parser.error(f"--headroom must be >= 0, got {args.headroom}")
    if args.saturation < 0:
        parser.error(f"--saturation must be >= 0 (0: measure), got {args.saturation}")
    server_cpus, client_cpus = pinned_cpus(args, parser)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        _, int8, payloads = prepare_models(root)
        payload_file = write_payloads(root, payloads)
        served = kubeforge_env(int8)

        def launch(target_ms: float | None) -> tuple[str, object]:
            env = served if target_ms is None else {**served, "KUBEFORGE_SERVE_LATENCY_TARGET_MS": str(target_ms)}
            url, process, log = start_server(stack, bentoml_serve(), env, root, server_cpus)
            warm_up(url, process, log, payload_file, client_cpus)
            return url, process

        servers = {DEFAULTS: launch(None)}
        if args.saturation:
            saturating, sweep = args.saturation, {}
            saturated_p50 = saturated_median_ms(servers[DEFAULTS][0], payload_file, saturating, 3, client_cpus)
        else:
            saturating, sweep, saturated_p50 = saturation(servers[DEFAULTS][0], payload_file, cpus=client_cpus)
        targets = {DEFAULTS: 25.0}
        for headroom in args.headroom:
            name = f"median + {round(100 * headroom)} %"
            targets[name] = sized_target_ms(saturated_p50, headroom)
            servers[name] = launch(targets[name])
        results = run_overload({mode: servers for mode in MODES}, payload_file, saturating, args.overload_seconds,
                               args.repeats, client_cpus)
    name = pinned_name("serving_sizing", args) + (f"_at_{args.saturation}" if args.saturation else "")
    write(name, {
        "cpu_placement": placement(server_cpus, client_cpus),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "saturating_clients": saturating, "saturation_sweep_goodput": sweep, "saturated_p50_ms": saturated_p50,
        "by_mode": {mode: headroom_rows(by_name, targets) for mode, by_name in results.items()},
        "results": results,
    }, command=f"python -m bench.serving_sizing --headroom {' '.join(map(str, args.headroom))} "
               f"--overload-seconds {args.overload_seconds} --repeats {args.repeats}" + (" --pin" if args.pin else "")
               + (f" --saturation {args.saturation}" if args.saturation else ""))


if __name__ == "__main__":
    main()
