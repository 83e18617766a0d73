"""Disaggregated prefill/decode serving (DistServe, Splitwise): docs/disaggregation.md. The goodput
experiment built on it (SLO attainment, the DistServe comparison) is simulator/experiments/goodput.py.

config.py   the `cluster.disagg` section (pools, link presets), resolved once with the configuration
link.py     a KV link shared fairly by concurrent transfers
cluster.py  prefill and decode replicas and the hand-off between them (SimPy)
metrics.py  hand-off columns and per-pool summaries
run.py      one simulation from a SimulationConfig
"""
