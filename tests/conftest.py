"""Shared fixtures: the project root, the reference data and a CLI runner.

The benchmark data comes from $CRESCENT_DATA, else this workspace's `../shared/data`, which is
then exported as $CRESCENT_DATA so that every `crescent` the tests start resolves it the same
way a user's run does (crescent/infra/data.py).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from crescent.infra.load import core_share

ROOT = Path(__file__).resolve().parent.parent


def _own_cores(worker: str, workers: int) -> None:
    """Under pytest-xdist (`make test` runs `-n 2`) each worker, and all it starts, keeps to its
    own share of the cores: two workers whose thread pools (torch, vLLM) both spin on every
    core run several times slower than one after the other (docs/benchmarks.md, contention)."""
    mine = core_share(int(worker.removeprefix("gw")), workers)
    os.sched_setaffinity(0, mine)
    os.environ["OMP_NUM_THREADS"] = str(len(mine))
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))


if os.environ.get("PYTEST_XDIST_WORKER"):
    _own_cores(os.environ["PYTEST_XDIST_WORKER"], int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))

DATA = Path(os.environ.get("CRESCENT_DATA") or ROOT.parent / "shared" / "data").absolute()
if DATA.is_dir():
    os.environ["CRESCENT_DATA"] = str(DATA)
BAIT = [{"role": "user", "content": "Write one new math word problem. Reply with the problem only."}]


def run_cli(*overrides: str, cwd: Path, timeout: float = 900, env_path: str | None = None
            ) -> subprocess.CompletedProcess:
    """`python -m crescent <overrides>` in `cwd`, the way a user runs it (with `env_path` as
    its PATH, if given)."""
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    if env_path is not None:
        env["PATH"] = env_path
    return subprocess.run(
        [sys.executable, "-m", "crescent", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout, check=False,
    )


def compose(*overrides: str):
    """The config `crescent <overrides>` runs with (logger=none unless given), composed in
    this process."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from crescent.__main__ import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=["logger=none", *overrides])


@pytest.fixture
def cli(tmp_path):
    return lambda *overrides, **kw: run_cli(*overrides, cwd=tmp_path, **kw)


def pytest_addoption(parser):
    parser.addoption("--sample-long", type=int, default=None, metavar="N",
                     help="run only N of the tests marked `long`, drawn with the seed "
                          "$CRESCENT_CI_SAMPLE (default: today's date), so CI covers them all "
                          "over a few builds and stays short")


def _long_seed() -> str:
    return os.environ.get("CRESCENT_CI_SAMPLE") or date.today().isoformat()


def pytest_collection_modifyitems(config, items):
    n = config.getoption("--sample-long")
    if n is None:
        return
    long = [item for item in items if item.get_closest_marker("long")]
    keep = {item.nodeid for item in random.Random(_long_seed()).sample(long, min(n, len(long)))}
    dropped = [item for item in long if item.nodeid not in keep]
    config.hook.pytest_deselected(items=dropped)
    items[:] = [item for item in items if item not in dropped]


# The long tests that ran, as the reports show them: under pytest-xdist the process that
# prints the summary collects nothing itself.
LONG_RAN: list[str] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and "long" in report.keywords:
        LONG_RAN.append(report.nodeid)


def pytest_terminal_summary(terminalreporter, config):
    if config.getoption("--sample-long") is not None:
        terminalreporter.write_line(f"long tests: ran {len(LONG_RAN)} (seed {_long_seed()}): "
                                    + ", ".join(sorted(LONG_RAN)))


# The smoke experiment in miniature on the hf engine (8 questions x 3 samples, 3 steps), for
# sweeps: each point in `multirun/smoke/<job number>`.
TINY_SMOKE = ["experiment=smoke", "engine=hf", "dedup=minhash", "questions.target=8",
              "questions.max_candidates=16", "questions.batch_size=16",
              "questions.sampling.max_tokens=96", "answers.samples=3", "voting.k=3",
              "voting.min_votes=1", "voting.min_agreement=0", "answers.sampling.max_tokens=128",
              "finetune.max_steps=3", "finetune.batch_size=2", "finetune.max_length=256",
              "finetune.val_fraction=0", "eval.limit=20", f"eval.data_dir={DATA}", "logger=none",
              "hydra.sweep.subdir=${hydra.job.num}"]
