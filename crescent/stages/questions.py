"""Questions stage: bait prompting and rejection-sampling self-deduplication.

Each round fills one batch of requests: pending "make it different" rewrites first, fresh
candidates for the rest. Fresh candidates come from `questions.source`: the domain's bait
prompt (the method), or one of the two baselines it is compared with: Magpie (the model
continues the bare pre-query chat template, so it writes a user turn with no instruction)
and seed augmentation (the model rewrites seed questions, e.g. GSM8K train). Every candidate
ends in exactly one of `questions.jsonl` (accepted) or `rejected.jsonl` (with its reason),
appended and flushed as decided, so a re-run rebuilds the index from those files and continues
to `target` without duplicates.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from crescent.infra.io import CrescentError, JsonlAppender, numbered_jsonl, resume_jsonl, write_json
from crescent.methods.cleaning import clean_question

logger = logging.getLogger(__name__)

QUESTIONS = "questions.jsonl"
REJECTED = "rejected.jsonl"


@dataclass
class _State:
    """What the stage has decided so far; rebuilt from its two files on resume."""

    accepted: list[dict]
    rejected: list[dict]
    spent: int  # candidates generated: each ends in exactly one of the files
    fresh_drawn: int  # candidates with round 0: which seed question comes next
    resumed_with: int  # accepted before this invocation
    pending: list[tuple[str, str, int]] = field(default_factory=list)  # (text, nearest, round)
    tokens: Counter = field(default_factory=Counter)


def run(cfg: DictConfig, run_dir: Path) -> Path:
    from crescent.infra.engines import make_engine
    from crescent.methods.dedup import make_embedder

    out = Path(run_dir) / "questions"
    state = _resume(out)
    embedder = make_embedder(cfg.dedup, cfg.model)
    index = _rebuild_index(embedder, state.accepted)
    engine = make_engine(cfg.engine, cfg.model)
    started = time.time()
    _generate_until_done(cfg, out, state, engine, embedder, index)
    stats = _stats(cfg.questions, state, index, time.time() - started)
    if stats["stop_reason"] == "max_candidates":
        logger.info(f"crescent: questions: max_candidates={cfg.questions.max_candidates} spent "
                    f"with {stats['accepted']} of target={cfg.questions.target} accepted")
    write_json(out / "stats.json", stats)
    return out


def _resume(out: Path) -> _State:
    accepted, rejected = resume_jsonl(out / QUESTIONS), resume_jsonl(out / REJECTED)
    return _State(accepted, rejected, spent=len(accepted) + len(rejected),
                  fresh_drawn=sum(1 for r in accepted + rejected if r["round"] == 0),
                  resumed_with=len(accepted))


def _rebuild_index(embedder, accepted: list[dict]):
    if embedder is None:
        return None
    index = embedder.make_index()
    if accepted:
        index.add(embedder.embed([q["question"] for q in accepted]))
    return index


def _generate_until_done(cfg, out: Path, state: _State, engine, embedder, index) -> None:
    """Rounds of one batch each until `target` questions are accepted or the budget is spent."""
    from tqdm import tqdm

    qcfg = cfg.questions
    fresh_requests = make_source(cfg)
    bar = tqdm(total=qcfg.target, initial=min(len(state.accepted), qcfg.target),
               desc="questions", unit="q", dynamic_ncols=True)
    with JsonlAppender(out / QUESTIONS) as acc_out, JsonlAppender(out / REJECTED) as rej_out:
        while len(state.accepted) < qcfg.target and state.spent < qcfg.max_candidates:
            texts, rounds = _generate_round(cfg, state, engine, fresh_requests)
            batch = _clean(texts, rounds, cfg.domain.max_question_chars, state, rej_out)
            if batch:
                bar.update(_decide(cfg, batch, state, embedder, index, acc_out, rej_out))
    bar.close()


def _generate_round(cfg, state: _State, engine, fresh_requests) -> tuple[list[str], list[int]]:
    """One batch: pending rewrites first, fresh candidates for the rest; raw texts, rounds."""
    from crescent.infra.engines import derive_seed

    qcfg = cfg.questions
    size = min(qcfg.batch_size, qcfg.max_candidates - state.spent)
    rewrites, state.pending = state.pending[:size], state.pending[size:]
    rounds = [r for _, _, r in rewrites] + [0] * (size - len(rewrites))
    conversations = [
        [{"role": "user",
          "content": cfg.domain.diversify_prompt.format(question=q, nearest=near)}]
        for q, near, _ in rewrites
    ]
    fresh_chats, fresh_prompts = fresh_requests(size - len(rewrites), state.fresh_drawn)
    state.fresh_drawn += size - len(rewrites)
    # The seed depends only on how many candidates came before: a resumed run draws the same
    # way a run that was never interrupted would.
    seed = derive_seed(cfg.seed, "questions", state.spent)
    gens = engine.chat(conversations + fresh_chats, qcfg.sampling, n=1, seed=seed)
    if fresh_prompts:
        gens += engine.complete(fresh_prompts, qcfg.sampling, n=1, seed=derive_seed(seed, "raw"))
    state.spent += size
    state.tokens["prompt"] += sum(g.prompt_tokens for g in gens)
    state.tokens["completion"] += sum(g.total_tokens for g in gens)
    return [g.texts[0] for g in gens], rounds


def _clean(texts: list[str], rounds: list[int], max_chars: int, state: _State,
           rej_out: JsonlAppender) -> list[tuple[str, str, int]]:
    """(candidate, raw, round) of the texts that clean into a question; the rest rejected."""
    batch = []
    for raw, rnd in zip(texts, rounds):
        text, reason = clean_question(raw, max_chars)
        if reason:
            rej_out.write({"question": text, "raw": raw, "round": rnd, "reason": reason,
                           "nearest_id": None, "similarity": None})
            state.rejected.append({"reason": reason, "round": rnd})
        else:
            batch.append((text, raw, rnd))
    return batch


def _decide(cfg, batch: list[tuple[str, str, int]], state: _State, embedder, index,
            acc_out: JsonlAppender, rej_out: JsonlAppender) -> int:
    """Accept or reject each candidate against the index and the batch, in batch order;
    queue a rewrite for each duplicate. Returns how many were accepted."""
    from crescent.methods.dedup import decide

    qcfg = cfg.questions
    if index is None:
        decisions, vectors = [None] * len(batch), None
    else:
        vectors = embedder.embed([t for t, _, _ in batch])
        decisions = decide(vectors, index, cfg.dedup.threshold)
    ids_in_batch: dict[int, int] = {}
    for i, ((text, raw, rnd), d) in enumerate(zip(batch, decisions)):
        nearest_id = None if d is None else (
            ids_in_batch.get(d.nearest_in_batch) if d.nearest_in_batch is not None
            else d.nearest_row)
        similarity = None if d is None or d.similarity is None else round(d.similarity, 4)
        if (d is None or d.accepted) and len(state.accepted) < qcfg.target:
            record = {"id": len(state.accepted), "question": text, "round": rnd,
                      "nearest_id": nearest_id, "similarity": similarity}
            acc_out.write(record)
            state.accepted.append(record)
            ids_in_batch[i] = record["id"]
            continue
        reason = "over_target" if d is None or d.accepted else "duplicate"
        rej_out.write({"question": text, "raw": raw, "round": rnd, "reason": reason,
                       "nearest_id": nearest_id, "similarity": similarity})
        state.rejected.append({"reason": reason, "round": rnd})
        if reason == "duplicate" and rnd < qcfg.max_rewrites and nearest_id is not None:
            state.pending.append((text, state.accepted[nearest_id]["question"], rnd + 1))
    if index is not None:  # rows stay equal to ids: accepted in batch order
        index.add(vectors[list(ids_in_batch)])
    return len(ids_in_batch)


def _stats(qcfg, state: _State, index, wall: float) -> dict:
    accepted, rejected = state.accepted, state.rejected
    return {
        "source": qcfg.source,
        "stop_reason": "target" if len(accepted) >= qcfg.target else "max_candidates",
        "target": qcfg.target,
        "accepted": len(accepted),
        "shortfall": max(0, qcfg.target - len(accepted)),
        "candidates": state.spent,
        "rejected": dict(Counter(r["reason"] for r in rejected)),
        "rewrites_generated": sum(1 for r in rejected + accepted if r["round"] > 0),
        "rewrites_accepted": sum(1 for r in accepted if r["round"] > 0),
        "acceptance_rate_by_round": _acceptance_by_round(accepted, rejected),
        "tokens": dict(state.tokens),  # this invocation's only
        "resumed_with": state.resumed_with,
        "questions_per_s": round((len(accepted) - state.resumed_with) / wall, 3),
        "diversity": diversity([q["question"] for q in accepted], index),
    }


def make_source(cfg: DictConfig):
    """`questions.source` as a function (count, fresh drawn so far) -> (chats, raw prompts)."""
    source, domain = cfg.questions.source, cfg.domain
    if source == "bait":
        bait = [{"role": "user", "content": domain.bait_prompt}]
        return lambda count, drawn: ([bait] * count, [])
    if source == "magpie":
        from crescent.infra.models import resolve_model

        prompt = pre_query_prompt(resolve_model(cfg.model.name), domain.magpie_system)
        return lambda count, drawn: ([], [prompt] * count)
    if source == "seed_aug":
        if not domain.seed_prompt:
            raise CrescentError(
                f"questions.source=seed_aug: domain {domain.name!r} has no seed_prompt")
        seeds = load_seeds(cfg.questions.seeds)
        # One seeded order, walked through and wrapped around: each seed is used once per pass.
        order = np.random.default_rng(cfg.seed).permutation(len(seeds))

        def seed_chats(count, drawn):
            picked = (seeds[order[(drawn + i) % len(seeds)]] for i in range(count))
            return [[{"role": "user", "content": domain.seed_prompt.format(seed=q)}]
                    for q in picked], []

        return seed_chats
    raise CrescentError(f"questions.source={source!r}: expected bait, magpie or seed_aug")


def pre_query_prompt(model_path: str, system: str | None) -> str:
    """The chat template rendered up to where the user's words would begin (Magpie)."""
    from transformers import AutoTokenizer

    marker = "\x00CRESCENT-USER-TURN\x00"
    turns = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": marker}]
    text = AutoTokenizer.from_pretrained(model_path).apply_chat_template(turns, tokenize=False)
    if marker not in text:
        raise CrescentError(f"questions.source=magpie: the chat template of {model_path} "
                            "does not render a user turn")
    return text[: text.index(marker)]


def load_seeds(path: str | None) -> list[str]:
    if not path:
        raise CrescentError("questions.source=seed_aug needs questions.seeds=<JSON Lines with "
                            "a question field>")
    seeds = []
    for number, row in numbered_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("question"), str):
            raise CrescentError(f"{path}:{number}: no question field")
        seeds.append(row["question"])
    if not seeds:
        raise CrescentError(f"questions.seeds={path}: no seed questions")
    return seeds


def _acceptance_by_round(accepted: list[dict], rejected: list[dict]) -> dict[str, float]:
    seen, kept = defaultdict(int), defaultdict(int)
    for r in accepted:
        seen[r["round"]] += 1
        kept[r["round"]] += 1
    for r in rejected:
        seen[r["round"]] += 1
    return {str(k): round(kept[k] / seen[k], 4) for k in sorted(seen)}


def diversity(questions: list[str], index) -> dict:
    """Nearest-neighbour similarity within the final set (its dedup index), distinct 3-grams."""
    grams = [tuple(w[i : i + 3]) for w in (q.lower().split() for q in questions)
             for i in range(max(0, len(w) - 2))]
    result = {"distinct_3grams": len(set(grams)),
              "distinct_3gram_ratio": round(len(set(grams)) / len(grams), 4) if grams else None}
    if index is not None and len(index) > 1:
        nearest = index.nearest_other()
        result["nn_similarity_mean"] = round(float(nearest.mean()), 4)
        result["nn_similarity_p95"] = round(float(np.percentile(nearest, 95)), 4)
    return result
