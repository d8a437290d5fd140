"""The dedup decision on hand-made unit vectors: within the batch, against history, at the edge."""

from __future__ import annotations

import numpy as np
import pytest

from crescent.dedup import VectorIndex, decide


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
