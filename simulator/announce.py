"""Saying what a long step is doing: a notice when a step runs long.

The first `servesim` run fits the runtime model (seconds) before simulating anything; without a word it
looks hung.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def notice_if_slow(message: str, after_s: float = 1.0, enabled: bool = True) -> Iterator[None]:
    """Print `message` on stderr if the block is still running `after_s` seconds after it started.

    Loading a cached runtime model takes well under a second and says nothing; fitting one takes about
    15 s, and then the message shows. Written through tqdm.write so a progress bar that the block draws
    meanwhile is not torn.
    """
    if not enabled:
        yield
        return
    from tqdm import tqdm

    timer = threading.Timer(after_s, lambda: tqdm.write(message, file=sys.stderr))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
