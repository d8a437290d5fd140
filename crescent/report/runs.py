"""Runs read back for crescent-report: every Hydra job dir under the given dirs (found by its
`.hydra/` folder) is one run: its sweep overrides, the question funnel from the stages'
`stats.json`, and per task the headline metric of the base and the fine-tuned model from
`evaluate/metrics.json` (the base's scores come from the shared base-score cache entry that
`evaluate/base` links to), its direction as lm-eval declared it, with the per-document scores
lm-eval logged."""

from __future__ import annotations

import os
from pathlib import Path

from crescent.cache import STATS, is_done
from crescent.config import DEFAULT_STAGES, changes_no_output
from crescent.infra.io import read_json, read_jsonl
from crescent.methods.metrics import declared_headline, headline
from crescent.methods.metrics import lower_is_better as metrics_lower_is_better
from crescent.registry import STAGES

# Metrics where lower is better, for results that do not say (lm-eval writes each task's
# `higher_is_better`, which `_scores` keeps); everything else is higher-is-better.
_LOWER_IS_BETTER = ("bits_per_byte", "bpb", "perplexity", "loss")


# Overrides that make replicas of one setting rather than settings of their own.
REPLICA_KEYS = ("seed", "finetune.seed")


# Besides the overrides that change no output (crescent.config.changes_no_output: a run resumed
# with `stages=[evaluate]` or `verbose=true` stays the row it was), `eval` and every key under
# it: a second scoring pass of the same fine-tunes (`stages=[finetune,evaluate]
# eval.tasks=[...]`) adds columns to their rows (`merge_passes`).
SCORING_PASS = "eval"


def find_runs(dirs: list[Path]) -> list[Path]:
    """Every Hydra job dir (one with `.hydra/`) under `dirs`; links into the cache are not
    followed."""
    runs = []
    for top in dirs:
        for root, subdirs, _ in os.walk(top):
            if ".hydra" in subdirs:
                runs.append(Path(root))
                subdirs.clear()
    return sorted(runs)


# Keys of Crescent's config (crescent/config.py): a Hydra run whose config has none is not one.
_CRESCENT_GROUPS = {"stages", "model", "voting", "questions", "answers", "finetune", "eval"}


def not_crescent(run: Path) -> str | None:
    """Why a Hydra job dir is not a Crescent run (another program's, or its config lost), or
    None; a config that does not parse is an error naming it."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from crescent.errors import CrescentError

    path = run / ".hydra" / "config.yaml"
    if not path.is_file():
        return f"no {path.relative_to(run)}"
    try:
        config = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise CrescentError(f"{path}: does not parse ({first})") from None
    if not (OmegaConf.is_dict(config) and set(config) & _CRESCENT_GROUPS):
        return "another program's Hydra run"
    return None


def _read(path: Path):
    return read_json(path) if path.is_file() else None


def lower_is_better(score: dict) -> bool:
    """A task's score (`_scores`): lower is better as lm-eval declared it, else by its name."""
    if score.get("higher_is_better") is not None:
        return not score["higher_is_better"]
    return any(word in score["metric"] for word in _LOWER_IS_BETTER)


def collect(run: Path) -> dict:
    """One run: what it varied, its funnel, its scores (with their per-document values)."""
    from omegaconf import OmegaConf

    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml") \
        if (run / ".hydra" / "overrides.yaml").exists() else []
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    stats = {stage: _read(run / stage / STATS) or {}
             for stage in STAGES.in_order()}
    point = [o for o in overrides if not _not_a_setting(o.split("=")[0], config)]
    wandb_id = (run / "wandb_id").read_text().strip() if (run / "wandb_id").exists() else None
    listed = OmegaConf.select(config, "stages", default=None) or DEFAULT_STAGES
    return {
        "run": str(run),
        "study": OmegaConf.select(config, "name", default=run.parent.name),
        "point": " ".join(point) or "(defaults)",
        "setting": " ".join(o for o in point if o.split("=")[0] not in REPLICA_KEYS)
                   or "(defaults)",
        "stages": list(listed),
        # what the run scored: another scoring pass of the same fine-tune links the same dir
        "fine_tune": str((run / "finetune").resolve()) if (run / "finetune").is_dir() else None,
        "unfinished": [stage for stage in listed if not is_done(run / stage)],
        # stage -> the version that wrote it: rows of other versions are not pooled
        "versions": {stage: stats[stage].get("stage_version") for stage in STAGES.in_order()
                     if stats[stage]},
        "replica": " ".join(o for o in point if o.split("=")[0] in REPLICA_KEYS),
        "votes": OmegaConf.select(config, "voting.k", default=None),
        "floor": OmegaConf.select(config, "voting.min_votes", default=None),
        "eval_limits": _eval_limits(config),
        "funnel": {
            "candidates": stats["questions"].get("candidates"),
            "questions": stats["questions"].get("accepted"),
            "answered": stats["answers"].get("answered"),
            "kept": stats["answers"].get("kept"),
        },
        "examples": stats["finetune"].get("examples", stats["answers"].get("kept")),
        "steps": stats["finetune"].get("steps"),  # optimizer steps the fine-tune took
        # the questions answered: a file (answers.input, not a setting) or the run's own
        "input": Path(str(OmegaConf.select(config, "answers.input", default=None) or "")).name
                 or None,
        # trained on gold labels (a control): their precision is 1 by construction
        # the controls, as `control` (or `voting`, before they had a group) recorded them
        "gold_labels": any(OmegaConf.select(config, key, default=None) for key in (
            "control.gold", "control.rft", "voting.gold_control", "voting.rft")),
        "scores": _scores(run, stats["evaluate"]),
        "lengths": _lengths(run, stats["evaluate"]),
        "reused": {k: v.get("reused") for k, v in (_read(run / "pipeline.json") or {}).items()},
        "wandb_id": wandb_id,
        "model": OmegaConf.select(config, "model.name", default=None),
        "audit": _read(run / "audit" / "audit.json"),  # the vote audit, where a run made one
        # [stage, where its output lies, the seconds it took there]: a cache entry that several
        # runs link to is one computation
        "cost": [[stage, str((run / stage).resolve()), stats[stage]["wall_time_s"]]
                 for stage in listed if stats.get(stage, {}).get("wall_time_s") is not None],
    }


def merge_passes(rows: list[dict]) -> list[dict]:
    """Runs that scored one fine-tune (the same cache entry) at one point, e.g. a second
    scoring pass on other tasks, as one row: the run that lists the most stages, with every
    pass's scores (a task scored twice: the pass that scored more documents)."""
    points: dict[tuple, list[dict]] = {}
    for r in rows:
        points.setdefault((r["study"], r["point"], r["fine_tune"] or r["run"]), []).append(r)
    merged = []
    for passes in points.values():
        first, *others = sorted(passes, key=lambda r: -len(r["stages"]))
        for other in others:
            for task, score in other["scores"].items():
                have = first["scores"].get(task)
                if have is None or (score["docs"] or 0) > (have["docs"] or 0):
                    first["scores"][task] = score
                    first["eval_limits"][task] = other["eval_limits"].get(task)
            first["unfinished"] += [f"{stage} of {other['run']}" for stage in other["unfinished"]]
            first["cost"] += other["cost"]
        merged.append(first)
    return merged


def _not_a_setting(key: str, config) -> bool:
    return changes_no_output(key, config) or key.lstrip("+~").split(".")[0] == SCORING_PASS


def _eval_limits(config) -> dict:
    """task -> the documents limit its scores used (None: the full set), as evaluate sets it."""
    from omegaconf import OmegaConf

    limit = OmegaConf.select(config, "eval.limit", default=None)
    per_task = OmegaConf.select(config, "eval.limits", default=None) or {}
    return {task: per_task.get(task, limit)
            for task in OmegaConf.select(config, "eval.tasks", default=None) or []}


def _lengths(run: Path, eval_stats: dict) -> dict:
    """label -> task -> answers' mean tokens and share cut at the cap (generation tasks), as the
    evaluate stage recorded them, or measured here from its sample logs for scores made before
    it recorded them (each model's tokenizer is loaded: a second or two)."""
    from crescent.methods.metrics import answer_lengths

    if "answer_lengths" in eval_stats:
        return eval_stats["answer_lengths"]
    lengths = {}
    for label, model in (eval_stats.get("models") or {}).items():
        results = _read(run / "evaluate" / label / "results.json")
        if results and Path(model).is_dir():
            lengths[label] = answer_lengths(run / "evaluate" / label, results, model)
    return lengths


def _scores(run: Path, eval_stats: dict) -> dict:
    """task -> {metric, docs, <label>: value, per_doc: {label: [value per document]}}."""
    scored = _read(run / "evaluate" / "metrics.json") or {}
    # Each metric's direction as lm-eval declared it in the models' results (None: undeclared).
    results = {label: _read(run / "evaluate" / label / "results.json") or {} for label in scored}
    declared = {task for r in results.values() for task in r.get("higher_is_better", {})}
    lower = metrics_lower_is_better(results)
    scores = {}
    for label, tasks in scored.items():
        for task, metrics in tasks.items():
            picked = headline(metrics, declared_headline(results[label], task))
            if picked:
                entry = scores.setdefault(task, {
                    "metric": picked[0], "per_doc": {},
                    "higher_is_better": (task, picked[0].partition(",")[0]) not in lower
                    if task in declared else None,
                    "docs": (eval_stats.get("n_samples") or {}).get(task)})
                entry[label] = picked[1]
                entry["per_doc"][label] = per_document(
                    run / "evaluate" / label / f"samples_{task}.jsonl", picked[0])
    return scores


def per_document(path: Path, metric: str) -> list:
    """The metric's value per scored document (lm-eval's sample log), in document order.
    `metric` may name a filter ("exact_match,flexible-extract"): the log then holds one row per
    document and filter, each under the bare metric name."""
    if not path.is_file():
        return []
    name, _, filtered_by = metric.partition(",")
    rows = [r for r in read_jsonl(path)
            if name in r and (not filtered_by or r.get("filter") == filtered_by)]
    return [r[name] for r in sorted(rows, key=lambda r: r.get("doc_id", 0))]
