"""LLM tenants benchmark: one tenant's flood against another's steady traffic, the gateway's overhead, and the
budget ledger's mechanism, in one run.

Part 1 (fairness). Two LLM services on the same model (one worker each, loopback, the load generator on the same
cores): (a) with tenants (keys, budgets, weighted fair admission), (b) without any tenant layer (`unthrottled`).
The engine's capacity C (generated tokens/s, streaming clients kept busy) is measured first. Open-loop streaming
traffic, Poisson arrivals: tenant A at 8x tenant B's rate, offering ~2x C, over its concurrency budget and its token
budget (sized at about C); B well within its own. Phases of ``--seconds`` each: B alone on (a); A + B on (b); A + B
on (a), the three repeated ``--fair-repeats`` times, interleaved (medians reported). Targets: B's TTFT p99 on (a)
under A's flood within 1.5x of B alone, no 429 for B, total generated tokens/s on (a) >= 0.9x of (b).

Part 1b (engine). The same arrivals submitted to the engine in-process (no HTTP), fair scheduler vs FIFO admission:
B's wait from submission to first token, apart from what the HTTP side costs on a shared machine.

Part 2 (gateway). ``--clients`` closed-loop streaming clients through the gateway (keys, budgets, fair queue) to
service (b) as its upstream, and to (b) directly, interleaved ``--repeats`` times. Targets: tokens/s through the
gateway >= 0.95x direct, added TTFT p50 <= 2 ms.

Part 3 (ledger). A reserve + settle pair from two processes at once: the mmap+flock ledger, SQLite (WAL), and a
budget process over a Unix socket.

    python -m bench.llm_tenants [--seconds 60] [--fair-repeats 2] [--repeats 3] [--clients 16] [--preset small]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._harness import loadavg, ratio, scratch_lm, versions, write
from bench._tenant_engine import engine_only
from bench._tenant_ledger import measure_ledgers
from bench._tenant_load import (MAX_TOKENS, Server, closed_loop, open_loop, prompts, run, server_ttft, summary,
                                tenancy_files)

# ---- the run --------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="each fairness phase")
    parser.add_argument("--repeats", type=int, default=3, help="gateway vs direct, interleaved")
    parser.add_argument("--fair-repeats", type=int, default=2, help="rounds of the three fairness phases")
    parser.add_argument("--gateway-seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients of the gateway part")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--offered", type=float, default=2.0, help="A's offered load as a multiple of capacity")
    parser.add_argument("--burst-rows", type=int, default=None, help="KUBEFORGE_LLM_FAIR_BURST_ROWS (default: "
                        "the service's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("fairness", "engine", "gateway", "ledger"))
    args = parser.parse_args()
    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-tenants-"))
    base = scratch_lm(work, args.preset)
    bodies = [{"model": "base", "prompt": text, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
               "ignore_eos": True, "return_token_ids": True} for text in prompts()]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    prompt_tokens = statistics.mean(len(tokenizer(b["prompt"])["input_ids"]) for b in bodies)
    bentoml = str(Path(sys.executable).parent / "bentoml")
    common = {"KUBEFORGE_LLM_MODEL": str(base), "KUBEFORGE_LLM_THREADS": "1", "KUBEFORGE_LLM_MAX_RUNNING": "32",
              "BENTOML_DO_NOT_TRACK": "True"}
    service = [bentoml, "serve", "kubeforge.llm.service:KubeforgeLLM", "--host", "127.0.0.1"]
    plain = Server(service, {**common, "KUBEFORGE_LLM_AUTH": "off", "BENTOML_HOME": str(work / "bento-plain")},
                   work / "plain.log")
    result: dict = {"settings": {"seconds": args.seconds, "preset": args.preset, "max_tokens": MAX_TOKENS,
                                 "prompt_tokens_mean": round(prompt_tokens, 1), "max_running": 32, "workers": 1,
                                 "threads": 1, "offered_multiple_of_capacity": args.offered}}
    servers = [plain]
    try:
        plain.wait()
        run(closed_loop(plain.url, 4, 3.0, bodies, None))  # warm-up
        capacity = run(closed_loop(plain.url, 48, 10.0, bodies, None))["tokens_per_s"]
        result["capacity_tokens_per_s"] = round(capacity, 1)
        if "fairness" not in args.skip:
            result["fairness"] = fairness(args, work, service, common, plain, bodies, capacity, prompt_tokens,
                                          servers)
        if "gateway" not in args.skip:
            result["gateway"] = gateway_overhead(args, work, plain, bodies, servers)
    finally:
        for server in servers:
            server.stop()
    if "engine" not in args.skip and "fairness" in result:
        rates = result["fairness"]["rates_per_s"]
        result["engine_only"] = engine_only(base, min(args.seconds, 30.0), rates["tenant-a"], rates["tenant-b"],
                                            [b["prompt"] for b in bodies])
    if "ledger" not in args.skip:
        result["ledger"] = measure_ledgers()
    targets = {}
    if "fairness" in result:
        f = result["fairness"]
        targets["B's TTFT p99 under A's flood <= 1.5x B alone"] = (f["b_ttft_p99_ratio"] or 99) <= 1.5
        targets["B sees no 429"] = f["b_429"] == 0
        targets["total tokens/s >= 0.9x unthrottled"] = (f["tokens_per_s_ratio"] or 0) >= 0.9
    if "gateway" in result:
        g = result["gateway"]
        targets["gateway tokens/s >= 0.95x direct"] = (g["tokens_per_s_ratio"] or 0) >= 0.95
        targets["gateway added TTFT p50 <= 2 ms"] = g["added_ttft_p50_ms"] is not None and \
            g["added_ttft_p50_ms"] <= 2.0
    result.update(targets=targets, load_average_before=load_before, load_average_after=loadavg(),
                  shared_machine="2 cores shared with other engineers' jobs during the measurement",
                  library_versions=versions("transformers", "aiohttp", "httpx", "uvicorn", "bentoml"))
    write("llm_tenants", result, "python -m bench.llm_tenants " + " ".join(sys.argv[1:]))


def fairness(args, work: Path, service: list[str], common: dict, plain: Server, bodies: list[dict], capacity: float,
             prompt_tokens: float, servers: list) -> dict:
    """B alone, A + B unthrottled, A + B with tenants (rates from the measured capacity)."""
    per_request = prompt_tokens + MAX_TOKENS  # what a request reserves from its tenant's bucket
    rate_a = args.offered * capacity / MAX_TOKENS  # A asks for `offered` times what the engine can generate
    rate_b = rate_a / 8
    budget_a = int(capacity / MAX_TOKENS * per_request * 60)  # about the engine's whole capacity, in its tokens
    budgets = {"tenant-a": {"tokens_per_minute": budget_a, "max_concurrent": 64},  # rows + a queue of 32
               "tenant-b": {"tokens_per_minute": int(rate_b * per_request * 60 * 4), "max_concurrent": 64}}
    files, keys = tenancy_files(work / "tenancy", budgets)
    if args.burst_rows is not None:
        files["FAIR_BURST_ROWS"] = str(args.burst_rows)
    tenants = Server(service, {**common, **{f"KUBEFORGE_LLM_{k}": v for k, v in files.items()},
                               "BENTOML_HOME": str(work / "bento-tenants")}, work / "tenants.log")
    servers.append(tenants)
    tenants.wait()
    run(closed_loop(tenants.url, 4, 3.0, bodies, keys["tenant-b"]))  # warm-up
    seconds, audit = args.seconds, Path(files["AUDIT_LOG"])
    rounds = []
    for repeat in range(args.fair_repeats):  # interleaved: a neighbour's load hits every phase alike
        began = time.time()
        alone = run(open_loop(tenants.url, seconds, {"tenant-b": (rate_b, keys["tenant-b"])}, bodies, seed=repeat))
        alone_window = (began, time.time())
        time.sleep(3)
        free = run(open_loop(plain.url, seconds, {"tenant-a": (rate_a, None), "tenant-b": (rate_b, None)}, bodies,
                             seed=100 + repeat))
        time.sleep(3)
        began = time.time()
        fair = run(open_loop(tenants.url, seconds, {"tenant-a": (rate_a, keys["tenant-a"]),
                                                     "tenant-b": (rate_b, keys["tenant-b"])}, bodies,
                             seed=100 + repeat))
        fair_window = (began, time.time())
        time.sleep(3)
        b_alone, b_fair = summary(alone["records"]["tenant-b"], seconds), summary(fair["records"]["tenant-b"],
                                                                                  seconds)
        b_alone["server_side"] = server_ttft(audit, "tenant-b", *alone_window)
        b_fair["server_side"] = server_ttft(audit, "tenant-b", *fair_window)
        rounds.append({"b_alone": b_alone,
                       "unthrottled": {"tokens_per_s": round(free["tokens_per_s"], 1),
                                       **{t: summary(r, seconds) for t, r in free["records"].items()}},
                       "with_tenants": {"tokens_per_s": round(fair["tokens_per_s"], 1),
                                        "tenant-a": summary(fair["records"]["tenant-a"], seconds),
                                        "tenant-b": b_fair},
                       "b_ttft_p99_ratio": ratio(b_fair["ttft_p99_ms"], b_alone["ttft_p99_ms"]),
                       "b_ttft_p50_ratio": ratio(b_fair["ttft_p50_ms"], b_alone["ttft_p50_ms"]),
                       "b_server_ttft_p99_ratio": ratio(b_fair["server_side"]["ttft_p99_ms"],
                                                        b_alone["server_side"]["ttft_p99_ms"]),
                       "b_429": fair["records"]["tenant-b"]["status"].get(429, 0),
                       "tokens_per_s_ratio": ratio(fair["tokens_per_s"], free["tokens_per_s"])})

    def median(key: str) -> float | None:
        values = [r[key] for r in rounds if r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    return {"rates_per_s": {"tenant-a": round(rate_a, 2), "tenant-b": round(rate_b, 2)}, "budgets": budgets,
            "rounds": rounds, "b_ttft_p99_ratio": median("b_ttft_p99_ratio"),
            "b_ttft_p50_ratio": median("b_ttft_p50_ratio"),
            "b_server_ttft_p99_ratio": median("b_server_ttft_p99_ratio"),
            "b_429": sum(r["b_429"] for r in rounds), "tokens_per_s_ratio": median("tokens_per_s_ratio")}


def gateway_overhead(args, work: Path, plain: Server, bodies: list[dict], servers: list) -> dict:
    """Closed-loop streaming clients through the gateway to `plain`, and to `plain` directly, interleaved."""
    files, keys = tenancy_files(work / "gateway-tenancy", {"tenant-g": {"tokens_per_minute": 10**9,
                                                                         "max_concurrent": 10**6}})
    env = {**{f"KUBEFORGE_GATEWAY_{k}": v for k, v in files.items()}, "KUBEFORGE_GATEWAY_UPSTREAMS":
           f"engine={plain.url}"}
    gateway = Server([sys.executable, "-m", "kubeforge.llm.tenancy.gateway"], env, work / "gateway.log")
    servers.append(gateway)
    gateway.wait()
    run(closed_loop(gateway.url, 4, 3.0, bodies, keys["tenant-g"]))  # warm-up
    runs: dict[str, list[dict]] = {"direct": [], "gateway": []}
    for _ in range(args.repeats):
        runs["direct"].append(run(closed_loop(plain.url, args.clients, args.gateway_seconds, bodies, None)))
        runs["gateway"].append(run(closed_loop(gateway.url, args.clients, args.gateway_seconds, bodies,
                                                       keys["tenant-g"])))
    medians = {name: {key: statistics.median(r[key] for r in rs) for key in ("tokens_per_s", "ttft_p50_ms")}
               for name, rs in runs.items()}
    return {"clients": args.clients, "seconds": args.gateway_seconds, "repeats": args.repeats, "medians": medians,
            "runs": runs, "tokens_per_s_ratio": ratio(medians["gateway"]["tokens_per_s"],
                                                      medians["direct"]["tokens_per_s"]),
            "added_ttft_p50_ms": round(medians["gateway"]["ttft_p50_ms"] - medians["direct"]["ttft_p50_ms"], 2),
            "errors": sum(r["errors"] for rs in runs.values() for r in rs)}


if __name__ == "__main__":
    main()
