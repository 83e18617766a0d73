"""A policy's decisions alone: the policy driven step by step, without SimPy or iteration times.

Arrivals are given as step numbers: request i joins the waiting queue just before step `arrival_step[i]`.
Each step the policy schedules a batch and the batch is computed at once, exactly as a replica applies it
(simulator/replica.py): a request that computed its last known token emits the next, and one that emitted
its last output token is freed. What comes out is every step's scheduled (request, tokens) pairs, the
tokens each request found cached when it was scheduled from the waiting queue, and every preemption: the
decisions an engine's scheduler makes, comparable step for step with that engine's own scheduler driven
the same way (bench/vllm_v1_decisions.py drives vLLM V1's).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies.base import Policy


@dataclass
class StepLog:
    """What a scheduler decided, step by step. Rows of `scheduled`: (step, request, tokens), in the
    batch's order; of `admitted`: (step, request, tokens computed before the step, i.e. found cached);
    of `preempted`: (step, request)."""

    scheduled: list[tuple[int, int, int]] = field(default_factory=list)
    admitted: list[tuple[int, int, int]] = field(default_factory=list)
    preempted: list[tuple[int, int]] = field(default_factory=list)
    steps: int = 0


def run_steps(policy: Policy, arrival_step: np.ndarray, max_steps: int = 1_000_000) -> StepLog:
    """Drive `policy` (built on its requests and KV cache, no request added yet) until every request has
    finished. `arrival_step` is non-decreasing, one entry per request. RuntimeError if `max_steps` pass
    with requests unfinished (a policy that stalls)."""
    requests = policy.requests
    ints = requests.ints
    log = StepLog()
    n = len(arrival_step)
    rejected = requests.rejected  # never routed, as a cluster would not route them
    next_arrival = 0
    finished = int(rejected.sum())
    for step in range(max_steps):
        while next_arrival < n and arrival_step[next_arrival] <= step:
            if not rejected[next_arrival]:
                policy.add_request(next_arrival)
            next_arrival += 1
        if finished == n:
            log.steps = step
            return log
        waiting_before = set(policy.waiting)
        preempted_before = policy.num_preempted
        running_before = list(policy.running)
        batch = policy.schedule(float(step))
        if policy.num_preempted != preempted_before:
            now_waiting = set(policy.waiting)  # a request released late leaves `running` but not for `waiting`
            log.preempted += [(step, r) for r in running_before if r in now_waiting]
        if batch is None:
            continue
        done = []
        for r, num in zip(batch.request_ids, batch.num_tokens):
            r, num = int(r), int(num)
            log.scheduled.append((step, r, num))
            if r in waiting_before:
                log.admitted.append((step, r, int(ints.computed_tokens[r])))
            pending = ints.prompt_tokens[r] + ints.generated_tokens[r] - ints.computed_tokens[r]
            ints.computed_tokens[r] += num
            if num == pending:  # it computed its last known token: it emits the next one
                ints.generated_tokens[r] += 1
                if ints.generated_tokens[r] == ints.output_tokens[r]:
                    done.append(r)
        if done:
            policy.release(done)
            finished += len(done)
    raise RuntimeError(f"{type(policy).__name__}: {n - finished} of {n} requests unfinished after {max_steps} steps")


def compare_logs(ours: StepLog, theirs: StepLog) -> dict:
    """How far two step logs agree: the steps whose batches are the same (requests and their token counts),
    the first step that differs, and each log's totals (steps, scheduled and cached tokens, preemptions)."""
    def by_step(rows):
        out: dict[int, set] = {}
        for step, r, num in rows:
            out.setdefault(step, set()).add((r, num))
        return out

    a, b = by_step(ours.scheduled), by_step(theirs.scheduled)
    steps = sorted(set(a) | set(b))
    same = [a.get(s) == b.get(s) for s in steps]

    def totals(log: StepLog) -> dict:
        return {"steps": log.steps, "scheduled_tokens": sum(n for _, _, n in log.scheduled),
                "cached_tokens": sum(c for _, _, c in log.admitted), "preemptions": len(log.preempted)}

    return {"steps": len(steps), "steps_identical": int(sum(same)),
            "first_difference_step": next((s for s, ok in zip(steps, same) if not ok), None),
            "ours": totals(ours), "theirs": totals(theirs)}
