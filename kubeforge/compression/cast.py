"""fp16 / bf16 casts. On CPUs without native half-precision matmul (no AVX512-FP16/AMX) these kernels are slow;
the harness measures them anyway and the note says where they pay off (GPUs)."""

from __future__ import annotations

import copy

import torch

from kubeforge.compression.candidate import Candidate, CompressionError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def cast(candidate: Candidate, precision: str) -> Candidate:
    if candidate.kind != "torch" or candidate.spec.precision != "fp32":
        raise CompressionError(f"{precision} cast needs an fp32 torch model, not {candidate.name}")
    model = copy.deepcopy(candidate.module).cpu().to(_DTYPES[precision]).eval()
    return Candidate(name=candidate.name, spec=candidate.spec.model_copy(update={"precision": precision}),
                     module=model, notes=candidate.notes + [f"{precision} weights and compute; pays off on GPUs, "
                                                            "CPUs without native half kernels run it slower"])
