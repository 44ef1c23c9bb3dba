"""A time limit for tests that must not hang: pattern tests whose failure mode is catastrophic backtracking."""

from __future__ import annotations

import contextlib
import faulthandler
from collections.abc import Iterator


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """End the test process (with a traceback) if the block runs longer than ``seconds``."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
