"""Do two same-seed vLLM runs write the same files? And a run killed and resumed?

    python experiments/vllm_same_seed.py [--target 100] [--candidates 300] [--kills 2]
        [--out outputs/vllm_same_seed.json] [crescent overrides ...]

Runs `crescent stages=[questions,answers]` on the embedded model three times with the same
seed, in fresh run dirs: twice straight through, once SIGKILLed `--kills` times in the
questions stage (after a seeded number of accepted questions) and then finished by the same
command. Compares questions.jsonl, rejected.jsonl and the answers' samples.jsonl byte for byte
and, where they differ, counts the candidates (questions) that differ. With
engine.batch_size=32 and blocks of 16, rewrites go out from the 81st candidate on, and
dedup.threshold=0.6 makes duplicates common (at the default 0.85, 100 of the first 103
candidates were accepted), so the rewrite queue the resumed run replays is part of what is
compared. vLLM does not promise
the same numerics for a request batched with other requests, so this measures how far the
stages' per-request seeds carry on this machine; on `engine=hf` the same check is a test
(tests/test_reproducibility.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FILES = ("questions/questions.jsonl", "questions/rejected.jsonl", "answers/samples.jsonl")


def crescent(args: list[str], cwd: Path, kill_at: int | None = None) -> None:
    """Run to the end, or SIGKILL once questions.jsonl holds `kill_at` lines."""
    proc = subprocess.Popen([sys.executable, "-m", "crescent", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = cwd / "run" / FILES[0]
    if kill_at is not None:
        while proc.poll() is None and (
                not progress.exists() or progress.read_bytes().count(b"\n") < kill_at):
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
    _, stderr = proc.communicate()
    if proc.returncode:
        sys.exit(f"crescent {' '.join(args)} failed in {cwd}:\n{stderr[-3000:]}")


def differing(a: Path, b: Path, key: str) -> int:
    """Records (by `key`) whose lines differ between two JSON Lines files."""
    rows = [{json.loads(line)[key]: line for line in path.read_text().splitlines()}
            for path in (a, b)]
    return sum(rows[0].get(k) != rows[1].get(k) for k in rows[0].keys() | rows[1].keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=300)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--out", default="outputs/vllm_same_seed.json")
    args, overrides = parser.parse_known_args()
    common = ["stages=[questions,answers]", f"questions.target={args.target}",
              f"questions.max_candidates={args.candidates}", "engine.batch_size=32",
              "questions.batch_size=16", "dedup.threshold=0.6",
              "questions.sampling.max_tokens=128", "answers.sampling.max_tokens=128", "voting.k=2",
              "logger=none", "cache_dir=null", "hydra.run.dir=run", *overrides]
    work = Path(tempfile.mkdtemp(prefix="vllm_same_seed_"))
    runs = {name: work / name for name in ("first", "second", "killed")}
    points = sorted(random.Random(0).sample(range(5, args.target - 5), args.kills))
    started = time.time()
    for name, cwd in runs.items():
        cwd.mkdir()
        for point in points if name == "killed" else []:
            crescent(common, cwd, kill_at=point)
        crescent(common, cwd)
    result = {"settings": common, "kills_at_accepted": points, "files": {}}
    for file in FILES:
        key = "id" if file.startswith("answers") else "candidate"
        first = runs["first"] / "run" / file
        result["files"][file] = {
            other: {"identical": first.read_bytes() == (runs[other] / "run" / file).read_bytes(),
                    f"records_differing_by_{key}": differing(first, runs[other] / "run" / file, key)}
            for other in ("second", "killed")}
    result["wall_s"] = round(time.time() - started)
    result["load_avg"] = [round(x, 2) for x in os.getloadavg()]

    print(f"\nthree same-seed runs ({' '.join(common)}); killed run: SIGKILL at {points} accepted")
    print(f"{'file':<30}{'second run':>28}{'killed and resumed':>28}")
    for file, against in result["files"].items():
        cells = ["identical" if c["identical"] else f"{list(c.values())[1]} records differ"
                 for c in against.values()]
        print(f"{file:<30}{cells[0]:>28}{cells[1]:>28}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_s']} s, run dirs in {work})")


if __name__ == "__main__":
    main()
