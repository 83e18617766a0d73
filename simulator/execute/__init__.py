"""Real execution: serve a trace on a GPU with the simulator's own policies, to measure its fidelity.

    loop.py    the serving loop (arrivals on a clock, policy.schedule, apply effects) - no torch
    runner.py  the real model: random-weight Llama shard, slot KV cache, decode CUDA graphs
    slots.py   where each request's K/V lives in the device cache
    serve.py   one execution from a SimulationConfig, written as the simulator's result files
    plan.py    the fidelity matrix (capacities, loads, request counts), built on a CPU
    cli.py     servesim-execute
See docs/fidelity.md. Nothing here imports simpy or Hydra: the GPU machine has neither.
"""
