"""Audit stage: the vote's labels measured against gold answers, at every k and agreement floor.

For questions whose answers are known (a `gold` field in `answers.input`, or GSM8K's
`answer` ending in `#### <number>`), the answers stage's cached samples (answers.samples = k_max
per question) are re-voted with the first k samples, for every k up to k_max and every floor
(`voting.min_votes` = 1..k, `voting.min_agreement` = 0; the other voting settings as
configured). Per cell: the share of questions kept and the accuracy of the kept labels
(precision); per k: majority@k (the plurality label, ties broken by the seeded rule, over every
question: no label counts as wrong) and pass@k (any of the first k samples right); overall,
the accuracy of a single sample (all k_max of them, averaged). Every number has a 95%
bootstrap interval over the questions. No engine starts: this is arithmetic on the cache (with
`domain.input_prompt`, on the test inputs the answers stage had the model write, too).

Writes `audit.json` (every number), `audit.md` (the table), `audit.png` (precision against
kept share, one line per k) and `stats.json`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from crescent import cache
from crescent.cache import STATS, Stage
from crescent.domains import answer_type_key, gold_answers
from crescent.errors import CrescentError
from crescent.infra.io import atomic_write_text, read_jsonl, write_json

logger = logging.getLogger(__name__)

# Re-votes the samples entry: the floors and k are swept here, so they stay out of the key.
STAGE = Stage("audit", ("domain.answer_type", "domain.options", "domain.input_prompt",
                        "voting.rule", "voting.options", "voting.tie_break",
                        "voting.drop_truncated"),
              upstream="samples", added=("domain.input_prompt",),
              resolved={"domain.answer_type": answer_type_key})
AUDIT = "audit.json"
TABLE = "audit.md"
PLOT = "audit.png"


def preflight(cfg: DictConfig) -> None:
    """Before any stage: the questions to be answered carry gold answers."""
    gold_answers(cfg)


def run(cfg: DictConfig, run_dir: Path) -> Path:
    from crescent.artefacts import INPUTS, NOT_SAMPLED, SAMPLES
    from crescent.config import samples_per_question
    from crescent.domains import answer_format
    from crescent.stages.answers import read_samples

    out = Path(run_dir) / STAGE.name
    samples = cache.input_path(cfg, run_dir, STAGE.name, SAMPLES)
    if not samples.is_file():
        raise CrescentError(f"audit: {samples} not found: run the answers stage first")
    golds, reader = gold_answers(cfg), answer_format(cfg.domain.answer_type)
    records = [r for r in read_jsonl(samples) if r.get("reason") not in NOT_SAMPLED]
    missing = [r["id"] for r in records if r["id"] not in golds]
    if missing:
        raise CrescentError(f"audit: {len(missing)} sampled questions have no gold answer in "
                            f"{cfg.answers.input} (first: id {missing[0]!r})")
    if not records:
        raise CrescentError(f"audit: {samples} holds no sampled question")
    # with domain.input_prompt, programs are run on the test inputs the model wrote too
    records = read_samples(records, reader, cache.input_path(cfg, run_dir, STAGE.name, INPUTS)
                           if cfg.domain.input_prompt else None)
    k_max = samples_per_question(cfg)
    audit = measure(cfg, records, golds, k_max, reader)
    audit["not_sampled"] = len(golds) - len(records)
    write_json(out / AUDIT, audit)
    atomic_write_text(out / TABLE, markdown(audit) + "\n")
    plot([(str(cfg.model.name), audit)], out / PLOT)
    write_json(out / STATS, {"questions": audit["questions"], "k_max": k_max,
                             "sample_accuracy": audit["sample_accuracy"],
                             "best_precision": _best(audit)})
    return out


def measure(cfg: DictConfig, records: list[dict], golds: dict, k_max: int, reader) -> dict:
    """Every k's and floor's kept share and precision, majority@k and pass@k, with intervals."""
    import numpy as np

    from crescent.domains import for_question, is_correct
    from crescent.engines import derive_seed
    from crescent.intervals import ratio_interval
    from crescent.methods.voting import counted_answers, vote

    counted = [counted_answers(r, k_max, cfg.voting.drop_truncated,
                               f"audit: question {r['id']!r}", "answers.samples")[0]
               for r in records]
    readers = [for_question(reader, r) for r in records]
    right = np.array([[is_correct(own, a, golds[r["id"]]) for a in answers]
                      for r, answers, own in zip(records, counted, readers)], dtype=float)
    ones = np.ones(len(records))
    seeds = [derive_seed(cfg.seed, "vote", r["id"]) for r in records]

    def label_right(k: int, floor: int, tie_break: str):
        """Per question: kept (a label) and whether the label is the gold answer."""
        voting = OmegaConf.merge(cfg.voting, {"k": k, "min_votes": floor, "min_agreement": 0.0,
                                              "tie_break": tie_break})
        results = [vote(a[:k], r["samples"][:k], voting, seed, own)
                   for r, a, seed, own in zip(records, counted, seeds, readers)]
        kept = np.array([v.kept for v in results], dtype=float)
        correct = np.array([v.kept and is_correct(own, v.answer, golds[r["id"]])
                            for v, r, own in zip(results, records, readers)], dtype=float)
        return kept, correct

    by_k, grid = [], []
    for k in range(1, k_max + 1):
        _, majority = label_right(k, 1, "seeded")
        by_k.append({"k": k, "majority": ratio_interval(majority, ones),
                     "pass": ratio_interval(right[:, :k].max(axis=1), ones)})
        for floor in range(1, k + 1):
            kept, correct = label_right(k, floor, str(cfg.voting.tie_break))
            grid.append({"k": k, "floor": floor, "kept": int(kept.sum()),
                         "kept_share": ratio_interval(kept, ones),
                         "precision": ratio_interval(correct, kept)})
    return {"questions": len(records), "k_max": k_max, "tie_break": str(cfg.voting.tie_break),
            "sample_accuracy": ratio_interval(right.mean(axis=1), ones),
            "by_k": by_k, "grid": grid}


def _best(audit: dict) -> dict | None:
    """The cell whose precision's lower bound is highest (ties: the larger kept share)."""
    cells = [c for c in audit["grid"] if c["precision"]["value"] is not None]
    return max(cells, key=lambda c: (c["precision"]["low"], c["kept_share"]["value"]),
               default=None)


def _show(cell: dict) -> str:
    if cell["value"] is None:
        return "-"
    return f"{cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]"


def markdown(audit: dict) -> str:
    """The audit as tables: per k (majority@k, pass@k), then per k and floor (kept share,
    precision); a precision above the single-sample accuracy's interval is in bold."""
    single = audit["sample_accuracy"]
    intro = (f"{audit['questions']} questions with gold answers, {audit['k_max']} samples each; "
             f"a single sample is right {_show(single)} of the time.")
    lines = [intro, "",
             "| k | majority@k | pass@k |", "| --- | --- | --- |"]
    lines += [f"| {row['k']} | {_show(row['majority'])} | {_show(row['pass'])} |"
              for row in audit["by_k"]]
    lines += ["", "| k | floor (votes) | kept | kept share | precision of kept labels |",
              "| --- | --- | --- | --- | --- |"]
    for cell in audit["grid"]:
        precision = _show(cell["precision"])
        if cell["precision"]["value"] is not None and cell["precision"]["low"] > single["high"]:
            precision = f"**{precision}**"
        lines.append(f"| {cell['k']} | {cell['floor']} of {cell['k']} | {cell['kept']} | "
                     f"{_show(cell['kept_share'])} | {precision} |")
    lines += ["", "- 95% bootstrap intervals over the questions; floor: the votes the winning "
              "answer needs (no share floor); ties: " + audit["tie_break"] + "; majority@k "
              "breaks ties by seed and counts a question without a label as wrong; bold: "
              "precision whose interval lies above the single-sample accuracy's."]
    return "\n".join(lines)


def plot(audits: list[tuple[str, dict]], path: Path) -> Path:
    """Precision of the kept labels against the share kept, one panel per (model, audit), one
    line per k through its floors, with the single-sample accuracy as a band."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(audits), figsize=(5 * len(audits), 4), squeeze=False)
    for ax, (label, audit) in zip(axes[0], audits):
        single = audit["sample_accuracy"]
        ax.axhspan(single["low"], single["high"], color="grey", alpha=0.25,
                   label="one sample (95%)")
        for k in range(1, audit["k_max"] + 1):
            cells = [c for c in audit["grid"] if c["k"] == k and c["precision"]["value"] is not None]
            if not cells:
                continue
            x = [c["kept_share"]["value"] for c in cells]
            y = [c["precision"]["value"] for c in cells]
            err = [[c["precision"]["value"] - c["precision"]["low"] for c in cells],
                   [c["precision"]["high"] - c["precision"]["value"] for c in cells]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=2, label=f"k={k}")
        ax.set_xlabel("share of questions kept")
        ax.set_ylabel("precision of kept labels")
        ax.set_title(f"{label}: {audit['questions']} questions")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def headline(stats: dict) -> str:
    """The summary's line for this stage."""
    best = stats.get("best_precision")
    single = stats.get("sample_accuracy") or {}
    text = f"{stats.get('questions')} questions, one sample right {single.get('value', 0):.3f}"
    if best:  # ranked by the interval's lower bound: a high value on few kept is not "best"
        text += (f"; surest kept precision {_show(best['precision'])} at k={best['k']}, "
                 f"floor {best['floor']} ({best['kept_share']['value']:.0%} kept)")
    return text
