"""Knowledge distillation: a smaller MLP student learns the teacher's softened outputs and the true labels.

loss = α·CE(student, y) + (1−α)·T²·KL(softmax(teacher/T) ‖ softmax(student/T)); the T² keeps the soft-target
gradients on the same scale as the hard ones. The teacher runs once, in eval mode under no_grad.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from kubeforge.compression.candidate import Candidate, CompressionError
from kubeforge.models import build_model
from kubeforge.training import set_seed


def distill(candidate: Candidate, data, hidden_sizes: list[int], epochs: int, temperature: float, alpha: float,
            seed: int = 0, batch_size: int = 64, learning_rate: float = 3e-3) -> Candidate:
    if candidate.kind != "torch" or candidate.spec.precision != "fp32":
        raise CompressionError(f"distill needs an fp32 torch teacher, not {candidate.name}")
    X_train, y_train, X_val, y_val = (torch.tensor(a) for a in data)  # copies: Parquet arrays are read-only
    y_train, y_val = y_train.long(), y_val.long()
    teacher = candidate.module.cpu().eval()
    with torch.no_grad():
        soft_targets = F.log_softmax(teacher(X_train) / temperature, dim=1)
    config = candidate.spec.config.model_copy(update={"model": "mlp", "hidden_sizes": list(hidden_sizes)})
    spec = candidate.spec.model_copy(update={"config": config})
    set_seed(seed)
    student = build_model(spec)
    optimiser = torch.optim.AdamW(student.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_state = float("inf"), None
    for _ in range(epochs):
        student.train()
        order = torch.randperm(len(X_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            logits = student(X_train[batch])
            hard = F.cross_entropy(logits, y_train[batch])
            soft = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft_targets[batch], log_target=True,
                            reduction="batchmean") * temperature ** 2
            loss = alpha * hard + (1 - alpha) * soft
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        schedule.step()
        student.eval()
        with torch.no_grad():
            val_loss = F.cross_entropy(student(X_val), y_val).item()
        if val_loss < best_loss:
            best_loss, best_state = val_loss, copy.deepcopy(student.state_dict())
    student.load_state_dict(best_state)
    return Candidate(name=candidate.name, spec=spec, module=student.eval(),
                     notes=candidate.notes + [f"distilled student {hidden_sizes} (T={temperature}, alpha={alpha}, "
                                              f"{epochs} epochs)"])
