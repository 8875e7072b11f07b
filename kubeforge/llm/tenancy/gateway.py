"""Run the gateway: ``python -m kubeforge.llm.tenancy.gateway [--host H] [--port P] [--workers N]``.

Settings are checked once here, before any worker starts, so a bad tenants file or upstream list ends the command
with one line that names the problem (exit 2). Several workers share the budget ledger (one per server session) and
write their metrics through prometheus_client's multiprocess mode.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from kubeforge.config import ConfigError


def check_settings() -> None:
    """Everything a worker would refuse, refused now (ConfigError)."""
    from kubeforge.llm.tenancy.gateway_settings import GatewaySettings, gateway_tenancy
    from kubeforge.llm.tenancy.store import load_snapshot

    settings, tenancy = GatewaySettings.from_env(), gateway_tenancy()
    settings.upstream_list()
    load_snapshot(Path(tenancy.tenants_file), Path(tenancy.keys_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubeforge.llm.tenancy.gateway",
                                     description="the kubeforge tenant gateway in front of OpenAI-compatible upstreams")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        check_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    metrics_dir = None
    if args.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="kubeforge-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run("kubeforge.llm.tenancy.gateway_app:create_app", factory=True, host=args.host, port=args.port,
                    workers=args.workers, loop="uvloop", http="httptools", access_log=False, lifespan="on",
                    log_level="warning")
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
