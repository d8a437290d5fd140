"""A `python -m crescent.infra.serve` server of a model on 127.0.0.1, for the served-engine tests
and experiments/bench_scale.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class LocalServer:
    """`python -m crescent.infra.serve` on 127.0.0.1 in its own process group; returns once
    `/v1/models` answers. `url` is the base URL for `engine.options.endpoints`."""

    def __init__(self, model_path: str, log: Path, port: int | None = None,
                 kvcache_gib: int = 2, timeout_s: float = 400):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = Path(log)
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(kvcache_gib))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crescent.infra.serve", model_path, "--host", "127.0.0.1",
             "--port", str(self.port), "--dtype", "float32", "--max-model-len", "2048",
             "--enforce-eager"],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited: {self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2)
                return
            except OSError:
                time.sleep(1)
        self.kill()
        raise RuntimeError(f"vllm serve did not come up in {timeout_s:.0f} s")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
