"""The evaluate stage's child process: lm-evaluation-harness scores one model from a spec.json.

`python -m crescent.methods.scoring <label dir>/spec.json` runs `lm_eval.simple_evaluate` with
what the spec says (written by crescent/stages/evaluate.py), writes lm-eval's per-sample logs
(`samples_<task>.jsonl`, the shape `lm_eval --log_samples` writes) and then, last, the raw
results (`results.json`: its presence means "scored"). A CrescentError goes to `error.txt`
for the parent to print. Each model is scored in its own process: vLLM does not reliably free
memory in-process, and a label already scored survives a crash of the next.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from crescent.errors import CrescentError
from crescent.infra.io import atomic_write_text, read_json

RESULTS = "results.json"
SPEC = "spec.json"
ERROR = "error.txt"
# The answers saved as scoring goes (lm-eval's `use_cache`, which adds "_rank0.db"): a scoring
# that is stopped resumes where it was.
REQUESTS = "requests"
# lm-eval model types of Crescent's own: name -> "module:class", imported when a run uses it.
LM_EVAL_MODELS = {"crescent-hf": "crescent.engines.lm_eval_hf:ContinuationHeadLM"}


def one_limit(limits: dict[str, int | None]) -> int | None:
    """lm-eval's `limit` when every task has the same one (else None: `first_docs` decides)."""
    values = set(limits.values())
    return values.pop() if len(values) == 1 else None


def first_docs(limits: dict[str, int | None], manager=None) -> dict[str, list[int]] | None:
    """lm-eval takes one `limit` for all tasks, or the documents per task (`samples`): with
    per-task limits, each limited task's first N documents (all of them when it has fewer;
    counting them needs the tasks, from `manager`; without it, N)."""
    if len(set(limits.values())) <= 1:
        return None
    named = [task for task, n in limits.items() if n is not None]
    counted = dict.fromkeys(named, math.inf)
    if manager is not None:
        loaded = manager.load(named)["tasks"]  # leaf tasks only: a group is not among them
        counted = {name: len(loaded[name].eval_docs) for name in named if name in loaded}
        if len(counted) < len(named):
            group = next(name for name in named if name not in counted)
            raise CrescentError(f"eval.limits.{group}: a group of tasks; limit its tasks by name")
    return {task: list(range(min(limits[task], counted[task]))) for task in named}



def run_of(loaded, tasks: list[str]) -> dict:
    """A spec's run: an engine's lm-eval model (`LmEvalModel`) and the tasks it scores."""
    return {"model": loaded.type, "model_args": loaded.args, "batch_size": loaded.batch_size,
            "device": loaded.device, "env": loaded.env, "tasks": list(tasks)}


def score(spec: dict) -> None:
    """Run lm-eval for one model, once per run of the spec (`runs`: a model type and its
    tasks); write per-sample logs, then the runs' raw results merged into one (last)."""
    for run in spec["runs"]:
        for key, value in run["env"].items():
            os.environ.setdefault(key, value)
    from crescent.registry import load_plugins

    register_lm_eval_models()
    load_plugins(spec.get("plugins", []))  # a plug-in may register its own lm-eval model type
    if any(run["model"] == "vllm" for run in spec["runs"]):
        from crescent.engines.vllm_offline import answer_vllm_version_lookup

        answer_vllm_version_lookup()
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, sanitize_list

    from crescent.infra import logs

    manager = TaskManager(
        include_path=spec["include_path"], include_defaults=spec["include_defaults"]
    )
    unknown = [t for t in spec["tasks"] if t not in manager.all_tasks]
    if unknown:
        raise CrescentError(f"eval.tasks: unknown lm-eval task(s): {', '.join(unknown)}")
    lm_eval.evaluator.get_git_commit_hash = _git_hash
    lm_eval.api.model.CachingLM = functools.partial(SavingLM, every=spec["save_every"])
    if not logs.verbose():
        _one_bar({run["model"] for run in spec["runs"]})
    runs = []
    for run in spec["runs"]:
        limits = {task: spec["limits"][task] for task in run["tasks"]}
        runs.append(lm_eval.simple_evaluate(
            model=run["model"],
            model_args=run["model_args"],
            tasks=run["tasks"],
            num_fewshot=spec["num_fewshot"],
            batch_size=run["batch_size"],
            device=run["device"],
            limit=one_limit(limits),
            samples=first_docs(limits, manager),
            log_samples=True,
            apply_chat_template=spec["apply_chat_template"],
            fewshot_as_multiturn=spec["fewshot_as_multiturn"],
            task_manager=manager,
            use_cache=str(Path(spec["out_dir"]) / REQUESTS),
        ))
        gc.collect()  # the run's model, before the next one loads its own
    results = merge_results(runs)
    out = Path(spec["out_dir"])

    def dumps(obj) -> str:
        return json.dumps(obj, ensure_ascii=False, default=handle_non_serializable)

    def as_logged(sample: dict) -> dict:
        # The shape `lm_eval --log_samples` writes (EvaluationTracker.save_results_samples).
        arguments = {f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(arg)}
                     for i, arg in enumerate(sample["arguments"])}
        return {**sample, "arguments": arguments, "resps": sanitize_list(sample["resps"]),
                "filtered_resps": sanitize_list(sample["filtered_resps"]),
                "target": str(sample["target"])}

    for task, rows in results.pop("samples", {}).items():
        text = "".join(dumps(as_logged(r)) + "\n" for r in rows)
        atomic_write_text(out / f"samples_{task}.jsonl", text)
    atomic_write_text(out / RESULTS, json.dumps(
        json.loads(dumps(results)), indent=2, ensure_ascii=False) + "\n")


class SavingLM:
    """lm-eval's model with its answers saved every `every` requests (lm-eval's `CachingLM`
    saves them only once all are answered, and vLLM's partial saves use another key than the
    lookup), so a stopped scoring resumes from the last saved chunk: answers are looked up by
    lm-eval's key for the request, the missing ones asked for `every` at a time. Sampled
    requests are never saved (a repeat must draw anew), as in lm-eval."""

    REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")

    def __init__(self, lm, cache_db: str, every: int) -> None:
        from lm_eval.api.model import CacheHook
        from sqlitedict import SqliteDict

        self.lm, self.every = lm, every
        self.saved = SqliteDict(cache_db, autocommit=False)
        lm.set_cache_hook(CacheHook(None))  # the model's own partial saves: wrong keys

    def __getattr__(self, attr: str):
        if attr not in self.REQUEST_TYPES:
            return getattr(self.lm, attr)
        return functools.partial(self._answer, attr)

    def _answer(self, attr: str, requests: list) -> list:
        from lm_eval.api.model import hash_args

        keys = [None if attr == "generate_until" and r.args[1].get("do_sample") else
                hash_args(attr, r.args) for r in requests]
        answers = [self.saved.get(key) if key else None for key in keys]
        todo = [i for i, answer in enumerate(answers) if answer is None]
        if len(todo) < len(requests):
            print(f"crescent: scoring: {len(requests) - len(todo)} of {len(requests)} "
                  f"{attr} answers saved by an earlier scoring", file=sys.stderr, flush=True)
        for start in range(0, len(todo), self.every):
            chunk = todo[start:start + self.every]
            for i, answer in zip(chunk, getattr(self.lm, attr)([requests[i] for i in chunk]),
                                 strict=True):
                answers[i] = answer
                if keys[i]:
                    self.saved[keys[i]] = answer
            self.saved.commit()
        return answers


def register_lm_eval_models() -> None:
    """Make Crescent's lm-eval model types (`LM_EVAL_MODELS`) known to lm-eval, lazily."""
    import lm_eval.models  # noqa: F401  lm-eval fills its registry only while it is empty
    from lm_eval.api.registry import model_registry

    for name, target in LM_EVAL_MODELS.items():
        if name not in model_registry:
            model_registry.register(name, target=target)


def lm_eval_cli() -> None:
    """`crescent-lm-eval`: lm-eval's command line with Crescent's model types registered
    (the command lines a label's `command.txt` holds for them)."""
    from lm_eval.__main__ import cli_evaluate

    register_lm_eval_models()
    cli_evaluate()


def merge_results(runs: list[dict]) -> dict:
    """lm-eval's results of several runs as one: the per-task tables (results, configs,
    versions, n-shot, samples, ...) joined; `config` (the model and its arguments) of each
    run kept in `run_configs`, the first one's as `config`."""
    merged = dict(runs[0])
    for other in runs[1:]:
        for key, value in other.items():
            if key != "config" and isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
    if len(runs) > 1:
        merged["run_configs"] = [run.get("config") for run in runs]
    return merged


# The bar that follows the scoring itself: vLLM's over the requests lm-eval hands it all at
# once, or lm-eval's over its hf batches.
_HF_BARS = ("Running loglikelihood requests", "Running generate_until requests")
_SCORING_BARS = {"vllm": ("Processed prompts",), "hf": _HF_BARS, "crescent-hf": _HF_BARS}


def _one_bar(model_types: set[str]) -> None:
    """lm-eval and vLLM draw up to seven bars per model (weights, requests built, tokenized,
    rendered, ...), nested; all but the scoring bars are turned off in this child process."""
    from tqdm import std

    keep = tuple(bar for kind in model_types for bar in _SCORING_BARS.get(kind, ()))
    init = std.tqdm.__init__

    def init_unless_chatter(bar, *args, **kwargs):
        if not str(kwargs.get("desc") or "").startswith(keep):
            kwargs["disable"] = True
        init(bar, *args, **kwargs)

    std.tqdm.__init__ = init_unless_chatter


def _git_hash() -> str | None:
    """The results' `git_hash`, as lm-eval records it, without git's 'fatal: not a git
    repository' on the terminal when the run starts outside a checkout."""
    try:
        return subprocess.check_output(["git", "describe", "--always"],
                                       stderr=subprocess.DEVNULL).decode().strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def _die_with_parent() -> None:
    """A killed stage must not leave its scoring process (holding a model, maybe a GPU)
    running: on Linux the kernel sends this process SIGTERM when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m crescent.methods.scoring <spec.json>", file=sys.stderr)
        sys.exit(2)
    _die_with_parent()
    from crescent.infra import logs

    logs.setup(logs.verbose())  # the parent's choice, passed down in the environment
    spec_path = Path(argv[0])
    spec = read_json(spec_path)
    try:
        score(spec)
    except CrescentError as e:
        atomic_write_text(spec_path.parent / ERROR, f"{e}\n")  # the parent says it, once
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C reached the whole process group: the parent says it


if __name__ == "__main__":
    main()
