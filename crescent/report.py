"""`crescent-report <run or multirun dir>...`: paper tables and plots from finished runs.

Every Hydra job dir under the given dirs (found by its `.hydra/` folder) is one row: its sweep
overrides, the question funnel from the stages' `stats.json`, and per task the headline metric
of the base and the fine-tuned model from `evaluate/metrics.json`, with the delta. Rows are
grouped into one table per study (the run's `name`), written as Markdown and LaTeX with the
best fine-tuned value of each column in bold; PNG plots show the funnel, and accuracy against
data volume or votes when a study varies them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

# Metrics where lower is better; everything else is higher-is-better.
_LOWER_IS_BETTER = ("bits_per_byte", "bpb", "perplexity", "loss")


def find_runs(dirs: list[Path]) -> list[Path]:
    runs = []
    for top in dirs:
        for root, subdirs, _ in os.walk(top):  # links into the cache are not followed
            if ".hydra" in subdirs:
                runs.append(Path(root))
                subdirs.clear()
    return sorted(runs)


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def headline(metrics: dict) -> tuple[str, float] | None:
    """The metric a table shows for a task: the first non-stderr number, by name."""
    numbers = {k: v for k, v in metrics.items()
               if isinstance(v, (int, float)) and "stderr" not in k}
    if not numbers:
        return None
    name = sorted(numbers)[0]
    return name, float(numbers[name])


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in _LOWER_IS_BETTER)


def collect(run: Path) -> dict:
    """One row: what the run varied, its funnel, its scores."""
    from omegaconf import OmegaConf

    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml") \
        if (run / ".hydra" / "overrides.yaml").exists() else []
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    stats = {stage: _read(run / stage / "stats.json") or {}
             for stage in ("questions", "answers", "finetune", "evaluate")}
    scores = {}
    for label, tasks in (_read(run / "evaluate" / "metrics.json") or {}).items():
        for task, metrics in tasks.items():
            picked = headline(metrics)
            if picked:
                scores.setdefault(task, {"metric": picked[0]})[label] = picked[1]
    wandb_id = (run / "wandb_id").read_text().strip() if (run / "wandb_id").exists() else None
    return {
        "run": str(run),
        "study": OmegaConf.select(config, "name", default=run.parent.name),
        "point": " ".join(o for o in overrides if not o.startswith(("experiment=", "logger")))
                 or "(defaults)",
        "votes": OmegaConf.select(config, "voting.k", default=None),
        "funnel": {
            "candidates": stats["questions"].get("candidates"),
            "questions": stats["questions"].get("accepted"),
            "answered": stats["answers"].get("answered"),
            "kept": stats["answers"].get("kept"),
        },
        "examples": stats["finetune"].get("examples", stats["answers"].get("kept")),
        "scores": scores,
        "reused": {k: v.get("reused") for k, v in (_read(run / "pipeline.json") or {}).items()},
        "wandb_id": wandb_id,
    }


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of one study's table; the best fine-tuned score per task in **bold**."""
    tasks = sorted({t for r in rows for t in r["scores"]})
    header = ["sweep point", "questions", "kept"]
    for task in tasks:
        metric = next(r["scores"][task]["metric"] for r in rows if task in r["scores"])
        header += [f"{task} {metric} base", "finetuned", "delta"]
    header.append("W&B run")
    best = {}
    for task in tasks:
        values = [r["scores"].get(task, {}).get("finetuned") for r in rows]
        values = [v for v in values if v is not None]
        metric = next(r["scores"][task]["metric"] for r in rows if task in r["scores"])
        if values:
            best[task] = min(values) if lower_is_better(metric) else max(values)
    # A row is labelled by what sets it apart: overrides every row shares are left out.
    shared = (set.intersection(*(set(r["point"].split(" ")) for r in rows)) if len(rows) > 1
              else set())
    cells = []
    for r in rows:
        point = " ".join(o for o in r["point"].split(" ") if o not in shared) or r["point"]
        line = [point, _fmt(r["funnel"]["questions"]), _fmt(r["funnel"]["kept"])]
        for task in tasks:
            score = r["scores"].get(task, {})
            base, tuned = score.get("base"), score.get("finetuned")
            tuned_text = _fmt(tuned)
            if tuned is not None and tuned == best.get(task) and len(rows) > 1:
                tuned_text = f"**{tuned_text}**"
            delta = None if base is None or tuned is None else tuned - base
            line += [_fmt(base), tuned_text, "-" if delta is None else f"{delta:+.4g}"]
        line.append(r["wandb_id"] or "-")
        cells.append(line)
    return header, cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


def latex(header: list[str], cells: list[list[str]]) -> str:
    def tex(text: str) -> str:
        text = text.replace("\\", "\\textbackslash{}")
        for char in "&%$#_{}":
            text = text.replace(char, "\\" + char)
        if text.startswith("**") and text.endswith("**"):
            text = "\\textbf{" + text[2:-2] + "}"
        return text

    body = [" & ".join(tex(h) for h in header) + " \\\\", "\\midrule"]
    body += [" & ".join(tex(c) for c in row) + " \\\\" for row in cells]
    return ("\\begin{tabular}{l" + "r" * (len(header) - 1) + "}\n\\toprule\n"
            + "\n".join(body) + "\n\\bottomrule\n\\end{tabular}\n")


def plots(study: str, rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    written = []
    steps = ["candidates", "questions", "answered", "kept"]
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(rows) + 2), 3.5))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar([s + i * width for s in range(len(steps))],
               [r["funnel"][s] or 0 for s in steps], width, label=r["point"])
    ax.set_xticks([s + 0.4 - width / 2 for s in range(len(steps))], steps)
    ax.set_ylabel("items")
    ax.set_title(f"{study}: question funnel")
    ax.legend(fontsize="small")
    written.append(_save(fig, out / f"{study}_funnel.png"))

    for axis, label in (("examples", "fine-tuning examples"), ("votes", "votes per question (k)")):
        points = [r for r in rows if r[axis] is not None and r["scores"]]
        if len({r[axis] for r in points}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for task in sorted({t for r in points for t in r["scores"]}):
            xy = sorted((r[axis], r["scores"][task]["finetuned"]) for r in points
                        if r["scores"].get(task, {}).get("finetuned") is not None)
            if xy:
                ax.plot(*zip(*xy), marker="o", label=task)
        ax.set_xlabel(label)
        ax.set_ylabel("fine-tuned score")
        ax.set_title(f"{study}: score vs {label}")
        ax.legend(fontsize="small")
        written.append(_save(fig, out / f"{study}_score_vs_{axis}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crescent-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--out", type=Path, help="where to write (default: <first dir>/report)")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not d.is_dir():
            sys.exit(f"crescent-report: error: {d} is not a directory")
    runs = find_runs(args.dirs)
    if not runs:
        sys.exit(f"crescent-report: error: no runs (dirs with .hydra/) under "
                 f"{', '.join(map(str, args.dirs))}")
    out = args.out or args.dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)

    studies = defaultdict(list)
    for run in runs:
        row = collect(run)
        studies[row["study"]].append(row)
    md, tex = [], []
    for study, rows in studies.items():
        header, cells = table(rows)
        md.append(f"## {study}\n\n{markdown(header, cells)}")
        tex.append(f"% {study}\n{latex(header, cells)}")
        for path in plots(study, rows, out):
            md.append(f"![{path.stem}]({path.name})\n")
    (out / "report.md").write_text("\n".join(md))
    (out / "report.tex").write_text("\n".join(tex))
    (out / "report.json").write_text(json.dumps(studies, indent=2) + "\n")
    print("\n".join(md))
    print(f"crescent-report: {len(runs)} runs -> {out}/report.md, report.tex, report.json")


if __name__ == "__main__":
    main()
