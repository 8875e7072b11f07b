"""Load generation and plumbing of bench.llm_tenants: the servers under test, the tenants' prompts and files,
open-loop (Poisson) and closed-loop streaming clients on aiohttp + uvloop, and the service's own TTFT."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import time
from pathlib import Path

import yaml

from bench._harness import free_port, metric_total, ms, percentile, pydoc_prompts, stop, wait_ready

STARTUP_TIMEOUT_S = 300
MAX_TOKENS = 64
TOKEN_MARK, EMPTY_TOKENS = b'"token_ids":[', b'"token_ids":[]'


def run(coroutine):
    """The load generator's loop: uvloop, the lighter loop (the same one the servers use)."""
    import uvloop

    return uvloop.run(coroutine)


# ---- processes ------------------------------------------------------------------------------------------------

class Server:
    def __init__(self, command: list[str], env: dict, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen([*command, "--port", str(self.port)], env={**os.environ, **env},
                                        stdout=log.open("w"), stderr=subprocess.STDOUT)

    def wait(self) -> None:
        wait_ready(self.url, self.process, STARTUP_TIMEOUT_S, self.log)

    def stop(self) -> None:
        stop(self.process)


def prompts(count: int = 64) -> list[str]:
    """Prompts of ~90-130 tokens: a tenant's request carries context, as chat and RAG requests do."""
    return pydoc_prompts(count, 50)


def tenancy_files(root: Path, budgets: dict[str, dict]) -> tuple[dict[str, str], dict[str, str]]:
    """(tenants env for a server with the given prefix filled in later, keys by tenant)."""
    from kubeforge.llm.tenancy.keys import key_file_text, new_key

    (root / "keys").mkdir(parents=True, exist_ok=True)
    (root / "tenants.yaml").write_text(yaml.safe_dump({"tenants": budgets}))
    keys = {}
    for tenant in budgets:
        key, record = new_key(tenant)
        (root / "keys" / f"{tenant}.json").write_text(key_file_text(tenant, [record]))
        keys[tenant] = key
    files = {"TENANTS_FILE": str(root / "tenants.yaml"), "KEYS_DIR": str(root / "keys"), "AUTH": "required",
             "AUDIT_LOG": str(root / "audit.jsonl")}
    return files, keys


# ---- load ---------------------------------------------------------------------------------------------------

def new_record() -> dict:
    return {"sent": 0, "ok": 0, "tokens": 0, "status": {}, "ttft": [], "itl": []}


async def stream_one(http, url: str, body: dict, key: str | None, record: dict, started: float | None = None) -> None:
    """One streaming request (aiohttp: a light client, so its own CPU disturbs the measurement least); TTFT is
    counted from ``started`` (the scheduled arrival, so a late client does not hide queueing)."""
    started = started or time.perf_counter()
    headers = {"authorization": f"Bearer {key}"} if key else {}
    record["sent"] += 1
    last, tokens = None, 0
    try:
        async with http.post(url + "/v1/completions", json=body, headers=headers) as response:
            status = response.status
            if status != 200:
                await response.read()
                record["status"][status] = record["status"].get(status, 0) + 1
                return
            async for line in response.content:
                if TOKEN_MARK not in line or EMPTY_TOKENS in line:
                    continue
                now = time.perf_counter()
                tokens += 1  # one token per chunk: a step gives each sequence one token
                if last is None:
                    record["ttft"].append(now - started)
                else:
                    record["itl"].append(now - last)
                last = now
    except Exception as exc:  # a reset or a broken stream
        record["status"][type(exc).__name__] = record["status"].get(type(exc).__name__, 0) + 1
        return
    record["status"][200] = record["status"].get(200, 0) + 1
    record["ok"] += tokens == MAX_TOKENS
    record["tokens"] += tokens


def client_session(connections: int):
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=600))


async def open_loop(url: str, seconds: float, tenants: dict[str, tuple[float, str | None]], bodies: list[dict],
                    seed: int = 0) -> dict:
    """Poisson arrivals per tenant at ``rate`` requests/s for ``seconds``; streams are waited for afterwards, and
    tokens count only while the window is open (generated tokens/s of the service, not of the backlog)."""
    rng = random.Random(seed)
    records = {name: new_record() for name in tenants}
    async with client_session(2048) as http:
        start = time.perf_counter()
        end = start + seconds
        tasks = []

        async def arrivals(name: str, rate: float, key: str | None) -> None:
            at, index = start, 0
            while True:
                at += rng.expovariate(rate)
                if at >= end:
                    return
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                body = bodies[(index * 13 + len(name)) % len(bodies)]
                tasks.append(asyncio.ensure_future(stream_one(http, url, body, key, records[name], at)))
                index += 1

        counter = asyncio.ensure_future(count_tokens(url, start, end))
        await asyncio.gather(*(arrivals(n, rate, key) for n, (rate, key) in tenants.items()))
        generated = await counter
        await asyncio.gather(*tasks)
    return {"records": records, "tokens_per_s": generated / seconds}


async def count_tokens(url: str, start: float, end: float) -> float:
    """Generated tokens during [start, end), from the service's own counter (kubeforge:generation_tokens)."""
    async def read() -> float:
        async with client_session(2) as http, http.get(url + "/metrics") as response:
            text = await response.text()
        return metric_total(text, "kubeforge:generation_tokens_total")

    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    before = await read()
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    return await read() - before


async def closed_loop(url: str, clients: int, seconds: float, bodies: list[dict], key: str | None) -> dict:
    record = new_record()
    async with client_session(clients + 4) as http:
        start = time.perf_counter()
        deadline = start + seconds

        async def client(index: int) -> None:
            sent = 0
            while time.perf_counter() < deadline:
                await stream_one(http, url, bodies[(index + sent * clients) % len(bodies)], key, record)
                sent += 1

        await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    return {"tokens_per_s": record["tokens"] / elapsed, "ttft_p50_ms": ms(percentile(record["ttft"], 50)),
            "ttft_p99_ms": ms(percentile(record["ttft"], 99)), "requests": record["sent"],
            "errors": record["sent"] - record["status"].get(200, 0)}


def server_ttft(audit: Path, tenant: str, since: float, until: float) -> dict:
    """The service's own view of a tenant's TTFT (its audit lines, key check to first token), in a wall-clock
    window: what the load generator's lateness cannot add to."""
    values = []
    for line in audit.read_text().splitlines():
        record = json.loads(line)
        moment = time.mktime(time.strptime(record["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if record["tenant"] == tenant and record["status"] == 200 and since <= moment <= until and record["ttft_ms"]:
            values.append(record["ttft_ms"] / 1000)
    return {"requests": len(values), "ttft_p50_ms": ms(percentile(values, 50)),
            "ttft_p99_ms": ms(percentile(values, 99))}


def summary(record: dict, seconds: float) -> dict:
    return {"requests": record["sent"], "rate_per_s": round(record["sent"] / seconds, 2),
            "status": {str(k): v for k, v in sorted(record["status"].items(), key=str)},
            "tokens_per_s": round(record["tokens"] / seconds, 1),
            "ttft_p50_ms": ms(percentile(record["ttft"], 50)), "ttft_p99_ms": ms(percentile(record["ttft"], 99)),
            "itl_p50_ms": ms(percentile(record["itl"], 50))}


