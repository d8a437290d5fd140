"""Measure how well each dedup embedder separates duplicates, and pick its default threshold.

    python experiments/measure_dedup_thresholds.py [--pool 1000] [--pairs 300]
        [--out outputs/dedup_thresholds.json]

Data: GSM8K questions read from ../shared/data/gsm8k (never copied into the project).
- Accepted set: `pool` questions, standing in for the questions a run has accepted.
- Duplicates: `pairs` of those questions rewritten by light edits -- every number changed
  (same number of digits), every name swapped for another GSM8K name, and the sentences
  before the final question put in another order. Score: similarity to the original.
- Non-duplicates: `pairs` other GSM8K questions (different problems). Score: similarity to
  the nearest question of the accepted set under the embedder itself -- what the stage's
  decision sees, and the hardest different-problem pair each one has. Random pairs of
  different questions are reported too (AUC only): too easy to choose a threshold on.

Per embedder: ROC AUC of duplicates against non-duplicates, and the threshold by this rule:
the lowest threshold (rounded up to 0.01) at which at most 1% of the non-duplicates would be
rejected against the accepted set; recall is the share of duplicates caught at it. Youden's J
threshold (max recall - false-duplicate rate) is printed beside it for comparison.
Variants (`self` at half depth and uncentred, `minhash` with other shingle sizes and with
numbers kept) show why the defaults are what they are; `*` marks the shipped
conf/dedup/*.yaml settings.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from crescent.config import DedupConfig

DATA = ROOT.parent / "shared" / "data" / "gsm8k"

NOT_NAMES = {  # always capitalised in GSM8K, but not people
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January",
    "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December", "Christmas", "Halloween", "Easter", "Thanksgiving", "York", "Mr",
    "Mrs", "Ms", "Dr", "School", "High",
}
_NUMBER = re.compile(r"\d+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def load_questions() -> list[str]:
    return [json.loads(line)["question"] for name in ("train.jsonl", "test.jsonl")
            for line in (DATA / name).open()]


def name_list(questions: list[str]) -> list[str]:
    """Words that GSM8K always capitalises, seen at least 5 times: mostly first names."""
    cased, lower = Counter(), set()
    for q in questions:
        for w in re.findall(r"[A-Za-z]+", q):
            if w[0].isupper():
                cased[w] += 1
            else:
                lower.add(w)
    return sorted(w for w, c in cased.items() if c >= 5 and len(w) >= 3 and w[1:].islower()
                  and w.lower() not in lower and w not in NOT_NAMES)


def light_edit(text: str, names: list[str], rng: np.random.Generator) -> str:
    """The same problem told differently: numbers, names and sentence order changed."""
    def number(m: re.Match) -> str:
        digits = m.group()
        if set(digits) == {"0"}:
            return digits  # keeps 80,000 and 2.05 shaped like themselves
        while True:
            new = str(rng.integers(1, 10)) + "".join(
                str(d) for d in rng.integers(0, 10, len(digits) - 1))
            if new != digits:
                return new

    text = _NUMBER.sub(number, text)
    present = sorted({w for w in re.findall(r"[A-Z][a-z]+", text) if w in set(names)})
    swap = dict(zip(present, rng.choice([n for n in names if n not in present],
                                        len(present), replace=False)))
    if swap:
        text = re.sub(r"\b(" + "|".join(swap) + r")\b", lambda m: swap[m.group()], text)
    sentences = _SENTENCE.split(text)
    body, last = sentences[:-1], sentences[-1:]
    if len(body) >= 2:
        order = list(range(len(body)))
        while order == sorted(order):
            order = list(rng.permutation(len(body)))
        body = [body[i] for i in order]
    elif len(body) == 1:  # two sentences: ask the question first
        body, last = last, body
    return " ".join(body + last)


def pair_sims(index, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([index.pairwise(a[i : i + 1], b[i : i + 1])[0, 0] for i in range(len(a))])


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(duplicate scores above non-duplicate), ties half: the Mann-Whitney form of AUC."""
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    ties = np.searchsorted(neg_sorted, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def thresholds(pos: np.ndarray, neg: np.ndarray, max_fdr: float) -> dict:
    """The rule's threshold (lowest, to 0.01, with <= max_fdr of non-duplicates at or above it)
    and Youden's J threshold, with recall and false-duplicate rate at each."""
    allowed = math.floor(max_fdr * len(neg))
    neg_desc = np.sort(neg)[::-1]
    # Strictly above the (allowed+1)-th highest non-duplicate: at most `allowed` reach it.
    floor = neg_desc[allowed] if allowed < len(neg) else -np.inf
    t = math.floor(float(floor) * 100 + 1e-6) / 100 + 0.01
    cands = np.unique(np.concatenate([pos, neg]))
    j = [(pos >= c).mean() - (neg >= c).mean() for c in cands]
    tj = float(cands[int(np.argmax(j))])
    return {
        "threshold": round(t, 2), "recall": float((pos >= t).mean()),
        "false_dup_rate": float((neg >= t).mean()),
        "youden_threshold": round(tj, 4), "youden_recall": float((pos >= tj).mean()),
        "youden_false_dup_rate": float((neg >= tj).mean()),
    }


def variants(which: list[str], texts: list[str]):
    """(label, config, an empty index, one row per text) for every embedder and variant
    measured; `config` is the dedup config it corresponds to, if any. `self` pools each depth
    once, and its centred and uncentred rows both come from that."""
    from crescent.config import ModelConfig
    from crescent.infra.models import SMOLLM2
    from crescent.methods.dedup import MinHashEmbedder, MiniLMEmbedder, SelfEmbedder

    if "minilm" in which:
        e = MiniLMEmbedder(DedupConfig.batch_size)
        yield "minilm", {"method": "minilm"}, e.make_index(), e.embed(texts)
    if "self" in which:
        for depth in (1.0, 0.5):
            e = SelfEmbedder(ModelConfig(name=SMOLLM2), depth, DedupConfig.batch_size)
            pooled = e._pool(texts)
            for centred in (True, False):
                rows = pooled - e.mean if centred else pooled.copy()
                rows /= np.linalg.norm(rows, axis=1, keepdims=True)
                yield (f"self depth={depth}" + ("" if centred else " uncentred"),
                       {"method": "self", "depth": depth} if centred else None,
                       e.make_index(), rows)
            del e
    if "minhash" in which:
        for shingle in (1, 2, 3, 5):
            e = MinHashEmbedder(128, shingle)
            yield (f"minhash shingle={shingle}",
                   {"method": "minhash", "num_perm": 128, "shingle": shingle},
                   e.make_index(), e.embed(texts))
        for shingle in (1, 3):
            e = MinHashEmbedder(128, shingle, mask_numbers=False)
            yield f"minhash shingle={shingle} numbers kept", None, e.make_index(), e.embed(texts)


def is_default(config: dict | None) -> bool:
    """Whether conf/dedup/<method>.yaml is this variant (its threshold aside)."""
    if config is None:
        return False
    from crescent.options import MinHashOptions, SelfOptions

    shipped = _yaml(config["method"])
    # the embedders' own settings at their options' defaults (dedup.options.<name>)
    defaults = {**vars(DedupConfig()), **vars(MinHashOptions()), **vars(SelfOptions())}
    return all(shipped.get(k, defaults[k]) == v for k, v in config.items())


def _yaml(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "conf" / "dedup" / f"{name}.yaml").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=1000, help="accepted questions")
    parser.add_argument("--pairs", type=int, default=300, help="duplicates and non-duplicates")
    parser.add_argument("--max-fdr", type=float, default=0.01, help="false-duplicate rate allowed")
    parser.add_argument("--embedders", default="minilm,self,minhash")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/dedup_thresholds.json")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    questions = load_questions()
    names = name_list(questions)
    picks = rng.permutation(len(questions))
    pool = [questions[i] for i in picks[: args.pool]]
    originals = pool[: args.pairs]
    duplicates = [light_edit(q, names, rng) for q in originals]
    others = [questions[i] for i in picks[args.pool : args.pool + args.pairs]]
    assert all(d != o for d, o in zip(duplicates, originals))
    texts = pool + duplicates + others

    rows, scores = [], []
    started = time.time()
    for label, config, index, embedded in variants(args.embedders.split(","), texts):
        pool_rows = embedded[: args.pool]
        dup_rows = embedded[args.pool : args.pool + args.pairs]
        other_rows = embedded[args.pool + args.pairs :]
        index.add(pool_rows)
        pos = pair_sims(index, dup_rows, pool_rows[: args.pairs])
        neg = index.nearest(other_rows)[0]
        # Random pairs of different problems: each other question with one accepted question.
        neg_random = pair_sims(index, other_rows, pool_rows[-args.pairs :])
        row = {"embedder": label, "config": config, "auc": roc_auc(pos, neg),
               "auc_random_pairs": roc_auc(pos, neg_random),
               **thresholds(pos, neg, args.max_fdr),
               "dup_sim_median": float(np.median(pos)), "nondup_sim_median": float(np.median(neg)),
               "random_pair_sim_mean": float(neg_random.mean()),
               "seconds": round(time.time() - started, 1)}
        started = time.time()
        rows.append(row)
        scores.append((pos, neg))
        print(f"{label}: AUC {row['auc']:.4f}, threshold {row['threshold']}, "
              f"{row['seconds']} s", flush=True)

    print(f"\n{args.pool} accepted GSM8K questions, {args.pairs} light-edit duplicates, "
          f"{args.pairs} different questions (scored against their nearest accepted one);\n"
          f"threshold = lowest with <= {args.max_fdr:.0%} of different questions rejected\n")
    head = (f"{'embedder':<34}{'AUC':>7}{'AUC rnd':>9}{'thresh':>8}{'recall':>8}{'FDR':>7}"
            f"{'Youden t':>10}{'recall':>8}{'FDR':>7}  {'dup med':>8}{'diff med':>9}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        r["default"] = is_default(r["config"])
        print(f"{r['embedder'] + (' *' if r['default'] else ''):<34}{r['auc']:>7.4f}"
              f"{r['auc_random_pairs']:>9.4f}{r['threshold']:>8.2f}{r['recall']:>8.3f}"
              f"{r['false_dup_rate']:>7.3f}{r['youden_threshold']:>10.4f}{r['youden_recall']:>8.3f}"
              f"{r['youden_false_dup_rate']:>7.3f}  {r['dup_sim_median']:>8.3f}"
              f"{r['nondup_sim_median']:>9.3f}")
    print("* the shipped conf/dedup/*.yaml setting; at its shipped threshold:")
    for r, (pos, neg) in zip(rows, scores):
        if r["default"]:
            t = _yaml(r["config"]["method"])["threshold"]
            r.update(shipped_threshold=t, shipped_recall=float((pos >= t).mean()),
                     shipped_false_dup_rate=float((neg >= t).mean()))
            print(f"  {r['embedder']:<32} threshold {t:.2f}: recall {r['shipped_recall']:.3f}, "
                  f"false duplicates {r['shipped_false_dup_rate']:.3f}")
    example = {"original": originals[0], "duplicate": duplicates[0]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"pool": args.pool, "pairs": args.pairs, "max_fdr": args.max_fdr,
                               "seed": args.seed, "example": example,
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
