"""Write a results file so that a reader sees either the old file or the whole new one, never a torn one."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(temp_path)` on a temporary file next to `path`, then rename it over `path` (os.replace,
    atomic on one filesystem). A kill mid-write leaves `path` as it was and at most a stray temp file."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """`Path.write_text`, atomically."""
    return write_atomically(path, lambda temp: temp.write_text(text))
