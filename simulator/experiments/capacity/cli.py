"""servesim-capacity: the Hydra app that searches one configuration's capacity."""
from __future__ import annotations

from pathlib import Path

from simulator.experiments.capacity.compose import (
    CAPACITY_CONFIG_NAME,
    register_capacity_config,
    split_hydra_config,
)
from simulator.experiments.capacity.journal import TRIALS_JOURNAL
from simulator.experiments.capacity.records import config_summary, summary_line, write_capacity_outputs
from simulator.experiments.capacity.search import SearchError
from simulator.experiments.capacity.trials import run_capacity_search


def main() -> None:
    """servesim-capacity: the simulator's config groups plus `search`; writes capacity.json and
    capacity.md (and capacity_run/ with the files of the trial at capacity) to Hydra's output dir."""
    import sys

    import hydra
    from hydra.core.hydra_config import HydraConfig

    from simulator.config import ConfigError
    from simulator.paths import CONF_DIR

    register_capacity_config()

    @hydra.main(config_path=str(CONF_DIR), config_name=CAPACITY_CONFIG_NAME, version_base=None)
    def app(cfg) -> None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        journal = out_dir / TRIALS_JOURNAL
        try:
            simulation, search = split_hydra_config(cfg)
            run_dir = out_dir / "capacity_run" if search.write_capacity_run else None
            record = run_capacity_search(simulation, search, progress=True, capacity_run_dir=run_dir,
                                         trials_journal=journal)
        except (ConfigError, SearchError) as e:  # SLOError is a ConfigError
            print(f"servesim-capacity: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f"servesim-capacity: interrupted; the finished trials are kept in {journal}. Run the same "
                  f"command with hydra.run.dir={out_dir} to resume from them.", file=sys.stderr)
            sys.exit(130)
        json_path, md_path = write_capacity_outputs(record, out_dir)
        print(f"{config_summary(simulation)['policy']}: {summary_line(record)}\n  {json_path}\n  {md_path}")

    app()


if __name__ == "__main__":
    main()
