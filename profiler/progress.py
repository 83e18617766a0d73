"""Progress display for long runs: tqdm when installed, else a plain line every ~5% of the work."""
from __future__ import annotations

import sys


def progress(items, label: str):
    """Iterate over `items` showing progress on stderr."""
    items = list(items)
    try:
        from tqdm import tqdm
    except ImportError:
        return _plain(items, label)
    return tqdm(items, desc=label, mininterval=5.0, file=sys.stderr)


def _plain(items, label):
    step = max(1, len(items) // 20)
    for i, item in enumerate(items):
        if i % step == 0:
            print(f"{label}: {i}/{len(items)}", file=sys.stderr, flush=True)
        yield item
