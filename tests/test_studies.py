"""Studies: every experiment file composes; the smoke loop as a two-point learning-rate sweep
shares its questions and answers through the artefact cache and reports two rows (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from crescent.__main__ import CONF_DIR
from crescent.infra.io import read_json
from tests.conftest import DATA, ROOT

STUDIES = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
# studies whose README is another study's: experiments/<that one>/README.md
DOCUMENTED_WITH = {"ablate_dedup_threshold": "ablate_dedup", "vote_downstream": "vote_audit"}


@pytest.mark.parametrize("study", STUDIES)
def test_study_composes_and_is_documented(study):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={study}"],
                      return_hydra_config=True)
    assert cfg.name == study
    family = DOCUMENTED_WITH.get(study, study)
    assert f"experiment={study}" in (ROOT / "experiments" / family / "README.md").read_text() \
        or study == "iterate"


@pytest.mark.slow
@pytest.mark.long
def test_smoke_lr_sweep_shares_upstream_stages_and_reports(cli, tmp_path):
    result = cli("-m", "experiment=smoke", "finetune.lr=1e-5,1e-4", "logger=none",
                 f"eval.data_dir={DATA}", timeout=2400)
    assert result.returncode == 0, result.stderr[-4000:]
    # One directory per point, the data path flattened into its name.
    runs = sorted((tmp_path / "multirun" / "smoke").glob("eval.data_dir=*,finetune.lr=*"))
    assert len(runs) == 2
    summaries = [read_json(run / "pipeline.json") for run in runs]
    assert sorted(s["questions"]["reused"] for s in summaries) == [False, True]
    assert sorted(s["answers"]["reused"] for s in summaries) == [False, True]
    assert [s["finetune"]["reused"] for s in summaries] == [False, False]
    assert (runs[0] / "answers").resolve() == (runs[1] / "answers").resolve()
    metrics = read_json(runs[0] / "evaluate" / "metrics.json")
    assert {"base", "finetuned"} <= set(metrics)

    from crescent import report

    report.main([str(tmp_path / "multirun" / "smoke")])
    md = (tmp_path / "multirun" / "smoke" / "report" / "report.md").read_text()
    assert len([line for line in md.splitlines() if line.startswith("| finetune.lr=")]) == 2
    assert (tmp_path / "multirun" / "smoke" / "report" / "smoke_funnel.png").exists()
    print(md)
    for run in runs:
        print(run.name, {k: v["wall_time_s"] for k, v in read_json(run / "pipeline.json").items()})


def test_local_parallel_launcher_runs_the_points_in_joblib_processes(cli, tmp_path):
    # The cheapest real job: an instant test stage, added by a plug-in in each worker.
    result = cli("-m", "hydra/launcher=local_parallel", "plugins=[tests.counting_stage]",
                 "stages=[counting]", "logger=none", "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for seed in (1, 2):
        assert (tmp_path / "multirun" / "default" / f"seed={seed}" / "counting" / "DONE").is_file()


def test_slurm_launcher_config_asks_for_one_gpu_node_per_point(cli):
    result = cli("hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in result.stdout
    assert "gpus_per_node: 8" in result.stdout and "partition: gpu" in result.stdout
