"""Where requests come from: `load_workload(cfg, seed)` turns a `WorkloadConfig` into a `Workload`.

A workload is aligned arrays of arrival times and prompt/output lengths, sorted by arrival, plus the
requests' token content where the source knows which prompts share text. It knows nothing about the model
(the simulator rejects requests that do not fit). Arrivals and lengths are chosen independently:

    arrival = trace | poisson | gamma | fixed      lengths = trace | uniform | zipf | multiturn

so "arXiv lengths with Poisson arrivals at 2 req/s" is `trace=<arxiv csv> arrival=poisson rate_qps=2`;
lengths=multiturn makes requests the turns of chat sessions that start by the arrival process.

The parts live apart: trace readers in simulator/traces/ (CSV vidur/azure, Mooncake JSON lines), synthetic
arrivals and lengths in simulator/generators.py, multi-turn sessions in simulator/multiturn.py. Their
public names are importable from here too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulator.config import ConfigError, _load_yaml, from_dict
from simulator.content import TokenContent
from simulator.generators import ARRIVALS, LENGTHS, shuffled_rows, synthetic_arrivals_s, synthetic_lengths
from simulator.multiturn import SESSION_UNIT_TOKENS, generate_sessions
from simulator.traces import (
    AZURE_COLUMNS,
    MAX_TOKENS_PER_REQUEST,
    MISSING_TEXTS,
    TRACE_FORMATS,
    VIDUR_COLUMNS,
    Trace,
    TraceError,
    read_trace,
    resolve_trace_path,
)

__all__ = [
    "ARRIVALS", "AZURE_COLUMNS", "LENGTHS", "MAX_TOKENS_PER_REQUEST", "MISSING_TEXTS", "SESSION_UNIT_TOKENS",
    "TRACE_FORMATS", "VIDUR_COLUMNS", "Trace", "TraceError", "Workload", "WorkloadConfig", "describe_source",
    "load_workload", "load_workload_config", "read_trace", "resolve_trace_path", "synthetic_arrivals_s",
    "synthetic_lengths", "trace_file_name",
]


@dataclass
class WorkloadConfig:
    """The `workload` config group (conf/workload/*.yaml). See docs/workload_and_metrics.md.

    Field groups:
      source     name, trace, trace_format, num_requests
      arrivals   arrival, rate_scale (trace replay), rate_qps and interarrival_cv (synthetic)
      lengths    lengths, min_tokens/max_tokens/prefill_decode_ratio (synthetic), zipf_theta
      sessions   turns_mean, turns_max, think_time_s, expected_tpot_s, system_prompt_tokens,
                 num_system_prompts (lengths=multiturn)
      clipping   max_prompt_tokens, max_output_tokens
    """

    # Label written into results; "" derives one from the trace and arrival process.
    name: str = ""
    # Trace file (CSV, or Mooncake JSON lines), absolute or relative to the repository root (then to the
    # working directory). Needed when arrival=trace or lengths=trace; ignored otherwise.
    trace: str | None = "data/traces/splitwise_conv.csv"
    trace_format: str = "auto"  # auto | vidur | azure | mooncake
    # None: every trace row (required for fully synthetic workloads); N: the first N requests
    # (lengths=multiturn: N turns, whole sessions in order of their start, the last one cut).
    num_requests: int | None = None
    arrival: str = "trace"  # trace | poisson | gamma | fixed
    # arrival=trace only: 2.0 replays the trace twice as fast (arrival times divided by 2).
    rate_scale: float = 1.0
    # Synthetic arrivals: mean requests per second (lengths=multiturn: sessions per second).
    rate_qps: float = 1.0
    # arrival=gamma: coefficient of variation (std / mean) of the gaps between arrivals. 1 is as
    # bursty as Poisson, 2-4 bursty, below 1 more regular. Gamma shape = 1 / cv**2 (vLLM's
    # benchmark `--burstiness` is that shape).
    interarrival_cv: float = 1.0
    lengths: str = "trace"  # trace | uniform | zipf | multiturn
    # lengths=trace with synthetic arrivals: a seeded shuffle of the trace's rows (true), or its first rows in
    # the trace's order (false), so that a conversation's turns keep theirs and their shared prefixes.
    shuffle_rows: bool = True
    # Synthetic lengths (as Vidur): total = prompt + output tokens is drawn from
    # [min_tokens, max_tokens], then split so prompt_tokens / output_tokens ~ prefill_decode_ratio.
    # lengths=multiturn: the same, uniform, for each turn's new user message + answer.
    min_tokens: int = 64
    max_tokens: int = 4096
    prefill_decode_ratio: float = 4.0
    # lengths=zipf: P(k-th smallest total) ~ 1 / k**zipf_theta; 0 is uniform, larger favours short.
    zipf_theta: float = 0.6
    # lengths=multiturn (simulator/multiturn.py): requests are the turns of chat sessions, each prompt
    # resending the conversation so far. Turns per session: geometric with mean turns_mean, capped.
    turns_mean: float = 4.0
    turns_max: int = 16
    # Turn k+1 arrives expected_tpot_s x (answer k's tokens) + a think time (exponential, mean
    # think_time_s; 0: none) after turn k: arrival times are fixed up front, the answer's duration guessed.
    think_time_s: float = 10.0
    expected_tpot_s: float = 0.03
    # A system prompt of this many tokens opens every session (0: none); there are num_system_prompts
    # different ones, each session picking one at random, so sessions share it as a prefix.
    system_prompt_tokens: int = 0
    num_system_prompts: int = 1
    # Clip longer requests to these lengths (None: keep as they are). Useful to replay a trace
    # with a model whose context is shorter than the trace's longest requests. A clipped prompt keeps
    # its first max_prompt_tokens tokens (and the content keys that cover them).
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None


@dataclass
class Workload:
    """Requests to simulate, sorted by arrival; arrays are aligned (row i is request i)."""

    name: str
    arrived_s: np.ndarray  # float64, seconds from the start of the run (first request at 0)
    prompt_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1
    # What the requests' tokens are (simulator/content.py), for prefix caching; None when the source
    # says only how long they are (then no two requests share a prefix).
    content: TokenContent | None = None

    def __len__(self) -> int:
        return len(self.arrived_s)


def load_workload_config(name: str, **overrides) -> WorkloadConfig:
    """Read conf/workload/<name>.yaml (without Hydra), then apply `overrides` (field=value)."""
    path, values = _load_yaml("workload", name)
    return from_dict(WorkloadConfig, {**values, **overrides}, str(path))


def trace_file_name(cfg: WorkloadConfig) -> str | None:
    """The file name of the trace the workload reads (arrivals or lengths), None when it reads none."""
    return Path(cfg.trace).name if cfg.trace and "trace" in (cfg.arrival, cfg.lengths) else None


def describe_source(cfg: WorkloadConfig) -> str:
    """Where the requests come from, in words, for run headers: "trace splitwise_conv.csv",
    "trace splitwise_conv.csv replayed 4x as fast", "lengths from arxiv.csv, poisson arrivals at 3 req/s",
    "uniform lengths, gamma arrivals at 4 req/s (cv 2)", "multi-turn sessions (4 turns on average),
    poisson arrivals at 0.5 sessions/s". The workload's name alone hides a swapped trace."""
    trace = trace_file_name(cfg)
    if cfg.arrival == "trace":
        return f"trace {trace}" + (f" replayed {cfg.rate_scale:g}x as fast" if cfg.rate_scale != 1.0 else "")
    burstiness = f" (cv {cfg.interarrival_cv:g})" if cfg.arrival == "gamma" else ""
    if cfg.lengths == "multiturn":
        return (f"multi-turn sessions ({cfg.turns_mean:g} turns on average), {cfg.arrival} arrivals at "
                f"{cfg.rate_qps:g} sessions/s{burstiness}")
    lengths = f"lengths from {trace}" if cfg.lengths == "trace" else f"{cfg.lengths} lengths"
    return f"{lengths}, {cfg.arrival} arrivals at {cfg.rate_qps:g} req/s{burstiness}"


def load_workload(cfg: WorkloadConfig, seed: int) -> Workload:
    """Build the requests `cfg` describes; the same (cfg, seed) always gives the same workload.

    Arrivals and lengths draw from separate random streams, so changing the length settings does
    not move the arrival times and vice versa. Content (which prompts share text) follows every row
    selection: the first N rows, a shuffle of them, clipping.
    """
    _validate(cfg)
    arrival_rng, length_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    if cfg.lengths == "multiturn":
        return _multiturn_workload(cfg, arrival_rng, length_rng)
    trace = read_trace(cfg.trace, cfg.trace_format) if "trace" in (cfg.arrival, cfg.lengths) else None
    n = _num_requests(cfg, trace)

    if cfg.arrival == "trace":
        if trace.arrived_s is None:
            raise ConfigError(
                f"workload.arrival=trace but {trace.path} has no arrival times (no column "
                f"'{VIDUR_COLUMNS[0]}'); use workload.arrival=poisson|gamma|fixed with workload.rate_qps"
            )
        arrived = trace.arrived_s[:n] - trace.arrived_s[0]
        arrived_s = arrived / cfg.rate_scale if cfg.rate_scale != 1.0 else arrived
    else:
        arrived_s = synthetic_arrivals_s(cfg.arrival, n, cfg.rate_qps, cfg.interarrival_cv, arrival_rng)

    content = None
    if cfg.lengths == "trace":
        if cfg.arrival == "trace" or not cfg.shuffle_rows:
            rows = np.arange(n)
        else:  # lengths without their own arrival times: a seeded shuffle of the trace's rows
            rows = shuffled_rows(len(trace.prompt_tokens), n, length_rng)
        prompt, output = trace.prompt_tokens[rows], trace.output_tokens[rows]
        if trace.content is not None:
            content = trace.content.subset(rows)
    else:
        prompt, output = synthetic_lengths(
            cfg.lengths, n, cfg.min_tokens, cfg.max_tokens, cfg.prefill_decode_ratio, cfg.zipf_theta,
            length_rng,
        )
    return _clipped(cfg, cfg.name or _default_name(cfg), arrived_s, prompt, output, content)


def _multiturn_workload(cfg: WorkloadConfig, arrival_rng: np.random.Generator,
                        length_rng: np.random.Generator) -> Workload:
    sessions = generate_sessions(
        _num_requests(cfg, None),
        lambda num_sessions: synthetic_arrivals_s(cfg.arrival, num_sessions, cfg.rate_qps, cfg.interarrival_cv,
                                                  arrival_rng),
        turns_mean=cfg.turns_mean, turns_max=cfg.turns_max, min_tokens=cfg.min_tokens,
        max_tokens=cfg.max_tokens, prefill_decode_ratio=cfg.prefill_decode_ratio,
        think_time_s=cfg.think_time_s, expected_tpot_s=cfg.expected_tpot_s,
        system_prompt_tokens=cfg.system_prompt_tokens, num_system_prompts=cfg.num_system_prompts,
        rng=length_rng,
    )
    return _clipped(cfg, cfg.name or _default_name(cfg), sessions.arrived_s, sessions.prompt_tokens,
                    sessions.output_tokens, sessions.content)


def _clipped(cfg: WorkloadConfig, name: str, arrived_s: np.ndarray, prompt: np.ndarray, output: np.ndarray,
             content: TokenContent | None) -> Workload:
    """The workload, with prompts and outputs clipped to cfg.max_*_tokens and content keys cut to match."""
    clipped_prompt = prompt if cfg.max_prompt_tokens is None else np.minimum(prompt, cfg.max_prompt_tokens)
    clipped_output = output if cfg.max_output_tokens is None else np.minimum(output, cfg.max_output_tokens)
    if content is not None and (cfg.max_prompt_tokens is not None or cfg.max_output_tokens is not None):
        content = _content_after_clipping(content, prompt, clipped_prompt, clipped_output)
    return Workload(
        name=name,
        arrived_s=np.ascontiguousarray(arrived_s, dtype=np.float64),
        prompt_tokens=np.ascontiguousarray(clipped_prompt, dtype=np.int64),
        output_tokens=np.ascontiguousarray(clipped_output, dtype=np.int64),
        content=content,
    )


def _content_after_clipping(content: TokenContent, prompt: np.ndarray, clipped_prompt: np.ndarray,
                            clipped_output: np.ndarray) -> TokenContent:
    """Keys that still describe the clipped requests.

    A clipped prompt keeps its first tokens, so the keys covering them stay; keys past it (the rest of
    the prompt, or an output the content knew) go, since the answer to a cut prompt is other text. An
    unclipped prompt keeps its keys, and keys of an output only as far as the clipped output reaches.
    """
    unit = content.unit_tokens
    kept_tokens = np.where(clipped_prompt < prompt, clipped_prompt, prompt + clipped_output)
    kept_units = (-(-kept_tokens // unit)).tolist()
    return TokenContent(unit, [keys[:k] if k < len(keys) else keys for keys, k in zip(content.keys, kept_units)])


# ----------------------------------------------------------------------------- config checks


def _validate(cfg: WorkloadConfig) -> None:
    """Raise ConfigError naming the first field with an impossible value."""
    checks = [
        (cfg.arrival in ARRIVALS, "arrival", f"one of {ARRIVALS}"),
        (cfg.lengths in LENGTHS, "lengths", f"one of {LENGTHS}"),
        (cfg.trace_format in TRACE_FORMATS, "trace_format", f"one of {TRACE_FORMATS}"),
        (cfg.num_requests is None or cfg.num_requests >= 1, "num_requests", "None or >= 1"),
        (cfg.rate_scale > 0, "rate_scale", "> 0"),
        (cfg.arrival == "trace" or cfg.rate_scale == 1.0, "rate_scale",
         "1.0 unless arrival=trace (synthetic arrivals are set by rate_qps)"),
        (cfg.arrival == "trace" or cfg.rate_qps > 0, "rate_qps", "> 0"),
        (cfg.interarrival_cv > 0, "interarrival_cv", "> 0"),
        (cfg.lengths == "trace" or cfg.min_tokens >= 2, "min_tokens",
         ">= 2 (a request has at least one prompt and one output token)"),
        (cfg.lengths == "trace" or cfg.max_tokens >= cfg.min_tokens, "max_tokens", ">= min_tokens"),
        (cfg.lengths == "trace" or cfg.max_tokens <= MAX_TOKENS_PER_REQUEST, "max_tokens",
         f"<= {MAX_TOKENS_PER_REQUEST:,} (far beyond any model's context)"),
        (cfg.prefill_decode_ratio > 0, "prefill_decode_ratio", "> 0"),
        (cfg.zipf_theta >= 0, "zipf_theta", ">= 0"),
        (cfg.lengths != "multiturn" or cfg.arrival != "trace", "arrival",
         "poisson, gamma or fixed with lengths=multiturn (the process by which sessions start)"),
    ]
    if cfg.lengths == "multiturn":  # the session fields are ignored otherwise
        checks += [
            (cfg.turns_mean >= 1, "turns_mean", ">= 1 (a session has at least one turn)"),
            (cfg.turns_max >= 1, "turns_max", ">= 1"),
            (0 <= cfg.think_time_s < float("inf"), "think_time_s", "a number of seconds >= 0"),
            (0 <= cfg.expected_tpot_s < float("inf"), "expected_tpot_s", "a number of seconds >= 0"),
            (cfg.system_prompt_tokens >= 0, "system_prompt_tokens", ">= 0 (0: no system prompt)"),
            (cfg.num_system_prompts >= 1, "num_system_prompts", ">= 1"),
            (cfg.system_prompt_tokens + cfg.turns_max * cfg.max_tokens <= MAX_TOKENS_PER_REQUEST, "turns_max",
             (f"turns_max x max_tokens + system_prompt_tokens <= {MAX_TOKENS_PER_REQUEST:,} (a session's "
              f"last prompt would be longer than any request)")),
        ]
    checks += [
        (cfg.max_prompt_tokens is None or cfg.max_prompt_tokens >= 1, "max_prompt_tokens", "None or >= 1"),
        (cfg.max_output_tokens is None or cfg.max_output_tokens >= 1, "max_output_tokens", "None or >= 1"),
    ]
    for ok, field, expected in checks:
        if not ok:
            raise ConfigError(f"workload.{field}={getattr(cfg, field)!r}: expected {expected}")


def _num_requests(cfg: WorkloadConfig, trace: Trace | None) -> int:
    if trace is None:
        if cfg.num_requests is None:
            raise ConfigError(
                "workload.num_requests must be set when neither arrivals nor lengths come from a trace"
            )
        return cfg.num_requests
    rows = len(trace.prompt_tokens)
    if cfg.num_requests is None:
        return rows
    if (cfg.arrival == "trace" or not cfg.shuffle_rows) and cfg.num_requests > rows:
        field = "arrival=trace" if cfg.arrival == "trace" else "shuffle_rows=false"
        raise ConfigError(
            f"workload.num_requests={cfg.num_requests} but {trace.path} has only {rows} requests to take in "
            f"order (workload.{field})"
        )
    return cfg.num_requests


def _default_name(cfg: WorkloadConfig) -> str:
    source = Path(cfg.trace).stem if cfg.trace and "trace" in (cfg.arrival, cfg.lengths) else cfg.lengths
    if cfg.arrival == "trace":
        return source if cfg.rate_scale == 1.0 else f"{source}-x{cfg.rate_scale:g}"
    return f"{source}-{cfg.arrival}-{cfg.rate_qps:g}qps"
