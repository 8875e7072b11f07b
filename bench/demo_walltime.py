"""Wall time of the README's main job, `kubeforge run` on the default pipeline, as a user runs it (fresh process),
warm and on a first run after a fresh install.

    python -m bench.demo_walltime [--repeats 2] [--no-cold]
Target: <= 60 s on a 2-core CPU machine, the first run after `make` included.

A first run differs from later ones by what the install leaves behind: pip compiles the bytecode of the wheels it
installs but not of the editable project (kubeforge, its components and pipelines), and per-user caches
(matplotlib's font list, ~/.cache) start empty. The cold scenarios rebuild exactly that state for each repeat:
a copy of the project sources without __pycache__ (imported ahead of the editable install through PYTHONPATH) and
empty MPLCONFIGDIR/XDG_CACHE_HOME directories, with

- ``first run, plain install``: nothing else (`pip install -e .` alone);
- ``first run, make install``: the Makefile's install-time warm-up applied first (bytecode of the project, the
  font cache);
- ``no bytecode at all``: also an empty PYTHONPYCACHEPREFIX, so every module of every package compiles on first
  import: what an install without bytecode costs (`pip --no-compile` or a pip config saying so, which the
  Makefile's ``--compile`` overrides; uv without ``--compile-bytecode``).

Wall time on a shared machine moves with its load, so the user + system CPU seconds of each run (all its steps)
are recorded too, with the load average before and after.

What it cannot rebuild is a cold operating-system page cache (dropping it needs root and would slow every other
process on the machine); on `make demo` the install has just written the files, so they are in it anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._harness import interleaved, median, write

REPO = Path(__file__).resolve().parents[1]
# the package directories of pyproject.toml's package-dir, as installed names
PACKAGES = {"kubeforge": "kubeforge", "kubeforge_components": "components", "kubeforge_pipelines": "pipelines"}
# what the Makefile's install recipe runs after pip: keep the two in step
WARM_UP = [["-m", "compileall", "-q", "-j", "0", *PACKAGES], ["-c", "import matplotlib.pyplot"]]


def _fresh_install(root: Path, *, warm_up: bool, no_bytecode: bool) -> dict[str, str]:
    """The environment of a first run: project sources without bytecode, empty user caches."""
    source = root / "src"
    for installed, directory in PACKAGES.items():
        shutil.copytree(REPO / directory, source / installed, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(source), "MPLCONFIGDIR": str(root / "mpl"),
           "XDG_CACHE_HOME": str(root / "cache"), "MPLBACKEND": "Agg"}
    if no_bytecode:
        env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    if warm_up:
        for args in WARM_UP:
            subprocess.run([sys.executable, *args], cwd=source, env=env, check=True, capture_output=True)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-cold", action="store_true", help="only the warm run (as before)")
    args = parser.parse_args()
    kubeforge = shutil.which("kubeforge") or str(Path(sys.executable).parent / "kubeforge")
    accuracies: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # user + system seconds of the run and all its steps: barely moved by load

    def scenario(name: str, **fresh: bool) -> Callable[[], float]:
        def run() -> float:
            with tempfile.TemporaryDirectory() as scratch:
                root = Path(scratch)
                env = _fresh_install(root, **fresh) if fresh else {**os.environ}
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()  # the install's warm-up is not part of the run
                subprocess.run([kubeforge, "run", "--runs-dir", str(root / "runs")], check=True,
                               capture_output=True, cwd=root, env=env)
                seconds = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu.setdefault(name, []).append(round(after.ru_utime + after.ru_stime - before.ru_utime
                                                      - before.ru_stime, 2))
                summary = json.loads(next((root / "runs").glob("*/summary.json")).read_text())
                accuracies.setdefault(name, []).append(summary["test"]["accuracy"])
                return seconds
        return run

    candidates = {"warm": scenario("warm")}
    if not args.no_cold:
        candidates.update({
            "first run, plain install": scenario("first run, plain install", warm_up=False, no_bytecode=False),
            "first run, make install": scenario("first run, make install", warm_up=True, no_bytecode=False),
            "no bytecode at all": scenario("no bytecode at all", warm_up=False, no_bytecode=True)})
    load_before = os.getloadavg()
    seconds = interleaved(candidates, args.repeats)
    warm = seconds.pop("warm")
    cold = {name: {"seconds": values, "median_s": round(median(values), 2),
                   "over_warm_s": round(median(values) - median(warm), 2), "meets_target": median(values) <= 60,
                   "cpu_seconds": cpu[name], "cpu_over_warm_s": round(median(cpu[name]) - median(cpu["warm"]), 2),
                   "test_accuracy": accuracies[name]}
            for name, values in seconds.items()}
    write("demo_walltime", {"seconds": warm, "median_s": round(median(warm), 2), "target": "<= 60 s",
                            "meets_target": median(warm) <= 60, "cpu_seconds": cpu["warm"],
                            "test_accuracy": accuracies["warm"],
                            "cold_start": cold,
                            "load_average": {"before": load_before, "after": os.getloadavg()}},
          command=f"python -m bench.demo_walltime --repeats {args.repeats}" + (" --no-cold" if args.no_cold else ""))


if __name__ == "__main__":
    main()
