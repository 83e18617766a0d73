"""servesim's discrete-event serving simulator.

Kept import-light on purpose: `simulator.config` is imported by the GPU profiler, which runs where
simpy and hydra are not installed.
"""
