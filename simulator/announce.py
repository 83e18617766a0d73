"""Saying what a long step is doing: a notice when a step runs long, and warnings turned into notes.

The first `servesim` run fits the runtime model (about 15 s) before simulating anything; without a word
it looks hung. Building a predictor may also warn (an all-reduce extrapolated to more GPUs than were
measured): printed by Python, such a warning comes with its source line, and once per capacity trial.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections.abc import Iterator

from simulator.paths import REPO_ROOT


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


@contextlib.contextmanager
def warnings_as_notes(notes: list[str]) -> Iterator[list[str]]:
    """Append the UserWarnings raised in the block to `notes` instead of printing them: one line each,
    repeats dropped, paths inside the repository written relative to it. Other warning categories
    (deprecations, ...) are re-issued as they came."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield notes
    for warning in caught:
        if warning.category is UserWarning:
            note = " ".join(str(warning.message).replace(f"{REPO_ROOT}/", "").split())
            if note not in notes:
                notes.append(note)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
