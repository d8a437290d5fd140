"""Benchmark: incremental self-dedup of 150,000 questions in batches of 100, one run.

    python experiments/bench_dedup.py [--n 150000] [--out outputs/bench_dedup.json]

Vectors: all-MiniLM-L6-v2 embeddings of real GSM8K questions (../shared/data), tiled to `n`
with Gaussian noise of a per-copy scale, so that copies fall on both sides of the 0.85
threshold. The stage's own `decide` and `VectorIndex` run over them; on every 10th batch the
same decisions are also taken with an exhaustive numpy search over the same accepted history,
which gives the agreement. Wall and CPU time count the index path only (decide + add);
peak memory is the process's (the 150,000 vectors themselves are 220 MiB of it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k"


def embed_questions(limit: int, path: Path) -> None:
    from crescent.config import DedupConfig
    from crescent.methods.dedup import MiniLMEmbedder

    texts = []
    for name in ("train.jsonl", "test.jsonl"):
        texts += [json.loads(line)["question"] for line in (DATA / name).open()]
    np.save(path, MiniLMEmbedder(DedupConfig.batch_size).embed(texts[:limit]))


def tiled(base: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), size=n)
    scale = rng.uniform(0.0, 0.12, size=(n, 1)).astype(np.float32)
    vectors = base[picks]
    for start in range(0, n, 10_000):  # in place, chunk by chunk: peak memory is the index's
        part = vectors[start : start + 10_000]
        part += scale[start : start + 10_000] * rng.standard_normal(part.shape, dtype=np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
    return vectors


class ExactReference:
    """Exhaustive search over the accepted rows of `vectors`, read in place (no second copy)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors, self.rows = vectors, np.empty(0, dtype=np.int64)

    def nearest(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        best = np.full(len(batch), -np.inf, dtype=np.float32)
        arg = np.full(len(batch), -1)
        for start in range(0, len(self.rows), 20_000):
            sims = batch @ self.vectors[self.rows[start : start + 20_000]].T
            top = sims.argmax(axis=1)
            better = sims[np.arange(len(batch)), top] > best
            best[better] = sims[np.arange(len(batch)), top][better]
            arg[better] = top[better] + start
        return best, arg

    pairwise = staticmethod(lambda a, b: np.einsum("ik,jk->ij", a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--texts", type=int, default=3000, help="real questions embedded")
    parser.add_argument("--check-every", type=int, default=10)
    # One thread: batches of 100 leave little to share, and on this shared 2-core machine two
    # OpenMP threads spun waiting for each other (30k vectors: 37.6 s against 9.2 s, load 6).
    parser.add_argument("--threads", type=int, default=1, help="faiss (OpenMP) threads")
    # VectorIndex settings; defaults: the stage's own.
    parser.add_argument("--exact-until", type=int, help="exact search up to this many vectors")
    parser.add_argument("--cell-size", type=int, help="IVF: vectors per cell at training")
    parser.add_argument("--nprobe", type=int, help="IVF: cells scanned per query")
    parser.add_argument("--out", default="outputs/bench_dedup.json")
    parser.add_argument("--embed-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.embed_to:
        embed_questions(args.texts, Path(args.embed_to))
        return

    import faiss
    from threadpoolctl import threadpool_limits

    from crescent.methods.dedup import VectorIndex, decide

    faiss.omp_set_num_threads(args.threads)
    cache = Path(args.out).with_suffix(f".base{args.texts}.npy")
    cache.parent.mkdir(parents=True, exist_ok=True)
    if not cache.exists():  # the embedder runs in a child so it does not count in peak memory
        subprocess.run([sys.executable, __file__, "--embed-to", str(cache), "--texts",
                        str(args.texts)], check=True)
    vectors = tiled(np.load(cache), args.n)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load_before = os.getloadavg()[0]

    settings = {k: v for k, v in (("exact_until", args.exact_until), ("nprobe", args.nprobe),
                                  ("cell_size", args.cell_size)) if v is not None}
    index = VectorIndex(vectors.shape[1], **settings)
    reference = ExactReference(vectors)
    checked = agreed = accepted = 0
    index_s = index_cpu_s = 0.0
    for b, start in enumerate(range(0, args.n, args.batch)):
        batch = vectors[start : start + args.batch]
        t, c = time.perf_counter(), time.process_time()
        decisions = decide(batch, index, args.threshold)
        keep = np.array([d.accepted for d in decisions])
        index.add(batch[keep])
        index_s += time.perf_counter() - t
        index_cpu_s += time.process_time() - c
        if b % args.check_every == 0:  # the same accepted history, searched exhaustively
            # numpy's BLAS on one thread: its idle threads spin for a while after a threaded
            # call, and on two cores they slowed the timed index path that follows (15.9 s
            # against 10 s without the checks).
            with threadpool_limits(1, "blas"):
                truth = np.array([d.accepted for d in decide(batch, reference, args.threshold)])
            checked += len(batch)
            agreed += int((truth == keep).sum())
        reference.rows = np.concatenate([reference.rows, start + np.flatnonzero(keep)])
        accepted += int(keep.sum())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    result = {
        "n": args.n, "batch": args.batch, "threshold": args.threshold,
        "accepted": accepted, "index_wall_s": round(index_s, 1),
        "index_cpu_s": round(index_cpu_s, 1), "faiss_threads": args.threads,
        "peak_rss_mib": round(peak_mib), "rss_before_loop_mib": round(rss_before / 1024),
        "decisions_checked": checked, "agreement_with_exact": round(agreed / checked, 5),
        "switched_to_ivf": index.approximate, "exact_until": index.exact_until,
        "cell_size": index.cell_size, "nprobe": index.nprobe,
        # Other jobs share this machine: its 1-minute load average before and after the run.
        "load_avg_before": round(load_before, 2), "load_avg_after": round(os.getloadavg()[0], 2),
    }
    print(f"\nincremental dedup, {args.n} vectors of dim {vectors.shape[1]}, batches of {args.batch}")
    for key, value in result.items():
        print(f"{key:<24}{value}")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
