"""LLM serving benchmark: kubeforge's LLM service vs a naive server, streaming clients, in one run, interleaved.

Servers (one worker each, the same model, loopback only; the load generator shares the machine's cores):
(a) kubeforge: `kubeforge.llm.service` (continuous batching, up to 32 rows per decode step) with 8 LoRA adapters
    loaded beside the base.
(b) naive: FastAPI + uvicorn, `model.generate(do_sample=False)` per request in its own thread, one SSE event per
    token through a transformers streamer.
Both generate exactly ``--max-tokens`` tokens per request (kubeforge: ignore_eos; naive: no EOS id) for the same
prompts, greedy. Closed-loop clients send streaming requests back to back for ``--seconds``; reported per level:
generated tokens/s, time to first token p50/p99, inter-token latency p50/p99 (between consecutive streamed tokens
of a request), requests and errors (non-200, a broken stream, or a token count other than max_tokens).
Part 1: 1, 8 and 32 clients, kubeforge vs naive. Targets at 32: >= 4x naive tokens/s, TTFT p99 no worse, no errors;
at 1 client: tokens/s no worse than naive. Part 2: 32 clients on kubeforge, all on the base vs round-robin over the 8
adapters: adapters >= 0.8x the base's tokens/s. Every measurement repeats ``--repeats`` times, interleaved, medians
reported; the load average is recorded before and after (the machine is shared).

    python -m bench.llm_serving [--seconds 8] [--repeats 2] [--max-tokens 64] [--preset small]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastapi import Request  # module level: the naive route's annotation must resolve in this module's globals

from bench._harness import (free_port, loadavg, ms, percentile, pydoc_prompts, ratio, scratch_lm, stop, versions,
                            wait_ready, write)

LEVELS = (1, 8, 32)
ADAPTERS = 8
STARTUP_TIMEOUT_S = 300


# ---- the naive server (run as `python -m bench.llm_serving --naive MODEL_DIR PORT THREADS`) --------------------

def naive_app(model_dir: str, threads: int):
    import threading

    import torch
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers.generation.streamers import BaseStreamer

    from kubeforge.lm.sources import load_causal_lm

    torch.set_num_threads(threads)
    model, tokenizer = load_causal_lm(Path(model_dir))
    model.eval()
    model.generation_config.eos_token_id = None  # exactly max_tokens, like kubeforge's ignore_eos
    app = FastAPI()

    @app.post("/v1/completions")
    async def complete(request: Request):
        body = await request.json()
        ids = tokenizer(body["prompt"])["input_ids"]
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()

        class Streamer(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate hands the prompt to the streamer first
                    self.prompt_seen = True
                    return
                loop.call_soon_threadsafe(queue.put_nowait, value.reshape(-1).tolist())

            def end(self):
                loop.call_soon_threadsafe(queue.put_nowait, None)

        def run() -> None:
            try:
                with torch.no_grad():
                    model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                   dtype=torch.long), do_sample=False, max_new_tokens=body["max_tokens"],
                                   pad_token_id=tokenizer.pad_token_id, streamer=Streamer())
            except Exception:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=run, daemon=True).start()

        async def events():
            generated = 0
            while (tokens := await queue.get()) is not None:
                generated += len(tokens)
                chunk = {"choices": [{"index": 0, "text": tokenizer.decode(tokens), "token_ids": tokens}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            usage = {"prompt_tokens": len(ids), "completion_tokens": generated, "total_tokens": len(ids) + generated}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/readyz")
    async def ready():
        return {"ready": True}

    return app


# ---- load generation ------------------------------------------------------------------------------------------

async def one_request(http, url: str, body: dict, max_tokens: int, record: dict) -> None:
    started = time.perf_counter()
    last, tokens, done = None, 0, False
    try:
        async with http.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                record["errors"] += 1
                await response.aread()
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if not chunk["choices"] or not chunk["choices"][0].get("token_ids"):
                    continue
                now = time.perf_counter()
                if last is None:
                    record["ttft"].append(now - started)
                else:
                    record["itl"].append(now - last)
                last = now
    except Exception:  # a reset or a broken stream counts as an error
        record["errors"] += 1
        return
    if not done or tokens != max_tokens:
        record["errors"] += 1
        return
    record["tokens"] += tokens
    record["requests"] += 1


async def run_level(base_url: str, clients: int, seconds: float, bodies: list[dict], max_tokens: int) -> dict:
    import httpx

    record = {"tokens": 0, "requests": 0, "errors": 0, "ttft": [], "itl": []}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        started = time.perf_counter()
        deadline = started + seconds

        async def client(index: int) -> None:
            sent = 0
            while time.perf_counter() < deadline:
                body = bodies[(index + sent * clients) % len(bodies)]
                await one_request(http, base_url + "/v1/completions", body, max_tokens, record)
                sent += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": record["requests"],
            "errors": record["errors"], "tokens_per_s": round(record["tokens"] / elapsed, 1),
            "ttft_p50_ms": ms(percentile(record["ttft"], 50)), "ttft_p99_ms": ms(percentile(record["ttft"], 99)),
            "itl_p50_ms": ms(percentile(record["itl"], 50)), "itl_p99_ms": ms(percentile(record["itl"], 99))}


# ---- servers --------------------------------------------------------------------------------------------------

def start(command: list[str], env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([*command, "--port", str(port)], env={**os.environ, **env}, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def build_models(root: Path, preset: str) -> tuple[Path, dict[str, Path]]:
    """A scratch Llama (the preset) with a byte-level BPE on Python's docs, and 8 random LoRA adapters (q, v; r 8)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from kubeforge.lm.sources import load_causal_lm

    base = scratch_lm(root, preset)
    adapters = {}
    for index in range(ADAPTERS):
        model, _ = load_causal_lm(base)
        torch.manual_seed(100 + index)
        wrapped = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False, task_type="CAUSAL_LM"))
        adapters[f"tenant-{index}"] = root / f"tenant-{index}"
        wrapped.save_pretrained(adapters[f"tenant-{index}"], safe_serialization=True)
    return base, adapters


def median_of(runs: list[dict]) -> dict:
    keys = ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")
    summary = {key: round(statistics.median(r[key] for r in runs if r[key] is not None), 2)
               if any(r[key] is not None for r in runs) else None for key in keys}
    summary.update(requests=sum(r["requests"] for r in runs), errors=sum(r["errors"] for r in runs),
                   runs=[{k: r[k] for k in ("tokens_per_s", "ttft_p99_ms", "errors")} for r in runs])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each server")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="client counts to measure")
    parser.add_argument("--no-adapters", action="store_true", help="skip part 2 (8 adapters vs the base)")
    parser.add_argument("--naive", nargs=3, metavar=("MODEL_DIR", "PORT", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive:
        import uvicorn

        uvicorn.run(naive_app(args.naive[0], int(args.naive[2])), host="127.0.0.1", port=int(args.naive[1]),
                    log_level="warning", access_log=False)
        return
    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    base, adapters = build_models(work, args.preset)
    bentoml = str(Path(sys.executable).parent / "bentoml")
    kubeforge, kubeforge_url = start(
        [bentoml, "serve", "kubeforge.llm.service:KubeforgeLLM", "--host", "127.0.0.1"],
        {"KUBEFORGE_LLM_MODEL": str(base), "KUBEFORGE_LLM_THREADS": str(args.threads),
         "KUBEFORGE_LLM_ADAPTERS": ",".join(f"{n}={p}" for n, p in adapters.items()),
         "KUBEFORGE_LLM_MAX_RUNNING": "32", "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"},
        work / "kubeforge.log")
    naive_port = free_port()
    naive = subprocess.Popen([sys.executable, "-m", "bench.llm_serving", "--naive", str(base), str(naive_port),
                              str(args.threads)], stdout=(work / "naive.log").open("w"), stderr=subprocess.STDOUT)
    naive_url = f"http://127.0.0.1:{naive_port}"
    try:
        wait_ready(kubeforge_url, kubeforge, STARTUP_TIMEOUT_S, work / "kubeforge.log")
        wait_ready(naive_url, naive, STARTUP_TIMEOUT_S, work / "naive.log")
        texts = pydoc_prompts(64, 12)
        body = {"model": "base", "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": True, "return_token_ids": True}
        base_bodies = [{**body, "prompt": text} for text in texts]
        adapter_bodies = [{**body, "prompt": text, "model": f"tenant-{i % ADAPTERS}"} for i, text in enumerate(texts)]
        for url in (kubeforge_url, naive_url):  # warm both before anything is measured
            asyncio.run(run_level(url, 2, 1.0, base_bodies, args.max_tokens))
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeats):
            for clients in args.levels:
                for name, url in (("kubeforge", kubeforge_url), ("naive", naive_url)):
                    runs.setdefault(f"{name}@{clients}", []).append(
                        asyncio.run(run_level(url, clients, args.seconds, base_bodies, args.max_tokens)))
            for name, bodies in () if args.no_adapters else (("base", base_bodies), ("adapters", adapter_bodies)):
                runs.setdefault(f"{name}@32", []).append(
                    asyncio.run(run_level(kubeforge_url, 32, args.seconds, bodies, args.max_tokens)))
    finally:
        for process in (kubeforge, naive):
            stop(process)
    levels = {clients: {name: median_of(runs[f"{name}@{clients}"]) for name in ("kubeforge", "naive")}
              for clients in args.levels}
    for pair in levels.values():
        pair["tokens_per_s_ratio"] = ratio(pair["kubeforge"]["tokens_per_s"], pair["naive"]["tokens_per_s"])
    targets: dict[str, bool] = {}
    if 32 in levels:
        at32 = levels[32]
        ttft32 = (at32["kubeforge"]["ttft_p99_ms"], at32["naive"]["ttft_p99_ms"])
        targets["32 clients: >= 4x naive tokens/s"] = (at32["tokens_per_s_ratio"] or 0) >= 4.0
        targets["32 clients: TTFT p99 no worse than naive"] = None not in ttft32 and ttft32[0] <= ttft32[1]
        targets["32 clients: zero errors"] = at32["kubeforge"]["errors"] == 0
    if 1 in levels:
        targets["1 client: tokens/s no worse than naive"] = (levels[1]["tokens_per_s_ratio"] or 0) >= 1.0
    multi = None
    if not args.no_adapters:
        multi = {"base": median_of(runs["base@32"]), "adapters": median_of(runs["adapters@32"])}
        multi["adapters_over_base"] = ratio(multi["adapters"]["tokens_per_s"], multi["base"]["tokens_per_s"])
        targets["8 adapters interleaved >= 0.8x the base"] = (multi["adapters_over_base"] or 0) >= 0.8
    command = "python -m bench.llm_serving " + " ".join(sys.argv[1:])
    write("llm_serving", {"settings": {"seconds": args.seconds, "repeats": args.repeats,
                                       "max_tokens": args.max_tokens, "preset": args.preset,
                                       "threads": args.threads, "workers": 1, "adapters": ADAPTERS},
                          "load_average_before": load_before, "load_average_after": loadavg(),
                          "shared_machine": "other engineers' jobs ran on the same cores during the measurement",
                          "levels": levels, "multi_adapter": multi, "targets": targets,
                          "library_versions": versions("transformers", "peft", "tokenizers", "uvicorn", "fastapi")},
          command)


if __name__ == "__main__":
    main()
