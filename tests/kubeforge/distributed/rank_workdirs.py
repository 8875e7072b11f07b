"""Launched by torchrun from test_worker.py: every rank trains with its OWN work directory.

Only rank 0 may write into its directory; rank 1's must stay absent. Each rank then reports a checksum of its final
weights (rank 1 gets rank 0's best weights by broadcast), and a second, resuming call must be refused on every rank
because rank 1 cannot see rank 0's checkpoint (the situation of two nodes without shared storage). Reports go to one
file per rank under ``<base>/reports``: two processes printing to one pipe can interleave their lines.
"""

import json
import sys
from pathlib import Path


from kubeforge.checkpoint import CheckpointError
from kubeforge.config import ModelConfig, TrainConfig
from kubeforge.data import read_splits
from kubeforge.distributed.worker import Rendezvous, join_process_group, leave_process_group
from kubeforge.models import build_model
from kubeforge.steps import model_spec_for
from kubeforge.training import set_seed, train_model

splits_dir, base = sys.argv[1], Path(sys.argv[2])
rendezvous = Rendezvous.from_env()
join_process_group(rendezvous, "gloo")
splits = read_splits(splits_dir)
config = TrainConfig(epochs=3, patience=50, device="cpu")
set_seed(0)
model = build_model(model_spec_for(splits, ModelConfig(hidden_sizes=[32])))
workdir = base / f"rank{rendezvous.rank}"
train_model(model, splits.X_train, splits.y_train, splits.X_val, splits.y_val, config, workdir, progress=False)
report = {"checksum": sum(float(t.double().sum()) for t in model.state_dict().values()), "refused": ""}
try:
    train_model(model, splits.X_train, splits.y_train, splits.X_val, splits.y_val, config.model_copy(
        update={"epochs": 5}), workdir, resume=True, progress=False)
except CheckpointError as exc:
    report["refused"] = str(exc)
(base / "reports").mkdir(exist_ok=True)
(base / "reports" / f"rank{rendezvous.rank}.json").write_text(json.dumps(report))
leave_process_group()
