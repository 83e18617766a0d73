"""Cluster kinds: which kind of cluster a resolved configuration describes, and the function that simulates
it. A new kind (say, prefill and decode partitioned inside each GPU) is one module with a
run_<kind>(cfg, out_dir, progress, started) function and one entry here; simulator/run.py does not change.
"""
from __future__ import annotations

import importlib

# kind -> "module:function"; modules are imported when their kind runs (the disaggregated one is heavier).
KINDS = {
    "colocated": "simulator.colocated:run_colocated",
    "disaggregated": "simulator.disagg.run:run_disaggregated",
}


def kind_name(cfg) -> str:
    """The cluster kind of a configuration: "disaggregated" when it has prefill and decode pools."""
    return "disaggregated" if cfg.cluster.disagg else "colocated"


def cluster_kind(cfg):
    """The run_<kind>(cfg, out_dir, progress, started) function of cfg's cluster kind."""
    module, function = KINDS[kind_name(cfg)].split(":")
    return getattr(importlib.import_module(module), function)
