"""bench.serving_target: sizing the latency target for a model on the machine it runs on."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]


def run_target(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.serving_target", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "KUBEFORGE_BENCH_RESULTS": str(tmp_path / "results")})


def test_it_serves_the_model_finds_where_goodput_stops_growing_and_sizes_the_target_from_the_latency_there(
        served_model_dir, tmp_path):
    done = run_target(tmp_path, str(served_model_dir), "--sweeps", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "serving_target.json").read_text())
    goodput = {int(clients): rate for clients, rate in result["goodput_per_s_by_clients"].items()}
    assert sorted(goodput) == [1, 2, 4, 8, 16, 32, 64, 128] and all(rate > 0 for rate in goodput.values())
    saturating = result["saturating_clients"]
    assert goodput[saturating] >= 0.9 * max(goodput.values())  # the first level within 10 % of the best
    assert all(goodput[clients] < 0.9 * max(goodput.values()) for clients in goodput if clients < saturating)
    assert result["latency_target_ms"] == round(1.4 * result["saturated_p50_ms"], 1) > 0
    assert result["env"] == f"KUBEFORGE_SERVE_LATENCY_TARGET_MS={result['latency_target_ms']}"
    assert result["chart_values"] == {"serving": {"latency_target_ms": result["latency_target_ms"]}}


def test_bad_input_is_refused_naming_it(served_model_dir, tmp_path):
    not_a_model = run_target(tmp_path, str(tmp_path))
    assert not_a_model.returncode == 2 and "not a kubeforge model directory" in not_a_model.stderr.splitlines()[-1]
    (tmp_path / "bodies.json").write_text('{"instances": []}')
    bad_payloads = run_target(tmp_path, str(served_model_dir), "--payloads", str(tmp_path / "bodies.json"))
    assert bad_payloads.returncode == 2 and "JSON list of request bodies" in bad_payloads.stderr.splitlines()[-1]
    assert not (tmp_path / "results").exists()  # nothing written
