"""What every trace reader shares: the `Trace` it returns, `TraceError`, the token-count bound and where a
trace file is looked for."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.config import ConfigError
from simulator.content import TokenContent
from simulator.paths import REPO_ROOT

# The most tokens a prompt or an output may have. Far beyond any model's context, and small enough that
# sums over billions of requests fit int64: a larger count in a trace is a corrupt row, not a request.
MAX_TOKENS_PER_REQUEST = 2**31 - 1


class TraceError(ConfigError):
    """A trace file is missing or malformed; the message names the file, line and column (or field)."""


@dataclass
class Trace:
    """A trace file's contents, one entry per row in file order.

    `arrived_s` is None when the file has lengths only; `content` is None when it says nothing about
    which prompts share text (the CSV formats)."""

    path: Path
    arrived_s: np.ndarray | None
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    content: TokenContent | None = None


def resolve_trace_path(trace: str) -> Path:
    """An absolute path as is; a relative one under the repository root, else the working directory."""
    path = Path(trace).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [REPO_ROOT / path, Path.cwd() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise TraceError(f"workload.trace: no trace file '{trace}' (looked for {tried})")
