"""crescent-report's tables: runs that differ only in a replica key (`seed`, `finetune.seed`)
are replicas of one setting; one table per study, rows = the base model and each setting,
columns = benchmarks; a cell is the mean ± the 95% Student t half-width over the n replicas, or
with one replica a 95% bootstrap interval over the scored documents, and each setting's paired
delta against the base with its interval. Each setting against the base (and another setting)
document by document: per-document scores averaged over replicas, a bootstrap over documents.
Markdown and LaTeX, best fine-tuned mean in bold."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from crescent.errors import CrescentError
from crescent.methods.metrics import SCORE, fmt
from crescent.registry import STAGES
from crescent.report.runs import REPLICA_KEYS, lower_is_better


def _cell(values: list[float], per_doc: list, metric: str, paired: list | None = None) -> dict:
    """A table cell from replica values: a t interval for n >= 2, else a bootstrap one over
    the documents of the single run (paired with the base's documents for a delta)."""
    from crescent.intervals import bootstrap, t_interval

    cell = t_interval(values)
    cell["ci"] = None
    if cell["n"] == 1:
        cell["ci"] = bootstrap(metric, per_doc, paired) if per_doc else None
    return cell


def summarize(rows: list[dict]) -> list[dict]:
    """One study's table rows: the base model, then each setting (its replicas pooled; runs
    written by other stage versions are a setting of their own)."""
    settings: dict[str, list[dict]] = defaultdict(list)
    mixed = mixed_versions(rows)
    inputs = len({r.get("input") for r in rows}) > 1  # answers.input is not an override's word
    for r in rows:
        # One word: row labels leave out the words every setting shares.
        apart = ",".join(f"{stage}:v{r['versions'].get(stage)}" for stage in mixed)
        source = f" [input:{r.get('input') or 'questions'}]" if inputs else ""
        settings[r["setting"] + (f" [{apart}]" if mixed else "") + source].append(r)
    tasks = sorted({t for r in rows for t in r["scores"]})
    out = _base_rows(rows, tasks)
    for setting, runs in settings.items():
        line = {"setting": setting, "n": len(runs), "runs": [r["run"] for r in runs],
                "replicas": [r["replica"] for r in runs], "kept": _mean_of(runs, "kept"),
                "answered": _mean_of(runs, "answered"),
                "wandb": [r["wandb_id"] for r in runs if r["wandb_id"]], "cells": {},
                "deltas": {}, "examples": _mean_of(runs, "examples"),
                "votes": runs[0]["votes"], "floor": runs[0]["floor"], "model": runs[0]["model"],
                "steps": _mean_of(runs, "steps"), "gold_labels": runs[0].get("gold_labels"),
                "input": runs[0].get("input")}
        for task in tasks:
            scored = [r["scores"][task] for r in runs if r["scores"].get(task, {}).get("finetuned")
                      is not None]
            if not scored:
                continue
            metric, first = scored[0]["metric"], scored[0]["per_doc"]
            line["cells"][task] = _cell([s["finetuned"] for s in scored],
                                        first.get("finetuned", []), metric)
            paired = [s for s in scored if s.get("base") is not None]
            if paired:
                line["deltas"][task] = _cell([s["finetuned"] - s["base"] for s in paired],
                                             first.get("finetuned", []), metric,
                                             first.get("base", []))
        # Replicas with scores: a run still in progress is not one yet.
        line["n"] = max((cell["n"] for cell in line["cells"].values()), default=len(runs))
        if line["cells"] or line["examples"] or line["kept"] is not None:
            out.append(line)  # else a study that fine-tunes nothing (scores models as they are)
    return out


def settings_of(summary: list[dict]) -> list[dict]:
    """The setting rows of a summary, its base rows left out."""
    return [line for line in summary if not line.get("base")]


def _base_rows(rows: list[dict], tasks: list[str]) -> list[dict]:
    """The base model's row, one per model where a study scores several: one score per
    distinct base evaluation (a shared base-score entry makes that one), with a bootstrap
    interval over its documents."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = []
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        label = "base model" if len(models) == 1 else f"base: {model}"
        line = {"setting": label, "base": True, "n": 1, "cells": {}, "deltas": {},
                "kept": None, "answered": None, "wandb": [], "runs": [], "replicas": [], "examples": 0,
                "votes": None, "floor": None, "model": model, "steps": None, "gold_labels": None,
                "input": None}
        for task in tasks:
            scored = [r["scores"][task] for r in mine
                      if r["scores"].get(task, {}).get("base") is not None]
            if scored:
                values = sorted({s["base"] for s in scored})
                line["cells"][task] = _cell(values, scored[0]["per_doc"].get("base", []),
                                            scored[0]["metric"])
        lines.append(line)
    return lines


def _mean_of(runs: list[dict], key: str):
    values = [r["funnel"][key] if key in r["funnel"] else r.get(key) for r in runs]
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _show(cell: dict | None, signed: bool = False) -> str:
    if cell is None:
        return "-"
    value = fmt(cell["mean"], f"+{SCORE}" if signed else SCORE)
    if cell["half"] is not None:
        return f"{value} ± {fmt(cell['half'])}"
    if cell["ci"] is not None:
        return f"{value} [{fmt(cell['ci'][0])}, {fmt(cell['ci'][1])}]"
    return value


def table(rows: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, cells and footnotes of one study's paper table; best fine-tuned mean in bold."""
    summary = summarize(rows)
    tasks = sorted({t for r in rows for t in r["scores"]})
    score = {t: next(r["scores"][t] for r in rows if t in r["scores"]) for t in tasks}
    lower = {t: lower_is_better(score[t]) for t in tasks}
    header = ["setting", "n", "examples"]  # the pairs each fine-tune trained on
    for task in tasks:
        header += [f"{task} {score[task]['metric']} {'↓' if lower[task] else '↑'}", "Δ vs base"]
    header.append("W&B runs")
    best = {}
    for task in tasks:
        means = [line["cells"][task]["mean"] for line in settings_of(summary)
                 if task in line["cells"]]
        if len(means) > 1:
            best[task] = min(means) if lower[task] else max(means)
    cells = []
    for line in summary:
        row = [row_label(line, summary), str(line["n"]), fmt(line["examples"] or None, ".4g")]
        for task in tasks:
            text = _show(line["cells"].get(task))
            if not line.get("base") and task in best and \
                    line["cells"].get(task, {}).get("mean") == best[task]:
                text = f"**{text}**"
            row += [text, _show(line["deltas"].get(task), signed=True)]
        row.append(", ".join(line["wandb"]) or "-")
        cells.append(row)
    return header, cells, footnotes(rows, tasks)


def row_label(line: dict, summary: list[dict]) -> str:
    """A setting is labelled by what sets it apart: overrides every setting shares are left out."""
    settings = [s["setting"] for s in settings_of(summary)]
    if line.get("base") or len(settings) < 2:
        return line["setting"]
    shared = set.intersection(*(set(s.split(" ")) for s in settings))
    return " ".join(o for o in line["setting"].split(" ") if o not in shared) or line["setting"]


def mixed_versions(rows: list[dict]) -> list[str]:
    """The stages that runs of one study wrote with different stage versions."""
    return [stage for stage in STAGES.in_order()
            if len({r["versions"][stage] for r in rows if r["versions"].get(stage)}) > 1]


def footnotes(rows: list[dict], tasks: list[str]) -> list[str]:
    """How to read the cells, which eval limit (documents per task) each number used, which
    runs are unfinished, and that rows of other stage versions stand apart."""
    notes = [("mean ± half-width: 95% Student t interval over the n replicas (runs differing "
              f"only in {' / '.join(REPLICA_KEYS)}); [low, high]: 95% bootstrap interval over "
              "the scored documents (one run); Δ vs base: paired per replica (or per document).")]
    for task in tasks:
        limits = sorted({str(r["eval_limits"].get(task)) for r in rows if task in r["scores"]})
        docs = sorted({str(r["scores"][task]["docs"]) for r in rows if task in r["scores"]})
        notes.append(f"{task}: eval.limit={'/'.join(limits).replace('None', 'null (full set)')}, "
                     f"{'/'.join(docs)} documents scored")
    for r in rows:
        if r["unfinished"]:
            notes.append(f"unfinished: {r['run']} ({', '.join(r['unfinished'])} not done): its "
                         f"cells show only what it finished")
    mixed = mixed_versions(rows)
    if mixed:
        notes.append(f"{', '.join(mixed)}: written by different stage versions "
                     f"across these runs, which are not pooled: each setting's label ends in "
                     f"its runs' versions")
    return notes


def compute_cost(rows: list[dict]) -> dict:
    """Hours of computing behind a study's runs, per stage and in all: each stage output (a
    cache entry, or a run's own dir) counted once, however many runs link to it."""
    seconds: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        for stage, where, spent in r["cost"]:
            seconds[stage][where] = spent
    stages = {stage: {"hours": sum(spent.values()) / 3600, "outputs": len(spent)}
              for stage, spent in seconds.items()}
    return {"hours": sum(s["hours"] for s in stages.values()), "stages": stages}


def cost_markdown(cost: dict) -> str:
    parts = ", ".join(f"{stage} {s['hours']:.2f} h ({s['outputs']} computed)"
                      for stage, s in cost["stages"].items())
    return (f"Compute: {cost['hours']:.2f} h in all ({parts}): the stages' own wall times, an "
            "output that several runs share counted once, a stage resumed after an interruption "
            "by its last attempt only.\n")


def _per_doc_mean(replicas: list[list]) -> list:
    """Each document's value averaged over a setting's replicas ((log-likelihood, bytes)
    pairs average their log-likelihood: the bytes are the document's)."""
    if isinstance(replicas[0][0], (list, tuple)):
        return [(sum(p[0] for p in doc) / len(doc), doc[0][1]) for doc in zip(*replicas)]
    return [sum(doc) / len(doc) for doc in zip(*replicas)]


def paired(rows: list[dict], against: str | None = None,
           contrasts: list[tuple[str, str]] | None = None) -> list[dict]:
    """Differences between settings, document by document: per task, a setting's
    per-document score averaged over its replicas, the difference of the corpus metric, its 95%
    percentile bootstrap over the documents (the same draw for both sides), its bootstrap
    p-value Holm-adjusted over the family listed, the share of documents scored differently
    and the smallest difference detectable at 80% power. The family: `contrasts` (pairs of
    settings, each named whole, by a unique part of its name, or `base`), else every setting
    against the base and against the `against` setting. It measures how much the benchmark's
    sample could move a gap, not the training seed's spread (the table's t intervals)."""
    from crescent.intervals import aggregate, holm, paired_test

    out = []
    for task in sorted({t for r in rows for t in r["scores"]}):
        scored = [r for r in rows if r["scores"].get(task, {}).get("per_doc", {}).get("finetuned")]
        if not scored:
            continue
        metric = scored[0]["scores"][task]["metric"]
        by_setting = defaultdict(list)
        for r in scored:
            by_setting[r["setting"]].append(r["scores"][task]["per_doc"]["finetuned"])
        docs = {s: _per_doc_mean(v) for s, v in by_setting.items() if len({len(x) for x in v}) == 1}
        base = next((r["scores"][task]["per_doc"].get("base") for r in scored
                     if r["scores"][task]["per_doc"].get("base")), None)
        if base:
            docs.setdefault("base", base)
        family = [(_named(a, docs), _named(b, docs)) for a, b in contrasts] if contrasts else \
            [(s, other) for s in docs if s != "base" for other in ("base", against)]
        for setting, name in family:
            mine, other = docs.get(setting), docs.get(name)
            if not mine or not other or name == setting or len(other) != len(mine):
                continue
            out.append({"task": task, "metric": metric, "setting": setting, "against": name,
                        "replicas": len(by_setting.get(setting, [None])),
                        "documents": len(mine),
                        "difference": aggregate(metric, mine) - aggregate(metric, other),
                        **paired_test(metric, mine, other)})
    for line, adjusted in zip(out, holm([line["p"] for line in out])):
        line["p_holm"] = adjusted
    return out


def _named(name: str, docs: dict) -> str:
    """The setting a contrast names: itself, `base`, or the one setting whose name holds it."""
    if name in docs:
        return name
    found = [s for s in docs if name in s]
    if len(found) != 1:
        raise CrescentError(f"--contrast {name!r}: {'no' if not found else 'more than one'} "
                            f"setting named so (settings: {', '.join(sorted(docs))})")
    return found[0]


def paired_markdown(lines: list[dict]) -> str:
    signed = f"+{SCORE}"
    rows = [[f"{p['task']} {p['metric']}", f"{p['setting']} - {p['against']}", str(p["replicas"]),
             str(p["documents"]), fmt(p["difference"], signed),
             f"[{fmt(p['ci'][0], signed)}, {fmt(p['ci'][1], signed)}]" if p["ci"] else "-",
             fmt(p["p_holm"], ".3f"), fmt(p["discordant"]), fmt(p["detectable"])]
            for p in lines]
    return markdown(["task", "difference", "replicas", "documents", "value",
                     "95% paired bootstrap over documents", "p (Holm)", "discordant",
                     "detectable at 80% power"], rows)


def retest(rows: list[dict]) -> list[dict]:
    """Runs that scored the base alone, two by two on the same documents (the base scored
    again, batched otherwise): per task, the share of documents whose score flipped, the
    measurement floor every difference is read against."""
    from itertools import combinations

    out = []
    alone = [r for r in rows if not any(s.get("per_doc", {}).get("finetuned")
                                        for s in r["scores"].values())]
    for first, second in combinations(alone, 2):
        for task in sorted(set(first["scores"]) & set(second["scores"])):
            a = first["scores"][task]["per_doc"].get("base")
            b = second["scores"][task]["per_doc"].get("base")
            if a and b and len(a) == len(b) and not isinstance(a[0], (list, tuple)):
                out.append({"task": task, "metric": first["scores"][task]["metric"],
                            "runs": [first["setting"], second["setting"]], "documents": len(a),
                            "scores": [sum(a) / len(a), sum(b) / len(b)],
                            "flipped": sum(x != y for x, y in zip(a, b)) / len(a)})
    return out


def retest_markdown(lines: list[dict]) -> str:
    rows = [[f"{r['task']} {r['metric']}", " vs ".join(r["runs"]), str(r["documents"]),
             " / ".join(map(fmt, r["scores"])), fmt(r["flipped"])] for r in lines]
    return markdown(["task", "base scored twice", "documents", "scores", "flip rate"], rows)


def lengths_markdown(rows: list[dict]) -> str:
    """Each model's answers per generation task: mean tokens and the share cut at the cap."""
    cells = [[r["setting"], label, task, str(v["cap"]), fmt(v["mean_tokens"], ".1f"),
              fmt(v["cut_at_cap"])]
             for r in rows for label, tasks in sorted(r.get("lengths", {}).items())
             for task, v in sorted(tasks.items())]
    return markdown(["setting", "model", "task", "cap", "mean answer tokens", "cut at the cap"],
                    cells) if cells else ""


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


def latex(header: list[str], cells: list[list[str]]) -> str:
    def tex(text: str) -> str:
        text = text.replace("\\", "\\textbackslash{}")
        for char in "&%$#_{}":
            text = text.replace(char, "\\" + char)
        text = text.replace("±", "$\\pm$").replace("Δ", "$\\Delta$")
        text = text.replace("↓", "$\\downarrow$").replace("↑", "$\\uparrow$")
        if text.startswith("**") and text.endswith("**"):
            text = "\\textbf{" + text[2:-2] + "}"
        return text

    body = [" & ".join(tex(h) for h in header) + " \\\\", "\\midrule"]
    body += [" & ".join(tex(c) for c in row) + " \\\\" for row in cells]
    return ("\\begin{tabular}{l" + "r" * (len(header) - 1) + "}\n\\toprule\n"
            + "\n".join(body) + "\n\\bottomrule\n\\end{tabular}\n")


def audit_section(study: str, rows: list[dict], out: Path) -> str:
    """The vote audit of each run (its model and point), and one precision-vs-kept-share plot
    with a panel per run."""
    from crescent.stages import audit

    parts = [f"## {study}: vote audit\n"]
    for r in rows:
        parts.append(f"### {r['model']} ({r['point']})\n\n{audit.markdown(r['audit'])}\n")
    path = audit.plot([(f"{r['model']}", r["audit"]) for r in rows], out / f"{study}_audit.png")
    parts.append(f"![{path.stem}]({path.name})\n")
    return "\n".join(parts)
