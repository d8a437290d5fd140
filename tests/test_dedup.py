"""Dedup: the decision on hand-made unit vectors (within the batch, against history, at the
edge), MinHash on real strings, and the generator's own pooled states."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from crescent.config import DedupConfig, ModelConfig, validate
from crescent.errors import CrescentError
from crescent.infra.io import read_jsonl
from crescent.infra.models import SMOLLM2
from crescent.methods.dedup import (
    SelfEmbedder,
    SignatureIndex,
    VectorIndex,
    decide,
    make_embedder,
    shingles,
)
from tests.conftest import ROOT, compose


def unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def at_similarity(base: np.ndarray, other: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector whose cosine with `base` is `cos`, in the plane of base and other."""
    ortho = other - (other @ base) * base
    ortho /= np.linalg.norm(ortho)
    return (cos * base + np.sqrt(1 - cos**2) * ortho).astype(np.float32)


E1, E2, E3 = unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0)


def test_empty_history_accepts_distinct_batch():
    decisions = decide(np.stack([E1, E2, E3]), VectorIndex(4), threshold=0.85)
    assert [d.accepted for d in decisions] == [True, True, True]
    assert decisions[0].similarity is None and decisions[0].nearest_row is None


def test_within_batch_duplicate_is_rejected_and_points_to_its_twin():
    twin = at_similarity(E1, E2, 0.95)
    decisions = decide(np.stack([E1, E2, twin]), VectorIndex(4), threshold=0.85)
    assert [d.accepted for d in decisions] == [True, True, False]
    assert decisions[2].nearest_in_batch == 0
    assert decisions[2].similarity == pytest.approx(0.95, abs=1e-5)


def test_rejected_candidate_does_not_block_later_ones():
    # b is a duplicate of a; c resembles b but not a: c is compared only with accepted ones.
    a = E1
    b = at_similarity(E1, E2, 0.9)
    c = at_similarity(b, E3, 0.9)
    assert float(c @ a) < 0.85
    decisions = decide(np.stack([a, b, c]), VectorIndex(4), threshold=0.85)
    assert [d.accepted for d in decisions] == [True, False, True]


def test_duplicate_of_history_is_rejected_with_its_row():
    history = VectorIndex(4)
    history.add(np.stack([E2, E1]))
    decisions = decide(np.stack([at_similarity(E1, E3, 0.9), E3]), history, threshold=0.85)
    assert [d.accepted for d in decisions] == [False, True]
    assert decisions[0].nearest_row == 1 and decisions[0].nearest_in_batch is None


def test_threshold_edge_reaching_it_rejects():
    history = VectorIndex(4)
    history.add(E1[None])
    below, at = at_similarity(E1, E2, 0.8499), at_similarity(E1, E2, 0.86)
    assert decide(below[None], history, 0.85)[0].accepted
    assert not decide(at[None], history, 0.86 - 1e-6)[0].accepted
    assert not decide(E1[None], history, 1.0)[0].accepted  # identical reaches even 1.0


def _decide_one_by_one(items, history, threshold):
    """The decision written as its definition: each candidate in turn against the history and
    the candidates accepted before it (the reference for the vectorised `decide`)."""
    hist_sims, hist_rows = history.nearest(items)
    accepted, out = [], []
    for i, item in enumerate(items):
        sim, row, in_batch = float(hist_sims[i]), int(hist_rows[i]), None
        for j in accepted:
            if float(items[j] @ item) > sim:
                sim, row, in_batch = float(items[j] @ item), None, j
        ok = not np.isfinite(sim) or sim < threshold
        if ok:
            accepted.append(i)
        out.append((ok, None if in_batch is not None or row == -1 else row, in_batch))
    return out


def test_decide_matches_the_one_by_one_definition_on_clustered_batches():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16)).astype(np.float32)
    history = VectorIndex(16)
    for _ in range(8):  # many near-duplicates inside each batch and against the history
        batch = centres[rng.integers(0, 6, 40)] + 0.35 * rng.standard_normal((40, 16))
        batch = (batch / np.linalg.norm(batch, axis=1, keepdims=True)).astype(np.float32)
        got = decide(batch, history, threshold=0.9)
        want = _decide_one_by_one(batch, history, threshold=0.9)
        assert [(d.accepted, d.nearest_row, d.nearest_in_batch) for d in got] == want
        history.add(batch[[d.accepted for d in got]])
    assert 0 < len(history) < 8 * 40  # both outcomes occurred


def test_nearest_other_skips_self():
    index = VectorIndex(4)
    index.add(np.stack([E1, at_similarity(E1, E2, 0.6), E3]))
    np.testing.assert_allclose(index.nearest_other(), [0.6, 0.6, 0.0], atol=1e-5)


def test_index_switches_to_ivf_and_keeps_rows():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(600, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex(16, exact_until=500)
    index.add(vectors[:400])
    assert not index.approximate
    index.add(vectors[400:])
    assert index.approximate and len(index) == 600
    queries = vectors[[3, 450, 599]] + 0.01 * rng.normal(size=(3, 16)).astype(np.float32)
    sims, rows = index.nearest(queries / np.linalg.norm(queries, axis=1, keepdims=True))
    assert list(rows) == [3, 450, 599] and (sims > 0.99).all()
    assert len(index.nearest_other()) == 600


# --- minhash: real strings ------------------------------------------------------------------

ORIGINAL = ("Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and "
            "bakes muffins for her friends every day with four. She sells the remainder at the "
            "farmers' market daily for $2 per fresh duck egg. How much in dollars does she make "
            "every day at the farmers' market?")
LIGHT_EDIT = ("Maria's ducks lay 21 eggs per day. She bakes muffins for her friends every day with "
              "four and eats three for breakfast every morning. She sells the remainder at the "
              "farmers' market daily for $3 per fresh duck egg. How much in dollars does she make "
              "every day at the farmers' market?")
DISTINCT = [
    "A train travels 240 km in 3 hours. At the same speed, how far does it travel in 5 hours?",
    "The sum of two consecutive odd numbers is 56. What is the larger number?",
    "A shirt costs $25 after a 20% discount. What was its original price?",
]


def _default(name: str) -> DedupConfig:
    """The shipped conf/dedup/<name>.yaml as a DedupConfig, threshold included."""
    return DedupConfig(**yaml.safe_load((ROOT / "conf" / "dedup" / f"{name}.yaml").read_text()))


def test_shingles_mask_numbers_and_keep_short_texts_whole():
    assert shingles("Tom has 3.5 apples, and 1,200 pears.", 3)[:2] == [b"tom has #", b"has # apples"]
    assert shingles("How many?", 3) == [b"how many"]
    assert shingles("x = 4", 2, mask_numbers=False) == [b"x 4"]


def test_minhash_rejects_a_light_edit_and_accepts_different_problems():
    cfg = _default("minhash")
    embedder = make_embedder(cfg)
    history = embedder.make_index()
    history.add(embedder.embed([DISTINCT[0], ORIGINAL]))
    decisions = decide(embedder.embed([LIGHT_EDIT, *DISTINCT[1:]]), history, cfg.threshold)
    assert [d.accepted for d in decisions] == [False, True, True]
    assert decisions[0].nearest_row == 1 and decisions[0].similarity >= cfg.threshold
    assert all(d.similarity < cfg.threshold for d in decisions[1:])
    # ... and within one batch: the edit points at its original's position.
    within = decide(embedder.embed([ORIGINAL, DISTINCT[1], LIGHT_EDIT]),
                    embedder.make_index(), cfg.threshold)
    assert [d.accepted for d in within] == [True, True, False]
    assert within[2].nearest_in_batch == 0


def test_minhash_similarity_estimates_jaccard():
    embedder = make_embedder(DedupConfig(method="minhash", options={"num_perm": 256, "shingle": 1}))
    a, b = set(shingles(ORIGINAL, 1)), set(shingles(LIGHT_EDIT, 1))
    jaccard = len(a & b) / len(a | b)
    sigs = embedder.embed([ORIGINAL, LIGHT_EDIT])
    estimate = embedder.make_index().pairwise(sigs[:1], sigs[1:])[0, 0]
    assert abs(estimate - jaccard) < 3 * 0.5 / np.sqrt(256)  # 3 standard errors at most


def test_signature_index_matches_brute_force_and_grows():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 6, size=(2500, 32), dtype=np.uint32)  # past the first capacity
    index = SignatureIndex(32)
    for start in range(0, 2500, 700):
        index.add(stored[start : start + 700])
    queries = rng.integers(0, 6, size=(7, 32), dtype=np.uint32)
    brute = (queries[:, None, :] == stored[None, :, :]).mean(-1)
    sims, rows = index.nearest(queries)
    assert len(index) == 2500
    np.testing.assert_allclose(sims, brute.max(1))
    np.testing.assert_allclose(brute[np.arange(7), rows], brute.max(1))
    own = (stored[:, None, :] == stored[None, :, :]).mean(-1)
    np.fill_diagonal(own, -1)
    np.testing.assert_allclose(index.nearest_other(), own.max(1), atol=1e-6)
    empty = SignatureIndex(32).nearest(queries)
    assert np.isneginf(empty[0]).all() and (empty[1] == -1).all()


def test_questions_stage_runs_on_minhash(tmp_path, monkeypatch):
    from crescent import engines
    from crescent.stages import questions
    from tests.test_questions import SAME, ScriptedEngine

    monkeypatch.setattr(engines, "make_engine", lambda *a: ScriptedEngine())
    cfg = compose("dedup=minhash", "questions.target=3", "questions.max_candidates=8",
                  "questions.batch_size=4")
    out = questions.run(cfg, tmp_path)
    assert [q["question"] for q in read_jsonl(out / "questions.jsonl")] == [SAME]
    rejected = list(read_jsonl(out / "rejected.jsonl"))
    assert len(rejected) == 7 and {(r["nearest_id"], r["similarity"]) for r in rejected} == {(0, 1.0)}


def test_embedder_errors_are_clear():
    with pytest.raises(CrescentError, match="needs the generator's model config"):
        make_embedder(DedupConfig(method="self"))
    # An unknown dedup.method is refused when the config is composed (tests/test_config.py).
    with pytest.raises(CrescentError, match=r"dedup.options.depth=0.0: expected a share in \(0, 1\]"):
        validate(compose("dedup=self", "+dedup.options.depth=0"))
    with pytest.raises(CrescentError, match="dedup.options.depth=0"):
        SelfEmbedder(ModelConfig(name=SMOLLM2), 0, 64)


# --- self: the generator's own states -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A 2-layer random Llama with the embedded model's tokenizer, saved like a checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from crescent.infra.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_self_embedder_on_a_tiny_model(tiny_model):
    cfg = DedupConfig(method="self", options={"depth": 0.5}, batch_size=2)
    embedder = make_embedder(cfg, ModelConfig(name=tiny_model))
    assert embedder.layers == 1 and len(embedder.model.layers) == 1  # layer 2 not loaded
    texts = [ORIGINAL, DISTINCT[0], "Short.", DISTINCT[1], ORIGINAL]
    vectors = embedder.embed(texts)
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[4], atol=1e-5)  # same text, same vector
    # A second instance (a resumed run) has the same mean and gives the same vectors.
    again = make_embedder(cfg, ModelConfig(name=tiny_model))
    np.testing.assert_allclose(again.mean, embedder.mean, atol=1e-6)
    np.testing.assert_allclose(again.embed(texts[:2]), vectors[:2], atol=1e-5)
    decisions = decide(vectors, embedder.make_index(), threshold=0.999)
    assert [d.accepted for d in decisions] == [True, True, True, True, False]
    assert decisions[4].nearest_in_batch == 0


def test_centring_removes_the_common_direction_of_the_embedded_model():
    """Raw mean-pooled states of unrelated texts look alike; centred ones must not."""
    embedder = make_embedder(_default("self"), ModelConfig(name=SMOLLM2))
    texts = [ORIGINAL, *DISTINCT, "Alice is older than Bob. Who is younger?",
             "Write a function that reverses a string."]
    pooled = embedder._pool(texts)
    raw = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    centred = embedder.embed(texts)
    off = ~np.eye(len(texts), dtype=bool)
    raw_mean, centred_mean = (raw @ raw.T)[off].mean(), (centred @ centred.T)[off].mean()
    assert raw_mean > 0.5, raw_mean  # anisotropic: any two texts at a high cosine
    assert centred_mean < raw_mean - 0.4, (raw_mean, centred_mean)
    assert abs(centred_mean) < 0.3, centred_mean
