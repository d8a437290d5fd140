"""Terminal output: crescent's lines on stdout from rank zero, library chatter off unless verbose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

_SCRIPT = """
import logging, os, sys
from crescent.infra import logs
logs.setup(verbose_=sys.argv[1] == "1")
logging.getLogger("crescent.stages.answers").info("crescent: answers: a line of ours")
logging.getLogger("vllm").info("INFO vllm chatter")
logging.getLogger("vllm").warning("WARNING vllm chatter")
logging.getLogger("lm_eval").error("ERROR from lm_eval")
print("ENV", os.environ.get("VLLM_LOGGING_LEVEL"), os.environ.get("CRESCENT_VERBOSE"))
"""


def _run(verbose: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("VLLM_LOGGING_LEVEL", "RANK", "LOCAL_RANK", "SLURM_PROCID")}
    return subprocess.run([sys.executable, "-c", _SCRIPT, verbose], capture_output=True,
                          text=True, env=dict(clean, PYTHONPATH=str(ROOT), **env), timeout=60,
                          check=False)


def test_quiet_by_default_keeps_our_lines_and_library_errors():
    result = _run("0")
    assert result.stdout.splitlines() == ["crescent: answers: a line of ours", "ENV ERROR 0"]
    assert "chatter" not in result.stderr and "ERROR from lm_eval" in result.stderr


def test_verbose_lets_the_libraries_talk():
    result = _run("1")
    assert "ENV None 1" in result.stdout
    assert "WARNING vllm chatter" in result.stderr


@pytest.mark.parametrize("rank, shown", [("0", True), ("1", False)])
def test_info_lines_from_rank_zero_only(rank, shown):
    result = _run("0", RANK=rank)
    assert ("a line of ours" in result.stdout) is shown


def test_the_scorer_keeps_only_the_scoring_bar():
    # The evaluate child turns tqdm bars off by description; run in a process of its own,
    # as the child is, since it changes tqdm for the whole process.
    code = (
        "from tqdm import tqdm\n"
        "from crescent.methods.scoring import _one_bar\n"
        "_one_bar({'vllm', 'hf'})\n"  # a likelihood run (hf) and a generation run (vllm)
        "bars = [tqdm(total=3, desc=d) for d in ('Processed prompts', 'Rendering prompts', None,\n"
        "        'Running loglikelihood requests')]\n"
        "print([b.disable for b in bars])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[False, True, True, False]"
