"""Two or more kubeforge source trees served side by side: what a change to the server does, in one interleaved run.

Each tree (a git worktree of the commit before a change, the working copy after it, ...) serves the same compressed
model as bench.serving under ``bentoml serve`` with ``PYTHONPATH`` set to the tree, started from a scratch directory:
``bentoml serve`` puts its working directory first on ``sys.path``, so a server started inside a checkout imports
that checkout whatever ``PYTHONPATH`` says. Before the servers start, the same interpreter, environment and directory
must resolve ``kubeforge`` inside each tree, or the run stops. Then, per repeat (the order of the trees alternating),
each client count for each tree: closed-loop clients, polite (honouring Retry-After) unless ``--retry-at-once``,
with the rows per inference call and the server's CPU per answer (bench.serving_connections.measured). Reported per
tree and level: medians, and each later tree's goodput as a ratio of the first's in the same round (a neighbour that
slows a whole round moves both).

    python -m bench.serving_trees --tree before=/tmp/before --tree after=. [--set KUBEFORGE_SERVE_LATENCY_TARGET_MS=1.9]
                                  [--clients 16 32 128 256] [--seconds 3] [--repeats 8] [--retry-at-once] [--pin]
                                  [--name serving_trees_side]  # results elsewhere than the kept comparison
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._harness import add_pin_option, pinned_cpus, pinned_name, placement, write
from bench.serving import bentoml_serve, kubeforge_env, prepare_models, start_server, warm_up, write_payloads
from bench.serving_connections import measured
from bench.serving_overload import median_of

MEDIANS = ("goodput_per_s", "accepted_p50_ms", "accepted_p99_ms", "shed_p50_ms", "shed_p99_ms", "rows_per_call",
           "server_cpu_us_per_answer", "server_kernel_us_per_answer", "client_cpu_pct")


def named_tree(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    tree = Path(path).resolve()
    if not sep or not name or not (tree / "kubeforge" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH, PATH a source tree with kubeforge/ in it")
    return name, tree


def setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def imported_from(tree: Path, env: dict[str, str], directory: Path) -> Path:
    """Where ``kubeforge`` resolves for a server of ``tree``: the same interpreter, environment and directory."""
    done = subprocess.run([sys.executable, "-c", "import kubeforge; print(kubeforge.__file__)"], cwd=directory,
                          env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return Path(done.stdout.strip()).resolve()


def revision(tree: Path) -> str:
    """The tree's commit, marked when it has uncommitted changes; "unknown" outside git."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "kubeforge"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes" if dirty else "")


def summarize(runs: list[dict], first: list[dict] | None) -> dict:
    summary = {key: median_of(runs, key) for key in MEDIANS}
    summary |= {"goodput_runs": [run["goodput_per_s"] for run in runs],
                "shed_503": sum(run["shed_503"] for run in runs),
                "errors": sum(run["other_status"] + run["connection_errors"] for run in runs),
                "cpu_steal_pct_runs": [run["cpu_steal_pct"] for run in runs]}
    if first is not None:
        ratios = [ours["goodput_per_s"] / theirs["goodput_per_s"] for ours, theirs in zip(runs, first)
                  if theirs["goodput_per_s"]]
        summary["goodput_ratio_to_first_runs"] = [round(value, 3) for value in ratios]
        summary["goodput_ratio_to_first"] = round(statistics.median(ratios), 3) if ratios else None
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=named_tree, action="append", required=True, help="NAME=PATH, twice or more")
    parser.add_argument("--set", type=setting, action="append", default=[], help="KEY=VALUE for every server")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 32, 128, 256])
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--retry-at-once", action="store_true", help="clients ignore Retry-After")
    parser.add_argument("--name", default="serving_trees", help="results file in bench/results (default "
                        "serving_trees[_pinned]): a side experiment need not replace the comparison the docs cite")
    add_pin_option(parser)
    args = parser.parse_args()
    trees = dict(args.tree)
    if len(trees) < 2 or len(trees) != len(args.tree):
        parser.error("--tree: give two or more, each with its own name")
    if args.repeats < 1 or args.seconds <= 0 or any(clients < 1 for clients in args.clients):
        parser.error("--repeats and --clients must be >= 1, --seconds > 0")
    server_cpus, client_cpus = pinned_cpus(args, parser)
    settings = dict(args.set)
    load_before = os.getloadavg()[0]
    runs: dict[str, dict[int, list[dict]]] = {name: {clients: [] for clients in args.clients} for name in trees}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        stack.callback(os.chdir, os.getcwd())
        os.chdir(root)  # the servers' working directory: nothing in it shadows PYTHONPATH
        _, int8, payloads = prepare_models(root)
        payload_file = write_payloads(root, payloads)
        servers = {}
        for name, tree in trees.items():
            env = {**kubeforge_env(int8), **settings, "PYTHONPATH": str(tree)}
            found = imported_from(tree, env, root)
            if not found.is_relative_to(tree):
                sys.exit(f"--tree {name}={tree}: a server would import kubeforge from {found.parent}, not this tree")
            url, process, log = start_server(stack, bentoml_serve(), env, root, server_cpus)
            warm_up(url, process, log, payload_file, client_cpus)
            servers[name] = url, process
        for repeat in range(args.repeats):
            order = list(servers.items())
            for clients in args.clients:
                for name, (url, process) in order if repeat % 2 == 0 else order[::-1]:
                    runs[name][clients].append(measured(url, process.pid, payload_file, clients, args.seconds,
                                                        client_cpus, honour=not args.retry_at_once))
    first = next(iter(trees))
    by_tree = {name: {clients: summarize(levels, None if name == first else runs[first][clients])
                      for clients, levels in by_level.items()} for name, by_level in runs.items()}
    write(pinned_name(args.name, args), {
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "cpu_placement": placement(server_cpus, client_cpus),
        "trees": {name: {"path": str(tree), "revision": revision(tree)} for name, tree in trees.items()},
        "settings": settings, "clients": args.clients, "seconds": args.seconds, "repeats": args.repeats,
        "clients_honour_retry_after": not args.retry_at_once, "by_tree": by_tree,
    }, command="python -m bench.serving_trees " + " ".join(f"--tree {name}={tree}" for name, tree in trees.items())
        + "".join(f" --set {key}={value}" for key, value in settings.items())
        + f" --clients {' '.join(map(str, args.clients))} --seconds {args.seconds} --repeats {args.repeats}"
        + (" --retry-at-once" if args.retry_at_once else "") + (" --pin" if args.pin else ""))


if __name__ == "__main__":
    main()
