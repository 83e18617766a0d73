"""Multi-turn chat sessions: requests whose prompts resend the conversation so far (workload lengths=multiturn).

A session is a conversation of N turns. Turn k's prompt is the whole conversation before it (an optional
system prompt, every earlier user message and answer) plus a new user message; its output is the answer:

    turn 1 prompt: [system][user 1]                          output: [answer 1]
    turn 2 prompt: [system][user 1][answer 1][user 2]         output: [answer 2]

so turn k+1's prompt begins with turn k's prompt and output, and a prefix cache that kept them computes
only the new user message. The token content (simulator/content.py) says so: one key per 16 tokens over the
session's whole token sequence, turn k's keys a prefix of turn k+1's. Units wholly inside a system prompt
get that prompt's keys, shared by every session that uses it; all other keys belong to one session.

Arrival times are fixed up front (a trace-driven simulator cannot feed back when an answer ends): turn k+1
arrives after turn k's arrival plus an estimate of the answer's duration (expected_tpot_s per output token)
plus the user's think time. A slow server can therefore get turn k+1 before it has finished answer k; then
the answer is not yet cached, as with a real client that does not wait.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simulator.content import TokenContent
from simulator.generators import synthetic_lengths

SESSION_UNIT_TOKENS = 16  # tokens per content key


@dataclass
class Sessions:
    """The generated turns in arrival order; arrays aligned, one entry per request."""

    arrived_s: np.ndarray  # float64, first session starts at 0
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    session_id: np.ndarray  # int64, sessions numbered in order of their start
    turn: np.ndarray  # int64, 0 for a session's first turn
    content: TokenContent


def turns_per_session(num_requests: int, turns_mean: float, turns_max: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Turns of each session, in session order, summing to exactly `num_requests`.

    Each session's count is geometric with mean `turns_mean` (P(N = k) = p (1 - p)^(k-1), p = 1 / turns_mean,
    so most sessions are short and a few long), capped at `turns_max`; the last session is cut so that the
    sessions hold num_requests turns in all.
    """
    turns = np.minimum(rng.geometric(1.0 / turns_mean, num_requests), turns_max).astype(np.int64)
    ends = np.cumsum(turns)
    num_sessions = int(np.searchsorted(ends, num_requests)) + 1
    turns = turns[:num_sessions]
    turns[-1] -= ends[num_sessions - 1] - num_requests
    return turns


def generate_sessions(
    num_requests: int,
    session_starts_s: Callable[[int], np.ndarray],
    *,
    turns_mean: float,
    turns_max: int,
    min_tokens: int,
    max_tokens: int,
    prefill_decode_ratio: float,
    think_time_s: float,
    expected_tpot_s: float,
    system_prompt_tokens: int,
    num_system_prompts: int,
    rng: np.random.Generator,
) -> Sessions:
    """`num_requests` turns of multi-turn sessions, sorted by arrival.

    session_starts_s(n) gives the start times (s) of n sessions (the workload's arrival process). Each
    turn's new text, user message + answer, is drawn as a uniform synthetic request: a total in
    [min_tokens, max_tokens] split so that user / answer ~ prefill_decode_ratio. Think times are exponential
    with mean think_time_s (0: none). Sessions use one of `num_system_prompts` system prompts of
    `system_prompt_tokens` tokens (0: none), chosen uniformly at random.
    """
    turns = turns_per_session(num_requests, turns_mean, turns_max, rng)
    num_sessions = len(turns)
    session = np.repeat(np.arange(num_sessions), turns)  # per request, requests in session order
    first_request = np.concatenate(([0], np.cumsum(turns)[:-1]))  # of each session
    turn = np.arange(num_requests) - first_request[session]

    user, answer = synthetic_lengths("uniform", num_requests, min_tokens, max_tokens, prefill_decode_ratio,
                                     0.0, rng)
    think_s = rng.exponential(think_time_s, num_requests) if think_time_s > 0 else np.zeros(num_requests)
    system_prompt = rng.integers(num_system_prompts, size=num_sessions)

    # Conversation tokens before each turn: the system prompt and every earlier turn's user + answer.
    before = system_prompt_tokens + _earlier_in_session(user + answer, first_request, session)
    prompt = before + user
    sequence_tokens = prompt + answer

    # Turn k+1 arrives after turn k's arrival + an estimate of answer k's duration + think time.
    gap_s = expected_tpot_s * answer + think_s
    arrived = session_starts_s(num_sessions)[session] + _earlier_in_session(gap_s, first_request, session)

    content = _session_content(sequence_tokens, turns, first_request, session, system_prompt,
                               system_prompt_tokens)
    order = np.argsort(arrived, kind="stable")
    return Sessions(
        arrived_s=arrived[order], prompt_tokens=prompt[order], output_tokens=answer[order],
        session_id=session[order], turn=turn[order], content=content.subset(order),
    )


def _earlier_in_session(values: np.ndarray, first_request: np.ndarray, session: np.ndarray) -> np.ndarray:
    """For each request, the sum of `values` over the earlier turns of its session (0 for a first turn)."""
    before_all = np.cumsum(values) - values  # sum over every earlier request, all sessions
    return before_all - before_all[first_request][session]


def _session_content(sequence_tokens: np.ndarray, turns: np.ndarray, first_request: np.ndarray,
                     session: np.ndarray, system_prompt: np.ndarray, system_prompt_tokens: int) -> TokenContent:
    """Keys of each turn's prompt + answer: a prefix of its session's keys.

    One array holds every session's keys back to back (a session's are as long as its last turn needs):
    units wholly inside the system prompt get that prompt's key (negative), the others a number used by
    no other unit (0, 1, 2, ...). Each request's keys are a view into it.
    """
    unit = SESSION_UNIT_TOKENS
    units = -(-sequence_tokens // unit)  # per request
    last_request = first_request + turns - 1
    session_units = units[last_request]  # the last turn has the longest sequence
    session_offset = np.concatenate(([0], np.cumsum(session_units)[:-1]))
    keys = np.arange(int(session_units.sum()), dtype=np.int64)
    system_units = system_prompt_tokens // unit
    if system_units:
        positions = session_offset[:, None] + np.arange(system_units)[None, :]
        keys[positions] = -1 - (system_prompt[:, None] * system_units + np.arange(system_units)[None, :])
    starts = session_offset[session]
    return TokenContent(unit, [keys[s:s + u] for s, u in zip(starts.tolist(), units.tolist())])
