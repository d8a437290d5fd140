"""Mistakes knowable from the config and the inputs fail before the first stage: one line
naming the key or `file:line`, exit 1, and nothing written (no run dir: a finished run that
shares the dir keeps its record); a sweep's mistake fails before its first point runs."""

from __future__ import annotations

from pathlib import Path

import pytest

SHIPPED = ("crescent_gsm8k, crescent_gsm8k_cot_zeroshot, crescent_gsm8k_gold_bpb, crescent_humaneval, "
           "crescent_math500")
FILES = {
    "bad_sft.jsonl": b'{"messages": [{"role": "user", "content": "q"}, '
                     b'{"role": "assistant", "content": "a"}]}\n{"text": "no messages"}\n',
    "latin1_questions.jsonl": b'{"id": 0, "question": "What is 2 + 2?"}\n'
                              b'{"id": 1, "question": "Caf\xe9 prices?"}\n',
    "latin1_sft.jsonl": b'{"messages": [{"role": "user", "content": "Caf\xe9"}]}\n',
    "list_id.jsonl": b'{"id": [1, 2], "question": "What is 2 + 2?"}\n',
    "no_gold.jsonl": b'{"question": "What is 2 + 2?", "gold": 4}\n{"question": "And 3 + 3?"}\n',
    "good_sft.jsonl": b'{"messages": [{"role": "user", "content": "q"}, '
                      b'{"role": "assistant", "content": "a"}]}\n',
}
# case: (overrides, the last line of stderr)
CASES = {
    "1 unknown eval task": (["eval.tasks=[nonexistent_task]"],
                            "eval.tasks: unknown lm-eval task(s): nonexistent_task "
                            f"(shipped: {SHIPPED})"),
    "1 unknown eval task, evaluate alone": (["stages=[evaluate]", "eval.tasks=[nonexistent_task]"],
                                            "eval.tasks: unknown lm-eval task(s): "
                                            f"nonexistent_task (shipped: {SHIPPED})"),
    "1 no eval task": (["eval.tasks=[]"], "eval.tasks: no tasks given"),
    "2 served engine cannot score": (["engine=openai",
                                      "+engine.options.endpoints=[http://127.0.0.1:9/v1]"],
                                     "engine.name='openai': this engine does not load models "
                                     "itself, and the evaluate stage scores with lm-eval inside "
                                     "this job; run the evaluate stage with an engine that does "
                                     "(vllm, ray_vllm or hf)"),
    "3 bad finetune.input": (["finetune.input=bad_sft.jsonl"], "bad_sft.jsonl:2: "),
    "4 no stages": (["stages=[]"], "stages: none given; name some of questions, answers, "
                                   "finetune, evaluate"),
    "4 typo under +": (["+dedup.thresold=0.9"], "+dedup.thresold: not a config key (did you mean "
                                                "dedup.threshold?); `+` adds keys only where the "
                                                "schema is open: stage_options, engine.options, domain.options, "
                                                "dedup.options, voting.options, finetune.options, "
                                                "eval.limits, eval.models"),
    "4 open-dict key without +": (["eval.limits.crescent_gsm8k=3"],
                                  "eval.limits.crescent_gsm8k: not set yet; a key under "
                                  "eval.limits is added with `+` "
                                  "(+eval.limits.crescent_gsm8k=...)"),
    "8 answers.input not UTF-8": (["stages=[answers,finetune]",
                                   "answers.input=latin1_questions.jsonl"],
                                  "latin1_questions.jsonl:2: not UTF-8 text (byte 27 of the line)"),
    "8 finetune.input not UTF-8": (["finetune.input=latin1_sft.jsonl"],
                                   "latin1_sft.jsonl:1: not UTF-8 text (byte 47 of the line)"),
    "8 an id that is a list": (["stages=[answers]", "answers.input=list_id.jsonl"],
                               "list_id.jsonl:1: id [1, 2] is not a string or an integer"),
    "9 run dir under a file": (["hydra.run.dir=blocker/run"], "blocker/run: Not a directory"),
    "audit without gold answers": (["stages=[answers,audit]", "answers.input=no_gold.jsonl"],
                                   "no_gold.jsonl: question id 1 has no gold answer (a `gold` "
                                   "field, or an `answer` ending in '#### <answer>')"),
    "a generator that is not there": (["model.name=/nonexistent/model"],
                                      "model '/nonexistent/model': no such directory"),
    "a student that is not there": (["stages=[finetune]", "student.name=/nonexistent/student"],
                                    "model '/nonexistent/student': no such directory"),
    "a model to score that is not there": (["stages=[evaluate]", "+eval.models.other=./nope"],
                                           "eval.models.other: model './nope': no such "
                                           "directory"),
    "a benchmark file that is not there": (["stages=[answers]",
                                            "answers.input=${data:gsm8k/nope.jsonl}"],
                                           "benchmark data "),
    # The wiring of stages: a stage that reads itself, a stage that does not feed it, a stage
    # listed after the one that reads it.
    "a stage that reads itself": (["stages=[answers,finetune]", "answers.input=answers"],
                                  "answers.input=answers: a stage cannot read its own output"),
    "a fine-tune that trains on itself": (["stages=[finetune]", "finetune.input=finetune"],
                                          "finetune.input=finetune: a stage cannot read its "
                                          "own output"),
    "a stage that does not feed it": (["stages=[answers]", "answers.input=evaluate"],
                                      "answers.input=evaluate: answers reads what questions "
                                      "writes, and evaluate does not stand in for it"),
    "stages out of order": (["stages=[finetune,answers]"],
                            "stages: finetune reads the output of answers, listed after it: "
                            "list answers first"),
    "stage options that are not a mapping": (["+stage_options.answers=5"],
                                             "stage_options.answers=5: expected option names "
                                             "and their values"),
    "a task file that does not parse": (["stages=[evaluate]", "eval.include_path=[mytasks]"],
                                        "eval task file mytasks/broken.yaml:4: not valid YAML"),
    "a precision nothing here installs": (["stages=[finetune]", "finetune.input=good_sft.jsonl",
                                           "finetune.precision=transformer-engine"],
                                          "finetune.precision=transformer-engine: NVIDIA's "
                                          "transformer_engine is not installed here"),
    "a Ray address that is not one": (["stages=[questions]", "engine=ray_vllm",
                                       "+engine.options.ray_address=garbage"],
                                      "engine.options.ray_address='garbage': expected auto or "
                                      "[ray://]host:port"),
    "a Ray head that is not there": (["stages=[questions]", "engine=ray_vllm",
                                      "+engine.options.ray_address=127.0.0.1:9"],
                                     "engine.options.ray_address=127.0.0.1:9: no Ray head "
                                     "answers there"),
    "an endpoint without a scheme": (["stages=[questions]", "engine=openai",
                                      "+engine.options.endpoints=[127.0.0.1:9/v1]"],
                                     "engine.options.endpoints: '127.0.0.1:9/v1' is not an http:// or "
                                     "https:// URL"),
    "an endpoint nobody serves": (["stages=[questions]", "engine=openai",
                                   "+engine.options.endpoints=[http://127.0.0.1:9/v1]"],
                                  "engine.options.endpoints: no server answers at "
                                  "http://127.0.0.1:9/v1"),
    "a negative timeout": (["engine=openai", "+engine.options.request_timeout_s=-1"],
                           "engine.options.request_timeout_s=-1.0: expected a number of "
                           "seconds > 0"),
    "an engine's option another engine has": (["+engine.options.concurrency=4"],
                                              "engine.options.concurrency: not an option of "
                                              "engine 'vllm'"),
    "a plug-in option out of its range": (["plugins=[tests.plugins.capped_engine]", "engine=hf",
                                           "engine.name=capped_hf", "+engine.options.cap=-5"],
                                          "engine.options.cap=-5: expected an integer >= 1"),
    "a stage option out of its range": (["plugins=[tests.plugins.agreement_filter]",
                                         "stages=[answers,agreement_filter,finetune]",
                                         "+stage_options.agreement_filter.min_agreement=5"],
                                        "stage_options.agreement_filter.min_agreement=5.0: "
                                        "expected a share in [0, 1]"),
    "a directory as the questions file": (["stages=[answers]", "answers.input=mytasks"],
                                          "mytasks: a directory, not a JSON Lines file"),
    "a label that climbs out of the run dir": (["stages=[evaluate]",
                                                "+eval.models={../../evil: good_model}"],
                                               "eval.models: label '../../evil' names a folder"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_knowable_mistake_fails_before_any_stage(cli, tmp_path, case):
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "blocker").write_text("a file where the run dir would go")
    (tmp_path / "mytasks").mkdir()
    (tmp_path / "mytasks" / "broken.yaml").write_text("task: mine\noutput_type: generate_until\n"
                                                      "metric_list: [a\n")
    overrides, expected = CASES[case]
    result = cli("experiment=smoke", "logger=none", "hydra.run.dir=run", *overrides)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1, result.stderr[-2000:]
    assert last.startswith(f"crescent: error: {expected}"), result.stderr[-2000:]
    assert sum(line.startswith("crescent: error") for line in result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_sweeps_mistake_in_its_last_point_fails_before_the_first_point(cli, tmp_path):
    result = cli("-m", "experiment=smoke", "logger=none", "hydra.sweep.dir=sweep",
                 f"cache_dir={tmp_path / 'cache'}", "stages=[questions]", "voting.k=3,0")
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "crescent: error: sweep point voting.k=0: voting.k=0: expected an integer >= 1")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sweep").exists()  # no point started, not even the good first one
    assert not (tmp_path / "cache").exists()


def test_a_mistaken_command_leaves_a_finished_runs_record_as_it_was(cli, tmp_path):
    record = tmp_path / "run" / ".hydra" / "overrides.yaml"  # what crescent-report reads
    record.parent.mkdir(parents=True)
    record.write_text("- experiment=smoke\n")
    # `stages` stays out of the run dir's name: this command names the finished run's dir.
    result = cli("experiment=smoke", "logger=none", "hydra.run.dir=run", "stages=[answers,bogus]")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "unknown stage 'bogus'" in result.stderr.strip().splitlines()[-1]
    assert record.read_text() == "- experiment=smoke\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra"]


def test_a_slurm_launcher_without_slurm_is_one_line(cli, tmp_path):
    # Slurm's commands missing, or there and no controller to answer them: one line each.
    import os

    bare = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if not (Path(d) / "sbatch").exists())
    fake = tmp_path / "bin"
    fake.mkdir()
    for command in ("sbatch", "sinfo"):
        (fake / command).write_text("#!/bin/sh\necho 'sinfo: error: Unable to contact slurm "
                                    "controller (connect failure)' >&2\nexit 1\n")
        (fake / command).chmod(0o755)
    expected = {bare: "Slurm's sbatch is not on this machine's PATH",
                f"{fake}{os.pathsep}{bare}": "no Slurm controller answers here (sinfo: sinfo: "
                                             "error: Unable to contact slurm controller"}
    for path, said in expected.items():
        result = cli("-m", "experiment=smoke", "logger=none", "hydra/launcher=slurm_cpu",
                     "hydra.sweep.dir=sweep", "voting.k=3,4", env_path=path)
        assert result.returncode == 1, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("crescent: error: hydra/launcher: a Slurm launcher, and ") \
            and said in last, last
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "sweep").exists()
