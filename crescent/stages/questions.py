"""Questions stage: bait prompting and rejection-sampling self-deduplication.

Requests stream through the engine: as completions come back, new ones are submitted (a
pending "make it different" rewrite when one is due, else a fresh candidate), and the
completions are decided in submission order, one chunk at a time (`_Flight`). Fresh
candidates come from `questions.source`: the domain's bait prompt (the method), or one of the
two baselines it is compared with: Magpie (the model continues the bare pre-query chat
template, so it writes a user turn with no instruction) and seed augmentation (the model
rewrites seed questions, e.g. GSM8K train). Every candidate
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
    fresh_drawn: int  # fresh candidates submitted: which seed question comes next
    resumed_with: int  # accepted before this invocation
    # (submission index of the duplicate, its text, its nearest question, round of the rewrite)
    pending: list[tuple[int, str, str, int]] = field(default_factory=list)
    tokens: Counter = field(default_factory=Counter)
    decide_s: float = 0.0  # wall time spent cleaning, embedding and deciding (engine idle on CPU)

    @property
    def spent(self) -> int:
        """Candidates decided: each ends in exactly one of the files."""
        return len(self.accepted) + len(self.rejected)


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
    return _State(accepted, rejected,
                  fresh_drawn=sum(1 for r in accepted + rejected if r["round"] == 0),
                  resumed_with=len(accepted))


def _rebuild_index(embedder, accepted: list[dict]):
    if embedder is None:
        return None
    index = embedder.make_index()
    if accepted:
        index.add(embedder.embed([q["question"] for q in accepted]))
    return index


def _done(qcfg, state: _State) -> bool:
    return len(state.accepted) >= qcfg.target or state.spent >= qcfg.max_candidates


def _generate_until_done(cfg, out: Path, state: _State, engine, embedder, index) -> None:
    """Keep the engine full of requests and decide their candidates in submission order, one
    chunk of `questions.batch_size` at a time, until `target` or the budget is reached."""
    from tqdm import tqdm

    qcfg = cfg.questions
    flight = _Flight(cfg, state, engine)
    bar = tqdm(total=qcfg.target, initial=min(len(state.accepted), qcfg.target),
               desc="questions", unit="q", dynamic_ncols=True)
    with JsonlAppender(out / QUESTIONS) as acc_out, JsonlAppender(out / REJECTED) as rej_out:
        try:
            while not _done(qcfg, state):
                flight.fill()
                for texts, rounds, keys in flight.ready_chunks():
                    started = time.perf_counter()
                    batch = _clean(texts, rounds, keys, cfg.domain.max_question_chars, state,
                                   rej_out)
                    if batch:
                        bar.update(_decide(cfg, batch, state, embedder, index, acc_out, rej_out))
                    state.decide_s += time.perf_counter() - started
                    if _done(qcfg, state):
                        break
        finally:
            flight.stream.abort()  # the requests still running are not needed
    bar.close()


class _Flight:
    """The requests in flight and the completions waiting for their turn to be decided.

    On an engine that streams (vLLM) up to `engine.batch_size` requests are in flight; on the
    others, one chunk of `questions.batch_size` per engine call. Request s (its submission
    index, counted over the whole stage, resumes included) gets the seed
    derive_seed(seed, "questions", s), and its content depends only on decisions of
    requests <= s - lag: it is submitted no earlier than those are decided, and takes the
    oldest pending rewrite made by one of them, else a fresh candidate. Completions come back
    in any order and are decided in chunks of `questions.batch_size` consecutive requests.
    So what is written is a function of the seed alone, however the engine interleaves the
    requests, while up to `engine.batch_size` of them stay in flight.
    """

    def __init__(self, cfg, state: _State, engine):
        from crescent.infra.engines import open_stream

        self.cfg, self.qcfg, self.state = cfg, cfg.questions, state
        self.stream = open_stream(engine, self.qcfg.sampling, n=1)
        self.fresh = make_source(cfg)
        self.chunk = max(1, self.qcfg.batch_size)
        if self.stream.concurrent:
            self.window = max(1, cfg.engine.batch_size)
            # More undecided requests than the window, so that completions buffered behind a
            # slow one of their chunk do not empty the engine.
            self.lag = self.window + self.chunk
        else:  # batch at a time: one chunk per call, its rewrites ready for the next one
            self.window = self.lag = self.chunk
        self.next = self.chunk_start = state.spent
        self.rounds: dict[int, int] = {}
        self.done: dict[int, object] = {}

    def _cap(self) -> int:
        # Near the target, fewer requests: those past it would be thrown away.
        left = self.qcfg.target - len(self.state.accepted)
        return min(self.window, max(1, 2 * left))

    def fill(self) -> None:
        while (self.next < self.qcfg.max_candidates and self.next - self.state.spent < self.lag
               and self.stream.in_flight() < self._cap()):
            self._submit(self.next)
            self.next += 1

    def _submit(self, s: int) -> None:
        from crescent.infra.engines import derive_seed

        pending, seed = self.state.pending, derive_seed(self.cfg.seed, "questions", s)
        if pending and pending[0][0] <= s - self.lag:
            _, text, nearest, rnd = pending.pop(0)
            content = self.cfg.domain.diversify_prompt.format(question=text, nearest=nearest)
            self.stream.submit(s, seed, conversation=[{"role": "user", "content": content}])
        else:
            chats, prompts = self.fresh(1, self.state.fresh_drawn)
            self.state.fresh_drawn += 1
            rnd = 0
            self.stream.submit(s, seed, conversation=chats[0] if chats else None,
                               prompt=prompts[0] if prompts else None)
        self.rounds[s] = rnd

    def ready_chunks(self):
        """Wait for completions; yield (texts, rounds, keys) of each chunk now complete."""
        for key, gen in self.stream.finished():
            self.done[key] = gen
            self.state.tokens["prompt"] += gen.prompt_tokens
            self.state.tokens["completion"] += gen.total_tokens
        while True:
            end = min(self.chunk_start + self.chunk, self.qcfg.max_candidates)
            keys = list(range(self.chunk_start, end))
            if not keys or any(k not in self.done for k in keys):
                return
            gens = [self.done.pop(k) for k in keys]
            self.chunk_start = end
            yield [g.texts[0] for g in gens], [self.rounds.pop(k) for k in keys], keys


def _clean(texts: list[str], rounds: list[int], keys: list[int], max_chars: int,
           state: _State, rej_out: JsonlAppender) -> list[tuple[str, str, int, int]]:
    """(candidate, raw, round, key) of the texts that clean into a question; the rest rejected."""
    batch = []
    for raw, rnd, key in zip(texts, rounds, keys):
        text, reason = clean_question(raw, max_chars)
        if reason:
            rej_out.write({"question": text, "raw": raw, "round": rnd, "reason": reason,
                           "nearest_id": None, "similarity": None})
            state.rejected.append({"reason": reason, "round": rnd})
        else:
            batch.append((text, raw, rnd, key))
    return batch


def _decide(cfg, batch: list[tuple[str, str, int, int]], state: _State, embedder, index,
            acc_out: JsonlAppender, rej_out: JsonlAppender) -> int:
    """Accept or reject each candidate against the index and the batch, in batch order;
    queue a rewrite for each duplicate. Returns how many were accepted."""
    from crescent.methods.dedup import decide

    qcfg = cfg.questions
    if index is None:
        decisions, vectors = [None] * len(batch), None
    else:
        vectors = embedder.embed([t for t, _, _, _ in batch])
        decisions = decide(vectors, index, cfg.dedup.threshold)
    ids_in_batch: dict[int, int] = {}
    for i, ((text, raw, rnd, key), d) in enumerate(zip(batch, decisions)):
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
            state.pending.append((key, text, state.accepted[nearest_id]["question"], rnd + 1))
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
        # The generate-and-decide loop alone (engine and embedder start-up excluded).
        "loop_wall_s": round(wall, 2),
        "completion_tokens_per_s": round(state.tokens["completion"] / wall, 1) if wall else None,
        "decide_wall_s": round(state.decide_s, 2),  # of loop_wall_s
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
