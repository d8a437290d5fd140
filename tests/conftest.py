"""Shared fixtures: the project root, the reference data and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
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
