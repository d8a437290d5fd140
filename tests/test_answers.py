"""Answers stage: decontamination, the vote funnel and resume on a scripted engine (pure logic),
and end to end on the embedded model from 20 questions, killed in the middle (slow)."""

from __future__ import annotations

import json

import datasets
import pytest

from crescent import cache, engines
from crescent.domains.math import MathAnswers
from crescent.engines import Generation
from crescent.errors import CrescentError
from crescent.infra.io import read_json, read_jsonl
from crescent.methods.decontamination import Benchmarks
from tests.conftest import DATA, ROOT, compose
from tests.killing import kill_points, kill_then_finish, lines, whole_records

GSM8K_TEST = DATA / "gsm8k" / "test.jsonl"
LEAKED = json.loads(GSM8K_TEST.open().readline())["question"]

# question -> the k=4 responses the scripted engine gives it
SCRIPT = {
    "How many legs do 2 dogs have?":
        ["Each dog has 4 legs, 2 * 4 = 8.\nThe answer is: 8"] * 4,
    "What is 1 divided by 2?":
        ["1/2 = 0.5\nThe answer is: 0.5", "The answer is: 1/2", "So \\boxed{\\frac{1}{2}}",
         "The answer is: 3"],
    "Is this question answerable?": ["I cannot say.", "No idea.", "Hmm.", "Unclear."],
    "Pick a number from 1 to 3.":
        ["The answer is: 1", "The answer is: 2", "The answer is: 3", "I will not."],
    "Toss a coin: 1 or 2?":
        ["The answer is: 1", "The answer is: 1", "The answer is: 2", "The answer is: 2"],
    LEAKED: ["The answer is: 18"] * 4,
}


class ScriptedEngine:
    def __init__(self):
        self.asked = []

    def chat(self, conversations, sampling, n, seed):
        out = []
        for conversation in conversations:
            question = next(q for q in SCRIPT if q in conversation[-1]["content"])
            self.asked.append(question)
            out.append(Generation(SCRIPT[question][:n], [7] * n, 20))
        return out


def _cfg(*overrides):
    return compose("voting.k=4", f"eval.data_dir={DATA}", *overrides)


def _questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": q}) + "\n"
                            for i, q in enumerate(SCRIPT)))
    return path


def test_benchmark_overlap_flags_copies_not_new_questions():
    bench = Benchmarks([GSM8K_TEST, DATA / "math500" / "test.jsonl"], n=13)
    share, name = bench.worst("Here is a problem: " + LEAKED.upper().replace(".", " ."))
    assert share > 0.9 and name == "gsm8k/test.jsonl"
    assert bench.worst("A farmer plants 14 rows of beans with 9 beans in every row, then "
                       "gives away a third of them. How many beans are left for him?")[0] == 0
    assert bench.worst("Too short to have any thirteen word n-gram.") == (0.0, None)


def test_vote_funnel_outputs_and_resume(tmp_path, monkeypatch):
    scripted = ScriptedEngine()
    monkeypatch.setattr(engines, "make_engine", lambda *a: scripted)
    from crescent.stages import answers

    cfg = _cfg(f"answers.input={_questions(tmp_path)}", "engine.batch_size=8")
    out = answers.run(cfg, tmp_path)

    stats = read_json(out / "stats.json")
    assert stats["questions_in"] == 6 and stats["contaminated"] == 1 and stats["answered"] == 5
    assert stats["dropped"] == {"abstained": 1, "no_consensus": 1, "tie": 1}
    assert stats["kept"] == 2 and stats["abstentions"] == 4 + 1
    assert LEAKED not in scripted.asked  # dropped before any sampling
    qa = list(read_jsonl(out / "qa.jsonl"))
    assert [q["id"] for q in qa] == [0, 1]
    assert qa[0]["agreement"] == 1.0 and qa[1]["agreement"] == 0.75
    assert sum(qa[1]["votes"].values()) == 4 and max(qa[1]["votes"].values()) == 3
    sft = list(read_jsonl(out / "sft.jsonl"))
    assert sft[0]["messages"][0] == {"role": "user", "content": "How many legs do 2 dogs have?"}
    reply = sft[0]["messages"][1]["content"]
    assert reply.endswith("The answer is: 8") and reply.count("The answer is") == 1
    assert sft[1]["messages"][1]["content"].splitlines()[-1].startswith("The answer is: ")
    dataset = datasets.load_from_disk(str(out / "dataset"))
    assert len(dataset["train"]) == 2 and dataset["train"][0]["messages"] == sft[0]["messages"]
    # Preference pairs: only "1 divided by 2" has a loser (3 of 4 said 1/2, one said 3).
    (pair,) = read_jsonl(out / "prefs.jsonl")
    assert pair["id"] == 1 and pair["chosen_answer"] == "0.5" and pair["rejected_answer"] == "3"
    assert pair["chosen"][0]["content"] == SCRIPT["What is 1 divided by 2?"][0]
    assert pair["rejected"][0]["content"] == "The answer is: 3" and pair["margin"] == 0.5
    assert pair["prompt"] == [{"role": "user", "content": "What is 1 divided by 2?"}]
    assert dataset["prefs"][0]["rejected"] == pair["rejected"] and stats["pairs"] == 1
    card = (out / "DATASET.md").read_text()
    assert "| kept | 2 |" in card and "| dropped: tie | 1 |" in card

    # Resume: drop the last two answered questions from the log; only they are asked again.
    log = (out / answers.SAMPLES).read_text().splitlines(keepends=True)
    (out / answers.SAMPLES).write_text("".join(log[:-2]))
    lost = [json.loads(line)["question"] for line in log[-2:]]
    scripted.asked.clear()
    answers.run(cfg, tmp_path)
    assert scripted.asked == lost
    assert [json.loads(line)["id"] for line in (out / answers.SAMPLES).open()] == \
        [json.loads(line)["id"] for line in log]
    assert list(read_jsonl(out / "qa.jsonl")) == qa


def test_bad_input_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "make_engine", lambda *a: ScriptedEngine())
    from crescent.stages import answers

    with pytest.raises(CrescentError, match="does not exist"):
        answers.run(_cfg(f"answers.input={tmp_path / 'nope.jsonl'}"), tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CrescentError, match="empty.jsonl: no questions to answer"):
        answers.run(_cfg(f"answers.input={empty}"), tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is 2 + 2?"}\n{"text": "no question field"}\n')
    with pytest.raises(CrescentError, match=r"bad.jsonl:2: no 'question'"):
        answers.run(_cfg(f"answers.input={bad}"), tmp_path)


@pytest.mark.slow
@pytest.mark.long  # four vLLM start-ups
def test_embedded_model_answers_20_questions_killed_and_resumed(tmp_path):
    """vLLM on the embedded model; SIGKILLed at 3 seeded points, then run to the end."""
    questions = ROOT / "tests" / "assets" / "questions20.jsonl"
    overrides = ["stages=[answers]", f"answers.input={questions}", "voting.k=3",
                 "engine.batch_size=15", "answers.sampling.max_tokens=192", "logger=none",
                 f"eval.data_dir={DATA}", "hydra.run.dir=run"]
    out = tmp_path / "run" / "answers"
    seen = kill_then_finish(overrides, tmp_path, out, lambda: lines(out / "samples.jsonl"),
                            kill_points(seed=1, low=1, high=16), seed=1)
    ids = whole_records(out / "samples.jsonl", "id")
    assert sorted(ids) == list(range(20))  # nothing lost, nothing answered twice
    stats = read_json(out / "stats.json")
    assert stats["resumed_with"] >= seen[-1] >= 5
    assert stats["answered"] == 20 and stats["contaminated"] == 0 and stats["samples"] == 60
    qa = list(read_jsonl(out / "qa.jsonl"))
    assert len(qa) == stats["kept"] == len(list(read_jsonl(out / "sft.jsonl")))
    assert len(set(whole_records(out / "qa.jsonl", "id"))) == len(qa)
    for row in qa:  # every kept answer really won its vote
        assert max(row["votes"].values()) == round(row["agreement"] * 3)
        assert row["response"].splitlines()[-1] == f"The answer is: {row['answer']}"
    assert len(datasets.load_from_disk(str(out / "dataset"))["train"]) == len(qa)
    print(f"\nanswers killed at {seen} of 20 questions answered")


def test_model_that_never_answers_keeps_nothing_and_says_so(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="crescent")
    class Mute:
        def chat(self, conversations, sampling, n, seed):
            return [Generation(["I am not sure how to do this."] * n, [9] * n, 20)
                    for _ in conversations]

    monkeypatch.setattr(engines, "make_engine", lambda *a: Mute())
    from crescent.stages import answers

    out = answers.run(_cfg(f"answers.input={_questions(tmp_path)}"), tmp_path)
    stats = read_json(out / "stats.json")
    assert stats["kept"] == 0 and stats["dropped"] == {"abstained": 5}
    assert (out / "sft.jsonl").read_text() == ""
    assert "none of 6 questions kept" in caplog.text


class CountingEngine(ScriptedEngine):
    """The scripted engine, counting how often a stage starts one."""

    started = 0

    def __init__(self):
        super().__init__()
        CountingEngine.started += 1


def test_vote_sweep_samples_once_and_revotes_the_first_k(tmp_path, monkeypatch):
    # Two sweep points over voting.k share one samples cache entry of answers.samples=4:
    # the second starts no engine and votes over the first k of the same samples.
    from crescent import pipeline
    from crescent.infra.tracking import Tracker
    from crescent.methods.voting import vote

    CountingEngine.started = 0
    monkeypatch.setattr(engines, "make_engine", lambda *a: CountingEngine())
    monkeypatch.setattr(pipeline, "provenance", lambda cfg: {})
    common = ["stages=[answers]", f"answers.input={_questions(tmp_path)}", "answers.samples=4",
              f"cache_dir={tmp_path / 'cache'}", "voting.min_votes=1"]
    for run, k in (("k4", 4), ("k2", 2)):
        pipeline.run_pipeline(_cfg(*common, f"voting.k={k}"), tmp_path / run, Tracker())
    assert CountingEngine.started == 1
    first, second = (read_json(tmp_path / run / "answers" / "stats.json") for run in ("k4", "k2"))
    assert first["sampling"]["reused"] is False and first["sampling"]["new_samples"] == 5 * 4
    assert second["sampling"] == {**first["sampling"], "reused": True, "engine_started": False}
    assert second["samples"] == 5 * 2 and second["tokens"] == first["tokens"]
    # Both answers dirs (different keys) link the one samples entry.
    samples = [(tmp_path / run / "answers" / "samples.jsonl").resolve() for run in ("k4", "k2")]
    assert samples[0] == samples[1] and samples[0].parent.parent.name == "samples"
    assert (tmp_path / "k4" / "answers").resolve() != (tmp_path / "k2" / "answers").resolve()

    by_hand = set()
    voting = _cfg(*common, "voting.k=2").voting
    for r in read_jsonl(samples[0]):
        if r.get("reason") != "contaminated":
            result = vote(r["extracted"][:2], r["samples"][:2], voting, seed=0,
                          answer_format=MathAnswers)
            by_hand |= {r["id"]} if result.kept else set()
    kept = {q["id"] for q in read_jsonl(tmp_path / "k2" / "answers" / "qa.jsonl")}
    assert kept == by_hand == {0, 1, 4}  # the coin toss (1, 1, 2, 2) is a tie only at k=4
    assert {q["id"] for q in read_jsonl(tmp_path / "k4" / "answers" / "qa.jsonl")} == {0, 1}

    # The pairs of both points came from the cached samples alone (one engine start in all):
    # each chosen answer is its vote's winner, each rejected answer another one or none.
    from crescent.domains import answer_format

    equal = answer_format("math").equal
    for run in ("k4", "k2"):
        winners = {q["id"]: q["answer"] for q in read_jsonl(tmp_path / run / "answers" / "qa.jsonl")}
        pairs = list(read_jsonl(tmp_path / run / "answers" / "prefs.jsonl"))
        # At k=2 every kept question was unanimous: no sample lost.
        assert len(pairs) == {"k4": 1, "k2": 0}[run] and all(p["id"] in winners for p in pairs)
        for p in pairs:
            assert p["chosen_answer"] == winners[p["id"]]
            assert p["rejected_answer"] is None or not equal(p["rejected_answer"], winners[p["id"]])
            assert p["chosen"] != p["rejected"]


def test_k_above_the_samples_drawn_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "make_engine", lambda *a: ScriptedEngine())
    from crescent.stages import answers

    cfg = _cfg(f"answers.input={_questions(tmp_path)}", "answers.samples=2", "voting.k=4")
    with pytest.raises(CrescentError, match="voting.k=4 is more than answers.samples=2"):
        answers.run(cfg, tmp_path)


class OneSampleEngine(ScriptedEngine):
    """A server that ignores `n`: one choice, whatever is asked."""

    def chat(self, conversations, sampling, n, seed):
        return super().chat(conversations, sampling, 1, seed)


def test_an_engine_that_returns_fewer_samples_than_asked_seals_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "make_engine", lambda *a: OneSampleEngine())
    from crescent.stages import answers

    cfg = _cfg(f"answers.input={_questions(tmp_path)}", "answers.samples=4")
    with pytest.raises(CrescentError, match=r"^answers: the engine returned 1 samples for question "
                                            r"0 where 4 were asked \(answers.samples\)"):
        answers.run(cfg, tmp_path)
    logged = list(read_jsonl(tmp_path / "answers" / answers.SAMPLES))
    assert all(r.get("reason") for r in logged)  # only the unsampled (contaminated) question
    # an entry sealed before this check (1 sample a question) is named as damaged on reuse
    (tmp_path / "answers" / answers.SAMPLES).write_text(json.dumps(
        {"id": 0, "question": "q", "samples": ["The answer is: 1"], "extracted": ["1"]}) + "\n")
    with pytest.raises(CrescentError, match=r"samples.jsonl:1 holds 1 samples where its key says 4"):
        answers._check_sample_counts(tmp_path / "answers", 4)


class CutEngine:
    """Every question's first two samples stop at the token limit, saying so."""

    def chat(self, conversations, sampling, n, seed):
        texts = ["The answer is: 5", "The answer is: 5", "The answer is: 7", "The answer is: 7"]
        return [Generation(texts[:n], [sampling.max_tokens] * 2 + [9] * (n - 2), 20,
                           finish_reasons=["length"] * 2 + ["stop"] * (n - 2))
                for _ in conversations]


@pytest.mark.parametrize("drop, kept_answer", [(True, "7"), (False, None)])
def test_truncated_samples_are_counted_and_kept_out_of_the_vote(tmp_path, monkeypatch, drop,
                                                                kept_answer):
    monkeypatch.setattr(engines, "make_engine", lambda *a: CutEngine())
    from crescent.stages import answers

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": 0, "question": "What is 3 + 4?"}\n')
    out = answers.run(_cfg(f"answers.input={questions}", f"voting.drop_truncated={drop}"),
                      tmp_path)
    stats = read_json(out / "stats.json")
    assert stats["truncated"] == 2 and stats["truncated_share"] == 0.5
    assert next(read_jsonl(out / "samples.jsonl"))["truncated"] == [True, True, False, False]
    assert next(read_jsonl(out / "votes.jsonl"))["n_truncated"] == 2
    qa = list(read_jsonl(out / "qa.jsonl"))
    # Kept out: 7 wins 2 of 4 (0.5, min_votes 2). Counted: 5 and 7 tie, and ties are dropped.
    assert [q["answer"] for q in qa] == ([kept_answer] if kept_answer else [])
    assert "2 of the 4 samples voted on (50.0%) ended at the 512-token" in \
        (out / "DATASET.md").read_text()


def test_no_vote_control_keeps_as_many_as_the_consensus_vote(tmp_path, monkeypatch):
    # setting=no_vote: the first sample of every answered question (k=1), cut to the size
    # that the k=4 vote keeps from the same samples, first ones first.
    monkeypatch.setattr(engines, "make_engine", lambda *a: ScriptedEngine())
    from crescent.stages import answers

    common = [f"answers.input={_questions(tmp_path)}", "answers.samples=4"]
    consensus = answers.run(_cfg(*common), tmp_path / "crescent")
    control_cfg = _cfg(*common, "setting=no_vote")
    control_cfg.voting.merge_with({"k": 1})  # _cfg pins voting.k=4 after the setting
    assert (control_cfg.voting.min_votes, control_cfg.control.match_kept_of_k) == (1, 4)
    control = answers.run(control_cfg, tmp_path / "control")
    kept = [q["id"] for q in read_jsonl(consensus / "qa.jsonl")]
    assert kept == [0, 1]
    # k=1 keeps 0, 1, 3 and 4 (question 2 abstains): the first two of them stay.
    assert [q["id"] for q in read_jsonl(control / "qa.jsonl")] == [0, 1]
    stats = read_json(control / "stats.json")
    assert stats["kept"] == 2 and stats["dropped"]["over_match"] == 2
    assert "control.match_kept_of_k) | 2 |" in (control / "DATASET.md").read_text()


def test_shuffled_and_gold_controls_keep_the_votes_size(tmp_path, monkeypatch):
    # setting=shuffled deals the kept responses out again (none keeps its own); setting=gold
    # trains on as many GSM8K training questions as the vote keeps, with their gold solutions.
    monkeypatch.setattr(engines, "make_engine", lambda *a: ScriptedEngine())
    from crescent.stages import answers

    common = [f"answers.input={_questions(tmp_path)}", "answers.samples=4"]
    voted = list(read_jsonl(answers.run(_cfg(*common), tmp_path / "crescent") / "qa.jsonl"))
    shuffled = list(read_jsonl(answers.run(_cfg(*common, "setting=shuffled"),
                                           tmp_path / "shuffled") / "qa.jsonl"))
    assert [q["question"] for q in shuffled] == [q["question"] for q in voted]
    assert [q["response"] for q in shuffled] == [voted[1]["response"], voted[0]["response"]]
    assert [q["answer"] for q in shuffled] == [voted[1]["answer"], voted[0]["answer"]]

    gold_dir = answers.run(_cfg(*common, "setting=gold"), tmp_path / "gold")
    gold = list(read_jsonl(gold_dir / "qa.jsonl"))
    train = [json.loads(line) for line in (DATA / "gsm8k" / "train.jsonl").open()][:2]
    assert [q["question"] for q in gold] == [t["question"] for t in train]
    assert gold[0]["answer"] == "72" and "<<" not in gold[0]["response"]
    assert gold[0]["response"].endswith("\nThe answer is: 72")
    assert read_json(gold_dir / "stats.json")["kept"] == 2
    sft = [json.loads(line) for line in (gold_dir / "sft.jsonl").open()]
    assert sft[1]["messages"][1]["content"] == gold[1]["response"]


def test_controls_have_a_group_and_their_old_names_still_work():
    from crescent.config import validate

    old = _cfg("voting.shuffle_labels=true", "voting.match_kept_of_k=4")
    validate(old)  # moved to control.*, with a warning
    assert (old.control.shuffle_labels, old.control.match_kept_of_k) == (True, 4)
    assert old.voting.shuffle_labels is None and old.voting.match_kept_of_k is None
    new = _cfg("control.shuffle_labels=true", "control.match_kept_of_k=4")
    validate(new)
    assert cache.stage_key(old, "answers") == cache.stage_key(new, "answers")
    # The samples are the same for every control: out of their key, as the vote is.
    assert cache.stage_key(new, "samples") == cache.stage_key(_cfg(), "samples")


def test_shuffled_labels_is_a_seeded_cycle():
    from crescent.stages.answers import shuffle_labels

    qa = [{"id": i, "question": f"q{i}", "answer": str(i), "response": f"r{i}"} for i in range(9)]
    once, again = shuffle_labels(qa, 3), shuffle_labels(qa, 3)
    assert once == again and once != shuffle_labels(qa, 4)
    assert all(q["response"] != f"r{q['id']}" for q in once)
    assert sorted(q["response"] for q in once) == sorted(q["response"] for q in qa)


def test_gold_rows_name_the_line_of_a_solution_without_its_answer(tmp_path):
    from omegaconf import OmegaConf

    from crescent.stages.answers import gold_rows

    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "q1", "answer": "1 + 1 = <<1+1=2>>2\\n#### 2"}\n\n'
                     '{"question": "q2", "answer": "no answer line"}\n')
    domain = OmegaConf.create({"final_answer_line": "The answer is: {answer}"})
    assert gold_rows(train, 1, domain)[0]["response"] == "1 + 1 = 2\nThe answer is: 2"
    with pytest.raises(CrescentError, match=f"{train}:3: the gold solution has no"):
        gold_rows(train, 2, domain)


def test_rft_control_trains_on_each_questions_first_right_sample(tmp_path, monkeypatch):
    # setting=rft: questions with gold answers; each keeps its first sample whose answer is
    # right, whatever the vote said (question 3: the vote has no winner, sample 2 is right;
    # question 4: a tie, sample 2 is right); a question with no right sample is left out.
    monkeypatch.setattr(engines, "make_engine", lambda *a: ScriptedEngine())
    from crescent.stages import answers

    golds = ["8", "0.5", "yes", "3", "2", "18"]
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": q, "gold": g}) + "\n"
                            for i, (q, g) in enumerate(zip(SCRIPT, golds))))
    out = answers.run(_cfg(f"answers.input={path}", "answers.samples=4", "setting=rft"),
                      tmp_path / "rft")
    rows = list(read_jsonl(out / "qa.jsonl"))
    assert [(r["id"], r["rft_sample"]) for r in rows] == [(0, 0), (1, 0), (3, 2), (4, 2)]
    assert rows[2]["response"] == "The answer is: 3" and rows[3]["answer"] == "2"
    assert read_json(out / "stats.json")["kept"] == 4
    with pytest.raises(CrescentError, match="control.rft: .* has no gold answer"):
        answers.preflight(_cfg(f"answers.input={_questions(tmp_path)}", "setting=rft"))
