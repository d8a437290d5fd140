"""`crescent-size`: size a study before running it, from a pilot's measurements.

Two scorings of the same problems (the base scored twice, the test-retest; or the base and a
pilot fine-tune) give the share of problems whose score differs (the discordance) and the spread
of the per-problem differences; a pilot fine-tune's stats give the seconds per optimizer step,
and the scorings' stats the seconds per scoring. From these:
- the smallest paired effect a study detects at the asked power, two-sided, with the level
  split over its pre-registered contrasts (Holm's first step: alpha / contrasts), on the pilot's
  problems and on `--problems`;
- the problems needed for `--effect`;
- each planned arm's optimizer steps and hours (`--plan NAME=PAIRSxEPOCHS`, times `--replicas`),
  and the whole plan's.

    crescent-size multirun/calibration/base/evaluate/base \\
        multirun/calibration/gold_1000x2/evaluate/finetuned \\
        --finetune multirun/calibration/gold_1000x2/finetune --contrasts 4 --replicas 2 \\
        --plan gold=390x2 rft=390x2 vote=390x2 no_vote=390x2 crescent=390x2

Which pair sizes what: the base scored twice gives the measurement floor (on the 0.5B model 0.6%
of GSM8K's problems differ: 0.7 points "detected"), but a contrast between two models varies as
much as they disagree, problem by problem; the base against a pilot fine-tune (22% differ: 4.3
points) is the pair that sizes a study's contrasts.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from crescent.errors import CrescentError
from crescent.infra.io import read_json
from crescent.methods.metrics import declared_headline, headline, metrics_of
from crescent.report.runs import per_document


def scored(label_dir: Path, task: str | None) -> tuple[str, str, list]:
    """(task, headline metric, its value per document) of one evaluate label dir."""
    results = label_dir / "results.json"
    if not results.is_file():
        raise CrescentError(f"crescent-size: {results} not found: give an evaluate label dir "
                            f"(<run>/evaluate/<label>) that finished scoring")
    raw = read_json(results)
    metrics = metrics_of(raw)
    task = task or next(iter(metrics), None)
    if task not in metrics:
        raise CrescentError(f"crescent-size: {label_dir} has no scores on {task}")
    metric = headline(metrics[task], declared_headline(raw, task))[0]
    return task, metric, per_document(label_dir / f"samples_{task}.jsonl", metric)


def detectable(sd: float, n: int, alpha: float, power: float) -> float:
    """The smallest mean paired difference a two-sided test at `alpha` detects with `power`."""
    z = statistics.NormalDist().inv_cdf
    return (z(1 - alpha / 2) + z(power)) * sd / math.sqrt(n)


def needed(sd: float, effect: float, alpha: float, power: float) -> int:
    """Problems needed to detect `effect` (paired, two-sided)."""
    z = statistics.NormalDist().inv_cdf
    return math.ceil(((z(1 - alpha / 2) + z(power)) * sd / effect) ** 2)


def finetune_cost(stage_dir: Path) -> float:
    """Seconds per optimizer step of a finished fine-tune (its stats.json)."""
    stats = read_json(stage_dir / "stats.json") if (stage_dir / "stats.json").is_file() else {}
    if not stats.get("steps") or not stats.get("train_time_s"):
        raise CrescentError(f"crescent-size: {stage_dir}/stats.json has no steps and "
                            f"train_time_s: give a finished finetune stage dir")
    return stats["train_time_s"] / stats["steps"]


def score_cost(label_dir: Path) -> float | None:
    """Seconds the scoring of this label took (its evaluate stats.json), if recorded."""
    stats = label_dir.parent / "stats.json"
    return (read_json(stats).get("score_seconds") or {}).get(label_dir.name) \
        if stats.is_file() else None


def size(args: argparse.Namespace) -> dict:
    task, metric, first = scored(args.first, args.task)
    _, _, second = scored(args.second, task)
    if len(first) != len(second) or not first:
        raise CrescentError(f"crescent-size: the two scorings hold {len(first)} and "
                            f"{len(second)} documents of {task}: score the same problems twice")
    diffs = [a - b for a, b in zip(first, second)]
    sd, n = statistics.stdev(diffs), len(diffs)
    alpha = args.alpha / args.contrasts
    sized = {"task": task, "metric": metric, "problems": n,
             "discordance": sum(d != 0 for d in diffs) / n, "sd_difference": sd,
             "mean_difference": statistics.fmean(diffs), "contrasts": args.contrasts,
             "alpha_per_contrast": alpha, "power": args.power,
             "detectable": {str(m): detectable(sd, m, alpha, args.power)
                            for m in sorted({n, *args.problems})}}
    if args.effect:
        sized["problems_for_effect"] = {str(args.effect): needed(sd, args.effect, alpha,
                                                                 args.power)}
    score_s = [s for s in (score_cost(args.first), score_cost(args.second)) if s]
    sized["score_s"] = statistics.fmean(score_s) if score_s else None
    if args.plan:
        if args.finetune is None:
            raise CrescentError("crescent-size: --plan needs --finetune (a pilot's finetune dir)")
        step_s = finetune_cost(args.finetune)
        arms = {}
        for item in args.plan:
            name, _, shape = item.partition("=")
            pairs, _, epochs = shape.partition("x")
            if not (name and pairs.isdigit() and epochs.isdigit()):
                raise CrescentError(f"crescent-size: --plan {item}: expected NAME=PAIRSxEPOCHS")
            steps = math.ceil(int(pairs) * int(epochs) / args.batch)
            hours = (steps * step_s + (sized["score_s"] or 0)) / 3600
            arms[name] = {"steps": steps, "hours_each": hours, "runs": args.replicas,
                          "hours": hours * args.replicas}
        sized.update(step_s=step_s, arms=arms,
                     total_hours=sum(a["hours"] for a in arms.values()))
    return sized


def markdown(sized: dict) -> str:
    intro = (f"{sized['task']} ({sized['metric']}): {sized['problems']} problems scored twice, "
             f"{sized['discordance']:.1%} of them differ (sd of the difference "
             f"{sized['sd_difference']:.3f})")
    header = (f"| problems | smallest effect detected ({sized['power']:.0%} power, alpha "
              f"{sized['alpha_per_contrast']:.4f} per contrast of {sized['contrasts']}) |")
    lines = [intro, "", header, "| --- | --- |"]
    lines += [f"| {n} | {effect * 100:.2f} points |" for n, effect in sized["detectable"].items()]
    for effect, n in sized.get("problems_for_effect", {}).items():
        lines += ["", f"{float(effect) * 100:.2f} points need {n} problems."]
    if "arms" in sized:
        score = f"{sized['score_s'] / 3600:.2f} h" if sized["score_s"] else "not recorded"
        lines += ["", f"{sized['step_s']:.1f} s per optimizer step; a scoring: {score}", "",
                  "| arm | steps | hours each | runs | hours |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {a['steps']} | {a['hours_each']:.2f} | {a['runs']} | "
                  f"{a['hours']:.2f} |" for name, a in sized["arms"].items()]
        lines.append(f"| all | | | | {sized['total_hours']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crescent-size", description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="an evaluate label dir (<run>/evaluate/base)")
    parser.add_argument("second", type=Path, help="another scoring of the same problems")
    parser.add_argument("--task", help="the task to size on (default: the first scored)")
    parser.add_argument("--contrasts", type=int, default=1, help="pre-registered contrasts")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--power", type=float, default=0.8)
    parser.add_argument("--problems", type=int, nargs="*", default=[],
                        help="other problem counts to size for")
    parser.add_argument("--effect", type=float, help="an effect (0.03: 3 points) to size for")
    parser.add_argument("--finetune", type=Path, help="a pilot's finished finetune stage dir")
    parser.add_argument("--plan", nargs="*", default=[], help="arms as NAME=PAIRSxEPOCHS")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="examples per optimizer step")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        sized = size(args)
    except CrescentError as e:
        print(f"crescent-size: error: {str(e).removeprefix('crescent-size: ')}", file=sys.stderr)
        sys.exit(1)
    print(markdown(sized))
    if args.json:
        args.json.write_text(json.dumps(sized, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
