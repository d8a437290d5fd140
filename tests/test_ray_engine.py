"""engine=ray_vllm on a Ray cluster of two nodes started as separate processes on this machine
(`ray start --head` and `ray start --address=...`, one CPU each): two vLLM replicas, one per
node, run the questions stage unchanged and write the very bytes one offline engine writes with
the same seed (slow)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from crescent.infra.io import read_json

# float32: in bfloat16 a request's samples also depend on what shares its batch.
COMMON = ["stages=[questions]", "questions.target=8", "questions.batch_size=12",
          "questions.max_candidates=48", "questions.sampling.max_tokens=64", "cache_dir=null",
          "logger=none", "model.dtype=float32",
          # 1 GiB of KV cache an engine holds these 12 prompts many times over; the default 4
          # made two replicas about 11 GB, and Ray kills a replica past 95% of memory in use
          "+engine.options.cpu_kvcache_gib=1"]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster(tmp_path):
    """A head and one worker node, each its own raylet with 1 CPU; stopped afterwards."""
    if shutil.which(RAY) is None:
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    address = f"127.0.0.1:{_free_port()}"
    env_flags = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([RAY, "start", "--head", f"--port={address.split(':')[1]}",
                        "--include-dashboard=false", *env_flags], check=True,
                       capture_output=True, timeout=180)
        subprocess.run([RAY, "start", f"--address={address}", *env_flags], check=True,
                       capture_output=True, timeout=180)
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120, check=False)


@pytest.mark.slow
@pytest.mark.long
def test_two_ray_nodes_write_what_one_engine_writes(cli, tmp_path, ray_cluster):
    import ray as ray_api

    ray_api.init(address=ray_cluster, log_to_driver=False)
    try:
        nodes = [n for n in ray_api.nodes() if n["Alive"]]
    finally:
        ray_api.shutdown()
    # Each replica asks for one CPU, and each node has one: one replica per node.
    assert [n["Resources"]["CPU"] for n in nodes] == [1.0, 1.0]
    ray = cli(*COMMON, "engine=ray_vllm", "engine.options.data_parallel_size=2",
              f"+engine.options.ray_address={ray_cluster}", "hydra.run.dir=ray", timeout=1200)
    assert ray.returncode == 0, ray.stderr[-3000:]
    one = cli(*COMMON, "engine=vllm", "hydra.run.dir=one", timeout=1200)
    assert one.returncode == 0, one.stderr[-3000:]
    questions = [(tmp_path / run / "questions" / "questions.jsonl").read_bytes()
                 for run in ("ray", "one")]
    assert questions[0] == questions[1]
    assert read_json(tmp_path / "ray" / "questions" / "stats.json")["accepted"] == 8
    print(f"\n2 Ray nodes: {json.dumps([n['NodeManagerAddress'] for n in nodes])}")
