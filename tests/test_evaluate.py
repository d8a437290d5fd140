"""Evaluate stage: task YAML rendering, metrics shaping, the delta table and resume (fast);
against the `lm_eval` command line, and bits per byte after fine-tuning on gold (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crescent import cache
from crescent.errors import CrescentError
from crescent.infra.io import read_json, write_json
from crescent.methods import metrics as tables
from crescent.methods import scoring
from crescent.stages import evaluate
from crescent.tasks import utils as task_utils
from tests.conftest import DATA, ROOT, compose

LM_EVAL = Path(sys.executable).with_name("lm_eval")
STOCK_TASKS = {"crescent_gsm8k": "gsm8k/gsm8k.yaml",
               "crescent_gsm8k_cot_zeroshot": "gsm8k/gsm8k-cot-zeroshot.yaml"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _tiny_data_dir(root: Path) -> Path:
    """Three lines of each benchmark, laid out like the benchmark data dir."""
    for name in ("gsm8k/train.jsonl", "gsm8k/test.jsonl", "math500/test.jsonl"):
        with open(DATA / name, encoding="utf-8") as f:
            rows = [json.loads(next(f)) for _ in range(3)]
        _write_jsonl(root / name, rows)
    return root


# ------------------------------------------------------------------ tasks


@pytest.mark.parametrize("ours, stock", STOCK_TASKS.items())
def test_gsm8k_twins_are_the_stock_tasks_on_local_files(ours, stock):
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    data_keys = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs"}
    mine = load_yaml(evaluate.TASKS_SRC / f"{ours}.yaml", resolve_func=False)
    theirs = load_yaml(Path(lm_eval.__file__).parent / "tasks" / stock, resolve_func=False)
    # The departures, each said in the task file: answers up to 512 tokens (not lm-eval's
    # 256), and the CoT task's strict match reads "The answer is: N" too.
    assert mine["generation_kwargs"].pop("max_gen_toks") == 512
    # The report's headline metric, declared (lm-eval reads no `headline`).
    assert mine["metadata"].pop("headline") == "exact_match,flexible-extract"
    assert "max_gen_toks" not in theirs["generation_kwargs"]
    if ours == "crescent_gsm8k_cot_zeroshot":
        strict = mine["filter_list"][0]["filter"][0]
        assert strict["regex_pattern"] == "The answer is:? (\\-?[0-9\\.\\,]+)"
        strict["regex_pattern"] = theirs["filter_list"][0]["filter"][0]["regex_pattern"]
    assert {k: v for k, v in mine.items() if k not in data_keys} == {
        k: v for k, v in theirs.items() if k not in data_keys
    }
    assert mine["dataset_path"] == "json" and mine["task"] == ours


def test_rendered_tasks_read_the_configured_data_dir(tmp_path):
    from lm_eval.tasks import TaskManager

    data = _tiny_data_dir(tmp_path / 'odd "dir", with: yaml chars')
    dest, needs = evaluate.render_tasks(data, tmp_path / "tasks")
    assert needs["crescent_math500"] == [data / "math500/test.jsonl"]
    assert set(needs["crescent_gsm8k"]) == {data / "gsm8k/train.jsonl", data / "gsm8k/test.jsonl"}
    assert (dest / "utils.py").is_file()

    manager = TaskManager(include_path=str(dest), include_defaults=False)
    loaded = manager.load(["crescent_gsm8k", "crescent_math500", "crescent_gsm8k_gold_bpb"])
    tasks = loaded["tasks"]
    assert {name: len(list(t.test_docs())) for name, t in tasks.items()} == {
        "crescent_gsm8k": 3, "crescent_math500": 3, "crescent_gsm8k_gold_bpb": 3
    }
    bpb_doc = next(iter(tasks["crescent_gsm8k_gold_bpb"].test_docs()))
    assert tasks["crescent_gsm8k_gold_bpb"].doc_to_target(bpb_doc).endswith("The answer is: 18")
    math_doc = next(iter(tasks["crescent_math500"].test_docs()))
    assert math_doc["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert "\\boxed" in math_doc["solution"] and "The answer is" not in math_doc["solution"]


def test_missing_data_file_is_one_clear_error(tmp_path):
    _, needs = evaluate.render_tasks(tmp_path / "nowhere", tmp_path / "tasks")
    evaluate.check_data(["mmlu"], needs)  # stock tasks read no data_dir
    with pytest.raises(CrescentError, match=r"crescent_gsm8k_gold_bpb reads benchmark data .*"
                       r"nowhere/gsm8k/test.jsonl not found.*run `crescent-data fetch`"):
        evaluate.check_data(["crescent_gsm8k_gold_bpb"], needs)


def test_gold_solution_takes_the_training_form():
    answer = "She has 3*4=<<3*4=12>>12 eggs.\nSo 12+1=<<12+1=13>>13\n#### 13"
    assert task_utils.gold_solution(answer) == "She has 3*4=12 eggs.\nSo 12+1=13\nThe answer is: 13"
    results = task_utils.gold_bpb_results({"solution": "ab€"}, [(-2.0, False)])
    assert results == {"bits_per_byte": (-2.0, 5), "logprob": -2.0}  # bytes, not characters


def test_math500_scoring_reads_boxed_and_final_lines():
    solution, final = task_utils.split_math500("So $x=\\boxed{\\frac12}$.The answer is: \\frac12")
    doc = {"solution": solution, "answer": final}
    score = task_utils.math500_results
    assert score(doc, ["Thus x = 1/2.\nThe answer is: 0.5"]) == {"math_verify": 1}
    assert score(doc, ["Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."]) == {
        "math_verify": 1}
    assert score(doc, ["The answer is: 3"]) == {"math_verify": 0}
    assert score(doc, ["I do not know."]) == {"math_verify": 0}


# ------------------------------------------------------------------ engine settings


def test_hf_spec_and_its_command_line(tmp_path):
    cfg = compose("engine=hf", "eval.limit=10", "eval.num_fewshot=5", "model.dtype=float32")
    tasks_dir = evaluate.TASKS_SRC
    spec = evaluate.lm_eval_spec(cfg, "base", "/m", ["crescent_gsm8k"], tasks_dir, tmp_path / "b")
    [run] = spec["runs"]
    assert run["model"] == "crescent-hf" and run["device"] == "cpu" and run["env"] == {}
    assert run["model_args"] == {"pretrained": "/m", "dtype": "float32", "max_length": 2048}
    assert spec["include_defaults"] is False  # only our tasks: lm-eval's index is not built
    assert evaluate.lm_eval_command(spec) == (
        f"crescent-lm-eval --model crescent-hf "
        f"--model_args pretrained=/m,dtype=float32,max_length=2048 --tasks crescent_gsm8k "
        f"--include_path {tasks_dir} --batch_size 32 --device cpu "
        f"--num_fewshot 5 --limit 10 --apply_chat_template --log_samples --output_path {tmp_path}/b"
    )


def test_per_task_limits_take_each_tasks_first_documents(tmp_path):
    cfg = compose("engine=hf", "eval.limit=5000", "+eval.limits.crescent_gsm8k_cot_zeroshot=3")
    tasks = ["crescent_gsm8k_gold_bpb", "crescent_gsm8k_cot_zeroshot"]
    spec = evaluate.lm_eval_spec(cfg, "base", "/m", tasks, evaluate.TASKS_SRC, tmp_path / "b")
    assert spec["limits"] == {"crescent_gsm8k_gold_bpb": 5000, "crescent_gsm8k_cot_zeroshot": 3}
    assert "--limit" not in evaluate.lm_eval_command(spec)
    assert '"crescent_gsm8k_cot_zeroshot": [0, 1, 2]' in evaluate.lm_eval_command(spec)
    # lm-eval counts each task's documents: the bpb task has 1,319, fewer than its limit.
    from lm_eval.tasks import TaskManager

    tasks_dir, _ = evaluate.render_tasks(DATA, tmp_path / "tasks")
    docs = scoring.first_docs(spec["limits"], TaskManager(include_path=str(tasks_dir),
                                                            include_defaults=False))
    assert docs == {"crescent_gsm8k_gold_bpb": list(range(1319)),
                    "crescent_gsm8k_cot_zeroshot": [0, 1, 2]}
    # One limit for every task stays lm-eval's own `--limit`.
    same = evaluate.lm_eval_spec(compose("engine=hf", "+eval.limits.crescent_gsm8k_cot_zeroshot=7",
                                      "eval.limit=7"), "base", "/m", tasks, tmp_path, tmp_path)
    assert scoring.first_docs(same["limits"]) is None and "--limit 7" in evaluate.lm_eval_command(same)


def test_vllm_spec_on_cpu_uses_the_engine_settings(tmp_path):
    cfg = compose("+engine.options.cpu_kvcache_gib=3", "eval.apply_chat_template=false")
    tasks = ["crescent_gsm8k", "mmlu"]
    spec = evaluate.lm_eval_spec(cfg, "base", "/m", tasks, evaluate.TASKS_SRC, tmp_path)
    [run] = spec["runs"]  # generation, and a stock task: both go to vLLM
    assert run["model"] == "vllm" and run["batch_size"] == "auto" and run["tasks"] == tasks
    assert run["env"] == {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert run["model_args"]["distributed_executor_backend"] == "uni"
    assert run["model_args"]["max_model_len"] == 2048 and run["model_args"]["enforce_eager"]
    assert spec["include_defaults"] is True  # mmlu is a stock task
    assert spec["fewshot_as_multiturn"] is False  # meaningless without the chat template
    with pytest.raises(CrescentError, match=r"engine.name='openai'.*\(vllm, ray_vllm or hf\)"):
        evaluate.lm_eval_spec(compose("engine=openai"), "base", "/m", tasks, tmp_path, tmp_path)


def test_likelihood_tasks_are_scored_by_a_forward_pass_on_cpu(tmp_path):
    """On CPU the vllm engine hands text-scoring tasks to crescent-hf, first, and
    generation to vLLM: two runs, two command lines, each with its own tasks and limits."""
    cfg = compose("eval.limit=7", "+eval.limits.crescent_gsm8k_cot_zeroshot=3")
    tasks = ["crescent_gsm8k_cot_zeroshot", "crescent_gsm8k_gold_bpb", "crescent_math500"]
    spec = evaluate.lm_eval_spec(cfg, "base", "/m", tasks, evaluate.TASKS_SRC, tmp_path)
    likelihood, generation = spec["runs"]
    assert likelihood["model"] == "crescent-hf"
    assert likelihood["tasks"] == ["crescent_gsm8k_gold_bpb"]
    assert likelihood["batch_size"] == 16 and likelihood["device"] == "cpu"
    assert generation["model"] == "vllm"
    assert generation["tasks"] == ["crescent_gsm8k_cot_zeroshot", "crescent_math500"]
    bpb_line, cot_line = evaluate.lm_eval_command(spec).splitlines()
    assert "--model crescent-hf " in bpb_line and "--limit 7" in bpb_line
    assert "VLLM" not in bpb_line
    assert bpb_line.endswith(f"--log_samples --output_path {tmp_path}")
    assert cot_line.startswith("VLLM_CPU_KVCACHE_SPACE=") and "--model vllm " in cot_line
    assert '--samples \'{"crescent_gsm8k_cot_zeroshot": [0, 1, 2], "crescent_math500": [0, 1, ' \
        in cot_line
    # The hf engine scores everything itself: one run.
    [run] = evaluate.lm_eval_spec(compose("engine=hf"), "base", "/m", tasks, evaluate.TASKS_SRC,
                                  tmp_path)["runs"]
    assert run["model"] == "crescent-hf" and run["tasks"] == ["crescent_gsm8k_gold_bpb",
                                                     "crescent_gsm8k_cot_zeroshot",
                                                     "crescent_math500"]


def test_continuation_head_scores_as_lm_evals_hf_type():
    """crescent-hf against lm-eval's own hf type, in one process on the embedded model:
    gold solutions of different lengths, a multiple-choice set (one-token continuations
    sharing a context: lm-eval's cache), and a pair cut from the left at max_length."""
    from lm_eval.models.huggingface import HFLM

    from crescent.engines.lm_eval_hf import ContinuationHeadLM
    from crescent.infra.models import resolve_model

    lm = ContinuationHeadLM(pretrained=resolve_model("smollm2-135m-instruct"), device="cpu",
                            dtype="float32", batch_size=3, max_length=160)
    with open(DATA / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(5)]
    pairs = [(f"Question: {r['question']}\nAnswer:", f" {task_utils.gold_solution(r['answer'])}")
             for r in rows]
    pairs += [("The capital of France is", choice) for choice in (" Paris", " Rome", " A")]
    requests = [((c, x), *lm._encode_pair(c, x)) for c, x in pairs]
    assert any(len(c) + len(x) > 161 for _, c, x in requests)  # one is cut at max_length
    ours, stock = lm._loglikelihood_tokens(requests), HFLM._loglikelihood_tokens(lm, requests)
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in stock]
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, stock)) < 1e-4  # nats per request
    assert ours[5][0] > ours[6][0]  # the model prefers Paris: the continuations were scored


def test_crescent_model_types_are_known_to_lm_eval():
    from lm_eval.api.registry import get_model

    from crescent.engines.lm_eval_hf import ContinuationHeadLM

    scoring.register_lm_eval_models()
    assert get_model("crescent-hf") is ContinuationHeadLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own types are still there
    assert (Path(sys.executable).parent / "crescent-lm-eval").is_file()  # command.txt's program


def test_runs_results_merge_into_one(tmp_path):
    bpb = {"results": {"a": {"bpb": 0.7}}, "n-shot": {"a": 0}, "config": {"model": "hf"},
           "samples": {"a": [1]}, "date": 1.0}
    cot = {"results": {"b": {"em": 0.1}}, "n-shot": {"b": 0}, "config": {"model": "vllm"},
           "samples": {"b": [2]}, "date": 2.0}
    merged = scoring.merge_results([bpb, cot])
    assert merged["results"] == {"a": {"bpb": 0.7}, "b": {"em": 0.1}}
    assert merged["samples"] == {"a": [1], "b": [2]} and merged["n-shot"] == {"a": 0, "b": 0}
    assert merged["config"] == {"model": "hf"} and merged["date"] == 1.0
    assert merged["run_configs"] == [{"model": "hf"}, {"model": "vllm"}]
    assert scoring.merge_results([bpb]) == bpb


def test_vllm_version_lookup_is_answered_for_vllm_cpu(monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(metadata, "version", metadata.version)  # restored after the test
    try:
        cpu = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed")
    from crescent.engines.vllm_offline import answer_vllm_version_lookup

    answer_vllm_version_lookup()  # what the stage's child runs before lm-eval's vllm model
    assert metadata.version("vllm") == f"{cpu}+cpu"
    assert metadata.version("torch") == metadata.distribution("torch").version


def test_models_default_to_base_and_this_runs_finetuned(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO", logger="crescent")
    monkeypatch.setattr("crescent.infra.models.resolve_model", lambda name: f"/resolved/{name}")
    cfg = compose("student=smollm2")
    assert evaluate.models_to_score(cfg, tmp_path) == {"base": "/resolved/smollm2-135m-instruct"}
    assert "scoring base only" in caplog.text
    write_json(tmp_path / "finetune/model/config.json", {})
    assert evaluate.models_to_score(cfg, tmp_path)["finetuned"] == str(tmp_path / "finetune/model")
    cfg = compose("+eval.models={a:x,b:y}")
    assert evaluate.models_to_score(cfg, tmp_path) == {"a": "/resolved/x", "b": "/resolved/y"}


# ------------------------------------------------------------------ metrics and the table


def _raw(bpb: float, em: float) -> dict:
    return {
        "results": {
            "crescent_gsm8k_gold_bpb": {"alias": "crescent_gsm8k_gold_bpb", "sample_len": 4,
                                        "bits_per_byte,none": bpb,
                                        "bits_per_byte_stderr,none": "N/A"},
            "crescent_gsm8k": {"alias": "crescent_gsm8k",
                               "exact_match,strict-match": em,
                               "exact_match_stderr,strict-match": 0.1,
                               "exact_match,flexible-extract": em + 0.1},
        },
        "higher_is_better": {"crescent_gsm8k_gold_bpb": {"bits_per_byte": False},
                             "crescent_gsm8k": {"exact_match": True}},
        "n-samples": {"crescent_gsm8k_gold_bpb": {"original": 1319, "effective": 4},
                      "crescent_gsm8k": {"original": 1319, "effective": 4}},
    }


def test_metrics_shape_and_delta_table():
    raw = {"base": _raw(0.9, 0.0), "finetuned": _raw(0.75, 0.25)}
    metrics = {label: tables.metrics_of(r) for label, r in raw.items()}
    assert metrics["base"] == {
        "crescent_gsm8k_gold_bpb": {"bits_per_byte": 0.9},
        "crescent_gsm8k": {"exact_match,strict-match": 0.0,
                           "exact_match_stderr,strict-match": 0.1,
                           "exact_match,flexible-extract": 0.1},
    }
    tasks = ["crescent_gsm8k_gold_bpb", "crescent_gsm8k"]
    delta = tables.deltas(metrics, tasks)["finetuned"]
    assert delta["crescent_gsm8k_gold_bpb"]["bits_per_byte"] == pytest.approx(-0.15)
    assert "exact_match_stderr,strict-match" not in delta["crescent_gsm8k"]
    table = tables.delta_table(metrics, tasks, tables.lower_is_better(raw))
    assert table.splitlines() == [
        "| task | metric | base | finetuned | finetuned - base |",
        "|---|---|---|---|---|",
        "| crescent_gsm8k_gold_bpb | bits_per_byte ↓ | 0.9000 | 0.7500 | -0.1500 |",
        "| crescent_gsm8k | exact_match,strict-match ↑ | 0.0000 | 0.2500 | +0.2500 |",
        "| crescent_gsm8k | exact_match,flexible-extract ↑ | 0.1000 | 0.3500 | +0.2500 |",
    ]
    only = {"mine": metrics["base"]}  # no `base`: the first label is the reference, no deltas
    assert tables.delta_table(only, tasks).splitlines()[0] == "| task | metric | mine |"


def test_stage_scores_only_missing_labels_and_writes_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr("crescent.infra.models.resolve_model", lambda name: f"/resolved/{name}")
    scored = []

    def fake_score(label, label_dir):
        scored.append((label, read_json(label_dir / evaluate.SPEC)["runs"][0]["model_args"]["pretrained"]))
        write_json(label_dir / evaluate.RESULTS,
                   {**_raw(0.7, 0.5), "groups": {"mmlu": {"acc,none": 0.3}}})

    monkeypatch.setattr(evaluate, "_score_in_subprocess", fake_score)
    write_json(tmp_path / "finetune/model/config.json", {})
    cfg = compose("engine=hf", f"eval.data_dir={DATA}",
               "eval.tasks=[crescent_gsm8k_gold_bpb,crescent_gsm8k]")
    # base scored before a kill: its spec (written first) names the model it scored
    write_json(tmp_path / "evaluate/base/spec.json",
               {"model_identity": f"/resolved/{cfg.student.name}"})
    write_json(tmp_path / "evaluate/base/results.json", _raw(0.9, 0.0))
    out = evaluate.run(cfg, tmp_path)
    assert scored == [("finetuned", str(tmp_path / "finetune/model"))]
    metrics = read_json(out / "metrics.json")
    assert set(metrics) == {"base", "finetuned"}
    assert metrics["finetuned"]["crescent_gsm8k_gold_bpb"]["bits_per_byte"] == 0.7
    stats = read_json(out / "stats.json")
    assert stats["delta"]["finetuned"]["crescent_gsm8k_gold_bpb"]["bits_per_byte"] == (
        pytest.approx(-0.2))
    assert stats["n_samples"] == {"crescent_gsm8k_gold_bpb": 4, "crescent_gsm8k": 4}
    assert (out / "table.md").read_text().count("\n") == 5
    assert "--include_path" in (out / "finetuned/command.txt").read_text()

    # Asked for a task the base results lack: base is scored again, finetuned is not.
    scored.clear()
    cfg = compose("engine=hf", f"eval.data_dir={DATA}", "eval.tasks=[crescent_gsm8k_gold_bpb,mmlu]")
    write_json(tmp_path / "evaluate/finetuned/results.json",
               {**_raw(0.7, 0.5), "groups": {"mmlu": {"acc,none": 0.3}}})
    evaluate.run(cfg, tmp_path)
    assert [label for label, _ in scored] == ["base"]


def test_scores_made_before_the_fine_tune_existed_are_not_reused_for_it(tmp_path, monkeypatch):
    # `stages=[evaluate]` with no fine-tune yet scores base alone; after the fine-tune trains,
    # the finished evaluate dir is outdated (it used to be reused: the fine-tune never scored),
    # and when the fine-tune is trained anew, its old scores are not its scores.
    from crescent.stages import finetune

    monkeypatch.setattr("crescent.infra.models.resolve_model", lambda name: f"/resolved/{name}")
    scored = []

    def fake_score(label, label_dir):
        scored.append(label)
        write_json(label_dir / evaluate.RESULTS, _raw(0.7, 0.5))

    monkeypatch.setattr(evaluate, "_score_in_subprocess", fake_score)
    cfg = compose("engine=hf", f"eval.data_dir={DATA}", "eval.tasks=[crescent_gsm8k_gold_bpb]")
    evaluate.run(cfg, tmp_path)
    assert scored == ["base"] and evaluate.outdated(cfg, tmp_path) is None
    model = tmp_path / "finetune" / "model"
    write_json(model / "config.json", {"trained": 1})
    write_json(model.parent / finetune.MODEL_RECORD, cache.fingerprints(model))
    assert evaluate.outdated(cfg, tmp_path).startswith("finetuned (")
    evaluate.run(cfg, tmp_path)
    assert scored == ["base", "finetuned"] and evaluate.outdated(cfg, tmp_path) is None
    write_json(model / "config.json", {"trained": 2})  # trained anew
    write_json(model.parent / finetune.MODEL_RECORD, cache.fingerprints(model))
    assert evaluate.outdated(cfg, tmp_path).startswith("finetuned (")


def test_a_nan_or_missing_score_is_an_error_naming_model_and_task(tmp_path):
    nan = {"results": {"t": {"bits_per_byte,none": float("nan"),
                             "bits_per_byte_stderr,none": float("nan")}}}
    with pytest.raises(CrescentError, match=r"^evaluate: finetuned scored NaN bits_per_byte on t "
                                            r"\(r.json\): are its weights damaged\?$"):
        evaluate.check_scores("finetuned", nan, ["t"], Path("r.json"))
    with pytest.raises(CrescentError, match=r"^evaluate: base has no score on u \(r.json\)$"):
        evaluate.check_scores("base", nan, ["u"], Path("r.json"))
    fine = {"results": {"t": {"exact_match,none": 0.5, "exact_match_stderr,none": float("nan")}}}
    evaluate.check_scores("base", fine, ["t"], Path("r.json"))  # one document: no stderr


def test_failed_child_error_reaches_the_user(tmp_path):
    # A spec the child rejects before loading any model: its one-line error becomes ours.
    spec = {"runs": [{"env": {}, "model": "hf", "tasks": ["no_such_task"]}],
            "tasks": ["no_such_task"], "include_defaults": False,
            "include_path": str(evaluate.TASKS_SRC), "out_dir": str(tmp_path)}
    write_json(tmp_path / evaluate.SPEC, spec)
    with pytest.raises(CrescentError, match=r"^eval.tasks: unknown lm-eval task\(s\): no_such_task$"):
        evaluate._score_in_subprocess("base", tmp_path)


# ------------------------------------------------------------------ end to end (slow)


def _lm_eval_outputs(output_path: Path, task: str) -> tuple[dict, list[dict]]:
    results = read_json(next(output_path.rglob("results_*.json")))
    samples_file = next(output_path.rglob(f"samples_{task}_*.jsonl"))
    return results, [json.loads(line) for line in samples_file.read_text().splitlines()]


def _by_doc(samples: list[dict]) -> dict[tuple, dict]:
    return {(s["doc_id"], s["filter"]): s for s in samples}  # one row per doc and filter


@pytest.mark.slow
@pytest.mark.long
def test_stage_and_lm_eval_command_line_give_identical_scores(cli, tmp_path):
    import torch

    from crescent.infra.models import resolve_model
    from crescent.infra.precision import resolve_dtype

    base = resolve_model("smollm2-135m-instruct")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    task, limit, shots = "crescent_gsm8k", 4, 5  # 4 generations each way: minutes on hf
    started = time.time()
    run = cli("stages=[evaluate]", "engine=hf", f"eval.tasks=[{task}]", f"eval.limit={limit}",
              f"eval.num_fewshot={shots}", f"eval.data_dir={DATA}", "hydra.run.dir=run",
              "logger=none", timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    stage_s = time.time() - started
    ours = tmp_path / "run" / "evaluate"

    # The stock command line on the shipped YAMLs (data paths relative to the project root).
    started = time.time()
    subprocess.run(
        [str(LM_EVAL), "--model", "hf",
         "--model_args", f"pretrained={base},dtype={resolve_dtype('auto')},max_length=2048",
         "--tasks", task, "--include_path", "crescent/tasks", "--num_fewshot", str(shots),
         "--limit", str(limit), "--batch_size", "32", "--device", device,
         "--apply_chat_template", "--fewshot_as_multiturn",
         "--log_samples", "--output_path", str(tmp_path / "cli")],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=1800,
    )
    cli_s = time.time() - started
    theirs, their_samples = _lm_eval_outputs(tmp_path / "cli", task)
    mine = read_json(ours / "base" / "results.json")
    my_samples = [json.loads(line) for line in
                  (ours / "base" / f"samples_{task}.jsonl").read_text().splitlines()]

    assert mine["results"][task] == theirs["results"][task]
    assert mine["n-shot"][task] == theirs["n-shot"][task] == shots
    assert len({s["doc_id"] for s in my_samples}) == limit
    assert _by_doc(my_samples) == _by_doc(their_samples)  # same prompts, generations, scores
    metrics = read_json(ours / "metrics.json")["base"][task]
    assert metrics["exact_match,strict-match"] == theirs["results"][task]["exact_match,strict-match"]
    print(f"\nstage {stage_s:.0f} s, lm_eval {cli_s:.0f} s, {task} limit {limit}: {metrics}")


def _gold_sft(path: Path, n: int) -> None:
    """GSM8K *train* gold solutions as an sft.jsonl in the bpb task's chat form (the bare
    question, the solution ending "The answer is: N"): the shortest `n` of the first 400,
    which keeps training under a minute on a 2-core CPU."""
    with open(DATA / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(400)]
    rows = sorted(rows, key=lambda r: len(r["question"]) + len(r["answer"]))[:n]
    _write_jsonl(path, [{"messages": [
        {"role": "user", "content": r["question"]},
        {"role": "assistant", "content": task_utils.gold_solution(r["answer"])},
    ]} for r in rows])


@pytest.mark.slow
@pytest.mark.long
def test_finetuning_on_gold_solutions_lowers_bits_per_byte(cli, tmp_path):
    _gold_sft(tmp_path / "sft.jsonl", 6)
    # finetune then evaluate in one run: `base` and this run's `finetuned`, on the test set.
    overrides = (
        "stages=[finetune,evaluate]", f"finetune.input={tmp_path / 'sft.jsonl'}",
        "finetune.max_steps=3", "finetune.batch_size=2", "finetune.lr=1e-4",
        "finetune.val_fraction=0", "finetune.scheduler=constant", "finetune.warmup_ratio=0",
        "engine=hf", "eval.tasks=[crescent_gsm8k_gold_bpb]", "eval.limit=12",
        f"eval.data_dir={DATA}", "hydra.run.dir=run", "logger=none",
    )
    started = time.time()
    run = cli(*overrides)
    assert run.returncode == 0, run.stderr[-3000:]
    elapsed = time.time() - started
    out = tmp_path / "run" / "evaluate"
    metrics = read_json(out / "metrics.json")
    base = metrics["base"]["crescent_gsm8k_gold_bpb"]["bits_per_byte"]
    tuned = metrics["finetuned"]["crescent_gsm8k_gold_bpb"]["bits_per_byte"]
    assert math.isfinite(base) and 0 < tuned < base
    stats = read_json(out / "stats.json")
    assert stats["delta"]["finetuned"]["crescent_gsm8k_gold_bpb"]["bits_per_byte"] == (
        pytest.approx(tuned - base))
    assert stats["n_samples"] == {"crescent_gsm8k_gold_bpb": 12}
    assert "| crescent_gsm8k_gold_bpb | bits_per_byte ↓ |" in run.stdout
    for label in ("base", "finetuned"):
        samples = (out / label / "samples_crescent_gsm8k_gold_bpb.jsonl").read_text().splitlines()
        assert len(samples) == 12

    # Killed after scoring both models, before DONE: the re-run scores nothing again.
    (out / "DONE").unlink()
    again = cli(*overrides)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already scored") == 2
    assert read_json(out / "metrics.json") == metrics
    print(f"\nfinetune + evaluate {elapsed:.0f} s: bits per byte base {base:.4f}, "
          f"fine-tuned {tuned:.4f}")


@pytest.fixture
def pipeline_scoring(monkeypatch) -> list[str]:
    """The evaluate stage run by the runner, its lm-eval child replaced (the scoring itself
    runs lm-eval in the slow tests): the labels it scored, in order."""
    from crescent import pipeline

    monkeypatch.setattr("crescent.infra.models.resolve_model", lambda name: f"/resolved/{name}")
    monkeypatch.setattr(pipeline, "provenance", lambda cfg: {})
    scored = []

    def fake_score(label, label_dir):
        scored.append(label)
        write_json(label_dir / evaluate.RESULTS, _raw(0.9 if label == "base" else 0.7, 0.5))

    monkeypatch.setattr(evaluate, "_score_in_subprocess", fake_score)
    return scored


def test_base_is_scored_once_for_every_point_of_a_sweep(tmp_path, pipeline_scoring):
    # Two learning rates: two evaluate cache entries (their fine-tunes differ), one base entry.
    from crescent import pipeline
    from crescent.infra.tracking import Tracker

    scored = pipeline_scoring
    for run, lr in (("lr1", "1e-5"), ("lr2", "1e-4")):
        write_json(tmp_path / run / "finetune/model/config.json", {})
        cfg = compose("engine=hf", f"eval.data_dir={DATA}", "stages=[evaluate]",
                   f"cache_dir={tmp_path / 'cache'}", f"finetune.lr={lr}")
        pipeline.run_pipeline(cfg, tmp_path / run, Tracker())
    assert scored == ["base", "finetuned", "finetuned"]
    first, second = (read_json(tmp_path / run / "evaluate/stats.json") for run in ("lr1", "lr2"))
    shared = (tmp_path / "lr1/evaluate/base").resolve()
    assert shared.parent.name == "evaluate_base" and "base" in first["score_seconds"]
    assert (tmp_path / "lr2/evaluate/base").resolve() == shared
    assert second["reused_scores"] == {"base": str(shared)} and "base" not in second["score_seconds"]
    assert (tmp_path / "lr1/evaluate").resolve() != (tmp_path / "lr2/evaluate").resolve()
    assert read_json(shared / "cache_key.json").keys() == {"student", "engine", "eval",
                                                            "benchmarks", "version"}
    assert read_json(tmp_path / "lr2/evaluate/metrics.json")["base"] == \
        read_json(tmp_path / "lr1/evaluate/metrics.json")["base"]


def test_base_scores_loaded_in_another_precision_are_scored_again(tmp_path, monkeypatch,
                                                                  pipeline_scoring):
    # The base's entry is keyed by student.dtype=auto: bfloat16 on a CPU with bfloat16 units,
    # float32 here. Scores made there are not this machine's base: a contrast of a float32
    # fine-tune against them would mix precisions.
    from crescent import pipeline
    from crescent.infra.tracking import Tracker

    monkeypatch.setattr(evaluate, "resolve_dtype", lambda dtype: "float32")
    scored = pipeline_scoring
    cfg = compose("engine=hf", f"eval.data_dir={DATA}", "stages=[evaluate]",
                  f"cache_dir={tmp_path / 'cache'}")
    write_json(tmp_path / "a/finetune/model/config.json", {})
    pipeline.run_pipeline(cfg, tmp_path / "a", Tracker())
    base = tmp_path / "a/evaluate/base"
    spec = read_json(base / evaluate.SPEC)
    assert [run["model_args"]["dtype"] for run in spec["runs"]] == ["float32"]
    pipeline.run_pipeline(cfg, tmp_path / "a", Tracker())
    assert scored == ["base", "finetuned"]  # the same precision: reused
    spec["runs"][0]["model_args"]["dtype"] = "bfloat16"  # as a machine with bf16 units made it
    write_json(base / evaluate.SPEC, spec)
    cache.mark_done(base.resolve())  # sealed there, intact
    pipeline.run_pipeline(cfg, tmp_path / "a", Tracker())
    assert scored == ["base", "finetuned", "base"]
    assert read_json(base / evaluate.SPEC)["runs"][0]["model_args"]["dtype"] == "float32"


@pytest.mark.slow
@pytest.mark.long  # two lm-eval runs
def test_forward_pass_bits_per_byte_agree_with_vllm_prompt_logprobs(cli, tmp_path):
    """The stage's bits per byte (crescent-hf on CPU, the vllm engine's choice for
    scoring given text) equal lm-eval's vLLM numbers, which the studies used before, on the
    same documents to 1e-4."""
    from crescent.config import EngineConfig
    from crescent.engines.vllm_offline import VLLMEngine, on_cpu

    task, limit = "crescent_gsm8k_gold_bpb", 12
    run = cli("stages=[evaluate]", f"eval.tasks=[{task}]", f"eval.limit={limit}",
              f"eval.data_dir={DATA}", "hydra.run.dir=run", "logger=none", "cache_dir=null",
              timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    ours = tmp_path / "run" / "evaluate" / "base"
    spec = read_json(ours / evaluate.SPEC)
    assert [r["model"] for r in spec["runs"]] == ["crescent-hf" if on_cpu() else "vllm"]
    pretrained = spec["runs"][0]["model_args"]["pretrained"]
    vllm = VLLMEngine.lm_eval_model(EngineConfig(), pretrained, "float32")
    spec["runs"] = [scoring.run_of(vllm, [task])]
    spec["out_dir"] = str(tmp_path / "vllm")
    write_json(tmp_path / "vllm" / evaluate.SPEC, spec)
    evaluate._score_in_subprocess("vllm", tmp_path / "vllm")

    def per_doc(label_dir: Path) -> dict[int, float]:
        rows = (label_dir / f"samples_{task}.jsonl").read_text().splitlines()
        return {r["doc_id"]: r["bits_per_byte"][0] for r in map(json.loads, rows)}

    mine, theirs = per_doc(ours), per_doc(tmp_path / "vllm")
    assert sorted(mine) == sorted(theirs) == list(range(limit))
    assert max(abs(mine[d] - theirs[d]) for d in mine) < 1e-3  # log-probs, nats per document
    bpb = {label: read_json(d / evaluate.RESULTS)["results"][task]["bits_per_byte,none"]
           for label, d in (("hf", ours), ("vllm", tmp_path / "vllm"))}
    assert abs(bpb["hf"] - bpb["vllm"]) < 1e-4, bpb
    print(f"\nbits per byte on {limit} documents: {bpb}")


def test_answer_lengths_count_the_models_tokens_and_the_answers_cut_at_the_cap(tmp_path):
    from transformers import AutoTokenizer

    from crescent.infra.models import resolve_model
    from crescent.methods.metrics import answer_lengths

    model = resolve_model("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model)
    short, long = "The answer is: 4", " ".join(["step"] * 100)
    cap = len(tokenizer(long, add_special_tokens=False)["input_ids"])  # the long one hits it
    (tmp_path / "samples_gsm.jsonl").write_text("".join(
        json.dumps({"doc_id": i, "resps": [[text]]}) + "\n"
        for i, text in enumerate([short, long, short, short])))
    results = {"configs": {"gsm": {"output_type": "generate_until",
                                   "generation_kwargs": {"max_gen_toks": cap}},
                           "bpb": {"output_type": "loglikelihood_rolling"}}}
    lengths = answer_lengths(tmp_path, results, model)
    n_short = len(tokenizer(short, add_special_tokens=False)["input_ids"])
    assert lengths == {"gsm": {"answers": 4, "cap": cap, "cut_at_cap": 0.25,
                               "mean_tokens": round((3 * n_short + cap) / 4, 1)}}


def test_humaneval_runs_every_canonical_solution_to_a_pass_in_the_sandbox():
    # The harness and the sandbox together: all 164 reference solutions pass their tests, a
    # wrong body fails, and a completion that runs forever fails within the time limit.
    from crescent.tasks.code import humaneval, humaneval_results

    problems = humaneval()["test"]
    assert len(problems) == 164
    passed = [humaneval_results(doc, [doc["canonical_solution"] + "```\nsome prose"])["pass_at_1"]
              for doc in problems]
    assert sum(passed) == 164
    assert humaneval_results(problems[0], ["    return 42\n"]) == {"pass_at_1": 0.0}
    started = time.time()
    assert humaneval_results(problems[1], ["    while True:\n        pass\n"])["pass_at_1"] == 0.0
    assert time.time() - started < 15


@pytest.mark.slow
def test_humaneval_scores_the_embedded_model_through_the_stage(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "crescent", "stages=[evaluate]", "engine=hf", "logger=none",
         f"eval.data_dir={DATA}", "eval.tasks=[crescent_humaneval]", "eval.limit=2",
         "hydra.run.dir=run", "cache_dir=null"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1200, check=False,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_json(tmp_path / "run" / "evaluate" / "metrics.json")
    assert 0 <= metrics["base"]["crescent_humaneval"]["pass_at_1"] <= 1
    samples = (tmp_path / "run" / "evaluate" / "base" / "samples_crescent_humaneval.jsonl")
    assert len(samples.read_text().splitlines()) == 2


def _saved_answers(label_dir: Path, answers: dict) -> Path:
    """An answer cache as lm-eval's `use_cache` writes it (sqlitedict, one row per request)."""
    from sqlitedict import SqliteDict

    path = label_dir / f"{scoring.REQUESTS}_rank0.db"
    with SqliteDict(str(path), autocommit=True) as db:
        db.update(answers)
    return path


def test_a_stopped_scoring_keeps_its_answers_for_the_same_model_only(tmp_path):
    spec = {"label": "base", "model_identity": "/m/a", "save_every": 512,
            "runs": [{"model": "vllm", "model_args": {"pretrained": "/m/a"}, "batch_size": 8}]}
    write_json(tmp_path / evaluate.SPEC, spec)
    saved = _saved_answers(tmp_path, {"h1": "The answer is 3.", "h2": "The answer is 4."})
    evaluate._keep_saved_answers(tmp_path, spec)
    assert saved.is_file()
    # Another model under the same label (a fine-tune trained anew): its answers are not ours.
    evaluate._keep_saved_answers(tmp_path, {**spec, "model_identity": "/m/b"})
    assert not saved.is_file()
    # Loaded otherwise (another batch, another dtype): answers of another measurement.
    _saved_answers(tmp_path, {"h1": "x"})
    evaluate._keep_saved_answers(tmp_path, {**spec, "runs": [{**spec["runs"][0], "batch_size": 4}]})
    assert not saved.is_file()


@pytest.mark.slow
def test_a_killed_scoring_resumes_from_the_answers_it_saved(tmp_path):
    # Killed (SIGKILL, the whole process group) once an answer is saved; one saved answer is
    # then edited: the second scoring reads the saved answers (the edit shows in its samples)
    # and generates only the rest.
    import os
    import signal

    from sqlitedict import SqliteDict

    command = [sys.executable, "-m", "crescent", "stages=[evaluate]", "engine=hf", "logger=none",
               f"eval.data_dir={DATA}", "eval.tasks=[crescent_gsm8k_cot_zeroshot]",
               "eval.limit=3", "eval.save_every=1", "hydra.run.dir=run", "cache_dir=null"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    label_dir = tmp_path / "run" / "evaluate" / "base"
    db = label_dir / f"{scoring.REQUESTS}_rank0.db"

    def saved() -> dict:
        if not db.is_file():
            return {}
        with SqliteDict(str(db), flag="r") as answers:
            return dict(answers)

    first = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while not saved() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    answers = saved()
    assert 1 <= len(answers) < 3 and not (label_dir / evaluate.RESULTS).exists()
    key = next(iter(answers))
    with SqliteDict(str(db), autocommit=True) as edit:
        edit[key] = "Edited while stopped. The answer is: 123456789."
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=1200, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"scoring: {len(answers)} of 3 generate_until answers saved" in log
    samples = (label_dir / "samples_crescent_gsm8k_cot_zeroshot.jsonl").read_text()
    assert {json.loads(row)["doc_id"] for row in samples.splitlines()} == {0, 1, 2}
    assert "123456789" in samples
    assert len(saved()) == 3
