"""Benchmark: incremental self-dedup of 150,000 questions in batches of 100, one run.

    python experiments/bench_dedup.py [--n 150000] [--out outputs/bench_dedup.json]

Vectors: all-MiniLM-L6-v2 embeddings of real GSM8K questions (../shared/data), tiled to `n`
with Gaussian noise of a per-copy scale, so that copies fall on both sides of the 0.85
threshold. The stage's own `decide` and `VectorIndex` run over them; on every 10th batch the
same decisions are also taken with an exact search over the same accepted history, which
gives the agreement. Wall time counts the index path only; peak memory is the process's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k"


def embed_questions(limit: int, path: Path) -> None:
    from crescent.dedup import MiniLMEmbedder

    texts = []
    for name in ("train.jsonl", "test.jsonl"):
        texts += [json.loads(line)["question"] for line in (DATA / name).open()]
    np.save(path, MiniLMEmbedder().embed(texts[:limit]))


def tiled(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), size=n)
    scale = rng.uniform(0.0, 0.12, size=(n, 1)).astype(np.float32)
    vectors = base[picks] + scale * rng.standard_normal((n, base.shape[1]), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--texts", type=int, default=3000, help="real questions embedded")
    parser.add_argument("--check-every", type=int, default=10)
    parser.add_argument("--out", default="outputs/bench_dedup.json")
    parser.add_argument("--embed-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embed_to:
        embed_questions(args.texts, Path(args.embed_to))
        return

    import faiss

    from crescent.dedup import VectorIndex, decide

    faiss.omp_set_num_threads(2)
    cache = Path(args.out).with_suffix(f".base{args.texts}.npy")
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists():  # the embedder runs in a child so it does not count in peak memory
        subprocess.run([sys.executable, __file__, "--embed-to", str(cache), "--texts",
                        str(args.texts)], check=True)
    vectors = tiled(np.load(cache), args.n)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    index, exact = VectorIndex(vectors.shape[1]), faiss.IndexFlatIP(vectors.shape[1])
    checked = agreed = accepted = 0
    index_s = 0.0
    for b, start in enumerate(range(0, args.n, args.batch)):
        batch = vectors[start : start + args.batch]
        t = time.perf_counter()
        decisions = decide(batch, index, args.threshold)
        keep = np.array([d.accepted for d in decisions])
        index.add(batch[keep])
        index_s += time.perf_counter() - t
        if b % args.check_every == 0:
            reference = VectorIndex(vectors.shape[1], exact_until=args.n + 1)
            reference.index = exact  # the same accepted history, searched exhaustively
            truth = np.array([d.accepted for d in decide(batch, reference, args.threshold)])
            checked += len(batch)
            agreed += int((truth == keep).sum())
        exact.add(batch[keep])
        accepted += int(keep.sum())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    result = {
        "n": args.n, "batch": args.batch, "threshold": args.threshold,
        "accepted": accepted, "index_wall_s": round(index_s, 1),
        "peak_rss_mib": round(peak_mib), "rss_before_loop_mib": round(rss_before / 1024),
        "decisions_checked": checked, "agreement_with_exact": round(agreed / checked, 5),
        "switched_to_ivf": index.approximate,
    }
    print(f"\nincremental dedup, {args.n} vectors of dim {vectors.shape[1]}, batches of {args.batch}")
    for key, value in result.items():
        print(f"{key:<24}{value}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
