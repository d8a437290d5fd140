"""The code passes ruff's checks (the version pinned in the `dev` extra, pyproject's settings), so
whoever picks it up next starts from a clean tree."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: pip install -e '.[dev]'"
    result = subprocess.run([ruff, "check", "crescent", "experiments", "tests"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
