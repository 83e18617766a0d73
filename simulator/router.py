"""The router: picks a replica for each arriving request.

  round_robin                 replicas in turn
  random                      uniformly at random (seeded)
  least_outstanding_requests  fewest requests routed there and not yet finished
  least_outstanding_tokens    fewest prompt + output tokens of requests routed there and not yet finished
Ties go to the lowest replica id, so runs are deterministic.
"""
from __future__ import annotations

import numpy as np

from simulator.config import ROUTERS, ConfigError


class Router:
    def __init__(self, name: str, replicas: list, seed: int = 0):
        if name not in ROUTERS:
            raise ConfigError(f"cluster.router='{name}' is not one of {', '.join(ROUTERS)}")
        self.name = name
        self.replicas = replicas
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
        return min(replicas, key=lambda r: r.outstanding_tokens)
