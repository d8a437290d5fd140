"""Command line: `crescent <hydra overrides>` (same as `python -m crescent`) runs the pipeline."""

from __future__ import annotations

import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from crescent.config import register_configs
from crescent.errors import CrescentError, fail, user_mistake
from crescent.registry import load_entry_points

CONF_DIR = str(Path(__file__).resolve().parent / "conf")  # ships in the package

register_configs()
load_entry_points()  # installed plug-ins, before Hydra composes: their config nodes count


def main() -> None:
    """Console entry: Hydra's main, with a configuration error said in one line."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Hydra then raises composition errors instead of printing them over several lines.
    user_wants_traceback = "HYDRA_FULL_ERROR" in os.environ
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        run()
    except (HydraException, OmegaConfBaseException) as e:
        if user_wants_traceback:
            raise
        fail(f"error: {config_error(e)}")
    except OSError as e:  # Hydra making the run dir: read-only, not a directory, full
        if e.filename is None or user_wants_traceback:
            raise
        fail(f"error: {e.filename}: {e.strerror}")
    except ValueError as e:
        if not hydras_flag_check(e) or user_wants_traceback:
            raise
        fail(f"error: {e}")
    except KeyboardInterrupt:
        fail(INTERRUPTED, 130)


def hydras_flag_check(e: ValueError) -> bool:
    """Whether Hydra raised it itself while reading its flags (`-m` with `--cfg`, `--resolve`
    alone): a usage mistake, not a bug in a stage."""
    tb = e.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name == "_run_hydra"


INTERRUPTED = "interrupted; the same command resumes"


def config_error(e: Exception) -> str:
    """One line for a composition error: the key and what is wrong with its value."""
    cause = e.__cause__ or e
    key = getattr(cause, "full_key", None)
    if key:
        message = str(getattr(cause, "msg", cause)).splitlines()[0]
        if "not in struct" in message:
            from crescent.overrides import open_dicts

            # A key under an open dict (eval.limits, a component's options) is the user's to add.
            parent = next((d for d in open_dicts() if key.startswith(f"{d}.")), None)
            if parent:
                return f"{key}: not set yet; a key under {parent} is added with `+` (+{key}=...)"
        return f"{key}: {message}"
    text = str(e).split("Config search path")[0]  # Hydra's list of where it looked
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> None:
    from omegaconf.errors import InterpolationResolutionError

    from crescent.infra import logs

    logs.setup(bool(cfg.get("verbose", False)))
    # Heavy modules load here, after Hydra has handled --help and --cfg.
    from crescent.checks import check
    from crescent.infra.tracking import make_tracker
    from crescent.pipeline import run_pipeline
    from crescent.summary import print_summary

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # The command's overrides as typed: `answers.input=${data:...}` is not resolved here.
    overrides = OmegaConf.to_container(hydra_cfg.overrides.task, resolve=False)
    tracker = None
    try:
        check(cfg, overrides)  # again: a launcher may run this job on another machine
        tracker = make_tracker(cfg, run_dir, overrides)
        started = time.time()
        summary = run_pipeline(cfg, run_dir, tracker)
        print_summary(run_dir, summary, time.time() - started)
    except (CrescentError, InterpolationResolutionError) as e:
        mistake = user_mistake(e)  # also our resolver's (`${data:...}`), said as such
        if mistake is None:
            raise
        fail(f"error: {mistake}")
    except OSError as e:
        if e.filename is None:  # not about a path the user gave: a bug, keep its traceback
            raise
        # An output or input path that cannot be used: not writable, not a directory, full.
        fail(f"error: {e.filename}: {e.strerror}")
    except KeyboardInterrupt:
        fail(INTERRUPTED, 130)
    finally:
        if tracker is not None:
            tracker.finish()


if __name__ == "__main__":
    main()
