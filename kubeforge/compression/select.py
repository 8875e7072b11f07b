"""The accuracy gate: a compressed model ships only if it loses at most ``max_accuracy_drop`` points."""

from __future__ import annotations

from kubeforge.compression.bench import Measurement
from kubeforge.compression.candidate import CompressionError

OBJECTIVES = {"latency": lambda m: m.p50_ms_b1, "size": lambda m: m.size_bytes}


def candidate_table(measurements: list[Measurement]) -> str:
    lines = [f"{'candidate':<28} {'accuracy':>8} {'drop(pt)':>8} {'size x':>7} {'p50 b1 ms':>9}"]
    lines += [f"{m.name:<28} {m.accuracy:>8.4f} {m.accuracy_drop:>8.2f} {m.size_ratio:>7.2f} {m.p50_ms_b1:>9.3f}"
              for m in measurements]
    return "\n".join(lines)


def select(measurements: list[Measurement], max_accuracy_drop: float, objective: str) -> Measurement:
    """Best passing candidate by the objective; none passing is an error that shows every candidate's drop."""
    if objective not in OBJECTIVES:
        raise CompressionError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    passing = [m for m in measurements if m.accuracy_drop <= max_accuracy_drop]
    if not passing:
        raise CompressionError(f"no candidate passed the accuracy gate (max drop {max_accuracy_drop} points):\n"
                               + candidate_table(measurements))
    return min(passing, key=OBJECTIVES[objective])
