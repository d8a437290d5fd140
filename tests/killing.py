"""Kill a stage at seeded random points, then let it finish: the crash harness of the slow set.

Each kill waits until the stage's progress file has reached a point, waits a further random
fraction of a second (so the kill lands anywhere: in the engine, between writes, mid-write),
sends SIGKILL, and checks that the stage's DONE marker is absent. The same command then runs
to completion.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT


def lines(path: Path) -> int:
    """Complete lines in a progress file (0 if it does not exist yet)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def kill_points(seed: int, low: int, high: int, count: int = 3) -> list[int]:
    return sorted(random.Random(seed).sample(range(low, high), count))


def kill_then_finish(overrides: list[str], cwd: Path, stage_dir: Path,
                     progress: Callable[[], int], points: list[int], seed: int,
                     timeout: float = 900) -> list[int]:
    """Run `crescent <overrides>` once per kill point, SIGKILL it (and its children) there,
    then run it to the end; returns the progress seen at each kill."""
    args = [sys.executable, "-m", "crescent", *overrides]
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    rng = random.Random(seed)
    seen = []
    for point in points:
        # A session of its own: the kill takes the run's child processes too (DDP's other
        # ranks, engine workers), as a node failure would.
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.time() + timeout
        while proc.poll() is None and progress() < point and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        assert proc.poll() is None, (
            f"ended before the kill at {point}: {proc.stderr.read()[-3000:]}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        seen.append(progress())
        assert not (stage_dir / "DONE").exists(), f"DONE after a kill at {point}"
    final = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    assert (stage_dir / "DONE").exists()
    return seen


def whole_records(path: Path, key: str) -> list:
    """The `key` of every record, after checking that each line is whole JSON and that no key
    appears twice."""
    keys = [json.loads(line)[key] for line in path.read_text().splitlines()]
    twice = [k for k, count in Counter(keys).items() if count > 1]
    assert not twice, f"{path}: {key} written twice: {twice[:10]}"
    return keys
