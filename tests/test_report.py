"""crescent-report on run dirs laid out as the pipeline writes them (real files, hand-set numbers)."""

from __future__ import annotations

import json
import math

import pytest

from crescent import report
from crescent.report import runs, tables


def _run(root, point, k, bpb_tuned, acc_tuned, kept):
    run = root / point
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(f"name: lr_sweep\nvoting:\n  k: {k}\n")
    # seed=3 is common to both points: the table leaves it out of the row labels.
    (run / ".hydra" / "overrides.yaml").write_text(f"- {point}\n- seed=3\n- logger=none\n")
    for stage, stats in {"questions": {"candidates": 64, "accepted": 16},
                         "answers": {"answered": 16, "kept": kept},
                         "finetune": {"examples": kept}}.items():
        (run / stage).mkdir()
        (run / stage / "stats.json").write_text(json.dumps(stats))
    (run / "evaluate").mkdir()
    (run / "evaluate" / "metrics.json").write_text(json.dumps({
        "base": {"bpb": {"bits_per_byte": 1.0, "bits_per_byte_stderr": 0.1},
                 "gsm": {"exact_match": 0.1}},
        "finetuned": {"bpb": {"bits_per_byte": bpb_tuned, "bits_per_byte_stderr": 0.1},
                      "gsm": {"exact_match": acc_tuned}},
    }))
    (run / "wandb_id").write_text(f"id-{k}\n")


def test_two_point_sweep_table_and_plots(tmp_path, capsys):
    _run(tmp_path, "finetune.lr=1e-5", 3, 0.9, 0.2, 10)
    _run(tmp_path, "finetune.lr=1e-4", 5, 0.8, 0.15, 12)
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| finetune.lr")]
    assert len(rows) == 2 and "seed=3" not in md
    assert md.count("| base model | 1 | - | 1.0000 | - | 0.1000 | - | - |") == 1
    # bpb: lower is better, so 0.8 is bold; exact match: higher is better, so 0.2 is bold.
    assert "**0.8000**" in md and "**0.2000**" in md and "**0.9000**" not in md
    assert "| -0.2000 |" in rows[0] and "id-5" in rows[0]  # 1e-4 sorts first: delta 0.8 - 1.0
    tex = (tmp_path / "report" / "report.tex").read_text()
    assert "\\textbf{0.8000}" in tex and "finetune.lr=1e-4" in tex
    for name in ("lr_sweep_funnel.png", "lr_sweep_scores.png", "lr_sweep_score_vs_examples.png",
                 "lr_sweep_score_vs_votes.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    assert "2 runs" in capsys.readouterr().out


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no Crescent runs"):
        report.main([str(tmp_path)])
    # Hydra dirs that are not Crescent runs are skipped with a line, not counted as unfinished
    (tmp_path / "foreign" / ".hydra").mkdir(parents=True)
    (tmp_path / "foreign" / ".hydra" / "config.yaml").write_text("db:\n  driver: mysql\n")
    (tmp_path / "lost" / ".hydra").mkdir(parents=True)  # no config.yaml
    with pytest.raises(SystemExit, match="no Crescent runs"):
        report.main([str(tmp_path)])
    (tmp_path / "broken" / ".hydra").mkdir(parents=True)
    (tmp_path / "broken" / ".hydra" / "config.yaml").write_text("stages: [a\n")
    with pytest.raises(SystemExit, match=r"broken/.hydra/config.yaml: does not parse"):
        report.main([str(tmp_path)])
    assert not (tmp_path / "report").exists()  # nothing written for a report that failed


def test_replicas_pool_into_one_row_with_t_intervals(tmp_path):
    from scipy import stats

    # Three finetune.seed replicas of one setting, one run of another: 4 runs, 2 settings.
    for seed, tuned in ((1, 0.90), (2, 0.86), (3, 0.95)):
        _run(tmp_path, f"finetune.lr=1e-5,finetune.seed={seed}", 3, tuned, 0.2, 10)
    _run(tmp_path, "finetune.lr=1e-4", 3, 0.8, 0.1, 10)
    for run in tmp_path.iterdir():  # the dir name above is one override: split it
        overrides = run / ".hydra" / "overrides.yaml"
        overrides.write_text(overrides.read_text().replace(",finetune.seed", "\n- finetune.seed"))
    rows = [runs.collect(run) for run in runs.find_runs([tmp_path])]
    summary = tables.summarize(rows)
    assert [line["n"] for line in summary] == [1, 1, 3]
    tuned = [0.90, 0.86, 0.95]
    mean = sum(tuned) / 3
    sd = (sum((v - mean) ** 2 for v in tuned) / 2) ** 0.5
    half = stats.t.ppf(0.975, 2) * sd / 3 ** 0.5
    cell, delta = summary[2]["cells"]["bpb"], summary[2]["deltas"]["bpb"]
    assert cell["mean"] == pytest.approx(mean) and cell["half"] == pytest.approx(half)
    assert delta["mean"] == pytest.approx(mean - 1.0) and delta["half"] == pytest.approx(half)
    _, cells, _ = tables.table(rows)
    assert cells[2][:4] == ["finetune.lr=1e-5", "3", "10", f"{mean:.4f} ± {half:.4f}"]
    assert cells[2][4] == f"{mean - 1:+.4f} ± {half:.4f}"


def test_one_run_gets_a_bootstrap_interval_over_documents(tmp_path):
    from crescent.intervals import aggregate, bootstrap

    # Per-document bits per byte as lm-eval logs them: (log-likelihood, bytes).
    docs = [(-10.0, 20), (-30.0, 25), (-5.0, 30), (-12.0, 10)]
    assert aggregate("bits_per_byte", docs) == pytest.approx(57 / 85 / math.log(2))
    low, high = bootstrap("bits_per_byte", docs)
    assert low < aggregate("bits_per_byte", docs) < high
    assert bootstrap("bits_per_byte", docs, paired=docs) == (0.0, 0.0)  # same docs: no delta
    assert bootstrap("exact_match", [1, 1, 1]) == (1.0, 1.0)


def test_a_filtered_metric_reads_its_filters_rows_of_the_sample_log(tmp_path):
    """lm-eval logs a filtered task (chain of thought's strict and flexible extraction) as one
    row per document and filter, under the bare metric name."""
    log = tmp_path / "samples_cot.jsonl"
    rows = [{"doc_id": d, "filter": f, "exact_match": v}
            for d, f, v in [(1, "strict-match", 0.0), (1, "flexible-extract", 1.0),
                            (0, "strict-match", 0.0), (0, "flexible-extract", 0.0),
                            (2, "strict-match", 1.0), (2, "flexible-extract", 1.0)]]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert runs.per_document(log, "exact_match,flexible-extract") == [0.0, 1.0, 1.0]
    assert runs.per_document(log, "exact_match,strict-match") == [0.0, 0.0, 1.0]


def test_a_replica_still_running_is_not_counted(tmp_path):
    _run(tmp_path, "finetune.seed=1", 3, 0.9, 0.2, 10)
    _run(tmp_path, "finetune.seed=2", 3, 0.8, 0.1, 10)
    (tmp_path / "finetune.seed=2" / "evaluate" / "metrics.json").unlink()  # not scored yet
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith(("| (defaults)", "| seed=3")))
    assert row.split(" | ")[1] == "1", row


def _finish(run, stages=("questions", "answers", "finetune", "evaluate")):
    for stage in stages:
        (run / stage / "DONE").write_text("")


def test_unfinished_runs_are_footnoted_and_stage_versions_kept_apart(tmp_path):
    _run(tmp_path, "finetune.lr=1e-5", 3, 0.9, 0.2, 10)
    _run(tmp_path, "finetune.lr=1e-4", 3, 0.8, 0.15, 12)
    _finish(tmp_path / "finetune.lr=1e-5")
    _finish(tmp_path / "finetune.lr=1e-4", ("questions", "answers"))
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"- unfinished: {tmp_path / 'finetune.lr=1e-4'} (finetune, evaluate not done)" in md
    assert "finetune.lr=1e-5 (finetune" not in md
    assert "stage versions" not in md

    # The same setting written by two questions-stage versions: two rows, not one pool.
    for point, version in (("finetune.lr=1e-5", 1), ("finetune.lr=1e-4", 2)):
        path = tmp_path / point / "questions" / "stats.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "stage_version": version}))
        overrides = tmp_path / point / ".hydra" / "overrides.yaml"
        overrides.write_text("- seed=3\n- logger=none\n")  # both the (defaults) setting now
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| [questions:v1] | 1 | 10 |" in md and "| [questions:v2] | 1 | 12 |" in md
    assert "questions: written by different stage versions" in md


def test_a_corrupt_stats_file_is_one_line(tmp_path):
    _run(tmp_path, "finetune.lr=1e-5", 3, 0.9, 0.2, 10)
    (tmp_path / "finetune.lr=1e-5" / "answers" / "stats.json").write_text('{"kept": 1,')
    with pytest.raises(SystemExit, match=r"crescent-report: error: .*answers/stats.json:1: not "
                                         r"valid JSON"):
        report.main([str(tmp_path)])


def test_models_scored_as_they_are_get_one_base_row_each(tmp_path):
    """A study that only scores models (experiment=model_scores): a base row per model, no
    setting rows, no funnel."""
    for model, accuracy in (("small-model", 0.02), ("larger-model", 0.3)):
        run = tmp_path / f"model={model}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(
            f"name: model_scores\nmodel:\n  name: {model}\n")
        (run / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n")
        (run / "evaluate").mkdir()
        (run / "evaluate" / "metrics.json").write_text(json.dumps(
            {"base": {"gsm": {"exact_match": accuracy}}}))
    report.main([str(tmp_path)])
    rows = [runs.collect(run) for run in runs.find_runs([tmp_path])]
    summary = tables.summarize(rows)
    assert [(line["setting"], line["cells"]["gsm"]["mean"]) for line in summary] == [
        ("base: larger-model", 0.3), ("base: small-model", 0.02)]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| base: larger-model | 1 | - | 0.3000 |" in md
    assert "| base: small-model | 1 | - | 0.0200 |" in md
    assert (tmp_path / "report" / "model_scores_scores.png").is_file()
    assert not (tmp_path / "report" / "model_scores_funnel.png").exists()


def test_a_run_resumed_with_other_stages_stays_its_row_and_replica(tmp_path):
    for seed in (1, 2):
        _run(tmp_path, f"finetune.seed={seed}", 3, 0.9, 0.2, 10)
    # The second replica was finished by `stages=[evaluate] verbose=true`, with a progress bar
    # off and another W&B project (operational, a key under logger): still the same setting.
    resumed = tmp_path / "finetune.seed=2" / ".hydra" / "overrides.yaml"
    resumed.write_text(resumed.read_text() + "- stages=[evaluate]\n- verbose=true\n"
                       "- hydra.run.dir=elsewhere\n- finetune.progress_bar=false\n"
                       "- logger.project=other\n")
    rows = [runs.collect(run) for run in runs.find_runs([tmp_path])]
    assert [row["setting"] for row in rows] == ["(defaults)", "(defaults)"]
    assert [line["n"] for line in tables.summarize(rows)] == [1, 2]  # the base row, the pooled one


def test_settings_are_paired_with_base_and_a_named_setting_document_by_document(tmp_path):
    # Two replicas of crescent, one of no_vote, on 4 problems; sample logs as lm-eval writes them.
    correct = {"setting=crescent,finetune.seed=0": [1, 1, 0, 1],
               "setting=crescent,finetune.seed=1": [1, 0, 0, 1],
               "setting=no_vote,finetune.seed=0": [0, 1, 0, 0]}
    base = [0, 0, 0, 1]
    for point, docs in correct.items():
        _run(tmp_path, point, 4, 0.9, sum(docs) / 4, 10)
        run = tmp_path / point
        overrides = run / ".hydra" / "overrides.yaml"
        overrides.write_text(overrides.read_text().replace(",finetune.seed", "\n- finetune.seed"))
        for label, values in (("base", base), ("finetuned", docs)):
            (run / "evaluate" / label).mkdir()
            (run / "evaluate" / label / "samples_gsm.jsonl").write_text("".join(
                json.dumps({"doc_id": i, "exact_match": v}) + "\n" for i, v in enumerate(values)))
    report.main([str(tmp_path), "--against", "setting=no_vote"])
    pairs = {(p["setting"], p["against"]): p
             for p in json.loads((tmp_path / "report" / "report.json").read_text())["paired"]
             ["lr_sweep"]}
    # crescent per problem over its 2 replicas: 1, 0.5, 0, 1 (mean 0.625); no_vote 0.25; base 0.25
    assert pairs[("setting=crescent", "base")]["difference"] == pytest.approx(0.375)
    assert pairs[("setting=crescent", "setting=no_vote")]["difference"] == pytest.approx(0.375)
    assert pairs[("setting=crescent", "base")]["replicas"] == 2
    assert pairs[("setting=no_vote", "base")]["difference"] == pytest.approx(0.0)
    low, high = pairs[("setting=crescent", "base")]["ci"]
    assert low <= 0.375 <= high and low >= -1 and high <= 1
    assert ("setting=no_vote", "setting=no_vote") not in pairs
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| gsm exact_match | setting=crescent - setting=no_vote | 2 | 4 | +0.3750 |" in md


def test_listed_contrasts_are_holm_adjusted_with_the_effect_they_could_detect(tmp_path):
    # gold beats base on 30 of 40 problems (discordance 0.75 of them changed), shuffled on none
    base = [0] * 40
    correct = {"setting=gold": [1] * 30 + [0] * 10, "setting=shuffled": [0] * 40}
    for point, docs in correct.items():
        _run(tmp_path, point, 4, 0.9, sum(docs) / 40, 10)
        for label, values in (("base", base), ("finetuned", docs)):
            (tmp_path / point / "evaluate" / label).mkdir()
            (tmp_path / point / "evaluate" / label / "samples_gsm.jsonl").write_text("".join(
                json.dumps({"doc_id": i, "exact_match": v}) + "\n" for i, v in enumerate(values)))
    report.main([str(tmp_path), "--contrast", "gold", "base", "--contrast", "shuffled", "base"])
    lines = json.loads((tmp_path / "report" / "report.json").read_text())["paired"]["lr_sweep"]
    gsm = {line["setting"]: line for line in lines if line["task"] == "gsm"}
    assert set(gsm) == {"setting=gold", "setting=shuffled"}  # only the listed family
    gold = gsm["setting=gold"]
    assert gold["difference"] == pytest.approx(0.75) and gold["discordant"] == pytest.approx(0.75)
    assert gold["p_holm"] == pytest.approx(0.0)  # not one resample crossed zero
    # (1.96 + 0.84) * sd / sqrt(40), sd of thirty 1s and ten 0s
    assert gold["detectable"] == pytest.approx(2.80158 * math.sqrt(30 * 10 / 40 / 39) / math.sqrt(40),
                                               rel=1e-4)
    assert gsm["setting=shuffled"]["p_holm"] == 1.0 and gsm["setting=shuffled"]["detectable"] == 0
    with pytest.raises(SystemExit, match="--contrast 'nothing': no setting named so"):
        report.main([str(tmp_path), "--contrast", "nothing", "base"])


def test_holm_steps_down_and_keeps_order():
    from crescent.intervals import holm

    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_base_scored_twice_gives_the_flip_rate_and_lengths_are_shown(tmp_path):
    for point, values in (("engine.batch_size=256", [1, 0, 1, 1, 0]),
                          ("engine.batch_size=64", [1, 1, 1, 0, 0])):
        run = tmp_path / point
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text("name: calibration\nstages: [evaluate]\n")
        (run / ".hydra" / "overrides.yaml").write_text(f"- {point}\n")
        (run / "evaluate" / "base").mkdir(parents=True)
        (run / "evaluate" / "metrics.json").write_text(json.dumps(
            {"base": {"gsm": {"exact_match": sum(values) / 5}}}))
        (run / "evaluate" / "stats.json").write_text(json.dumps({"answer_lengths": {"base": {
            "gsm": {"answers": 5, "cap": 512, "mean_tokens": 301.5, "cut_at_cap": 0.2}}}}))
        (run / "evaluate" / "base" / "samples_gsm.jsonl").write_text("".join(
            json.dumps({"doc_id": i, "exact_match": v}) + "\n" for i, v in enumerate(values)))
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| gsm exact_match | engine.batch_size=256 vs engine.batch_size=64 | 5 | " \
           "0.6000 / 0.6000 | 0.4000 |" in md or \
           "| gsm exact_match | engine.batch_size=64 vs engine.batch_size=256 | 5 | " \
           "0.6000 / 0.6000 | 0.4000 |" in md
    assert "| engine.batch_size=256 | base | gsm | 512 | 301.5 | 0.2000 |" in md


def test_a_second_scoring_pass_adds_its_columns_to_the_same_rows(tmp_path):
    """`stages=[finetune,evaluate] eval.tasks=[math] eval.limit=null` on the same points scores
    the same fine-tunes (the same cache entries) on another benchmark: one row per setting,
    with both benchmarks."""
    for seed in (0, 1):
        _run(tmp_path, f"finetune.seed={seed}", 4, 0.9, 0.2 + seed / 10, 10)
        scored = tmp_path / f"eval.limit=null,finetune.seed={seed}"
        (scored / ".hydra").mkdir(parents=True)
        (scored / "finetune").symlink_to(tmp_path / f"finetune.seed={seed}" / "finetune")
        (scored / ".hydra" / "config.yaml").write_text(
            "name: lr_sweep\nstages: [finetune, evaluate]\n"
            "eval:\n  tasks: [math]\n  limit: null\n")
        (scored / ".hydra" / "overrides.yaml").write_text(
            f"- eval.limit=null\n- eval.tasks=[math]\n- finetune.seed={seed}\n- seed=3\n")
        (scored / "evaluate").mkdir()
        (scored / "evaluate" / "metrics.json").write_text(json.dumps(
            {"base": {"math": {"math_verify": 0.05}},
             "finetuned": {"math": {"math_verify": 0.06 + seed / 100}}}))
    rows = runs.merge_passes([runs.collect(run) for run in runs.find_runs([tmp_path])])
    assert len(rows) == 2 and {r["run"] for r in rows} == {
        str(tmp_path / "finetune.seed=0"), str(tmp_path / "finetune.seed=1")}
    setting = tables.settings_of(tables.summarize(rows))
    assert len(setting) == 1 and setting[0]["n"] == 2
    assert setting[0]["cells"]["math"]["mean"] == pytest.approx(0.065)
    assert setting[0]["cells"]["gsm"]["mean"] == pytest.approx(0.25)
    assert rows[0]["eval_limits"]["math"] is None  # the full set, from the pass that scored it


def test_compute_counts_a_shared_output_once(tmp_path):
    """Two points that link one questions entry: its hours count once, each fine-tune's own."""
    entry = tmp_path / "cache" / "questions" / "key"
    entry.mkdir(parents=True)
    (entry / "stats.json").write_text(json.dumps({"accepted": 16, "wall_time_s": 3600}))
    sweep = tmp_path / "multirun"
    for lr in ("1e-5", "1e-4"):
        _run(sweep, f"finetune.lr={lr}", 3, 0.9, 0.2, 10)
        run = sweep / f"finetune.lr={lr}"
        for stage in ("questions", "finetune"):
            (run / stage / "stats.json").unlink()
            (run / stage).rmdir()
        (run / "questions").symlink_to(entry)
        (run / "finetune").mkdir()
        (run / "finetune" / "stats.json").write_text(json.dumps({"wall_time_s": 1800}))
    rows = [runs.collect(run) for run in runs.find_runs([sweep])]
    cost = tables.compute_cost(rows)
    assert cost["stages"]["questions"] == {"hours": 1.0, "outputs": 1}
    assert cost["stages"]["finetune"] == {"hours": 1.0, "outputs": 2}
    assert cost["hours"] == pytest.approx(2.0)
    report.main([str(sweep)])
    assert "Compute: 2.00 h in all (questions 1.00 h (1 computed), finetune 1.00 h (2 computed)):" \
        in (sweep / "report" / "report.md").read_text()


def test_the_volume_curve_has_a_line_per_vote_floor_with_the_audits_precision(tmp_path):
    """The plateau plot: crescent and a quarter of its pairs at floor 2 of 4, floor 3 of 4 on
    the same samples; a vote audit of the same model gives each floor's label precision."""
    import numpy as np

    from crescent.intervals import ratio_interval
    from crescent.report import plots

    kept2, right2 = np.array([1.0] * 4 + [0.0] * 6), np.array([1.0] * 3 + [0.0] * 7)
    kept3, right3 = np.array([1.0] * 2 + [0.0] * 8), np.array([1.0] * 2 + [0.0] * 8)
    ones = np.ones(10)
    audit = {"questions": 10, "k_max": 4, "tie_break": "drop",
             "sample_accuracy": ratio_interval(right2, ones), "by_k": [],
             "grid": [{"k": 4, "floor": f, "kept": int(kept.sum()),
                       "kept_share": ratio_interval(kept, ones),
                       "precision": ratio_interval(right, kept)}
                      for f, kept, right in ((2, kept2, right2), (3, kept3, right3))]}
    audited = tmp_path / "audit"
    (audited / ".hydra").mkdir(parents=True)
    (audited / ".hydra" / "config.yaml").write_text(
        "name: vote_audit\nmodel:\n  name: m\nstages: [answers, audit]\n")
    (audited / "audit").mkdir()
    (audited / "audit" / "audit.json").write_text(json.dumps(audit))
    for point, floor, kept, examples, accuracy in (("setting=crescent", 2, 66, 66, 0.21),
                                                   ("setting=volume_25", 2, 66, 17, 0.2),
                                                   ("setting=floor_3", 3, 37, 37, 0.22)):
        _run(tmp_path, point, 4, 0.9, accuracy, kept)
        run = tmp_path / point
        (run / ".hydra" / "config.yaml").write_text(
            f"name: volume\nmodel:\n  name: m\nvoting:\n  k: 4\n  min_votes: {floor}\n")
        (run / "answers" / "stats.json").write_text(json.dumps({"answered": 150, "kept": kept}))
        (run / "finetune" / "stats.json").write_text(json.dumps({"examples": examples}))
    report.main([str(tmp_path)])
    assert (tmp_path / "report" / "volume_score_vs_examples.png").read_bytes()[:4] == b"\x89PNG"
    rows = [runs.collect(run) for run in runs.find_runs([tmp_path])]
    summary = tables.settings_of(tables.summarize([r for r in rows if r["study"] == "volume"]))
    audits = [r for r in rows if r["audit"]]
    floor2 = [line for line in summary if line["floor"] == 2]
    assert plots._floor_label(floor2, audits).startswith(
        "floor 2 of 4, 44% kept, labels right 75% [")
    assert plots._floor_label([line for line in summary if line["floor"] == 3], audits) \
        .startswith("floor 3 of 4, 25% kept, labels right 100% [")
    assert plots._floor_label(floor2, []) == "floor 2 of 4, 44% kept"


def test_an_audit_still_sampling_is_said_unfinished_not_an_empty_table(tmp_path):
    audited = tmp_path / "audit"
    (audited / ".hydra").mkdir(parents=True)
    (audited / ".hydra" / "config.yaml").write_text(
        "name: vote_audit\nmodel:\n  name: m\nstages: [answers, audit]\n")
    (audited / "answers").mkdir()  # answers in progress, no audit/audit.json yet
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert f"## vote_audit: vote audit\n\nNot finished yet: {audited}\n" in md
    assert "## vote_audit\n" not in md  # no score table of a study that scores no model


def test_answer_lengths_are_measured_for_scores_made_before_they_were_recorded(tmp_path):
    from crescent.infra.models import resolve_model

    run = tmp_path / "old"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("name: calibration\nstages: [evaluate]\n")
    (run / "evaluate" / "base").mkdir(parents=True)
    (run / "evaluate" / "metrics.json").write_text(json.dumps({"base": {"gsm": {"exact_match": 1}}}))
    (run / "evaluate" / "stats.json").write_text(json.dumps(  # no answer_lengths in it
        {"models": {"base": resolve_model("smollm2-135m-instruct")}}))
    (run / "evaluate" / "base" / "results.json").write_text(json.dumps({"configs": {"gsm": {
        "output_type": "generate_until", "generation_kwargs": {"max_gen_toks": 512}}}}))
    (run / "evaluate" / "base" / "samples_gsm.jsonl").write_text(json.dumps(
        {"doc_id": 0, "exact_match": 1, "resps": [["The answer is: 4"]]}) + "\n")
    lengths = runs.collect(run)["lengths"]
    assert lengths["base"]["gsm"]["answers"] == 1 and lengths["base"]["gsm"]["cut_at_cap"] == 0


def test_volume_curves_follow_each_arm_and_name_the_steps_behind_each_point(tmp_path):
    """Study 2's curves: gold labels and the vote on the same pool, and the vote on the model's
    own questions, each at two volumes; the two vote arms differ only in answers.input (not an
    override), yet are two curves, not replicas of one."""
    from crescent.report import plots

    points = (("gold", "finetune.max_examples=100", "pool.jsonl", 25),
              ("gold", "finetune.max_examples=390", "pool.jsonl", 98),
              ("vote", "finetune.max_examples=100", "pool.jsonl", 25),
              ("vote", "finetune.max_examples=390", "pool.jsonl", 98),
              ("crescent", "finetune.max_examples=100", None, 25),
              ("crescent", "finetune.max_examples=390", None, 98))
    for arm, point, source, steps in points:
        root = tmp_path / arm
        _run(root, point, 4, 0.9, 0.2 + steps / 1000, 400)
        run = root / point
        config = "name: volume\nmodel:\n  name: m\nvoting:\n  k: 4\n  min_votes: 2\n"
        if arm == "gold":
            config += "  gold_control: train.jsonl\n"
            (run / ".hydra" / "overrides.yaml").write_text(f"- setting=gold\n- {point}\n")
        if source:
            config += f"answers:\n  input: /data/{source}\n"
        (run / ".hydra" / "config.yaml").write_text(config)
        examples = int(point.split("=")[1])
        (run / "finetune" / "stats.json").write_text(json.dumps({"examples": examples,
                                                                 "steps": steps}))
    report.main([str(tmp_path)])
    assert (tmp_path / "report" / "volume_score_vs_examples.png").read_bytes()[:4] == b"\x89PNG"
    rows = [runs.collect(run) for run in runs.find_runs([tmp_path])]
    summary = tables.settings_of(tables.summarize(rows))
    assert len(summary) == 6 and all(line["n"] == 1 for line in summary)
    arms = {plots.arm_of(line) for line in summary}
    assert arms == {("gold", "pool.jsonl"), (4, 2, "pool.jsonl"), (4, 2, "")}
    gold = [line for line in summary if line["gold_labels"]]
    assert plots._floor_label(gold, []) == "gold labels (right 100%)"
    assert sorted(line["steps"] for line in gold) == [25, 98]


def test_a_task_declares_its_headline_metric():
    from crescent.errors import CrescentError
    from crescent.methods.metrics import declared_headline, headline

    metrics = {"exact_match,flexible-extract": 0.3, "exact_match,strict-match": 0.2,
               "exact_match,strict-match_stderr": 0.01}
    assert headline(metrics) == ("exact_match,flexible-extract", 0.3)  # undeclared: by name
    results = {"configs": {"gsm": {"metadata": {"version": 3.0,
                                                "headline": "exact_match,strict-match"}}}}
    assert headline(metrics, declared_headline(results, "gsm")) == ("exact_match,strict-match",
                                                                     0.2)
    with pytest.raises(CrescentError, match="headline 'pass_at_1': not among the task's metrics"):
        headline(metrics, "pass_at_1")
    # Every shipped task declares one of the metrics it computes.
    import re

    from crescent.stages.evaluate import TASKS_SRC

    for task in TASKS_SRC.glob("*.yaml"):
        text = task.read_text()
        if "metric_list" not in text:
            continue  # an include of another task's definition
        declared = re.search(r'^  headline: "([^"]+)"$', text, re.MULTILINE)
        assert declared, task.name
        assert f"- metric: {declared[1].split(',')[0]}" in text, task.name
