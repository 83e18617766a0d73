"""The router: picks a replica for each arriving request.

  round_robin                 replicas in turn
  random                      uniformly at random (seeded)
  least_outstanding_requests  fewest requests routed there and not yet finished
  least_outstanding_tokens    fewest prompt + output tokens of requests routed there and not yet finished
  prefix_aware                most cached prefix, least load: the highest
                                  score = hit_tokens - load_weight x outstanding_tokens
                              hit_tokens: the request's leading tokens whose KV the replica's prefix cache
                              holds (kv.prefix_hit_blocks x block size, the best of its engines);
                              outstanding_tokens as for least_outstanding_tokens
Ties go to the lowest replica id, so runs are deterministic.

prefix_aware weighs one cached token against `load_weight` tokens of work already queued on a replica.
At 1 (the default) it sends a request to the replica where (queued work + the prompt tokens it must still
compute) is least, a proxy for the earliest first token. Queued work is counted as least_outstanding_tokens
counts it (prompt and output of unfinished requests, computed or not), which overstates it; a weight below
1 favours cache hits more. Production routers combine the same two signals differently: SGLang's
cache-aware router follows the longest prefix match unless the load is imbalanced beyond thresholds, then
the shortest queue; llm-d's scheduler adds a prefix-match scorer and a queue scorer with weights. A
weighted difference in tokens keeps both in one unit and the choice hand-computable.
"""
from __future__ import annotations

import numpy as np

from simulator.config import ROUTERS, ConfigError

DEFAULT_LOAD_WEIGHT = 1.0


class Router:
    def __init__(self, name: str, replicas: list, seed: int = 0, load_weight: float = DEFAULT_LOAD_WEIGHT):
        if name not in ROUTERS:
            raise ConfigError(f"cluster.router='{name}' is not one of {', '.join(ROUTERS)}")
        if not load_weight >= 0:
            raise ConfigError(f"cluster.router_load_weight={load_weight}: need a number >= 0")
        if name == "prefix_aware":
            _check_prefix_caches(replicas)
        self.name = name
        self.replicas = replicas
        self.load_weight = load_weight
        self._turn = 0
        self._rng = np.random.default_rng(seed)

    def route(self, request_id: int):
        """The replica that serves `request_id`."""
        replicas = self.replicas
        if len(replicas) == 1:
            return replicas[0]
        if self.name == "round_robin":
            replica = replicas[self._turn]
            self._turn = (self._turn + 1) % len(replicas)
            return replica
        if self.name == "random":
            return replicas[int(self._rng.integers(len(replicas)))]
        if self.name == "least_outstanding_requests":
            return min(replicas, key=lambda r: r.outstanding_requests)
        if self.name == "prefix_aware":
            # max() keeps the first of equal scores: the lowest replica id.
            return max(replicas, key=lambda r: self.prefix_score(r, request_id))
        return min(replicas, key=lambda r: r.outstanding_tokens)

    def prefix_score(self, replica, request_id: int) -> float:
        """prefix_aware's score of sending `request_id` to `replica` (tokens; higher is better)."""
        return hit_tokens(replica, request_id) - self.load_weight * replica.outstanding_tokens


def hit_tokens(replica, request_id: int) -> int:
    """Leading tokens of `request_id` whose KV one of the replica's engines holds in its prefix cache.

    A pipeline-parallel replica has one cache per virtual engine; the best one counts.
    """
    replica.catch_up()  # a run of decodes advanced in one step takes the blocks it has taken by now
    return max(engine.kv.prefix_hit_blocks(request_id) * engine.kv.block_size for engine in replica.engines)


def _check_prefix_caches(replicas: list) -> None:
    """prefix_aware asks each engine's KV cache what it holds: say so before the run if one cannot tell."""
    for replica in replicas:
        for engine in replica.engines:
            if not hasattr(engine.kv, "prefix_hit_blocks"):
                raise ConfigError(
                    f"cluster.router=prefix_aware needs KV caches that answer prefix_hit_blocks(request_id); "
                    f"{type(engine.kv).__name__} of policy {type(engine).__name__} does not")
