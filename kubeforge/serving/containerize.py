"""Build the serving image locally with whatever OCI builder actually works here, or say plainly that none does."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# builder name -> (probe that proves it can build, not just that a client exists, build command template)
_BUILDERS: dict[str, tuple[list[str], list[str]]] = {
    "docker": (["docker", "info"], ["docker", "build", "-f", "{dockerfile}", "-t", "{image}", "{context}"]),
    "podman": (["podman", "info"], ["podman", "build", "-f", "{dockerfile}", "-t", "{image}", "{context}"]),
    "buildah": (["buildah", "info"], ["buildah", "bud", "-f", "{dockerfile}", "-t", "{image}", "{context}"]),
    "buildctl": (["buildctl", "debug", "workers"],
                 ["buildctl", "build", "--frontend", "dockerfile.v0", "--local", "context={context}",
                  "--local", "dockerfile={dockerdir}", "--output", "type=image,name={image}"]),
}


class NoBuilderError(RuntimeError):
    """No working image builder; the message says what was found and what to do instead."""


@dataclass(frozen=True)
class BuilderProbe:
    name: str
    installed: bool
    working: bool


def probe_builders() -> list[BuilderProbe]:
    found = []
    for name, (probe, _) in _BUILDERS.items():
        installed = shutil.which(probe[0]) is not None
        working = installed and subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
        found.append(BuilderProbe(name, installed, working))
    return found


def containerize(context: str | Path, image: str) -> str:
    """Build ``image`` from a Bento context directory; returns the builder used."""
    context = Path(context)
    dockerfile = context / "env" / "docker" / "Dockerfile"
    if not dockerfile.is_file():
        raise FileNotFoundError(f"{context} has no env/docker/Dockerfile; pass the context written by `kubeforge build`")
    probes = probe_builders()
    for probe in probes:
        if probe.working:
            command = [part.format(dockerfile=dockerfile, image=image, context=context, dockerdir=dockerfile.parent)
                       for part in _BUILDERS[probe.name][1]]
            subprocess.run(command, check=True)
            return probe.name
    seen = ", ".join(f"{p.name}: {'installed but not working (no engine/daemon)' if p.installed else 'not installed'}"
                     for p in probes)
    raise NoBuilderError(f"no working image builder on this machine ({seen}); build in the cluster instead: "
                         "kubeforge image-job --help")
