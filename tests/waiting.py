"""Waiting on a live server's state instead of guessing how long it takes to get there."""

from __future__ import annotations

import time
from typing import Callable


def eventually(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``check`` until it holds (a server's metrics flush every 0.25 s; a request reaches its worker when it
    does); fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)
