"""Experiments built on single runs of a resolved configuration (simulator.run): capacity search
(capacity/), configuration sweeps (sweep/), fidelity against real execution (compare/) and goodput
(goodput.py). They compose a configuration once and derive each run's by replacing fields of it; nothing
below them imports them (pyproject.toml [tool.importlinter])."""
