"""`crescent-report <run or multirun dir>...`: paper tables and plots from finished runs.

Every run under the given dirs is read back (`runs.py`: overrides, funnel, scores per document
and each metric's direction as lm-eval declared it); runs that differ only in a replica key are
replicas of one setting; one table per study, as in a paper's main table, in Markdown and LaTeX,
with each setting paired against the base (and `--against` another setting) document by
document, and the study's compute in hours, each cache entry counted once (`tables.py`); a
second scoring pass of the same fine-tunes (`eval.*` overrides) adds columns to their rows; PNG
plots with error bars (`plots.py`: funnel, score per setting, score against data volume or
votes when a study varies them).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from crescent.errors import CrescentError
from crescent.report.runs import collect, find_runs, merge_passes, not_crescent
from crescent.report.tables import (
    audit_section,
    compute_cost,
    cost_markdown,
    latex,
    lengths_markdown,
    markdown,
    paired,
    paired_markdown,
    retest,
    retest_markdown,
    summarize,
    table,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crescent-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--out", type=Path, help="where to write (default: <first dir>/report)")
    parser.add_argument("--against", metavar="SETTING",
                        help="also pair every setting with this one, document by document "
                             "(e.g. setting=no_vote); every setting is paired with the base")
    parser.add_argument("--contrast", nargs=2, action="append", metavar=("SETTING", "OTHER"),
                        help="a difference to report (repeatable): the listed ones replace the "
                             "default pairs, Holm-adjusted as one family; a setting is named "
                             "whole, by a unique part of its name, or `base`")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not d.is_dir():
            sys.exit(f"crescent-report: error: {d} is not a directory")
    studies = defaultdict(list)
    try:
        for run in find_runs(args.dirs):
            why = not_crescent(run)
            if why is not None:
                print(f"crescent-report: skipped {run}: not a Crescent run ({why})")
                continue
            row = collect(run)
            studies[row["study"]].append(row)
    except CrescentError as e:
        sys.exit(f"crescent-report: error: {e}")
    if not studies:
        sys.exit(f"crescent-report: error: no Crescent runs (dirs with .hydra/config.yaml) under "
                 f"{', '.join(map(str, args.dirs))}")
    out = args.out or args.dirs[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    md, tex = [], []
    summaries, pairs, costs = {}, {}, {}
    audits = [r for rows in studies.values() for r in rows if r["audit"]]  # for every study's plots
    for study in studies:
        studies[study] = rows = merge_passes(studies[study])
        audit_runs = [r for r in rows if "audit" in r["stages"]]
        audited = [r for r in audit_runs if r["audit"]]
        if audited:
            md.append(audit_section(study, audited, out))
        elif audit_runs:  # still sampling: say so rather than print an empty table
            md.append(f"## {study}: vote audit\n\nNot finished yet: "
                      f"{', '.join(r['run'] for r in audit_runs)}\n")
        if not audit_runs or any(r["scores"] for r in rows):  # an audit study scores no model
            try:
                section, table_tex, summaries[study], pairs[study] = _score_section(
                    study, rows, args.against, args.contrast, audits, out)
            except CrescentError as e:
                sys.exit(f"crescent-report: error: {e}")
            md.append(section)
            tex.append(table_tex)
        costs[study] = compute_cost(rows)
        md.append(cost_markdown(costs[study]))
    (out / "report.md").write_text("\n".join(md))
    (out / "report.tex").write_text("\n".join(tex))
    for rows in studies.values():  # per-document scores stay in the run dirs
        for r in rows:
            for score in r["scores"].values():
                score.pop("per_doc", None)
    (out / "report.json").write_text(json.dumps({"runs": studies, "tables": summaries, "paired": pairs,
                                                "cost": costs}, indent=2) + "\n")
    print("\n".join(md))
    print(f"crescent-report: {sum(map(len, studies.values()))} runs -> {out}/report.md, report.tex, report.json")


def _score_section(study: str, rows: list[dict], against: str | None,
                   contrasts: list[tuple[str, str]] | None, audits: list[dict],
                   out: Path) -> tuple[str, str, list[dict], list[dict]]:
    """One study's score table, its paired differences and its plots: (Markdown, the table in
    LaTeX, the table's summary and the paired differences for report.json)."""
    from crescent.report.plots import plots  # matplotlib: only when writing

    header, cells, notes = table(rows)
    md = [f"## {study}\n\n{markdown(header, cells)}\n" + "".join(f"- {note}\n" for note in notes)]
    floor = retest(rows)
    if floor:
        md.append(f"### {study}: test-retest of the base\n\n{retest_markdown(floor)}\n"
                  "The share of documents whose score flipped between two scorings of the same "
                  "model: the measurement floor every difference below is read against.\n")
    differences = paired(rows, against, contrasts)
    if differences:
        md.append(f"### {study}: paired over documents\n\n{paired_markdown(differences)}\n"
                  "Each setting's per-document score is averaged over its replicas; the "
                  "interval resamples the documents (the benchmark's sample), not the "
                  "training seeds. p: the bootstrap's two-sided p-value, Holm-adjusted over the "
                  "differences listed; discordant: the share of documents the two score "
                  "differently; detectable: the smallest difference these documents detect at "
                  "80% power (5% two-sided), from the spread of the per-document differences: "
                  "a null rules out effects about this large.\n")
    lengths = lengths_markdown(rows)
    if lengths:
        md.append(f"### {study}: answer lengths\n\n{lengths}\n"
                  "Answers re-tokenised with each model's tokenizer; cut at the cap: the share "
                  "that reached the task's max_gen_toks, scored on wherever they stopped.\n")
    md += [f"![{path.stem}]({path.name})\n" for path in plots(study, rows, out, audits)]
    table_tex = f"% {study}\n{latex(header, cells)}" + "".join(f"% {n}\n" for n in notes)
    return "\n".join(md), table_tex, summarize(rows), differences
