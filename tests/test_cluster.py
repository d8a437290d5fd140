"""The cluster paths run across processes on this machine's CPUs (slow): a Hydra sweep through
a real one-node Slurm cluster (tests/slurm_local.py), its jobs killed by `scancel` mid-stage
and resubmitted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from crescent.infra.io import read_json
from tests.conftest import ROOT, TINY_SMOKE
from tests.killing import lines
from tests.slurm_local import LocalSlurm, available

# One question's samples at a time: the cancel lands mid-stage.
TINY = [*TINY_SMOKE, "engine.batch_size=3"]
# One CPU a job: the two points run at once on a 2-core node.
SLURM = ["hydra/launcher=slurm_cpu", "hydra.launcher.partition=cpu",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4",
         "hydra.launcher.timeout_min=60"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = available()
    if why:
        pytest.skip(why)
    with LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _sweep(slurm: LocalSlurm, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crescent", "-m", *TINY, *SLURM, "finetune.seed=0,1"], cwd=cwd,
        env=dict(slurm.env, WANDB_MODE="offline", PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.long
def test_slurm_sweep_shares_the_cache_and_resumes_after_scancel(slurm, tmp_path):
    # Submit, wait until the shared generation is mid-stage (some questions answered), cancel
    # every job with scancel and stop the waiting launcher; the same command then finishes.
    launcher = _sweep(slurm, tmp_path)
    deadline = time.time() + 900
    samples = []
    while time.time() < deadline and not any(lines(p) >= 2 for p in samples):
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        samples = list((tmp_path / "outputs" / "cache").glob("samples/*/samples.jsonl"))
        time.sleep(1)
    assert samples, "no samples within 15 minutes"
    queue = slurm.run("squeue", "-h", "-o", "%i %T %j").stdout.split("\n")
    assert sum("RUNNING" in line for line in queue) == 2, queue
    slurm.run("scancel", "--user", os.environ.get("USER", "root"))
    os.killpg(launcher.pid, signal.SIGKILL)  # it would wait for results that never come
    launcher.wait()
    answered = lines(samples[0])
    assert not (samples[0].parent / "DONE").exists()

    finished = _sweep(slurm, tmp_path)
    _, err = finished.communicate(timeout=1800)
    assert finished.returncode == 0, err[-3000:]
    runs = [tmp_path / "multirun" / "smoke" / str(i) for i in (0, 1)]
    pipelines = [read_json(run / "pipeline.json") for run in runs]
    # One point generated (resuming the cancelled sampling), the other reused its output.
    assert sorted(p["answers"]["reused"] for p in pipelines) == [False, True]
    generated = runs[[p["answers"]["reused"] for p in pipelines].index(False)]
    assert read_json(generated / "answers" / "stats.json")["resumed_with"] >= answered > 0
    assert all(read_json(run / "finetune" / "stats.json")["steps"] == 3 for run in runs)
    assert all((run / "evaluate" / "metrics.json").exists() for run in runs)
    # The launcher returns once the results are written, a moment before Slurm ends the jobs.
    for _ in range(60):
        jobs = slurm.completions()
        if len(jobs) == 4:
            break
        time.sleep(1)
    states = [job["JobState"] for job in jobs]
    assert states.count("CANCELLED") == 2 and states.count("COMPLETED") == 2, states
    print("\nsqueue before scancel:\n" + "\n".join(queue) + "\njob completions:\n" + "\n".join(
        f"{j['JobId']} {j['Name']} {j['JobState']} {j['StartTime']} {j['EndTime']} {j['NodeList']}"
        for j in jobs))
