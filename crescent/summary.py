"""The run summary printed at the end of every `crescent` run, built from the stages' stats.json.

Per stage: ran or reused, wall time and its headline (accepted questions, kept pairs, training
loss first -> last, each score with its delta against the base model); then where the outputs
are and the `crescent-report` command to run next.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from crescent.cache import STATS, load_stage
from crescent.infra.io import read_json

logger = logging.getLogger(__name__)


def _rel(path: Path) -> str:
    """A path as the user would type it from where they ran crescent."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("../..") else str(Path(path).absolute())


def headline(stage: str, stats: dict) -> str:
    """One stage's counts in a few words: its module's `headline(stats)`, when it has one."""
    said = getattr(load_stage(stage), "headline", None)
    return said(stats) if said is not None and stats else ""


def scores(stats: dict) -> list[str]:
    """`task metric: base -> finetuned (delta)` per headline score of the evaluate stage."""
    models = [k for k in stats.get("models", {}) if isinstance(stats.get(k), dict)]
    if not models:
        return []
    base, others = models[0], models[1:]
    out = []
    for task, metrics in stats[base].items():
        for metric, value in metrics.items():
            text = f"{task} {metric}: {base} {num(value)}"
            for label in others:
                got = stats[label].get(task, {}).get(metric)
                delta = stats.get("delta", {}).get(label, {}).get(task, {}).get(metric)
                text += f", {label} {num(got)} ({num(delta, signed=True)})"
            out.append(text)
    return out


def num(value, signed: bool = False) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}" if isinstance(value, float) else str(value)


def summary_lines(run_dir: Path, summary: dict, wall_s: float) -> list[str]:
    lines = [f"crescent: summary ({wall_s:.0f} s in all)"]
    for stage, info in summary.items():
        stats_path = Path(run_dir) / stage / STATS
        stats = read_json(stats_path) if stats_path.is_file() else {}
        state = "reused" if info.get("reused") else "ran"
        wall = info.get("wall_time_s")
        took = f"{wall:.1f} s" if isinstance(wall, (int, float)) else "-"
        lines.append(f"  {stage:<9} {state:<6} {took:>8}  {headline(stage, stats)}")
    lines.append(f"  outputs: {_rel(Path(run_dir))}/<stage>/ (pipeline.json lists the cache "
                 f"entries)")
    lines.append(f"  next: crescent-report {_rel(Path(run_dir))}")
    return lines


def print_summary(run_dir: Path, summary: dict, wall_s: float) -> None:
    for line in summary_lines(run_dir, summary, wall_s):
        logger.info(line)
