"""Evaluate stage: lm-evaluation-harness scores the base and the fine-tuned model -> metrics.json.

`<run dir>/evaluate/` holds
  tasks/                        Crescent's task YAMLs, data_files pointing into the benchmark
                                data dir (`eval.data_dir`, else $CRESCENT_DATA, else the cache)
  <label>/spec.json             what the child process was asked to score
  <label>/command.txt           the same evaluation as an `lm_eval` command line
  <label>/samples_<task>.jsonl  lm-eval's per-sample log
  <label>/results.json          lm-eval's raw results, written last: its presence means "scored"
  metrics.json                  {label: {task: {metric: value}}}
  table.md                      the comparison printed at the end, with deltas against `base`

Each model is scored in its own process (`python -m crescent.stages.evaluate <spec.json>`): vLLM does
not reliably free memory in-process, and a label already scored survives a crash of the next.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from crescent.infra.io import CrescentError, atomic_write_text, read_json, write_json

logger = logging.getLogger(__name__)

TASKS_SRC = Path(__file__).resolve().parents[1] / "tasks"
SHIPPED_DATA_DIR = "../shared/data"  # where the shipped YAMLs' data_files point
RESULTS = "results.json"
SPEC = "spec.json"
ERROR = "error.txt"
BASE, FINETUNED = "base", "finetuned"

_DATA_FILE = re.compile(r'"' + re.escape(SHIPPED_DATA_DIR) + r'/([^"]+)"')
_TASK_NAME = re.compile(r"^task:\s*(\S+)\s*$", re.MULTILINE)


def preflight(cfg: DictConfig) -> None:
    """The benchmark files the requested offline tasks read must be there."""
    import tempfile

    from crescent.infra.data import data_dir

    with tempfile.TemporaryDirectory() as tmp:
        check_data(list(cfg.eval.tasks), render_tasks(data_dir(cfg.eval.data_dir), Path(tmp))[1])


def run(cfg: DictConfig, run_dir: Path) -> Path:
    out = Path(run_dir) / "evaluate"
    tasks = list(cfg.eval.tasks)
    if not tasks:
        raise CrescentError("eval.tasks: no tasks given")
    from crescent.infra.data import data_dir

    tasks_dir, needs = render_tasks(data_dir(cfg.eval.data_dir), out / "tasks")
    check_data(tasks, needs)
    models = models_to_score(cfg, Path(run_dir))

    seconds, reused = {}, {}
    for label, model in models.items():
        lock = _link_shared_base(cfg, out) if label == BASE and not cfg.eval.models else None
        try:
            took = _score_label(cfg, label, model, tasks, tasks_dir, out / label)
        finally:
            if lock is not None:
                lock.release()
        if took is None:
            reused[label] = str((out / label).resolve())
        else:
            seconds[label] = took

    raw = {label: read_json(out / label / RESULTS) for label in models}
    metrics = {label: metrics_of(results) for label, results in raw.items()}
    write_json(out / "metrics.json", metrics)
    lower = lower_is_better(raw)
    table = delta_table(metrics, tasks, lower)
    logger.info(table)
    atomic_write_text(out / "table.md", table)
    stats = headline_stats(metrics, tasks, raw, models, seconds)
    stats["reused_scores"] = reused  # label -> where its scores were found already
    write_json(out / "stats.json", stats)
    return out


def _score_label(cfg: DictConfig, label: str, model: str, tasks: list[str], tasks_dir: Path,
                 label_dir: Path) -> float | None:
    """Score one model in a child process unless `label_dir` holds its scores; the seconds
    it took, or None when they were there."""
    if _scored(label_dir, tasks):
        logger.info("crescent: evaluate: %s already scored in %s, skipped", label,
                    label_dir.resolve())
        return None
    label_dir.mkdir(parents=True, exist_ok=True)
    (label_dir / RESULTS).unlink(missing_ok=True)  # scored on other tasks: redo it whole
    spec = lm_eval_spec(cfg, label, model, tasks, tasks_dir, label_dir)
    write_json(label_dir / SPEC, spec)
    atomic_write_text(label_dir / "command.txt", lm_eval_command(spec) + "\n")
    logger.info("crescent: evaluate: scoring %s (%s) on %s", label, model, ", ".join(tasks))
    started = time.time()
    _score_in_subprocess(label, label_dir)
    return round(time.time() - started, 2)


def _link_shared_base(cfg: DictConfig, out: Path):
    """With the cache on, `evaluate/base` links a cache entry keyed by (student, engine, eval)
    alone: every sweep point that fine-tunes the same student reads one scoring of it.
    Returns the entry's lock, held; None when the cache is off."""
    from crescent.pipeline import KEY_FILE, entry_dir, link, locked, stage_key

    entry = entry_dir(cfg, "evaluate_base") if out.is_symlink() else None
    here = out.resolve() / BASE
    if entry is None or (here.is_dir() and not here.is_symlink()):  # scored here before
        return None
    entry.mkdir(parents=True, exist_ok=True)
    write_json(entry / KEY_FILE, stage_key(cfg, "evaluate_base")[1])
    link(here, entry)
    return locked(entry, "evaluate: base")


# ------------------------------------------------------------------ tasks and data


def render_tasks(data_dir: str | Path, dest: Path) -> tuple[Path, dict[str, list[Path]]]:
    """Copy the shipped task YAMLs (and their utils.py) to `dest`, data_files rewritten to
    absolute paths under `data_dir`. Returns `dest` and the data files each task reads."""
    data_dir = Path(data_dir).expanduser().absolute()
    dest.mkdir(parents=True, exist_ok=True)
    needs: dict[str, list[Path]] = {}
    for src in sorted(TASKS_SRC.glob("*.yaml")):
        text = src.read_text(encoding="utf-8")
        files = [data_dir / rel for rel in _DATA_FILE.findall(text)]
        # A JSON string is a valid YAML double-quoted scalar, whatever the path holds.
        text = _DATA_FILE.sub(lambda m: json.dumps(str(data_dir / m.group(1))), text)
        name = _TASK_NAME.search(text)
        if name:
            needs[name.group(1)] = files
        atomic_write_text(dest / src.name, text)
    shutil.copyfile(TASKS_SRC / "utils.py", dest / "utils.py")
    return dest, needs


def check_data(tasks: list[str], needs: dict[str, list[Path]]) -> None:
    from crescent.infra.data import missing

    for task in tasks:
        for path in needs.get(task, []):
            if not path.is_file():
                raise CrescentError(f"eval.tasks: {task} reads {missing(path)}")


def uses_stock_tasks(tasks: list[str], tasks_dir: Path) -> bool:
    """Whether lm-eval's own task index is needed (indexing it costs ~20 s on a small CPU)."""
    ours = set()
    for path in tasks_dir.glob("*.yaml"):
        if match := _TASK_NAME.search(path.read_text(encoding="utf-8")):
            ours.add(match.group(1))
    return not set(tasks) <= ours


# ------------------------------------------------------------------ models


def models_to_score(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """label -> loadable model path: `eval.models` if given, else `base` (the student, the
    model that fine-tuning starts from) and `finetuned` (this run's finetune/model, if any)."""
    from crescent.infra.models import resolve_model

    if cfg.eval.models:
        models = {}
        for label, name in cfg.eval.models.items():
            try:
                models[str(label)] = resolve_model(str(name))
            except CrescentError as e:
                raise CrescentError(f"eval.models.{label}: {e}") from None
        return models
    models = {BASE: resolve_model(cfg.student.name)}
    finetuned = run_dir / "finetune" / "model"
    if (finetuned / "config.json").is_file():
        models[FINETUNED] = str(finetuned.resolve())
    else:
        logger.info(f"crescent: evaluate: no model in {finetuned}: scoring base only")
    return models


def lm_eval_spec(
    cfg: DictConfig, label: str, model: str, tasks: list[str], tasks_dir: Path, label_dir: Path
) -> dict:
    """Everything the child process passes to `lm_eval.simple_evaluate`, from the engine config."""
    from crescent.infra.engines import resolve_dtype

    engine = cfg.engine
    # A base model loaded by name keeps the student's revision; local dirs have none.
    revision = cfg.student.revision if label == BASE and not cfg.eval.models else None
    dtype = resolve_dtype(cfg.student.dtype)
    env: dict[str, str] = {}
    device = None
    if engine.name == "hf":
        import torch

        # lm-eval's hf model type assumes CUDA unless told otherwise.
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model_type, batch_size = "hf", engine.batch_size
        model_args = {"pretrained": model, "dtype": dtype, "max_length": engine.max_model_len}
    elif engine.name in ("vllm", "ray_vllm"):
        import torch

        # vLLM schedules every request itself; lm-eval's "auto" hands them all over at once.
        model_type, batch_size = "vllm", "auto"
        model_args = {
            "pretrained": model,
            "dtype": dtype,
            "max_model_len": engine.max_model_len,
            "enforce_eager": engine.enforce_eager,
            "tensor_parallel_size": engine.tensor_parallel_size,
            "gpu_memory_utilization": engine.gpu_memory_utilization,
        }
        if engine.data_parallel_size > 1:  # lm-eval runs the replicas on Ray itself
            model_args["data_parallel_size"] = engine.data_parallel_size
        if not torch.cuda.is_available():
            # The same CPU settings as crescent.infra.engines.VLLMEngine (see the reasons there):
            # a bounded KV cache, one process, the single-process executor.
            env = {
                "VLLM_CPU_KVCACHE_SPACE": str(engine.cpu_kvcache_gib),
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            }
            model_args["distributed_executor_backend"] = "uni"
    else:  # served engines generate elsewhere; lm-eval here loads each model itself
        raise CrescentError(
            f"engine.name={engine.name!r}: the evaluate stage runs lm-eval's vllm or hf model "
            "type; run it with engine=vllm, ray_vllm or hf"
        )
    if revision:
        model_args["revision"] = revision
    return {
        "label": label,
        "model": model_type,
        "model_args": model_args,
        "tasks": tasks,
        "include_path": str(tasks_dir),
        "include_defaults": uses_stock_tasks(tasks, tasks_dir),
        "num_fewshot": cfg.eval.num_fewshot,
        "limits": task_limits(cfg, tasks),
        "batch_size": batch_size,
        "device": device,
        "apply_chat_template": cfg.eval.apply_chat_template,
        "fewshot_as_multiturn": cfg.eval.fewshot_as_multiturn and cfg.eval.apply_chat_template,
        "env": env,
        "out_dir": str(label_dir),
    }


def task_limits(cfg: DictConfig, tasks: list[str]) -> dict[str, int | None]:
    """Documents per task: `eval.limits` where it names the task, else `eval.limit` (None: all)."""
    return {task: cfg.eval.limits.get(task, cfg.eval.limit) for task in tasks}


def _one_limit(limits: dict[str, int | None]) -> int | None:
    """lm-eval's `limit` when every task has the same one (else None: `_first_docs` decides)."""
    values = set(limits.values())
    return values.pop() if len(values) == 1 else None


def _first_docs(limits: dict[str, int | None], manager=None) -> dict[str, list[int]] | None:
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


def lm_eval_command(spec: dict) -> str:
    """The `lm_eval` command line that runs the same evaluation (written beside the results)."""
    args = ",".join(f"{k}={v}" for k, v in spec["model_args"].items())
    parts = [
        *(f"{k}={v}" for k, v in spec["env"].items()),
        "lm_eval", "--model", spec["model"], "--model_args", args,
        "--tasks", ",".join(spec["tasks"]), "--include_path", spec["include_path"],
        "--batch_size", str(spec["batch_size"]),
    ]
    if spec["device"]:
        parts += ["--device", spec["device"]]
    if spec["num_fewshot"] is not None:
        parts += ["--num_fewshot", str(spec["num_fewshot"])]
    limit, samples = _one_limit(spec["limits"]), _first_docs(spec["limits"])
    if samples:
        parts += ["--samples", json.dumps(samples)]
    elif limit is not None:
        parts += ["--limit", str(limit)]
    if spec["apply_chat_template"]:
        parts.append("--apply_chat_template")
        if not spec["fewshot_as_multiturn"]:
            parts += ["--fewshot_as_multiturn", "false"]
    parts += ["--log_samples", "--output_path", spec["out_dir"]]
    return " ".join(shlex.quote(p) for p in parts)


def _scored(label_dir: Path, tasks: list[str]) -> bool:
    path = label_dir / RESULTS
    if not path.is_file():
        return False
    results = read_json(path)
    return set(tasks) <= set(results.get("results", {})) | set(results.get("groups", {}))


def _score_in_subprocess(label: str, label_dir: Path) -> None:
    (label_dir / ERROR).unlink(missing_ok=True)
    env = dict(os.environ)
    # The child imports this package from where the parent did, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "crescent.stages.evaluate", str(label_dir / SPEC)],
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        error = label_dir / ERROR
        if error.is_file():
            raise CrescentError(error.read_text(encoding="utf-8").strip())
        raise CrescentError(
            f"evaluate: scoring {label!r} failed with exit code {proc.returncode} (log above)"
        )
    if not (label_dir / RESULTS).is_file():
        raise CrescentError(f"evaluate: scoring {label!r} wrote no {label_dir / RESULTS}")


# ------------------------------------------------------------------ the child process


def score(spec: dict) -> None:
    """Run lm-eval for one model; write per-sample logs, then the raw results (last)."""
    for key, value in spec["env"].items():
        os.environ.setdefault(key, value)
    if spec["model"] == "vllm":
        from crescent.infra.engines import answer_vllm_version_lookup

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
    limit, samples = _one_limit(spec["limits"]), _first_docs(spec["limits"], manager)
    lm_eval.evaluator.get_git_commit_hash = _git_hash
    if not logs.verbose():
        _one_bar(spec["model"])
    results = lm_eval.simple_evaluate(
        model=spec["model"],
        model_args=spec["model_args"],
        tasks=spec["tasks"],
        num_fewshot=spec["num_fewshot"],
        batch_size=spec["batch_size"],
        device=spec["device"],
        limit=limit,
        samples=samples,
        log_samples=True,
        apply_chat_template=spec["apply_chat_template"],
        fewshot_as_multiturn=spec["fewshot_as_multiturn"],
        task_manager=manager,
    )
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


# The bar that follows the scoring itself: vLLM's over the requests lm-eval hands it all at
# once, or lm-eval's over its hf batches.
_SCORING_BARS = {"vllm": ("Processed prompts",),
                 "hf": ("Running loglikelihood requests", "Running generate_until requests")}


def _one_bar(model_type: str) -> None:
    """lm-eval and vLLM draw up to seven bars per model (weights, requests built, tokenized,
    rendered, ...), nested; all but the scoring bar are turned off in this child process."""
    from tqdm import std

    keep, init = _SCORING_BARS.get(model_type, ()), std.tqdm.__init__

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
        print("usage: python -m crescent.stages.evaluate <spec.json>", file=sys.stderr)
        sys.exit(2)
    _die_with_parent()
    from crescent.infra import logs

    logs.setup(logs.verbose())  # the parent's choice, passed down in the environment
    spec_path = Path(argv[0])
    spec = read_json(spec_path)
    try:
        score(spec)
    except CrescentError as e:
        atomic_write_text(spec_path.parent / ERROR, f"{e}\n")
        print(f"crescent: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


# ------------------------------------------------------------------ metrics and the table


def metrics_of(results: dict) -> dict[str, dict[str, float]]:
    """lm-eval's raw results -> {task: {metric: value}}: the `metric,filter` numbers, stderrs
    kept, the `,none` filter suffix dropped (`bits_per_byte,none` -> `bits_per_byte`)."""
    out: dict[str, dict[str, float]] = {}
    for task, values in {**results.get("results", {}), **results.get("groups", {})}.items():
        metrics = {}
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # name, alias, sample_len; "N/A" stderrs
            if isinstance(value, float) and math.isnan(value):
                continue
            metrics[key.removesuffix(",none")] = value
        if metrics:
            out[task] = metrics
    return out


def lower_is_better(raw: dict[str, dict]) -> set[tuple[str, str]]:
    """(task, metric) pairs whose `higher_is_better` is false in any model's results."""
    lower = set()
    for results in raw.values():
        for task, flags in results.get("higher_is_better", {}).items():
            lower |= {(task, m) for m, higher in flags.items() if higher is False}
    return lower


def _base_metric(name: str) -> str:
    return name.split(",", 1)[0]


def headline_pairs(metrics: dict, tasks: list[str]) -> list[tuple[str, str]]:
    """(task, metric) rows of the table: the requested tasks' metrics, no stderrs, in order."""
    rows: list[tuple[str, str]] = []
    for task in tasks:
        names: list[str] = []
        for per_task in metrics.values():
            for name in per_task.get(task, {}):
                if "_stderr" not in name and name not in names:
                    names.append(name)
        rows += [(task, name) for name in names]
    return rows


def reference_label(metrics: dict) -> str:
    return BASE if BASE in metrics else next(iter(metrics))


def deltas(metrics: dict, tasks: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """{label: {task: {metric: label's value - reference's value}}} for every other label."""
    ref = reference_label(metrics)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, per_task in metrics.items():
        if label == ref:
            continue
        for task, name in headline_pairs(metrics, tasks):
            a = per_task.get(task, {}).get(name)
            b = metrics[ref].get(task, {}).get(name)
            if a is not None and b is not None:
                out.setdefault(label, {}).setdefault(task, {})[name] = a - b
    return out


def delta_table(metrics: dict, tasks: list[str], lower: set[tuple[str, str]] = frozenset()) -> str:
    """A Markdown table: one row per (task, metric), one column per model, then the deltas
    against the reference model (`base`); arrows say which direction is better."""
    labels = list(metrics)
    ref = reference_label(metrics)
    others = [label for label in labels if label != ref]
    diff = {label: {} for label in others} | deltas(metrics, tasks)
    header = ["task", "metric", *labels, *(f"{label} - {ref}" for label in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, name in headline_pairs(metrics, tasks):
        arrow = "↓" if (task, _base_metric(name)) in lower else "↑"
        cells = [task, f"{name} {arrow}"]
        cells += [_fmt(metrics[label].get(task, {}).get(name)) for label in labels]
        cells += [_fmt(diff[label].get(task, {}).get(name), signed=True) for label in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def headline_stats(metrics, tasks, raw, models, seconds) -> dict:
    """stats.json: the requested tasks' metrics per model and the deltas (logged to W&B as
    `evaluate/<label>/<task>/<metric>`), sample counts, model paths and scoring times."""
    pairs = headline_pairs(metrics, tasks)
    stats: dict = {}
    for label, per_task in metrics.items():
        for task, name in pairs:
            if name in per_task.get(task, {}):
                stats.setdefault(label, {}).setdefault(task, {})[name] = per_task[task][name]
    stats["delta"] = deltas(metrics, tasks)
    stats["n_samples"] = {
        task: n.get("effective")
        for results in raw.values()
        for task, n in results.get("n-samples", {}).items()
        if task in tasks
    }
    stats["models"] = models
    stats["score_seconds"] = seconds
    return stats


if __name__ == "__main__":
    main()
