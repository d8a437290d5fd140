"""The config checks, run before Hydra makes a run dir: a mistaken command leaves no trace.

Hydra creates a run's dir and writes its `.hydra/` (the config a report reads) before the task
function starts, so a check made there overwrites the record of a finished run that the
mistaken command shares a dir with, and leaves an empty dir where it names a new one. And a
sweep's jobs run one after another: a bad value in its last point would be found hours into
the sweep. `CheckFirst`, a Hydra callback (conf/config.yaml), runs `check` on the run's config
before Hydra makes the dir, and on every point of a sweep before the first job starts.
"""

from __future__ import annotations

import copy

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from crescent.errors import fail, user_mistake


def check(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything knowable from the config and its overrides, before any stage starts; fills an
    unset `eval.data_dir` (it changes `cfg`). Each stage's preflight runs in `run_pipeline`."""
    from crescent.config import validate
    from crescent.infra import data
    from crescent.infra.models import check_model
    from crescent.overrides import check_added_keys
    from crescent.registry import load_plugins

    load_plugins(cfg.plugins)  # what they register must exist before the config is checked
    check_added_keys(overrides)
    validate(cfg)
    data.fill_data_dir(cfg)
    if OmegaConf.select(cfg, "model.name"):
        check_model(cfg.model.name)  # the generator: the runner records its provenance first


class CheckFirst(Callback):
    """`check` and the stages' preflights, before Hydra writes anything. A mistake exits here
    with its one line: Hydra turns a callback's exception into a warning and carries on."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check_or_exit(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_launcher(config)
        points = sweep_points(config)
        if points is None:  # another sweeper: each job checks itself when it starts
            return
        from hydra.core.global_hydra import GlobalHydra

        loader = GlobalHydra.instance().config_loader()
        for varied, overrides in points:
            _check_or_exit(loader.load_sweep_config(master_config=config,
                                                    sweep_overrides=overrides),
                           f"sweep point {' '.join(varied)}: ")


def check_launcher(config: DictConfig) -> None:
    """A Slurm launcher needs Slurm here: `sbatch` on the PATH and a controller that answers
    `sinfo` within 20 s; without them, one line before any job."""
    import shutil
    import subprocess

    target = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if "Slurm" not in target:
        return
    advice = "run from a Slurm login node, or use hydra/launcher=local_parallel"
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        fail(f"error: hydra/launcher: a Slurm launcher, and Slurm's sbatch is not on this "
             f"machine's PATH: {advice}")
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True,
                                timeout=20, check=False)
    except subprocess.TimeoutExpired:
        answer = subprocess.CompletedProcess([], 1, "", "no answer within 20 s")
    if answer.returncode != 0:
        said = (answer.stderr.strip().splitlines() or ["no message"])[-1]
        fail(f"error: hydra/launcher: a Slurm launcher, and no Slurm controller answers here "
             f"(sinfo: {said}): {advice}")


def sweep_points(config: DictConfig) -> list[tuple[list[str], list[str]]] | None:
    """(the swept overrides, all of them) of each job Hydra's basic sweeper will launch, as it
    enumerates them; None for another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.utils import get_class

    if get_class(config.hydra.sweeper._target_) is not BasicSweeper:
        return None
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.params or {}).items()]
    params += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    parsed = OverridesParser.create(
        config_loader=GlobalHydra.instance().config_loader()).parse_overrides(params)
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    (points,) = BasicSweeper.split_arguments(parsed, None)  # one batch: every point
    return [([o for o in point if o.split("=")[0] in swept], point) for point in points]


def _check_or_exit(config: DictConfig, where: str = "") -> None:
    """`check` and the preflights on a copy of one job's config (the job checks again when it
    runs, on the machine it runs on); a mistake found exits with its line."""
    from hydra.core.hydra_config import HydraConfig

    from crescent.infra import logs
    from crescent.pipeline import preflight

    HydraConfig.instance().set_config(config)  # as the job will see it: `${hydra:...}` resolves
    task = copy.deepcopy(config)
    with open_dict(task):
        del task["hydra"]
    # Before the checks import any library: some read their quiet settings once, at import.
    logs.setup(bool(task.get("verbose", False)))
    try:
        check(task, OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        preflight(task)
    except Exception as e:
        mistake = user_mistake(e)  # as the job tells them (crescent/__main__.py)
        if mistake is None:
            raise  # a bug: Hydra warns with it, and the job's own check runs
        fail(f"error: {where}{mistake}")
