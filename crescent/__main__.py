"""Command line: `crescent <hydra overrides>` (same as `python -m crescent`) runs the pipeline."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from crescent.config import register_configs
from crescent.infra.io import CrescentError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_configs()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from crescent.infra import data, logs

    logs.setup(bool(cfg.get("verbose", False)))
    # Heavy modules load here, after Hydra has handled --help and --cfg.
    from crescent.infra.tracking import make_tracker
    from crescent.pipeline import run_pipeline
    from crescent.summary import print_summary

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    tracker = None
    try:
        data.fill_data_dir(cfg)
        tracker = make_tracker(cfg, run_dir, list(hydra_cfg.overrides.task))
        started = time.time()
        summary = run_pipeline(cfg, run_dir, tracker)
        print_summary(run_dir, summary, time.time() - started)
    except CrescentError as e:
        print(f"crescent: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except OSError as e:
        if e.filename is None:  # not about a path the user gave: a bug, keep its traceback
            raise
        # An output or input path that cannot be used: not writable, not a directory, full.
        print(f"crescent: error: {e.filename}: {e.strerror}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        if tracker is not None:
            tracker.finish()


if __name__ == "__main__":
    main()
