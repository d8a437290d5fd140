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


def _record(*args, cwd: Path) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "study_record.py"), *args],
                          cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout


def test_a_study_record_restores_its_entries_and_keeps_scored_runs_without_weights(tmp_path):
    from crescent import cache

    store = tmp_path / "cache"
    for name, key, files in (("questions", "q1", {"questions.jsonl": "{}\n"}),
                             ("samples", "s1", {"samples.jsonl": "{}\n"}),
                             ("answers", "a1", {"sft.jsonl": "{}\n"}),
                             ("finetune", "f1", {"model/weights.bin": "w" * 1000}),
                             ("evaluate", "e1", {"metrics.json": "{}", "base/requests_rank0.db": "x"}),
                             ("questions", "other", {"questions.jsonl": "{}\n"})):
        for rel, text in {**files, "stats.json": "{}", "DONE": "{}"}.items():
            (store / name / key / rel).parent.mkdir(parents=True, exist_ok=True)
            (store / name / key / rel).write_text(text)
    cache.link(store / "answers" / "a1" / "samples.jsonl", store / "samples" / "s1" / "samples.jsonl")
    run = tmp_path / "runs" / "vote" / "seed1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("name: study\n")
    for name, key in (("questions", "q1"), ("answers", "a1"), ("finetune", "f1"), ("evaluate", "e1")):
        cache.link(run / name, store / name / key)

    (store / "answers" / "a1" / "DONE").unlink()  # still running
    said = _record("save", "runs", "record", "--cache", "cache", cwd=tmp_path)
    assert "written: answers/a1 (unfinished), evaluate/e1, questions/q1, samples/s1 " in said
    assert "runs newly recorded: vote/seed1" in said
    (store / "answers" / "a1" / "DONE").write_text("{}")
    said = _record("save", "runs", "record", "--cache", "cache", cwd=tmp_path)
    assert "written: answers/a1 (" in said and "runs newly recorded: none" in said
    assert sorted(p.name for p in (tmp_path / "record" / "cache" / "answers").iterdir()) == \
        ["a1.tar.xz"]  # the unfinished archive gave way to the finished one
    kept = tmp_path / "record" / "runs" / "vote" / "seed1"
    assert (kept / "evaluate" / "metrics.json").is_file() and (kept / "finetune" / "DONE").is_file()
    assert not (kept / "finetune" / "model").exists()  # weights stay out
    assert not (kept / "evaluate" / "base" / "requests_rank0.db").exists()
    assert not (kept / "answers" / "sft.jsonl").exists()  # the generation lives in the archive

    fresh = tmp_path / "fresh"
    (fresh / "questions" / "q1").mkdir(parents=True)  # further along here: left as it is
    said = _record("restore", "record", "--cache", "fresh", cwd=tmp_path)
    assert "3 of 4 cache entries restored" in said
    assert (fresh / "samples" / "s1" / "samples.jsonl").read_text() == "{}\n"
    assert (fresh / "answers" / "a1" / "samples.jsonl").resolve() == \
        (fresh / "samples" / "s1" / "samples.jsonl").resolve()
    assert not (fresh / "questions" / "q1" / "DONE").exists()
    assert not (fresh / "finetune").exists() and not (fresh / "questions" / "other").exists()
