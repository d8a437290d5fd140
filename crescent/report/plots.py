"""crescent-report's plots, every one with error bars: the question funnel, the scores per
setting, and score against examples (data volume) or votes, a panel per task with the base
model's score as a line; against data volume, one line per vote floor where the settings vote
with several, labelled with the floor's kept share and, from a vote audit of the same model in
the report, its labels' precision."""

from __future__ import annotations

from pathlib import Path

from crescent.report.tables import row_label, settings_of, summarize


def _err(cell: dict) -> float:
    """A symmetric error bar: the t half-width, else half the bootstrap interval's width."""
    if cell["half"] is not None:
        return cell["half"]
    return (cell["ci"][1] - cell["ci"][0]) / 2 if cell["ci"] else 0.0


def plots(study: str, rows: list[dict], out: Path, audits: list[dict] = ()) -> list[Path]:
    """The study's plots; `audits`: vote-audit runs in the same report, whose label precision
    at each vote floor labels the score-vs-examples lines of the same model."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    from crescent.intervals import t_interval

    everything = summarize(rows)
    summary = settings_of(everything)
    written = [_scores_plot(study, everything, out)]
    if not summary:  # a study that scores models as they are: no funnel, no settings
        return [p for p in written if p is not None]
    steps = ["candidates", "questions", "answered", "kept"]
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(summary) + 2), 3.5))
    width = 0.8 / len(summary)
    for i, line in enumerate(summary):
        runs = [r for r in rows if r["run"] in line["runs"]]
        counts = [t_interval([r["funnel"][s] or 0 for r in runs]) for s in steps]
        ax.bar([s + i * width for s in range(len(steps))], [c["mean"] for c in counts], width,
               yerr=[c["half"] or 0 for c in counts], capsize=3, label=row_label(line, summary))
    ax.set_xticks([s + 0.4 - width / 2 for s in range(len(steps))], steps)
    ax.set_ylabel("items (mean over replicas)")
    ax.set_title(f"{study}: question funnel")
    ax.legend(fontsize="small")
    written.append(_save(fig, out / f"{study}_funnel.png"))
    for axis, label in (("examples", "fine-tuning examples"), ("votes", "votes per question (k)")):
        if len({line[axis] for line in summary if line[axis] is not None and line["cells"]}) >= 2:
            written.append(_versus_plot(study, everything, axis, label, out, audits))
    return [p for p in written if p is not None]


def _scores_plot(study: str, summary: list[dict], out: Path) -> Path | None:
    """One panel per task: each setting's score (base first) with its 95% interval."""
    import matplotlib.pyplot as plt

    tasks = sorted({t for line in summary for t in line["cells"]})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 + 1.2 * len(summary), 3.5 * 1),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        lines = [line for line in summary if task in line["cells"]]
        ax.bar(range(len(lines)), [line["cells"][task]["mean"] for line in lines],
               yerr=[_err(line["cells"][task]) for line in lines], capsize=4)
        ax.set_xticks(range(len(lines)), [row_label(line, summary) for line in lines],
                      rotation=30, ha="right", fontsize="small")
        ax.set_title(task, fontsize="small")
    fig.suptitle(f"{study}: scores (95% intervals)")
    return _save(fig, out / f"{study}_scores.png")


def _versus_plot(study: str, everything: list[dict], axis: str, label: str, out: Path,
                 audits: list[dict]) -> Path:
    """Fine-tuned score against data volume or votes, one line per task, with error bars.
    Against data volume, where the settings vote with different floors, one line per task and
    floor: the plateau question (does a higher floor's fewer, surer labels beat more of them?),
    each floor with its kept share and, from a vote audit of the same model, its labels'
    precision. The base model's score is a dashed line."""
    import matplotlib.pyplot as plt

    summary = settings_of(everything)
    # Against data volume: a line per arm (its labels' source: gold, or the vote at its floor,
    # and the questions it answered), where the settings hold several.
    arms = {arm_of(line) for line in summary if line["cells"]}
    group = arm_of if axis == "examples" and len(arms) > 1 else None
    tasks = sorted({t for line in summary for t in line["cells"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=((6 if group else 4.5) * len(tasks), 3.8),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):  # a panel per task: their scales differ
        for key in sorted({group(line) for line in summary}, key=str) if group else [None]:
            lines = [line for line in summary if line[axis] is not None and task in line["cells"]
                     and (group is None or group(line) == key)]
            points = sorted((line[axis], line["cells"][task]["mean"], _err(line["cells"][task]),
                             line.get("steps")) for line in lines)
            if not points:
                continue
            x, y, err, steps = zip(*points)
            name = "fine-tuned" if group is None else _floor_label(lines, audits)
            if group is not None and len({line["input"] for line in summary}) > 1:
                name = f"{lines[0]['input'] or 'own questions'}: {name}"
            ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=name)
            for at, value, n in zip(x, y, steps):
                if n:  # the optimizer steps behind the point: volume is also training length
                    ax.annotate(f"{n:.0f} steps", (at, value), textcoords="offset points",
                                xytext=(4, -10), fontsize="xx-small")
        for base in (line for line in everything if line.get("base") and task in line["cells"]):
            ax.axhline(base["cells"][task]["mean"], color="grey", linestyle="--",
                       label=base["setting"])
        ax.set_xlabel(label)
        ax.set_ylabel("fine-tuned score (95% interval)")
        ax.set_title(task, fontsize="small")
        ax.legend(fontsize="x-small")
    fig.suptitle(f"{study}: score vs {label}")
    return _save(fig, out / f"{study}_score_vs_{axis}.png")


def arm_of(line: dict) -> tuple:
    """The arm a volume curve follows: where its labels come from (gold, or the vote at its k
    and floor) and the questions they label."""
    labels = ("gold",) if line.get("gold_labels") else (line["votes"], line["floor"])
    return (*labels, line.get("input") or "")


def _floor_label(lines: list[dict], audits: list[dict]) -> str:
    """'floor 2 of 4, 44% kept, labels right 58% [48%, 67%] (audit)' for settings of one floor:
    the kept share of the largest of them (the others train on a part of it), the precision
    from the vote audit of their model at that k and floor, where the report has one."""
    widest = max(lines, key=lambda line: line["examples"] or 0)
    if widest.get("gold_labels"):
        return "gold labels (right 100%)"
    k, floor = widest["votes"], widest["floor"]
    text = f"floor {floor} of {k}"
    if widest["kept"] is not None and widest.get("answered"):
        text += f", {widest['kept'] / widest['answered']:.0%} kept"
    cell = next((c for r in audits if r["model"] == widest["model"]
                 for c in r["audit"]["grid"] if (c["k"], c["floor"]) == (k, floor)), None)
    if cell is not None and cell["precision"]["value"] is not None:
        p = cell["precision"]
        text += f", labels right {p['value']:.0%} [{p['low']:.0%}, {p['high']:.0%}] (audit)"
    return text


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
