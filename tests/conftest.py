"""Shared fixtures: the project root, the reference data and a CLI runner.

The benchmark data comes from $CRESCENT_DATA, else this workspace's `../shared/data`, which is
then exported as $CRESCENT_DATA so that every `crescent` the tests start resolves it the same
way a user's run does (crescent/infra/data.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CRESCENT_DATA") or ROOT.parent / "shared" / "data").absolute()
if DATA.is_dir():
    os.environ["CRESCENT_DATA"] = str(DATA)
BAIT = [{"role": "user", "content": "Write one new math word problem. Reply with the problem only."}]


def run_cli(*overrides: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m crescent <overrides>` in `cwd`, the way a user runs it."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "crescent", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli(tmp_path):
    return lambda *overrides, **kw: run_cli(*overrides, cwd=tmp_path, **kw)
