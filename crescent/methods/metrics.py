"""lm-eval's raw results as metrics, and the table of models side by side with their deltas."""

from __future__ import annotations

import math
from pathlib import Path

BASE, FINETUNED = "base", "finetuned"  # the default labels: the student and this run's model
LM_EVAL_MAX_GEN_TOKS = 256  # what lm-eval's generation tasks stop at unless they say otherwise
SCORE = ".4f"  # a score, a difference of scores, an interval's end, a share of documents


def fmt(value, form: str = SCORE) -> str:
    """A number as every table prints it (`form`, a format spec); "-" for none."""
    return "-" if value is None else format(value, form)


def metrics_of(results: dict) -> dict[str, dict[str, float]]:
    """lm-eval's raw results -> {task: {metric: value}}: the `metric,filter` numbers, stderrs
    kept, the `,none` filter suffix dropped (`bits_per_byte,none` -> `bits_per_byte`)."""
    out: dict[str, dict[str, float]] = {}
    for task, values in {**results.get("results", {}), **results.get("groups", {})}.items():
        metrics = {}
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # name, alias, sample_len; "N/A" stderrs
            if isinstance(value, float) and math.isnan(value):
                continue
            metrics[key.removesuffix(",none")] = value
        if metrics:
            out[task] = metrics
    return out


def declared_headline(results: dict, task: str) -> str | None:
    """The metric a task declares as its headline (`metadata: headline:` in its YAML, as
    lm-eval's results record the task's config), named as `metrics_of` names it."""
    metadata = (results.get("configs", {}).get(task) or {}).get("metadata") or {}
    return str(metadata["headline"]).removesuffix(",none") if metadata.get("headline") else None


def headline(metrics: dict, declared: str | None = None) -> tuple[str, float] | None:
    """The metric a table shows for a task: the one it declares, else the first non-stderr
    number by name; None when it has none."""
    from crescent.errors import CrescentError

    numbers = {k: v for k, v in metrics.items()
               if isinstance(v, (int, float)) and "stderr" not in k}
    if declared is not None:
        if declared not in numbers:
            raise CrescentError(f"headline {declared!r}: not among the task's metrics "
                                f"({', '.join(sorted(numbers)) or 'none'})")
        return declared, float(numbers[declared])
    if not numbers:
        return None
    name = min(numbers)
    return name, float(numbers[name])


def lower_is_better(raw: dict[str, dict]) -> set[tuple[str, str]]:
    """(task, metric) pairs whose `higher_is_better` is false in any model's results."""
    lower = set()
    for results in raw.values():
        for task, flags in results.get("higher_is_better", {}).items():
            lower |= {(task, m) for m, higher in flags.items() if higher is False}
    return lower


def _base_metric(name: str) -> str:
    return name.split(",", 1)[0]


def headline_pairs(metrics: dict, tasks: list[str]) -> list[tuple[str, str]]:
    """(task, metric) rows of the table: the requested tasks' metrics, no stderrs, in order."""
    rows: list[tuple[str, str]] = []
    for task in tasks:
        names: list[str] = []
        for per_task in metrics.values():
            for name in per_task.get(task, {}):
                if "_stderr" not in name and name not in names:
                    names.append(name)
        rows += [(task, name) for name in names]
    return rows


def reference_label(metrics: dict) -> str:
    return BASE if BASE in metrics else next(iter(metrics))


def deltas(metrics: dict, tasks: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{label: {task: {metric: label's value - reference's value}}} for every other label."""
    ref = reference_label(metrics)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, per_task in metrics.items():
        if label == ref:
            continue
        for task, name in headline_pairs(metrics, tasks):
            a = per_task.get(task, {}).get(name)
            b = metrics[ref].get(task, {}).get(name)
            if a is not None and b is not None:
                out.setdefault(label, {}).setdefault(task, {})[name] = a - b
    return out


def delta_table(metrics: dict, tasks: list[str], lower: set[tuple[str, str]] = frozenset()) -> str:
    """A Markdown table: one row per (task, metric), one column per model, then the deltas
    against the reference model (`base`); arrows say which direction is better."""
    labels = list(metrics)
    ref = reference_label(metrics)
    others = [label for label in labels if label != ref]
    diff = {label: {} for label in others} | deltas(metrics, tasks)
    header = ["task", "metric", *labels, *(f"{label} - {ref}" for label in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, name in headline_pairs(metrics, tasks):
        arrow = "↓" if (task, _base_metric(name)) in lower else "↑"
        cells = [task, f"{name} {arrow}"]
        cells += [fmt(metrics[label].get(task, {}).get(name)) for label in labels]
        cells += [fmt(diff[label].get(task, {}).get(name), f"+{SCORE}") for label in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline_stats(metrics, tasks, raw, models, seconds) -> dict:
    """stats.json: the requested tasks' metrics per model and the deltas (logged to W&B as
    `evaluate/<label>/<task>/<metric>`), sample counts, model paths and scoring times."""
    pairs = headline_pairs(metrics, tasks)
    stats: dict = {}
    for label, per_task in metrics.items():
        for task, name in pairs:
            if name in per_task.get(task, {}):
                stats.setdefault(label, {}).setdefault(task, {})[name] = per_task[task][name]
    stats["delta"] = deltas(metrics, tasks)
    stats["n_samples"] = {
        task: n.get("effective")
        for results in raw.values()
        for task, n in results.get("n-samples", {}).items()
        if task in tasks
    }
    stats["models"] = models
    stats["score_seconds"] = seconds
    return stats


def answer_lengths(label_dir: Path, results: dict, model: str) -> dict[str, dict]:
    """task -> {"answers", "mean_tokens", "cut_at_cap", "cap"} for each generation task a model
    scored: its answers re-tokenised with the model's tokenizer, the share that reached the
    task's `max_gen_toks` (within one token: detokenising and tokenising again may merge one),
    a truncated answer being scored on whatever number it stopped at."""
    import json

    from transformers import AutoTokenizer

    tokenizer, lengths = None, {}
    for task, config in results.get("configs", {}).items():
        cap = (config.get("generation_kwargs") or {}).get("max_gen_toks", LM_EVAL_MAX_GEN_TOKS)
        path = Path(label_dir) / f"samples_{task}.jsonl"
        if config.get("output_type") != "generate_until" or not path.is_file():
            continue
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        answers = [json.loads(line)["resps"][0][0] for line in path.open(encoding="utf-8")]
        if not answers:
            continue
        counts = [len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]]
        lengths[task] = {"answers": len(counts), "cap": cap,
                         "mean_tokens": round(sum(counts) / len(counts), 1),
                         "cut_at_cap": round(sum(c >= cap - 1 for c in counts) / len(counts), 4)}
    return lengths
