"""Per-request state of one simulation: one numpy array per field, indexed by request id.

No Python object per request or per token: policies, the KV cache and replicas read and write these
arrays. Simulated time is kept in integer nanoseconds (`_ns`) so that a run of decode iterations
advanced in one step lands on exactly the same instants as stepping one iteration at a time.

A request's progress is two counters, as in vLLM's v1 scheduler:
  computed_tokens   tokens whose KV is in the cache
  generated_tokens  output tokens emitted so far
It knows prompt_tokens + generated_tokens tokens; an iteration that computes the last known token
emits the next one. Prefill, chunked prefill, decode and recompute after preemption (computed_tokens
reset to 0, generated tokens kept) are all this one rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.content import TokenContent

NOT_YET = -1  # value of a _ns field whose event has not happened


def int_list(values) -> list[int]:
    """A list of Python ints from a list or an int array (request ids, token counts).

    The simulator's hot path passes lists: its batches are small (median 5-7 requests), where numpy's
    per-call overhead (about a microsecond) costs more than the arithmetic. Callers holding arrays, such
    as the real GPU executor, may pass those.
    """
    return values if isinstance(values, list) else np.asarray(values).tolist()


def seconds_to_ns(seconds) -> np.ndarray:
    """Seconds (float array) to integer nanoseconds."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * 1e9).astype(np.int64)


@dataclass
class RequestState:
    """All requests of one simulation. Build with `RequestState.create`."""

    arrived_ns: np.ndarray  # int64
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    computed_tokens: np.ndarray  # int64, tokens in the KV cache
    generated_tokens: np.ndarray  # int64, output tokens emitted
    replica_id: np.ndarray  # int64, -1 until routed
    first_scheduled_ns: np.ndarray  # int64, NOT_YET until first in a batch
    first_token_ns: np.ndarray
    completed_ns: np.ndarray
    preemptions: np.ndarray  # int64
    # int64, prompt tokens a prefix cache held when the request was first admitted (they skip prefill);
    # 0 without a prefix cache. As vLLM reports it: hits when recomputing after a preemption are not counted.
    cached_tokens: np.ndarray
    reject_reason: np.ndarray  # object, "" unless rejected
    max_model_len: int  # the model's context limit (prompt + output tokens)
    # What the tokens are (simulator/content.py), for prefix caches; None: no request shares a prefix.
    content: TokenContent | None = None

    def __post_init__(self) -> None:
        self.ints = IntViews(self)

    def __getstate__(self) -> dict:  # memoryviews do not pickle or deep-copy: rebuilt from the arrays
        return {k: v for k, v in self.__dict__.items() if k != "ints"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.ints = IntViews(self)

    @classmethod
    def create(cls, arrived_s, prompt_tokens, output_tokens, max_model_len: int,
               content: TokenContent | None = None) -> RequestState:
        """Fresh state for requests sorted by arrival (seconds), rejecting those the model cannot hold.
        `content` (aligned with the arrays) says which requests share prefixes."""
        arrived_ns = seconds_to_ns(arrived_s)
        prompt = np.asarray(prompt_tokens, dtype=np.int64)
        output = np.asarray(output_tokens, dtype=np.int64)
        n = len(arrived_ns)
        if not (len(prompt) == len(output) == n):
            raise ValueError(f"arrival, prompt and output arrays differ in length: "
                             f"{n}, {len(prompt)}, {len(output)}")
        if n and np.any(np.diff(arrived_ns) < 0):
            raise ValueError("requests must be sorted by arrival time")

        def not_yet():
            return np.full(n, NOT_YET, dtype=np.int64)

        state = cls(
            arrived_ns=arrived_ns, prompt_tokens=prompt, output_tokens=output,
            computed_tokens=np.zeros(n, np.int64), generated_tokens=np.zeros(n, np.int64),
            replica_id=not_yet(), first_scheduled_ns=not_yet(), first_token_ns=not_yet(),
            completed_ns=not_yet(), preemptions=np.zeros(n, np.int64), cached_tokens=np.zeros(n, np.int64),
            reject_reason=np.full(n, "", dtype=object), max_model_len=max_model_len, content=content,
        )
        if content is not None and len(content.keys) != n:
            raise ValueError(f"content describes {len(content.keys)} requests, the arrays {n}")
        state.reject(prompt < 1, "empty prompt")
        state.reject(output < 1, "no output tokens")
        state.reject(prompt + output > max_model_len,
                     f"prompt + output tokens exceed max_model_len={max_model_len}")
        return state

    def __len__(self) -> int:
        return len(self.arrived_ns)

    def reject(self, mask: np.ndarray, reason: str) -> None:
        """Mark requests rejected with `reason` (the first reason given to a request is kept)."""
        self.reject_reason[mask & (self.reject_reason == "")] = reason

    @property
    def rejected(self) -> np.ndarray:
        return self.reject_reason != ""

    def pending_tokens(self, request_id: int) -> int:
        """Tokens the request must compute before it emits its next token (1 while decoding)."""
        ints = self.ints
        return (ints.prompt_tokens[request_id] + ints.generated_tokens[request_id]
                - ints.computed_tokens[request_id])

    def pending_tokens_of(self, request_ids: list[int]) -> list[int]:
        """`pending_tokens` of each request in a list of ids."""
        prompt, generated, computed = self.ints.prompt_tokens, self.ints.generated_tokens, self.ints.computed_tokens
        return [prompt[r] + generated[r] - computed[r] for r in request_ids]

    def start_from_cache(self, request_id: int, cached_tokens: int) -> None:
        """A request just admitted found its first `cached_tokens` tokens in a prefix cache: they count as
        computed (their KV is there), and as its cached tokens if this is its first admission."""
        ints = self.ints
        ints.computed_tokens[request_id] = cached_tokens
        if ints.preemptions[request_id] == 0:
            ints.cached_tokens[request_id] = cached_tokens

    def is_decoding(self, request_ids: np.ndarray) -> np.ndarray:
        """True where a request (of an int array) has emitted a token and its next iteration computes just
        that token."""
        generated = self.generated_tokens[request_ids]
        pending = self.prompt_tokens[request_ids] + generated - self.computed_tokens[request_ids]
        return (pending == 1) & (generated >= 1)


class IntViews:
    """A RequestState's int64 arrays as memoryviews: the same memory, indexed one element at a time.

    Reading or writing one element of a memoryview costs about 35 ns and reads as a Python int; numpy's
    `array[i]` costs about 60 ns and gives a numpy scalar whose arithmetic costs 100 ns more. The
    simulator's per-request loops (every iteration, over batches of a few requests) use these; whole-array
    work uses the arrays. The arrays are only ever written in place, so the views never go stale.
    """

    def __init__(self, state: RequestState):
        self.prompt_tokens = memoryview(state.prompt_tokens)
        self.output_tokens = memoryview(state.output_tokens)
        self.computed_tokens = memoryview(state.computed_tokens)
        self.generated_tokens = memoryview(state.generated_tokens)
        self.replica_id = memoryview(state.replica_id)
        self.first_scheduled_ns = memoryview(state.first_scheduled_ns)
        self.first_token_ns = memoryview(state.first_token_ns)
        self.completed_ns = memoryview(state.completed_ns)
        self.preemptions = memoryview(state.preemptions)
        self.cached_tokens = memoryview(state.cached_tokens)
