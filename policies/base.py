"""What every scheduling policy shares: the Batch it returns, the Policy base class, the registry.

A policy is a plain object. The replica hands it arriving requests (`add_request`), asks it for the next
batch (`schedule`), and tells it which requests finished (`finish`). It decides; it never advances time
or computes tokens, so the same object could drive a real GPU executor. Memory goes through the shared
`KVCache`; per-request progress lives in the `RequestState` arrays (see simulator/request.py):

    requests.pending_tokens(r)   tokens r must compute before its next token (its prompt, the rest of a
                                 chunked prompt, prompt + generated after a preemption, or 1 when decoding)
    requests.computed_tokens[r]  tokens of r already in the KV cache

A new policy is one module in this package that subclasses Policy, declares its parameters in its
`parameters` table (a tuple of Parameter), implements `schedule`, and adds itself to POLICIES;
docs/policies.md walks through one.
"""
from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from simulator.config import ConfigError, HardwareConfig, check_number
from simulator.engine import EngineProfile
from simulator.kv_cache import KVCache
from simulator.prefix_cache import PrefixCachingKV
from simulator.request import RequestState, int_list


@dataclass
class Batch:
    """One iteration's work: request i computes num_tokens[i] tokens (a prefill chunk, or 1 to decode).

    Plain lists of ints: batches hold a handful of requests, and the replica reads them one by one.
    """

    request_ids: list[int]
    num_tokens: list[int]  # same length

    @classmethod
    def of(cls, request_ids, num_tokens) -> Batch | None:
        """A batch from two lists (or int arrays), copied; None when they are empty (nothing to run)."""
        if len(request_ids) == 0:
            return None
        return cls(list(int_list(request_ids)), list(int_list(num_tokens)))

    def __len__(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True)
class Parameter:
    """One parameter of a policy, as its class declares it in `parameters`. `check_parameters` holds every
    configured value to this before anything runs, so a new policy gets the same checks as the shipped ones.
    """

    name: str  # the keyword argument of the policy's __init__ (and the config field policy.<name>)
    meaning: str  # what the value is, for error messages ("token budget per iteration")
    minimum: int = 1
    type: type = int  # int (a whole number), float, bool (true/false) or str (one of `choices`)
    # Non-empty: why the value may not be below the model's max_model_len (e.g. a prompt must fit one batch).
    at_least_max_model_len: str = ""
    choices: tuple[str, ...] = ()  # the values a str parameter may take

    def check(self, field: str, value, max_model_len: int | None = None) -> None:
        """Raise ConfigError naming `field` unless `value` has this type and range (and, when
        max_model_len is given, is not below it where the policy needs a whole context)."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{field}={value!r}: expected true or false ({self.meaning})")
            return
        if self.type is str:
            if value not in self.choices:
                raise ConfigError(f"{field}={value!r}: expected one of {', '.join(self.choices)} ({self.meaning})")
            return
        check_number(field, value, self.minimum, whole=self.type is int, why=self.meaning)
        if self.at_least_max_model_len and max_model_len is not None and value < max_model_len:
            raise ConfigError(f"{field}={value} is below the model's max_model_len={max_model_len}: "
                              f"{self.at_least_max_model_len}")


class Policy:
    """Base class: FCFS `waiting` queue, `running` list in admission order, preemption by recompute.

    Subclasses take their parameters as keyword arguments of __init__ (after calling
    super().__init__(kv, requests)), declare each in `parameters`, and implement `schedule`.
    """

    # One Parameter per keyword argument of __init__ beyond (kv, requests), and nothing else.
    parameters: tuple[Parameter, ...] = ()

    # True when the policy reserves KV for a request's full length (prompt + output) when admitting it
    # and never allocates as it decodes (Orca). Such a policy cannot admit a request that long in a pool
    # that only prefills, nor take the requests a decode pool receives already admitted (simulator/disagg).
    reserves_full_length = False

    # True when, as long as nothing arrives, finishes or runs out of KV blocks, a decode-only batch from
    # `schedule` would be chosen again next iteration. The replica then advances such runs of decodes in
    # one step, except after a `schedule` that admitted or preempted a request or counted another change
    # (`num_other_changes`): the batch may then be one of a kind (a preempted request whose cached blocks
    # leave one token to recompute looks like a decode), and a preempted request may come back next
    # iteration (vLLM V1). Set False in a policy whose choices depend on the clock.
    fast_forward_decodes = True

    @classmethod
    def hardware_defaults(cls, hardware: HardwareConfig) -> dict:
        """Parameter defaults that depend on the GPU (as an engine picks them at start-up); values set in
        the config win. None here."""
        return {}

    @classmethod
    def engine_defaults(cls, engine: EngineProfile) -> dict:
        """Parameter defaults that follow the engine profile (conf/engine: whether it schedules a step
        ahead, say); values set in the config win. None here."""
        return {}

    def __init__(self, kv: KVCache, requests: RequestState):
        self.kv = kv
        self.requests = requests
        self.waiting: deque[int] = deque()
        self.running: list[int] = []
        # Admissions, preemptions and other changes so far; the replica reads their sum (fast_forward_decodes).
        # A policy counts an "other change" when its next batch may differ from a decode-only one it just
        # returned though nothing arrives or finishes: blocks released late may admit a request (`release`),
        # a chunked prefill ended (sglang), the waiting order may change as decodes evict cached blocks
        # (sglang's longest-prefix-match order).
        self.num_admitted = self.num_preempted = self.num_other_changes = 0

    def add_request(self, request_id: int) -> None:
        """A request routed to this scheduler joins the back of the waiting queue."""
        self.waiting.append(request_id)

    def schedule(self, now_s: float) -> Batch | None:
        """The batch to run next, or None if there is nothing to do. Allocates KV for it."""
        raise NotImplementedError

    def release(self, request_ids) -> None:
        """These running requests emitted their last token: free their KV blocks and take them off the
        scheduler. The replica calls this when a batch ends. A policy that learns of finished requests
        later (vLLM V1's async scheduling, policies/vllm_v1.py) keeps them until a later `schedule`, frees
        them there and, when a request waits for blocks, counts it in `num_other_changes`, so that the
        replica asks it again at the next iteration rather than running on decodes."""
        self.kv.free(request_ids)
        self.finish(request_ids)

    def finish(self, request_ids) -> None:
        """These running requests (a list or an int array) emitted their last token and their KV blocks are
        freed (`release`, or the disaggregated prefill pool once their KV has moved): off `running`."""
        done = set(int_list(request_ids))
        self.running = [r for r in self.running if r not in done]

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    # --- helpers shared by several policies -------------------------------------------------------

    def use_prefix_cache(self, cache_class: type[PrefixCachingKV]) -> None:
        """Swap `self.kv` (still empty) for a prefix cache of the same size (simulator/prefix_cache.py,
        simulator/radix_cache.py). A workload without content shares no prefix: the plain cache is kept,
        which gives the same results faster."""
        if self.requests.content is not None:
            self.kv = cache_class.replacing(self.kv, self.requests)

    def admit(self, request_id: int, num_tokens: int, watermark: bool = True) -> bool:
        """Move a waiting request to the back of `running` if the KV cache can hold `num_tokens` for it
        (keeping the watermark free unless `watermark` is False); False and no change otherwise.

        With a prefix cache, the request's cached leading blocks (within num_tokens) count as computed:
        `requests.pending_tokens(request_id)` is smaller after admission."""
        cached_tokens = self.kv.prefix_hit_tokens(request_id)
        if not self.kv.allocate(request_id, num_tokens, admission=watermark):
            return False
        self.waiting.remove(request_id)  # O(1) for the head of the queue, the usual case
        self.running.append(request_id)
        self.num_admitted += 1
        if cached_tokens:
            block_size = self.kv.block_size
            self.requests.start_from_cache(request_id, min(cached_tokens, num_tokens // block_size * block_size))
        return True

    def preempt(self, request_id: int) -> None:
        """Preempt by recompute: drop the request's KV and put it at the front of `waiting`. It keeps the
        tokens it has emitted and will recompute prompt + generated tokens when scheduled again."""
        self.kv.free([request_id])
        self.num_preempted += 1
        self.requests.computed_tokens[request_id] = 0
        self.requests.preemptions[request_id] += 1
        self.running.remove(request_id)
        self.waiting.appendleft(request_id)

    def preemption_victim(self) -> int:
        """The running request to preempt when decodes run out of KV blocks: the newest, as vLLM does."""
        return self.running[-1]

    def schedule_decodes(self, candidates: list[int]) -> list[int]:
        """Reserve one more KV slot for each candidate (running requests, in priority order).

        When blocks run out, preempt `preemption_victim()` (the back of `running`, as vLLM does) and
        retry; a candidate that is itself the victim gets no slot. Returns the candidates that got their
        slot, in order.
        """
        computed = self.requests.ints.computed_tokens
        if self.kv.allocate_all(candidates, [computed[r] + 1 for r in candidates]):
            return list(candidates)  # the common case: everyone fits
        scheduled, preempted = [], set()
        for r in candidates:
            if r in preempted:
                continue
            while not self.kv.allocate(r, computed[r] + 1):
                victim = self.preemption_victim()
                self.preempt(victim)
                preempted.add(victim)
                if victim in scheduled:  # a victim chosen otherwise than last, or candidates out of order
                    scheduled.remove(victim)
                if victim == r:
                    break
            else:
                scheduled.append(r)
        return scheduled


POLICIES: dict[str, type[Policy]] = {}  # name -> class, filled by each policy module


def check_parameters(name: str, values: Mapping, max_model_len: int | None = None) -> type[Policy]:
    """The class of policy `name` after checking `values` (parameter -> value) against its declared
    `parameters`: known names, types, minimums, and (when max_model_len is given) bounds on the model's
    context. Raises ConfigError naming policy.<parameter>; this is the one place policy values are checked."""
    if name not in POLICIES:
        raise ConfigError(f"policy.name='{name}' is not a known policy; known: {', '.join(sorted(POLICIES))}")
    cls = POLICIES[name]
    declared = _declared_parameters(name, cls)
    for parameter, value in values.items():
        if parameter not in declared:
            raise ConfigError(f"policy.{parameter} is not a parameter of policy '{name}' "
                              f"(it takes: {', '.join(declared) or 'nothing'})")
        declared[parameter].check(f"policy.{parameter}", value, max_model_len)
    return cls


def _declared_parameters(name: str, cls: type[Policy]) -> dict[str, Parameter]:
    """cls.parameters by name, once they are known to name exactly the keyword arguments of cls.__init__,
    each once (a policy whose table and signature disagree would skip checks or refuse a real parameter)."""
    taken = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kv", "requests")]
    declared = [p.name for p in cls.parameters]
    if sorted(taken) != sorted(declared):
        raise ConfigError(
            f"policy '{name}': {cls.__name__}.__init__ takes {sorted(taken)} but {cls.__name__}.parameters "
            f"declares {sorted(declared)}; declare each parameter once (policies/base.py, Parameter)")
    return {p.name: p for p in cls.parameters}


def new_policy(name: str, values: Mapping, kv: KVCache, requests: RequestState) -> Policy:
    """Policy `name` with parameters `values` for one engine, checked first against the model's context
    (requests.max_model_len): the factories simulator.run.policy_factory hands out call this."""
    return check_parameters(name, values, requests.max_model_len)(kv, requests, **values)
