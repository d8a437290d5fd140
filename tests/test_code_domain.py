"""The code domain: questions read as documented functions, programs extracted, execution
consensus (programs grouped by what they return, run in the real sandbox), the training pair in
the scored prompt's form, decontamination against HumanEval; a `domain=code` run (slow)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from crescent.domains import for_question, training_response
from crescent.domains.code import RESPONSE_PREFIX, CodeAnswers, parse_question
from crescent.methods.execution import execution
from crescent.stages.answers import read_samples, write_datasets
from crescent.tasks.code import humaneval_file
from tests.conftest import DATA, ROOT, compose

QUESTION = '''Sure! Here is a problem:
```python
from typing import List


def running_max(values: List[int]) -> List[int]:
    """Return the running maximum of `values`.

    >>> running_max([1, 3, 2])
    [1, 3, 3]
    >>> running_max([])
    []
    >>> running_max([-5, -7])
    [-5, -5]
    """
    out = []
```
'''
CORRECT = '''```python
def running_max(values: List[int]) -> List[int]:
    best, out = None, []
    for v in values:
        best = v if best is None else max(best, v)
        out.append(best)
    return out
```'''
ALSO_CORRECT = '''Here you go:
```python
def running_max(values):
    out = []
    for i in range(len(values)):
        out.append(max(values[: i + 1]))
    return out


# its own tests, one of them wrong: left out of the program
assert running_max([2, 1]) == [2, 1]
if __name__ == "__main__":
    print(running_max([1]))
```
This runs in O(n^2).'''
WRONG = '''```python
def running_max(values):
    print("debugging")
    return sorted(values)
```'''
CRASHES = '''```python
def running_max(values):
    return values[0] / 0
```'''
HANGS = '''```python
def running_max(values):
    while True:
        pass
```'''
VOTING = OmegaConf.create({"min_agreement": 0.5, "min_votes": 2, "tie_break": "drop",
                           "representative": "first"})


def test_a_question_is_a_documented_function_with_example_calls():
    question, reason = parse_question(QUESTION)
    assert reason is None and question.entry_point == "running_max"
    assert question.calls == ("running_max([1, 3, 2])", "running_max([])",
                              "running_max([-5, -7])")
    # the body the model began is cut: signature and docstring only, imports in front
    assert question.source.startswith("from typing import List\n")
    assert question.source.rstrip().endswith('"""') and "out = []" not in question.source
    assert parse_question("def f(x):\n    return x\n") == (None, "no_function")
    assert parse_question('def f(x):\n    """Double x."""\n') == (None, "no_examples")
    assert parse_question("```python\ndef f(:\n```")[1] == "syntax"
    # a signature that names what nothing defines would not run: no question
    typed = 'def f(xs: List[int], n=LIMIT) -> int:\n    """Sum.\n    >>> f([1])\n    1\n    """\n'
    assert parse_question(typed) == (None, "undefined_name")
    assert parse_question("from typing import *\n" + typed)[0].entry_point == "f"
    # only imports define: a question keeps its imports alone, so a constant or a decorator
    # the block defines beside the function would be gone from it
    decorated = "def log(f):\n    return f\n\n\n@log\n" + typed.replace("LIMIT", "3")
    for beside in ("from typing import List\nLIMIT = 3\n" + typed,
                   "from typing import List\n" + decorated):
        assert parse_question(beside) == (None, "undefined_name"), beside
    # and what a question keeps reads as the same question again
    question, _ = parse_question("from typing import List\n" + typed.replace("LIMIT", "3"))
    assert parse_question(question.source) == (question, None)
    _, reason = CodeAnswers.clean_question(QUESTION, 100)
    assert reason == "too_long"


def test_humaneval_prompts_read_as_questions():
    # HumanEval's own problems read as code questions: the audit and decontamination use them.
    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f]
    parsed = [parse_question(p["prompt"]) for p in problems]
    with_calls = [q for q, _ in parsed if q is not None]
    assert len(with_calls) >= 140
    assert all(q.entry_point == p["entry_point"] for (q, _), p in zip(parsed, problems) if q)
    # with written inputs every one with a documented function is a question, and its function
    # is the one to write, never a helper the prompt gives before it (HumanEval/10, 32, 38, 50)
    bound = [parse_question(p["prompt"], (f"{p['entry_point']}(0)",))[0] for p in problems]
    assert sum(q is not None for q in bound) == 163
    assert all(q.entry_point == p["entry_point"] for q, p in zip(bound, problems) if q)


def test_execution_consensus_groups_programs_by_what_they_return():
    reader = for_question(CodeAnswers, {"id": 0, "question": parse_question(QUESTION)[0].source})
    responses = [WRONG, CORRECT, CRASHES, ALSO_CORRECT, "I cannot write code.", HANGS]
    programs = [reader.extract(r) for r in responses]
    assert programs[4] is None and programs[1].startswith("from typing import List")
    # a program that makes the question's imports itself gets them once
    repeats = reader.extract(CORRECT.replace("def ", "from typing import List\n\n\ndef ", 1))
    assert repeats.count("from typing import List") == 1 and "def running_max" in repeats
    # a question that writes an import twice (its comment or spacing aside) keeps it once
    twice = parse_question(QUESTION.replace("from typing import List\n", "from typing import "
                                            "List\nfrom typing import  List  # again\n"))[0]
    assert twice.imports == "from typing import List"
    assert "assert" not in programs[3] and "__main__" not in programs[3]
    vote = execution(programs, responses, OmegaConf.merge(VOTING, {"min_agreement": 0.3}),
                     seed=0, answer_format=reader)
    assert vote.kept and vote.winners == [1, 3] and vote.answer == programs[1]
    assert vote.abstentions == 3  # no program, crashed on every call, hung on every call
    assert vote.details["no_program"] == 1 and vote.details["failed_every_call"] == 2
    assert vote.details["timeout"] == 3 and vote.details["error"] == 3
    # two programs that behave differently, one vote each: no consensus
    split = execution([programs[0], programs[1]], responses[:2], VOTING, seed=0,
                      answer_format=reader)
    assert split.reason == "no_consensus"
    # two programs that return a function: shown by its address, nothing to agree on
    lazy = [reader.extract(f"```python\ndef running_max(values):\n    return {body}\n```")
            for body in ("lambda: values", "iter(values).__next__")]
    opaque = execution(lazy, ["", ""], VOTING, seed=0, answer_format=reader)
    assert opaque.reason == "abstained" and opaque.details["opaque"] == 6


# Right on the docstring's examples (none longer than 3), wrong on a longer list: agreement
# there is not agreement beyond them.
ONLY_THE_EXAMPLES = '''```python
def running_max(values):
    return [max(values[: i + 1]) for i in range(min(len(values), 3))]
```'''
WRITTEN = '''```python
running_max([4, 1, 5, 2])
running_max([0])
print(running_max([3, 3, 1, 9]))
assert running_max([1, 2]) == [1, 2]
other_function([1])
```'''


def test_written_inputs_are_calls_of_the_questions_function():
    inputs = CodeAnswers.read_inputs(QUESTION, WRITTEN)
    assert inputs == ["running_max([4, 1, 5, 2])", "running_max([0])",
                      "running_max([3, 3, 1, 9])", "running_max([1, 2])"]
    assert CodeAnswers.read_inputs("no function here", WRITTEN) == []
    # the docstring's calls first, then the written ones not among them, MAX_CALLS in all
    question, _ = parse_question(QUESTION, ("running_max([])", *inputs, "running_max([7])"))
    assert question.calls[:3] == parse_question(QUESTION)[0].calls
    assert question.calls[3:] == tuple(inputs) + ("running_max([7])",)
    assert len(parse_question(QUESTION, tuple(f"running_max([{i}])" for i in range(9)))[0]
               .calls) == 8
    # a documented function without examples is a question once the model wrote inputs for it
    bare = 'def f(x):\n    """Double x."""\n'
    assert parse_question(bare, ("f(2)",))[0].calls == ("f(2)",)


def test_written_inputs_part_programs_that_agree_only_on_the_examples():
    # The same two programs: one group on the docstring's calls, two on the written inputs too
    # (run in the real sandbox).
    question = parse_question(QUESTION)[0].source
    responses = [CORRECT, ONLY_THE_EXAMPLES]
    for inputs, kept in (((), True), (CodeAnswers.read_inputs(QUESTION, WRITTEN), False)):
        reader = for_question(CodeAnswers, {"id": 0, "question": question, "inputs": inputs})
        programs = [reader.extract(r) for r in responses]
        vote = execution(programs, responses, VOTING, seed=0, answer_format=reader)
        assert vote.kept is kept, inputs


def test_an_objective_votes_on_the_test_inputs_the_stage_voted_on(tmp_path):
    # An objective's context reads the samples with the model's test inputs, so its vote runs
    # the calls the answers stage's vote ran: here they part two programs the examples join.
    from hydra import compose, initialize_config_dir

    from crescent.__main__ import CONF_DIR
    from crescent.objectives import ObjectiveContext

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["domain=code", "logger=none",
                                                       "stages=[answers,finetune]"])
    question = parse_question(QUESTION)[0].source
    responses = [CORRECT, ONLY_THE_EXAMPLES]
    answers = tmp_path / "answers"
    answers.mkdir()
    (answers / "samples.jsonl").write_text(json.dumps(
        {"id": 0, "question": question, "samples": responses}) + "\n")
    (answers / "inputs.jsonl").write_text(json.dumps(
        {"id": 0, "reply": WRITTEN, "inputs": CodeAnswers.read_inputs(QUESTION, WRITTEN)}) + "\n")
    context = ObjectiveContext(cfg, tmp_path, CodeAnswers)
    [record] = context.samples()
    assert record["inputs"][0] == "running_max([4, 1, 5, 2])"
    assert not context.vote(record, responses, min_votes=2).kept
    assert context.vote({"id": 0, "question": question}, responses, min_votes=2).kept


def test_samples_are_read_again_once_a_question_without_examples_has_inputs(tmp_path):
    # Drawn before its inputs were written, an example-less question's programs were read
    # unbound (no imports in front: `List` undefined, the program never loads); with its
    # inputs they are read again, bound, and they run.
    bare = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum xs."""\n'
    reply = "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```"
    unbound = for_question(CodeAnswers, {"id": 0, "question": bare}).extract(reply)
    path = tmp_path / "inputs.jsonl"
    path.write_text(json.dumps({"id": 0, "reply": ">>> total([1, 2])", "inputs": []}) + "\n")
    [record] = read_samples([{"id": 0, "question": bare, "samples": [reply],
                              "extracted": [unbound]}], CodeAnswers, path)
    assert record["inputs"] == ["total([1, 2])"]  # read again from the reply
    reader = for_question(CodeAnswers, record)
    assert not reader.behaviour(unbound).loaded
    assert record["extracted"][0].startswith("from typing import List")
    assert reader.behaviour(record["extracted"][0]).results[0][::2] == ("ok", "3")


def test_the_test_inputs_key_the_vote_not_the_questions_or_samples():
    # Setting domain.input_prompt re-keys the answers (the vote) and the audit, never the
    # questions or the programs drawn: those are reused. Off, every key is as it was.
    from hydra import compose, initialize_config_dir

    from crescent import cache
    from crescent.__main__ import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        on = compose(config_name="config", overrides=["domain=code", "logger=none"])
        off = compose(config_name="config", overrides=["domain=code", "logger=none",
                                                       "domain.input_prompt=null"])
    assert on.domain.input_prompt and "{question}" in on.domain.input_prompt
    for name, same in (("questions", True), ("samples", True), ("answers", False),
                       ("audit", False)):
        assert (cache.stage_key(on, name)[0] == cache.stage_key(off, name)[0]) is same, name
    assert "input_prompt" not in json.dumps(cache.stage_key(off, "answers")[1])


def test_the_formats_revision_keys_what_reads_with_it_not_what_was_drawn():
    # Code's format was revised (a question is its last documented function, its signature
    # runs): the questions,
    # the vote and the audit are keyed by it; the samples and inputs hold generated text, read
    # again by every vote, so they are reused. Math's format is at revision 1: its name alone.
    from crescent import cache

    cfg = compose("domain=code")
    revised_key = json.dumps(["code", CodeAnswers.revision])
    for name, revised in (("questions", True), ("samples", False), ("inputs", False),
                          ("answers", True), ("audit", True)):
        hashed = json.dumps(cache.stage_key(cfg, name)[1])
        assert (revised_key in hashed) is revised, name
    assert '"answer_type": "math"' in json.dumps(cache.stage_key(compose(), "answers")[1])


def test_execution_needs_programs():
    from crescent.domains.math import MathAnswers
    from crescent.errors import CrescentError

    with pytest.raises(CrescentError, match="domain=code"):
        execution(["1", "1"], ["", ""], VOTING, seed=0, answer_format=MathAnswers)


def test_the_training_pair_is_the_scored_prompt_and_its_completion(tmp_path):
    from hydra import compose, initialize_config_dir

    from crescent.__main__ import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["domain=code", "logger=none"])
    question = parse_question(QUESTION)[0].source
    reader = for_question(CodeAnswers, {"id": 0, "question": question})
    program = reader.extract(CORRECT)
    response = training_response(reader, CORRECT, program, cfg.domain)
    assert response == f"{RESPONSE_PREFIX}{program}\n```"
    write_datasets(tmp_path, [{"id": 0, "question": question, "answer": program,
                               "response": response, "agreement": 1.0}], [],
                   cfg.domain.train_prompt)
    [row] = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    user = row["messages"][0]["content"]
    # the user turn is crescent_humaneval's prompt for the same function
    assert user.startswith("Write a solution to the following problem and make sure that it "
                           "passes the tests:\n```python\nfrom typing import List")
    assert cfg.voting.rule == "execution" and cfg.answers.decontaminate == ["humaneval"]


def test_a_copied_humaneval_problem_is_contaminated():
    from crescent.methods.decontamination import Benchmarks

    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as f:
        first = json.loads(next(f))
    bench = Benchmarks([humaneval_file()])
    share, name = bench.worst(first["prompt"])
    assert share == 1.0 and name.endswith("HumanEval.jsonl.gz")
    assert bench.worst(parse_question(QUESTION)[0].source)[0] < 0.2


@pytest.mark.slow
@pytest.mark.long
def test_domain_code_runs_questions_and_execution_consensus(tmp_path):
    # The whole loop on the code model: it writes functions, answers them k times, writes test
    # inputs for them, and the vote runs the programs; every question is accounted for and kept
    # pairs are programs.
    result = subprocess.run(
        [sys.executable, "-m", "crescent", "domain=code", "model=qwen_coder_05b",
         "stages=[questions,answers]", "questions.target=3", "questions.max_candidates=12",
         "voting.k=3", "dedup.method=minhash", "logger=none", f"eval.data_dir={DATA}",
         "hydra.run.dir=run", "cache_dir=null"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    questions = [json.loads(x) for x in (run / "questions/questions.jsonl").read_text().splitlines()]
    assert questions and all(parse_question(q["question"])[0] for q in questions)
    stats = json.loads((run / "answers/stats.json").read_text())
    assert stats["answered"] + stats["contaminated"] == len(questions)
    votes = [json.loads(x) for x in (run / "answers/votes.jsonl").read_text().splitlines()]
    assert len(votes) == len(questions)
    # the model wrote test inputs for every answered question, and the vote ran them
    written = [json.loads(x) for x in (run / "answers/inputs.jsonl").read_text().splitlines()]
    assert len(written) == stats["answered"] and any(w["inputs"] for w in written)
    assert {v["id"]: v["inputs"] for v in votes if "inputs" in v} == {
        w["id"]: w["inputs"] for w in written}
    for row in (json.loads(x) for x in (run / "answers/qa.jsonl").read_text().splitlines()):
        assert f"def {parse_question(row['question'])[0].entry_point}(" in row["answer"]
        assert row["response"].startswith(RESPONSE_PREFIX)


def test_the_code_audit_runs_every_program_against_the_hidden_tests():
    # Two HumanEval problems, three programs each: the consensus is the right program on the
    # first (two right programs, written differently, agree) and a wrong one on the second (two
    # wrong programs agree); each program is judged by the problem's own tests, in the sandbox.
    from crescent.domains import gold_of
    from crescent.stages import audit
    from crescent.tasks.code import humaneval_questions

    rows = [json.loads(line) for line in humaneval_questions().read_text().splitlines()]
    rows = [r for r in rows if parse_question(r["question"])[0]][:2]
    canonical = {p["task_id"]: p["canonical_solution"] for p in _humaneval()}

    def reply(row, body):
        return f"```python\n{row['question']}{body}\n```"

    def right(row, extra=""):
        return reply(row, canonical[row["id"]] + extra)

    wrong, also_wrong = "    return None\n", "    return None  # another writer\n"
    samples = [[right(rows[0]), reply(rows[0], wrong), right(rows[0], "\n\ndef _unused():\n"
                                                                      "    return 1\n")],
               [reply(rows[1], wrong), reply(rows[1], also_wrong), right(rows[1])]]
    records = []
    for row, texts in zip(rows, samples):
        reader = for_question(CodeAnswers, row)
        records.append({"id": row["id"], "question": row["question"], "samples": texts,
                        "extracted": [reader.extract(t) for t in texts],
                        "truncated": [False] * 3})
    golds = {row["id"]: gold_of(CodeAnswers, row) for row in rows}
    cfg = OmegaConf.create({"seed": 0, "voting": {
        "rule": "execution", "k": 3, "min_agreement": 0.0, "min_votes": 2, "tie_break": "drop",
        "representative": "first", "drop_truncated": True}})
    result = audit.measure(cfg, records, golds, 3, CodeAnswers)
    assert result["sample_accuracy"]["value"] == pytest.approx(0.5)  # 2 of 3, then 1 of 3
    cell = next(c for c in result["grid"] if c["k"] == 3 and c["floor"] == 2)
    assert cell["kept"] == 2 and cell["precision"]["value"] == pytest.approx(0.5)
    assert result["by_k"][2]["pass"]["value"] == 1.0


def _humaneval() -> list[dict]:
    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
