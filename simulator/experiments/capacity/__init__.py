"""SLO capacity search: the highest request rate at which one configuration meets its SLOs.

    search.py    the search and its settings (pure: any `evaluate(rate) -> Trial` will do)
    trials.py    each trial simulated from one resolved configuration (run_capacity_search)
    journal.py   trials.jsonl, so an interrupted search resumes trial by trial
    records.py   capacity.json, its table rows, and the configuration summary that names it
    compose.py   Hydra composition of the app's config, resolved once into typed objects
    cli.py       servesim-capacity
"""
from simulator.experiments.capacity.compose import compose_capacity_config, split_hydra_config
from simulator.experiments.capacity.journal import TRIALS_JOURNAL, append_trial, read_trial_journal
from simulator.experiments.capacity.records import (
    capacity_record,
    config_summary,
    cost_per_million_tokens_usd,
    record_row,
    trial_rows,
    write_capacity_outputs,
)
from simulator.experiments.capacity.search import (
    CapacityResult,
    SearchConfig,
    SearchError,
    Trial,
    check_slos,
    search_capacity,
    search_config_from,
)
from simulator.experiments.capacity.trials import native_rate_qps, run_capacity_search, with_rate

__all__ = [
    "TRIALS_JOURNAL", "CapacityResult", "SearchConfig", "SearchError", "Trial", "append_trial", "capacity_record",
    "check_slos", "compose_capacity_config", "config_summary", "cost_per_million_tokens_usd", "native_rate_qps",
    "read_trial_journal", "record_row", "run_capacity_search", "search_capacity", "search_config_from",
    "split_hydra_config", "trial_rows", "with_rate", "write_capacity_outputs",
]
