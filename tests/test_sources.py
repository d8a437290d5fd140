"""Where fresh candidate questions come from (`questions.source`): the bait prompt, the Magpie
pre-query template and seed augmentation; end to end on the embedded model (slow)."""

from __future__ import annotations

import json

import pytest

from crescent.errors import CrescentError
from crescent.infra.io import read_json, read_jsonl
from crescent.infra.models import resolve_model
from crescent.stages.questions import make_source, pre_query_prompt
from tests.conftest import DATA, compose


def _seeds(path, questions):
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    return path


def test_bait_source_repeats_the_domain_bait_prompt():
    cfg = compose()
    source = make_source(cfg)
    assert [source(d) for d in range(3)] == [[{"role": "user", "content": cfg.domain.bait_prompt}]] * 3


def test_pre_query_prompt_is_the_template_up_to_the_user_words():
    system = "You solve math problems."
    prompt = pre_query_prompt(resolve_model("smollm2-135m-instruct"), system)
    assert prompt == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    # Without a system turn the template's own default system turn stays in.
    default = pre_query_prompt(resolve_model("smollm2-135m-instruct"), None)
    assert default.startswith("<|im_start|>system\n") and default.endswith("<|im_start|>user\n")
    assert system not in default


def test_magpie_source_sends_raw_prompts_only():
    cfg = compose("questions.source=magpie")
    prompt = make_source(cfg)(5)
    assert isinstance(prompt, str)  # a raw prompt, no chat template applied over it
    assert cfg.domain.magpie_system in prompt and prompt.endswith("<|im_start|>user\n")


def _seeds_used(cfg, seeds, count, drawn):
    source = make_source(cfg)
    return [next(s for s in seeds if s in source(d)[0]["content"])
            for d in range(drawn, drawn + count)]


def test_seed_aug_walks_one_seeded_order_and_resumes_where_it_stopped(tmp_path):
    seeds = [f"Seed question number {i}?" for i in range(5)]
    path = _seeds(tmp_path / "seeds.jsonl", seeds)
    cfg = compose("questions.source=seed_aug", f"questions.seeds={path}")
    first_pass = _seeds_used(cfg, seeds, 5, 0)
    assert sorted(first_pass) == seeds  # each seed once per pass
    assert first_pass != seeds  # in a shuffled order
    # A resume continues with the next unused seed, and the order wraps around.
    assert _seeds_used(cfg, seeds, 3, 0) + _seeds_used(cfg, seeds, 4, 3) == (
        first_pass + first_pass[:2])
    other_seed = compose("questions.source=seed_aug", f"questions.seeds={path}", "seed=1")
    assert _seeds_used(other_seed, seeds, 5, 0) != first_pass


def test_source_errors_are_one_clear_line(tmp_path):
    with pytest.raises(CrescentError, match="needs questions.seeds="):
        make_source(compose("questions.source=seed_aug"))
    with pytest.raises(CrescentError, match="nope.jsonl: no such file"):
        make_source(compose("questions.source=seed_aug", f"questions.seeds={tmp_path}/nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "fine?"}\n{"problem": "no question key"}\n')
    with pytest.raises(CrescentError, match=f"{bad}:2: no question field"):
        make_source(compose("questions.source=seed_aug", f"questions.seeds={bad}"))
    with pytest.raises(CrescentError, match="domain 'logic' has no seed_prompt"):
        make_source(compose("questions.source=seed_aug", "domain=logic", f"questions.seeds={bad}"))


@pytest.mark.slow
# One source runs end to end in every build, the others when drawn (seed_aug's prompts are
# unit-tested above; the engine path is magpie's).
@pytest.mark.parametrize("source,engine", [
    ("magpie", "vllm"),
    pytest.param("magpie", "hf", marks=pytest.mark.long),
    pytest.param("seed_aug", "vllm", marks=pytest.mark.long),
])
def test_baseline_sources_fill_the_questions_stage(cli, tmp_path, source, engine):
    run = cli("stages=[questions]", f"engine={engine}", f"questions.source={source}",
              f"questions.seeds={DATA / 'gsm8k' / 'train.jsonl'}", "questions.target=8",
              "questions.max_candidates=48", "questions.batch_size=16",
              "questions.sampling.max_tokens=96", "hydra.run.dir=run", "logger=none")
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "run" / "questions"
    stats = read_json(out / "stats.json")
    assert stats["source"] == source
    questions = [q["question"] for q in read_jsonl(out / "questions.jsonl")]
    assert stats["accepted"] == len(questions) == 8, stats
    assert len(set(questions)) == 8
    # Magpie's candidates are user turns the model wrote: no template tokens leak into them.
    assert not any("<|im_" in q for q in questions)
    print(f"\n{source} on {engine}: {stats['candidates']} candidates, rejected "
          f"{stats['rejected']}; first: {questions[0][:200]!r}")
