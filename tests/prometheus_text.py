"""Reading one sample from a server's /metrics page, for tests that wait on or check a counter or gauge."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)$")


def sample(text: str, name: str, **labels: str) -> float:
    """The first sample of ``name`` whose labels include ``labels`` (0 when absent: a counter not yet incremented)."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match.group(1) != name:
            continue
        present = set(match.group(2).split(",")) if match.group(2) else set()
        if wanted <= present:
            return float(match.group(3))
    return 0.0
