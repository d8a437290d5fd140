"""Lexical dedup (`dedup=minhash`): MinHash signatures of word shingles, numbers masked, and
the index that compares them by estimated Jaccard similarity."""

from __future__ import annotations

import re

import numpy as np

# Numbers (with their decimal or thousands separators and fractions) and words; numbers all
# become one token, so a problem restated with other numbers keeps its shingles.
_TOKEN = re.compile(r"\d+(?:[.,/]\d+)*|[^\W\d_]+")


def shingles(text: str, size: int, mask_numbers: bool = True) -> list[bytes]:
    """Lower-cased word `size`-grams, numbers replaced by `#`; a shorter text is one shingle."""
    words = _TOKEN.findall(text.lower())
    if mask_numbers:
        words = ["#" if w[0].isdigit() else w for w in words]
    size = max(1, min(size, len(words)))
    return [" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)]


class MinHashEmbedder:
    """MinHash signatures (datasketch) of word shingles; similarity is the estimated Jaccard.

    One shared set of `num_perm` permutations, so that signatures of different texts compare
    position by position: the share of equal positions estimates the Jaccard similarity of
    the two shingle sets (standard error at most 0.5 / sqrt(num_perm)).
    """

    def __init__(self, num_perm: int, shingle: int, seed: int = 1,
                 mask_numbers: bool = True):
        from datasketch import MinHash

        self.num_perm, self.shingle, self.mask_numbers = num_perm, shingle, mask_numbers
        self._template = MinHash(num_perm=num_perm, seed=seed)

    def embed(self, texts):
        from datasketch import MinHash

        t = self._template
        signatures = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for row, text in enumerate(texts):
            m = MinHash(num_perm=self.num_perm, seed=t.seed, permutations=t.permutations,
                        scheme=t.scheme)
            m.update_batch(shingles(text, self.shingle, self.mask_numbers))
            signatures[row] = m.hashvalues
        return signatures

    def make_index(self) -> SignatureIndex:
        return SignatureIndex(self.num_perm)


class SignatureIndex:
    """MinHash signatures of accepted questions, compared exhaustively and vectorised.

    datasketch's MinHashLSH finds only candidates, and too few near the threshold: at
    threshold 0.5 with 128 permutations it picks 25 bands of 5 rows, which finds a pair of
    Jaccard exactly 0.5 with probability 1 - (1 - 0.5^5)^25 = 0.55. So every query is compared
    with every stored signature instead: one numpy comparison per permutation over the whole
    history (signatures stored permutation-major). A batch of 100 against 20,000 stored took
    35 ms of CPU here; the cost is batch x history x num_perm byte comparisons.
    """

    def __init__(self, num_perm: int):
        self.num_perm = num_perm
        self._sig = np.empty((num_perm, 1024), dtype=np.uint32)  # permutation-major, grows
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, signatures: np.ndarray) -> None:
        need = self._n + len(signatures)
        if need > self._sig.shape[1]:
            grown = np.empty((self.num_perm, max(need, 2 * self._sig.shape[1])), np.uint32)
            grown[:, : self._n] = self._sig[:, : self._n]
            self._sig = grown
        self._sig[:, self._n : need] = np.asarray(signatures, dtype=np.uint32).T
        self._n = need

    def _counts(self, signatures: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """Equal positions of each signature (rows) with each stored one (permutation-major)."""
        counts = np.zeros((len(signatures), stored.shape[1]),
                          dtype=np.uint8 if self.num_perm < 256 else np.uint16)
        for p in range(self.num_perm):
            counts += signatures[:, p, None] == stored[p]
        return counts

    def pairwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._counts(a, np.ascontiguousarray(b.T)).astype(np.float32) / self.num_perm

    def nearest(self, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._n == 0:
            return (np.full(len(signatures), -np.inf, dtype=np.float32),
                    np.full(len(signatures), -1))
        counts = self._counts(signatures, self._sig[:, : self._n])
        rows = counts.argmax(axis=1)
        return counts[np.arange(len(rows)), rows].astype(np.float32) / self.num_perm, rows

    def nearest_other(self) -> np.ndarray:
        best = np.empty(self._n, dtype=np.float32)
        own = self._sig[:, : self._n]
        for start in range(0, self._n, 1024):  # bounded memory: 1,024 rows at a time
            stop = min(start + 1024, self._n)
            counts = self._counts(own[:, start:stop].T, own).astype(np.int32)
            counts[np.arange(stop - start), np.arange(start, stop)] = -1  # not itself
            best[start:stop] = counts.max(axis=1)
        return best / self.num_perm
