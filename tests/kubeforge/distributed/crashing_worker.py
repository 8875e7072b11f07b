"""Launched by torchrun from test_worker.py: the real worker, but rank 0 SIGKILLs itself once epoch 3's checkpoint
is written, as a preempted node would die (no exception handling, no clean-up)."""

import os
import signal
import sys

from kubeforge.distributed.worker import Rendezvous, main


def die_after_epoch_3(epoch: int, record: dict) -> None:
    if epoch == 3 and Rendezvous.from_env().rank == 0:
        os.kill(os.getpid(), signal.SIGKILL)


sys.exit(main(sys.argv[1:], on_epoch_end=die_after_epoch_3))
