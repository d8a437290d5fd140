"""Iterated self-improvement: round t's fine-tuned model is round t+1's generator.

    python experiments/iterate/run.py --rounds 3 [hydra overrides...]

Each round is `crescent experiment=iterate seed=<t>` in `outputs/iterate/round_<t>/`; a
finished round is skipped on re-run (its stages are DONE), so a killed chain resumes. Ends
with `crescent-report outputs/iterate`, one row per round.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("outputs/iterate"))
    args, overrides = parser.parse_known_args()
    generator: list[str] = []  # round 0: the experiment's own model
    for t in range(args.rounds):
        run_dir = args.root / f"round_{t}"
        subprocess.run([sys.executable, "-m", "crescent", "experiment=iterate", f"seed={t}",
                        f"hydra.run.dir={run_dir}", *generator, *overrides], check=True)
        generator = [f"model.name={(run_dir / 'finetune' / 'model').resolve()}"]
    subprocess.run([sys.executable, "-m", "crescent.report", str(args.root)], check=True)


if __name__ == "__main__":
    main()
