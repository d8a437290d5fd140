"""Questions stage: bait prompting and rejection-sampling self-deduplication.

Candidates are numbered in the order they are requested, and `engine.batch_size` requests are
kept in flight: each finished one is replaced at once. They are decided in that order, one
block of `questions.batch_size` at a time (one embedding pass, one index search), so what is
accepted does not depend on which completion came back first. A duplicate queues a "make it
different" rewrite; candidate c may carry a rewrite of candidate j only when j <= c - ahead
(`_ahead`), which is decided before c is requested, so the requests too follow from the seed
alone. Fresh candidates come from `questions.source`: the domain's bait prompt (the method),
or one of the two baselines it is compared with: Magpie (the model continues the bare
pre-query chat template, so it writes a user turn with no instruction) and seed augmentation
(the model rewrites seed questions, e.g. GSM8K train).

Every decided candidate ends in exactly one of `questions.jsonl` (accepted) or
`rejected.jsonl` (with its reason), numbered by `candidate`, appended and flushed as decided.
A re-run replays those files to rebuild the index and the queue of rewrites, and continues to
`target` drawing what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from crescent.artefacts import QUESTIONS, REJECTED
from crescent.cache import STATS, Stage
from crescent.domains import answer_type_key
from crescent.errors import CrescentError
from crescent.infra.io import JsonlAppender, numbered_jsonl, resume_jsonl, write_json
from crescent.methods.cleaning import clean_question

logger = logging.getLogger(__name__)

STAGE = Stage("questions", ("seed", "model", "engine", "domain", "dedup", "questions"),
              outputs=("questions.jsonl", "rejected.jsonl"), version=2, generates=True,
              added=("domain.train_prompt",),
              exclude=("domain.input_prompt",),  # read by the answers stage only
              resolved={"domain.answer_type": answer_type_key})


@dataclass
class _State:
    """What the stage has decided so far; rebuilt from its two files on resume."""

    accepted: list[dict]
    rejected: list[dict]
    resumed_with: int  # accepted before this invocation
    fresh_drawn: int = 0  # fresh candidates requested: which seed question comes next
    # rewrites waiting for a request: (candidate text, its nearest accepted, round, candidate)
    pending: deque = field(default_factory=deque)
    rounds: dict[int, int] = field(default_factory=dict)  # requested, not decided: round
    tokens: Counter = field(default_factory=Counter)
    logs: tuple | None = None  # (questions.jsonl, rejected.jsonl) appenders while generating

    @property
    def decided(self) -> int:
        return len(self.accepted) + len(self.rejected)

    def accept(self, record: dict) -> None:
        self.logs[0].write(record)
        self.accepted.append(record)

    def reject(self, record: dict) -> None:
        self.logs[1].write(record)
        self.rejected.append(record)


def preflight(cfg: DictConfig) -> None:
    """Before any stage: seed augmentation's prompt and seed questions are there and read."""
    if cfg.questions.source == "seed_aug":
        make_source(cfg)


def run(cfg: DictConfig, run_dir: Path) -> Path:
    from crescent.engines import make_engine
    from crescent.methods.dedup import make_embedder

    out = Path(run_dir) / "questions"
    state = _resume(cfg, out)
    embedder = make_embedder(cfg.dedup, cfg.model)
    index = _rebuild_index(embedder, state.accepted)
    engine = make_engine(cfg.engine, cfg.model)
    started = time.time()
    _generate_until_done(cfg, out, state, engine, embedder, index)
    stats = _stats(cfg.questions, state, index, time.time() - started)
    if stats["stop_reason"] == "max_candidates":
        logger.info(f"crescent: questions: max_candidates={cfg.questions.max_candidates} spent "
                    f"with {stats['accepted']} of target={cfg.questions.target} accepted")
    write_json(out / STATS, stats)
    return out


def _ahead(cfg: DictConfig) -> int:
    """How many candidates requests may run ahead of the decisions: twice the engine's window
    (completions that came back early wait for a slow one before them) plus a block."""
    return 2 * cfg.engine.batch_size + cfg.questions.batch_size


def _resume(cfg: DictConfig, out: Path) -> _State:
    """The state after the candidates in the two files: the requests replayed in order, each
    taking the oldest rewrite it may carry, as they were made."""
    accepted, rejected = resume_jsonl(out / QUESTIONS), resume_jsonl(out / REJECTED)
    state = _State(accepted, rejected, resumed_with=len(accepted))
    decided = sorted(accepted + rejected, key=lambda r: r.get("candidate", -1))
    if [r.get("candidate") for r in decided] != list(range(len(decided))):
        raise CrescentError(f"{out}: its candidates are not numbered 0..{len(decided) - 1}: "
                            f"written by an older crescent; move it away to start afresh")
    for c, record in enumerate(decided):
        rewrite = _next_rewrite(cfg, state, c)
        if record["round"] != (rewrite[2] if rewrite else 0):
            raise CrescentError(
                f"{out}: candidate {c} does not follow from this configuration (written with "
                f"another engine.batch_size, questions.batch_size or max_rewrites?)")
        _queue_rewrite(cfg, state, c, record)
    return state


def _next_rewrite(cfg: DictConfig, state: _State, c: int) -> tuple | None:
    """The oldest pending rewrite candidate c may carry (taken off the queue), else None: c is
    a fresh candidate."""
    if state.pending and state.pending[0][3] <= c - _ahead(cfg):
        return state.pending.popleft()
    state.fresh_drawn += 1
    return None


def _queue_rewrite(cfg: DictConfig, state: _State, c: int, record: dict) -> None:
    if (record.get("reason") == "duplicate" and record["round"] < cfg.questions.max_rewrites
            and record["nearest_id"] is not None):
        nearest = state.accepted[record["nearest_id"]]["question"]
        state.pending.append((record["question"], nearest, record["round"] + 1, c))


def _rebuild_index(embedder, accepted: list[dict]):
    if embedder is None:
        return None
    index = embedder.make_index()
    if accepted:
        index.add(embedder.embed([q["question"] for q in accepted]))
    return index


def _generate_until_done(cfg, out: Path, state: _State, engine, embedder, index) -> None:
    """Candidates streamed through the engine until `target` questions are accepted or
    `max_candidates` are decided."""
    from tqdm import tqdm

    from crescent.engines import generate_in_order

    qcfg = cfg.questions
    start, block = state.decided, []  # block: (candidate, raw text) waiting for its decision
    bar = tqdm(total=qcfg.target, initial=min(len(state.accepted), qcfg.target),
               desc="questions", unit="q", dynamic_ncols=True)
    requests = _request_maker(cfg, state)

    def take(i: int, generation) -> bool:
        c = start + i
        state.tokens["prompt"] += generation.prompt_tokens
        state.tokens["completion"] += generation.total_tokens
        block.append((c, generation.texts[0]))
        # The bar counts accepted questions, which move a block at a time: say what came back.
        bar.set_postfix_str(f"{c + 1} candidates generated")
        if (c + 1) % qcfg.batch_size and c + 1 < qcfg.max_candidates:
            return True  # the block is not complete yet
        bar.update(_decide(cfg, block, state, embedder, index))
        block.clear()
        return len(state.accepted) < qcfg.target

    with JsonlAppender(out / QUESTIONS) as accepted, JsonlAppender(out / REJECTED) as rejected, \
            bar:  # closed on the way out of an error too, before the stage's last line
        state.logs = (accepted, rejected)
        if len(state.accepted) < qcfg.target:
            generate_in_order(engine, qcfg.sampling, 1, cfg.engine.batch_size,
                              lambda i: requests(start + i), take)


def _request_maker(cfg: DictConfig, state: _State):
    """candidate number -> its request, or None when it must wait for decisions (or the budget
    is spent)."""
    from crescent.engines import Request, derive_seed

    qcfg, fresh = cfg.questions, make_source(cfg)

    def request(c: int):
        if c >= qcfg.max_candidates or c >= state.decided + _ahead(cfg):
            return None
        rewrite = _next_rewrite(cfg, state, c)
        if rewrite:
            question, nearest, state.rounds[c], _ = rewrite
            given = [{"role": "user", "content": cfg.domain.diversify_prompt.format(
                question=question, nearest=nearest)}]
        else:
            state.rounds[c], given = 0, fresh(state.fresh_drawn - 1)
        # The seed depends only on the candidate's number: a resumed run draws what a run
        # that was never interrupted would.
        return Request(given, derive_seed(cfg.seed, "questions", c))

    return request


def _decide(cfg, block: list[tuple[int, str]], state: _State, embedder, index) -> int:
    """Clean, then accept or reject each candidate of a block against the index and the block,
    in order, until `target`; queue a rewrite for each duplicate. Returns how many were
    accepted."""
    from crescent.domains import answer_format
    from crescent.methods.dedup import decide

    qcfg = cfg.questions
    # A domain's own cleaning, where its answer format brings one (choices a question lists).
    clean = getattr(answer_format(cfg.domain.answer_type), "clean_question", clean_question)
    cleaned = [(c, raw, *clean(raw, cfg.domain.max_question_chars)) for c, raw in block]
    texts = [text for _, _, text, reason in cleaned if not reason]
    if index is None or not texts:
        decided, vectors = [None] * len(texts), None
    else:
        vectors = embedder.embed(texts)
        decided = decide(vectors, index, cfg.dedup.threshold)
    decisions = enumerate(decided)  # (position among the clean texts, decision)
    ids_in_block: dict[int, int] = {}  # position among the clean texts -> accepted id
    for c, raw, text, reason in cleaned:
        if len(state.accepted) >= qcfg.target:
            break  # the rest of the block is never decided: the stage is done
        rejected = {"question": text, "raw": raw, "round": state.rounds.pop(c)}
        if reason:
            state.reject({**rejected, "reason": reason, "nearest_id": None, "similarity": None,
                          "candidate": c})
            continue
        position, d = next(decisions)
        nearest_id = None if d is None else (
            ids_in_block.get(d.nearest_in_batch) if d.nearest_in_batch is not None
            else d.nearest_row)
        similarity = None if d is None or d.similarity is None else round(d.similarity, 4)
        if d is None or d.accepted:
            ids_in_block[position] = len(state.accepted)
            state.accept({"id": len(state.accepted), "question": text,
                          "round": rejected["round"], "nearest_id": nearest_id,
                          "similarity": similarity, "candidate": c})
        else:
            state.reject({**rejected, "reason": "duplicate", "nearest_id": nearest_id,
                          "similarity": similarity, "candidate": c})
            _queue_rewrite(cfg, state, c, state.rejected[-1])
    if index is not None and ids_in_block:  # rows stay equal to ids: accepted in order
        index.add(vectors[list(ids_in_block)])
    return len(ids_in_block)


def _stats(qcfg, state: _State, index, wall: float) -> dict:
    accepted, rejected = state.accepted, state.rejected
    return {
        "source": qcfg.source,
        "stop_reason": "target" if len(accepted) >= qcfg.target else "max_candidates",
        "target": qcfg.target,
        "accepted": len(accepted),
        "shortfall": max(0, qcfg.target - len(accepted)),
        "candidates": state.decided,
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
    """`questions.source` as a function: fresh candidates drawn before -> the next one's input,
    a chat conversation or (Magpie) a raw prompt."""
    source, domain = cfg.questions.source, cfg.domain
    if source == "bait":
        bait = [{"role": "user", "content": domain.bait_prompt}]
        return lambda drawn: bait
    if source == "magpie":
        from crescent.infra.models import resolve_model

        prompt = pre_query_prompt(resolve_model(cfg.model.name), domain.magpie_system)
        return lambda drawn: prompt
    # seed_aug, the one source left (QuestionSource allows no other)
    if not domain.seed_prompt:
        raise CrescentError(
            f"questions.source=seed_aug: domain {domain.name!r} has no seed_prompt")
    seeds = load_seeds(cfg.questions.seeds)
    # One seeded order, walked through and wrapped around: each seed is used once per pass.
    order = np.random.default_rng(cfg.seed).permutation(len(seeds))
    return lambda drawn: [{"role": "user", "content": domain.seed_prompt.format(
        seed=seeds[order[drawn % len(seeds)]])}]


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


def headline(stats: dict) -> str:
    """The summary's line for this stage."""
    return (f"{stats.get('accepted')} of {stats.get('target')} questions accepted "
            f"from {stats.get('candidates')} candidates")
