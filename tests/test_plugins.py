"""Extension points used from outside the package: a toy engine, vote rule, domain, objective
and dedup embedder (tests/toy_plugins.py, tests/plugin_conf/) selected by overrides, through the
whole data path."""

from __future__ import annotations

import pytest

from crescent.infra.io import read_json, read_jsonl
from tests.conftest import DATA, ROOT, run_cli


@pytest.mark.slow
def test_toy_engine_vote_rule_domain_objective_and_embedder_from_a_plugin(tmp_path):
    from tests import toy_plugins

    # Importable as tests.toy_plugins: the CLI runs with this checkout on PYTHONPATH.
    result = run_cli(
        "plugins=[tests.toy_plugins]",
        f"hydra.searchpath=[file://{ROOT / 'tests' / 'plugin_conf'}]",
        "engine=hf", "engine.name=short_hf", "domain=parity", "voting.rule=first",
        "finetune.objective=shifted_sft", "dedup.method=first_word",
        "stages=[questions,answers,finetune]", "questions.target=4",
        "questions.max_candidates=16", "questions.batch_size=8",
        "questions.sampling.max_tokens=60", "voting.k=2", "voting.min_votes=1",
        "voting.drop_truncated=false", "answers.sampling.max_tokens=128",
        "finetune.max_steps=2", "finetune.batch_size=2", "finetune.val_fraction=0",
        f"eval.data_dir={DATA}", "logger=none", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"

    # The embedder: no two accepted questions start with the same word, and the final set's
    # nearest-neighbour similarity is its exact 0 (a sentence embedder never gives 0).
    questions = list(read_jsonl(run / "questions" / "questions.jsonl"))
    firsts = [toy_plugins.first_word(q["question"]) for q in questions]
    assert questions and len(set(firsts)) == len(firsts)
    diversity = read_json(run / "questions" / "stats.json")["diversity"]
    assert diversity.get("nn_similarity_mean") in (0, None)
    # The engine: completions cut at its cap, though the stage asked for 128 tokens.
    samples = list(read_jsonl(run / "answers" / "samples.jsonl"))
    assert samples and all(t <= toy_plugins.CAP for s in samples for t in s["completion_tokens"])
    # The domain: its prompt reached the model, its format read the answers.
    assert all(x in ("even", "odd", None) for s in samples for x in s["extracted"])
    assert all(s["question"] for s in samples)
    # The vote rule: every question with an answer is kept, with its first sample's answer.
    qa = {r["id"]: r for r in read_jsonl(run / "answers" / "qa.jsonl")}
    answered = [s for s in samples if any(x is not None for x in s["extracted"])]
    assert answered and sorted(qa) == sorted(s["id"] for s in answered)
    for s in answered:
        assert qa[s["id"]]["answer"] == next(x for x in s["extracted"] if x is not None)
    assert read_json(run / "answers" / "stats.json")["kept"] == len(answered)
    # The objective: SFT's loss shifted by its constant, and a saved model.
    steps = list(read_jsonl(run / "finetune" / "metrics.jsonl"))
    assert len(steps) == 2 and all(toy_plugins.SHIFT < r["loss"] < toy_plugins.SHIFT + 8
                                   for r in steps)
    assert read_json(run / "finetune" / "stats.json")["objective"] == "shifted_sft"
    assert (run / "finetune" / "model" / "config.json").is_file()
