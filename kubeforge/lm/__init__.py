"""Causal language models: sources, corpora, training (full and LoRA), evaluation; the same steps as classifiers.

Importing it quietens two libraries before they load: the Hub's and transformers' per-file progress bars (a local
run shows its own progress) and torch's pytree notice that torchao registers enum constants (it is printed on every
import of torchao and means nothing to a user).
"""

import logging
import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

import warnings  # noqa: E402

# peft reads transformers' renamed property; the rename is theirs to finish, not something a user can act on
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
