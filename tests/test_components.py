"""Components from outside the package, each one file plus config with settings of its own
(tests/plugins/): an objective, a stage between answers and finetune, a multiple-choice domain
and an engine; their options checked at compose time, operational settings out of cache keys,
and stages wired by what they provide."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crescent import cache
from crescent.config import Config, validate
from crescent.errors import CrescentError
from crescent.infra.io import read_json, read_jsonl
from tests.conftest import DATA, ROOT, compose, run_cli
from tests.plugins import (  # noqa: F401  registered for the tests below
    agreement_filter,
    capped_engine,
    choice_domain,
    grpo_vote,
    weighted_sft,
)


def _cfg(**groups) -> OmegaConf:
    cfg = OmegaConf.structured(Config)
    cfg.model.name = cfg.student.name = "smollm2"
    for dotted, value in groups.items():
        OmegaConf.update(cfg, dotted.replace("__", "."), value, merge=False)
    return cfg


# ------------------------------------------------------------------ options


def test_a_components_options_are_filled_with_its_defaults_and_checked():
    cfg = _cfg(engine__name="capped_hf", finetune__objective="weighted_sft")
    cfg.finetune.options = {"power": "2"}
    validate(cfg)
    assert cfg.finetune.options == {"power": 2.0}  # converted to the declared type
    assert cfg.engine.options == {"cap": 40, "note": ""}  # defaults filled in

    cfg = _cfg(finetune__objective="weighted_sft")
    cfg.finetune.options = {"powr": 2}
    with pytest.raises(CrescentError, match=r"^finetune.options.powr: not an option of "
                                            r"objective 'weighted_sft' \(did you mean power\?\)"):
        validate(cfg)
    cfg.finetune.options = {"power": "strong"}
    with pytest.raises(CrescentError, match=r"^finetune.options.power: .*Float"):
        validate(cfg)
    cfg = _cfg()
    cfg.finetune.options = {"power": 2}
    with pytest.raises(CrescentError, match="objective 'sft' takes no options"):
        validate(cfg)


def test_a_stages_options_live_under_stage_options_and_key_it():
    cfg = _cfg(stages=["questions", "answers", "agreement_filter", "finetune"])
    validate(cfg)
    assert cfg.stage_options.agreement_filter.min_agreement == 0.75
    first = cache.stage_key(cfg, "agreement_filter")[0]
    cfg.stage_options.agreement_filter.min_agreement = 0.5
    assert cache.stage_key(cfg, "agreement_filter")[0] != first
    cfg.stage_options.agreement_filter = {"min_agremeent": 0.5}
    with pytest.raises(CrescentError, match="stage_options.agreement_filter.min_agremeent: "
                                            "not an option of stage 'agreement_filter'"):
        validate(cfg)


def test_operational_settings_leave_cache_keys_as_they_are():
    base = _cfg(engine__name="openai", engine__options={"endpoints": ["http://a:8000/v1"]})
    keys = {name: cache.stage_key(base, name)[0] for name in ("questions", "samples")}
    moved = _cfg(engine__name="openai", engine__options={
        "endpoints": ["http://b:9000/v1", "http://c/v1"], "concurrency": 4,
        "request_timeout_s": 5.0, "max_retries": 0})
    assert {name: cache.stage_key(moved, name)[0] for name in keys} == keys
    hotter = _cfg(engine__name="openai", engine__options={"endpoints": ["http://a:8000/v1"]},
                  answers__sampling__temperature=0.3)
    assert cache.stage_key(hotter, "questions")[0] == keys["questions"]
    assert cache.stage_key(hotter, "samples")[0] != keys["samples"]
    # A plug-in's option: `cap` changes what is generated, `note` (operational) does not.
    capped = _cfg(engine__name="capped_hf", engine__options={"cap": 40})
    key = cache.stage_key(capped, "questions")[0]
    capped.engine.options.note = "moved to the big machine"
    assert cache.stage_key(capped, "questions")[0] == key
    capped.engine.options.cap = 12
    assert cache.stage_key(capped, "questions")[0] != key


def test_todays_defaults_keep_their_cache_keys():
    # Keys written before options, operational fields and stage wiring existed (the values
    # of de7a4d2 for this config): every cache entry made then is still found.
    cfg = _cfg()
    assert {name: cache.stage_key(cfg, name)[0] for name in (
        "questions", "samples", "answers", "finetune", "audit", "evaluate_base")} == KEYS_BEFORE


# Keys made at 564535e, before engines and embedders had options (questions, samples,
# evaluate_base): the new spelling and the old one, moved with a warning, find those entries.
KEYS_BEFORE_OPTIONS = [
    (["engine=openai", "+engine.options.endpoints=[http://a:8000/v1]",
      "+engine.options.served_model=m"], ["engine.endpoints=[http://a:8000/v1]",
                                          "engine.served_model=m"],
     ("18ea6997d570ce8a", "c913f6cae32f2c92", "a1a1b5fa07d37d9f")),
    (["engine=ray_vllm"], ["engine.data_parallel_size=2"],
     ("542be86d1ce9a6d2", "e3bfc7e9f059ad91", "2762ec074522fa37")),
    (["+engine.options.tensor_parallel_size=2", "+engine.options.enforce_eager=false"],
     ["engine.tensor_parallel_size=2", "engine.enforce_eager=false"],
     ("ce77c297fafb5595", "fa4bbc874fb9eea0", "5ef24e3037274fbb")),
    (["engine=hf"], [], ("136b30ba6084ab15", "aa3e8fc9e100b63a", "e009418fa6712302")),
    (["dedup=minhash", "+dedup.options.num_perm=64", "+dedup.options.shingle=2"],
     ["dedup.num_perm=64", "dedup.shingle=2"],
     ("4152ea0098fa7a98", "7c9157c63c39e8f0", "9d24c3a814e71a70")),
    (["dedup=self", "+dedup.options.depth=0.25"], ["dedup.depth=0.25"],
     ("d96ca7104cb4fe04", "f3a17463c1e5890a", "9d24c3a814e71a70")),
    (["experiment=calibration"], [], ("351345e915696520", "8ac097bc05a16d7d", "f5285b57bc3644bb")),
]


@pytest.mark.parametrize("new, old, keys", KEYS_BEFORE_OPTIONS)
def test_engines_and_embedders_options_keep_the_keys_of_their_flat_settings(new, old, keys):
    groups = [o for o in new if "options" not in o]
    for overrides in (new, groups + old):
        cfg = compose(*overrides)
        validate(cfg)
        assert tuple(cache.stage_key(cfg, name)[0] for name in (
            "questions", "samples", "evaluate_base")) == keys, overrides
    if old:  # an old name is moved to its option
        cfg = compose(*groups, *old)
        validate(cfg)
        name, value = old[0].split("=")
        option = OmegaConf.select(cfg, name.replace(".", ".options.", 1))
        assert str(option).replace("'", "") == value
        assert OmegaConf.select(cfg, name) is None


def test_a_lora_fine_tune_keys_the_dtype_its_frozen_base_multiplies_in():
    def parts(**groups):
        return cache.stage_key(_cfg(finetune__mode="lora", **groups), "finetune")[1]["finetune"]

    # Every LoRA key holds it: entries from before (torch's dropout draws) are not reused.
    assert parts(finetune__lora_base_dtype="float32")["lora_base_dtype"] == "float32"
    assert parts(finetune__lora_base_dtype="bfloat16")["lora_base_dtype"] == "bfloat16"
    # auto is the student's dtype, resolved here: a bfloat16 student trains on a bfloat16 base.
    assert parts(student__dtype="bfloat16")["lora_base_dtype"] == "bfloat16"
    assert parts(student__dtype="float32")["lora_base_dtype"] == "float32"
    # Full fine-tuning has no frozen base: the setting leaves its key alone.
    full = _cfg(finetune__lora_base_dtype="bfloat16")
    assert cache.stage_key(full, "finetune")[0] == KEYS_BEFORE["finetune"]


# evaluate_base changed once on purpose, with its stage version (2: answers up to 512 tokens,
# the strict match widened): scores made before are not these scores. It was 93c34362e7c3397e.
KEYS_BEFORE = {"questions": "39cf7d06503936b5", "samples": "32b468fca9874983",
               "answers": "41d7faacc6c91fc1", "finetune": "0047d7aa757d5178",
               "audit": "a9fb3de4133838d6", "evaluate_base": "b51f0214660dc700"}


# ------------------------------------------------------------------ wiring


def test_a_stage_listed_before_finetune_that_provides_answers_feeds_it():
    plain = _cfg()
    filtered = _cfg(stages=["questions", "answers", "agreement_filter", "finetune"])
    assert cache.provider(plain, "finetune") == "answers"
    assert cache.provider(filtered, "finetune") == "agreement_filter"
    assert cache.provider(filtered, "agreement_filter") == "answers"
    assert cache.stage_key(filtered, "finetune")[1]["upstream"] == \
        cache.stage_key(filtered, "agreement_filter")[0]
    # Named by finetune.input, the same stage feeds it without being listed.
    named = _cfg(finetune__input="agreement_filter", stages=["finetune"])
    assert cache.provider(named, "finetune") == "agreement_filter"
    assert cache.stage_key(named, "finetune")[0] == cache.stage_key(filtered, "finetune")[0]
    with pytest.raises(CrescentError, match="reads votes.jsonl from stage 'agreement_filter', "
                                            "which writes qa.jsonl, sft.jsonl"):
        cache.input_path(filtered, ROOT, "finetune", "votes.jsonl")


def test_the_runner_keys_only_the_stages_a_run_reads():
    cfg = _cfg(stages=["finetune"])
    assert cache.upstream_stages(cfg, ["finetune"]) == ["answers", "questions"]
    assert cache.upstream_stages(cfg, ["questions"]) == []
    assert "audit" not in cache.upstream_stages(cfg, ["evaluate"])


def test_a_domain_brings_its_cleaning_and_its_eval_tasks(tmp_path):
    raw = "Question: Tom has 3 apples and buys 4. How many?\nAnswer choices: (A) 5 (B) 7\n" \
          "The answer is (B)"
    from crescent.methods.cleaning import clean_question

    assert "Answer choices" not in clean_question(raw, 1000)[0]  # the built-in cuts them
    assert choice_domain.Choice.clean_question(raw, 1000) == (
        "Tom has 3 apples and buys 4. How many? Answer choices: (A) 5 (B) 7", None)
    from crescent.stages.evaluate import render_tasks

    tasks = tmp_path / "mine"
    tasks.mkdir()
    (tasks / "choice_eval.yaml").write_text(
        'task: choice_eval\ndataset_path: json\n'
        'dataset_kwargs:\n  data_files:\n    test: "${CRESCENT_DATA}/gsm8k/test.jsonl"\n')
    dest, needs = render_tasks(DATA, tmp_path / "rendered", [str(tasks)])
    assert needs["choice_eval"] == [DATA.absolute() / "gsm8k" / "test.jsonl"]
    assert str(DATA.absolute()) in (dest / "choice_eval.yaml").read_text()
    assert "crescent_gsm8k_gold_bpb" in needs  # the shipped ones stay


# ------------------------------------------------------------------ end to end

PLUGINS = "plugins=[tests.plugins.capped_engine,tests.plugins.choice_domain," \
          "tests.plugins.weighted_sft,tests.plugins.agreement_filter,tests.toy_plugins]"


@pytest.mark.slow
def test_four_components_from_outside_the_package_run_end_to_end(tmp_path):
    common = [PLUGINS, f"hydra.searchpath=[file://{ROOT / 'tests' / 'plugin_conf'}]",
              # float32: the same samples on every CPU (bfloat16 ones move with the kernels)
              "experiment=smoke", "model.dtype=float32", "engine=hf", "engine.name=capped_hf",
              "+engine.options.cap=48",
              "domain=choice", "dedup.method=first_word", "voting.rule=first",
              "finetune.objective=weighted_sft", "questions.target=4",
              "questions.max_candidates=24", "questions.batch_size=8",
              "questions.sampling.max_tokens=80", "answers.samples=3", "voting.k=3",
              "voting.min_votes=1", "voting.drop_truncated=false", "finetune.max_steps=1",
              "finetune.batch_size=16", "finetune.max_length=256", "finetune.val_fraction=0",
              f"eval.data_dir={DATA}", "logger=none", f"cache_dir={tmp_path / 'cache'}"]
    # A third of the votes: every answered question (what the model answers varies by CPU;
    # the floor is tried on the same answers below).
    keep_all = "+stage_options.agreement_filter.min_agreement=0.3"
    loop = "stages=[questions,answers,agreement_filter,finetune]"
    result = run_cli(*common, loop, keep_all, "+finetune.options.power=2", "hydra.run.dir=run",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"

    # The domain: every accepted question kept its choices (the built-in cleaning cuts them);
    # the embedder: no two start with the same word.
    questions = list(read_jsonl(run / "questions" / "questions.jsonl"))
    assert questions and all("Answer choices:" in q["question"] and "(A)" in q["question"]
                             for q in questions)
    from tests.toy_plugins import first_word

    assert len({first_word(q["question"]) for q in questions}) == len(questions)
    # The engine: completions cut at its option's cap, though the stage asked for 256 tokens.
    samples = list(read_jsonl(run / "answers" / "samples.jsonl"))
    assert samples and all(t <= 48 for s in samples for t in s["completion_tokens"])
    assert all(x is None or x.isalpha() for s in samples for x in s["extracted"])
    # The stage: the answers stage's rows at or above its floor, and finetune trained on them.
    qa = list(read_jsonl(run / "answers" / "qa.jsonl"))
    kept = list(read_jsonl(run / "agreement_filter" / "qa.jsonl"))
    assert kept == [r for r in qa if r["agreement"] >= 0.3]
    stats = read_json(run / "finetune" / "stats.json")
    assert stats["input"].endswith("agreement_filter/qa.jsonl")
    assert stats["examples"] == len(kept) and stats["objective"] == "weighted_sft"

    # The objective: every example in the one step; at power 0 each weight is 1 (plain SFT on
    # the same batch), at power 2 each is its agreement squared. The data come from the cache.
    result = run_cli(*common, loop, keep_all, "+finetune.options.power=0",
                     "hydra.run.dir=flat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("questions", "answers", "agreement_filter"):
        assert (tmp_path / "flat" / stage).resolve() == (run / stage).resolve()
    assert (tmp_path / "flat" / "finetune").resolve() != (run / "finetune").resolve()
    weighted, = (r["loss"] for r in read_jsonl(run / "finetune" / "metrics.jsonl"))
    flat, = (r["loss"] for r in read_jsonl(tmp_path / "flat" / "finetune" / "metrics.jsonl"))
    lowest = min(r["agreement"] for r in kept) ** 2
    assert lowest * flat - 1e-4 <= weighted <= flat + 1e-4
    if lowest < 1:
        assert weighted < flat

    # The stage's option: a higher floor is another entry on the same answers.
    result = run_cli(*common, "+stage_options.agreement_filter.min_agreement=0.5",
                     "stages=[agreement_filter]", "hydra.run.dir=strict", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    strict = tmp_path / "strict"
    assert (strict / "answers").resolve() == (run / "answers").resolve()
    assert (strict / "agreement_filter").resolve() != (run / "agreement_filter").resolve()
    assert list(read_jsonl(strict / "agreement_filter" / "qa.jsonl")) == \
        [r for r in qa if r["agreement"] >= 0.5]


@pytest.mark.slow
@pytest.mark.long  # two GRPO steps: a minute of training alone on 2 cores
def test_an_online_objective_rewards_agreement_with_the_vote_from_outside(tmp_path):
    # GRPO with the vote as its reward, from tests/plugins/grpo_vote.py (nothing under crescent/
    # knows it): the objective context gives it the run's vote and answer format, its `reads`
    # put voting and domain in finetune's key; two LoRA steps on the embedded model.
    import torch
    from safetensors.torch import load_file

    from crescent.infra.models import resolve_model

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in enumerate(
        ["What is 2 + 3?", "What is 10 - 4?", "What is 3 times 3?", "What is 8 + 1?"])))
    common = ["plugins=[tests.plugins.grpo_vote]", "stages=[finetune]", "finetune=lora",
              "finetune.objective=grpo_vote", f"finetune.input={questions}",
              "model.dtype=float32", "finetune.max_steps=2", "finetune.batch_size=2",
              "finetune.lr=1e-3", "finetune.val_fraction=0", f"eval.data_dir={DATA}",
              "logger=none", f"cache_dir={tmp_path / 'cache'}"]
    result = run_cli(*common, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "finetune" / "metrics.jsonl")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    # LoRA's B starts at zero and only a gradient moves it: merged weights that differ from
    # the student's mean the vote's reward reached the adapters.
    tuned = load_file(tmp_path / "run" / "finetune" / "model" / "model.safetensors")
    base = load_file(Path(resolve_model(compose().student.name)) / "model.safetensors")
    moved = [k for k in tuned if k in base and not torch.equal(tuned[k].float(), base[k].float())]
    assert moved and all("proj" in k for k in moved)
    # The vote's settings are in its key (another floor trains anew); SFT's key has none.
    keys = {(floor, objective): cache.stage_key(compose(
        *common[1:], f"voting.min_votes={floor}", f"finetune.objective={objective}"),
        "finetune")[0] for floor in (2, 3) for objective in ("grpo_vote", "sft")}
    assert len(set(keys.values())) == 3 and keys[2, "sft"] == keys[3, "sft"]


def test_a_component_of_the_wrong_shape_fails_where_it_is_registered():
    from crescent.registry import ANSWER_FORMATS, OBJECTIVES, VOTE_RULES

    class NoEqual:
        @staticmethod
        def extract(text):
            return text

    with pytest.raises(CrescentError, match=r"^domain.answer_type: answer format 'half' .* is "
                                            r"not one: it lacks equal$"):
        ANSWER_FORMATS.register("half")(NoEqual)
    with pytest.raises(CrescentError, match="it lacks load_examples, data_module, compute_loss"):
        OBJECTIVES.register("empty")(type("Empty", (), {}))
    with pytest.raises(CrescentError, match="it lacks a call"):
        VOTE_RULES.register("constant")(3)
    assert "half" not in ANSWER_FORMATS.names() and "constant" not in VOTE_RULES.names()
