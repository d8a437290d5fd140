"""Evaluate stage: lm-evaluation-harness scores the base and the fine-tuned model -> metrics.json.

`<run dir>/evaluate/` holds
  tasks/                        Crescent's task YAMLs, their "${CRESCENT_DATA}/..." data_files
                                rendered into the benchmark data dir (`eval.data_dir`, else
                                $CRESCENT_DATA, else the cache)
  <label>/spec.json             what the child process was asked to score: its runs, each a
                                model type and the tasks it scores
  <label>/command.txt           the same evaluation as `lm_eval` command lines, one per run
  <label>/samples_<task>.jsonl  lm-eval's per-sample log
  <label>/results.json          lm-eval's raw results, written last: its presence means "scored"
  metrics.json                  {label: {task: {metric: value}}}
  table.md                      the comparison printed at the end, with deltas against `base`

Each model is scored in its own process (crescent/methods/scoring.py). The engine decides how
lm-eval loads the model (each engine's `lm_eval_model`, and `lm_eval_likelihood_model` for
tasks that score given text: on CPU vLLM hands those to `crescent-hf`, lm-eval's hf type with
the LM head at the scored positions only, crescent/engines/lm_eval_hf.py); with the cache on,
`base` is a cache entry of its own, scored once for every sweep point that fine-tunes the same
student.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from crescent import cache
from crescent.artefacts import MODEL_DIR, MODEL_RECORD
from crescent.cache import STATS, Stage
from crescent.errors import CrescentError
from crescent.infra.io import atomic_write_text, read_json, write_json
from crescent.infra.precision import resolve_dtype
from crescent.methods.metrics import (
    BASE,
    FINETUNED,
    answer_lengths,
    delta_table,
    headline_stats,
    lower_is_better,
    metrics_of,
)
from crescent.methods.scoring import (
    ERROR,
    LM_EVAL_MODELS,
    REQUESTS,
    RESULTS,
    SPEC,
    first_docs,
    one_limit,
    run_of,
)

logger = logging.getLogger(__name__)



def _local_data(cfg: DictConfig) -> dict[str, str] | None:
    """sha256 of each data file the listed tasks read besides the pinned benchmark files (a
    local benchmark's, under eval.data_dir), or None when they read none: an edited local
    benchmark is scored anew, and keys of runs on the pinned files alone stay as they were."""
    from crescent.infra import data

    root = data.data_dir(cfg.eval.data_dir).expanduser().absolute()
    needs = task_data(root, cfg.eval.include_path)
    read = {str(path.relative_to(root)) for task in cfg.eval.tasks for path in needs.get(task, [])}
    local = sorted(read - set(data.PINS))
    return data.identity(str(root), local) if local else None


# eval.data_dir is a machine path: the data's hashes stand for it (the pinned files, `data`,
# and any other file a task reads, eval.local_data); eval.include_path's task files count by
# their content.
_TASK_DIRS = {"eval.include_path": lambda cfg: [
    cache.content_hash(Path(d), "eval.include_path") for d in cfg.eval.include_path],
    "eval.local_data": _local_data}
# The base model's scores: the same for every sweep point that fine-tunes the same student.
# Version 2: generation tasks answer up to 512 tokens (lm-eval's 256 cut half the 0.5B model's
# answers), GSM8K CoT's strict match reads "The answer is: N".
BASE_ENTRY = Stage("evaluate_base", ("student", "engine", "eval"), version=2, data="*",
                   exclude=("eval.data_dir",), resolved=_TASK_DIRS,
                   added=("eval.include_path", "eval.local_data", "eval.save_every"))
STAGE = Stage("evaluate", ("model", "engine", "eval"), upstream="finetune", version=2, data="*",
              exclude=("eval.data_dir",), resolved=_TASK_DIRS,
              added=("eval.include_path", "eval.local_data", "eval.save_every"),
              entries=(BASE_ENTRY,))
TASKS_SRC = Path(__file__).resolve().parents[1] / "tasks"
# A task YAML names a benchmark file as "${CRESCENT_DATA}/gsm8k/test.jsonl" (the shipped ones
# and a domain's own, eval.include_path): the evaluate stage renders it under this run's data
# dir (eval.data_dir, else $CRESCENT_DATA, else the cache copy), and counts it in its key.
DATA_PLACEHOLDER = "${CRESCENT_DATA}"
_DATA_FILE = re.compile(r'"' + re.escape(DATA_PLACEHOLDER) + r'/([^"]+)"')
_LABEL = re.compile(r"[A-Za-z0-9._-]+")  # eval.models labels: folder names, nothing above
_TASK_NAME = re.compile(r"^task:\s*(\S+)\s*$", re.MULTILINE)
_OUTPUT_TYPE = re.compile(r"^output_type:\s*(\S+)\s*$", re.MULTILINE)
# lm-eval's output types that score given text instead of generating it
LIKELIHOOD_TYPES = {"loglikelihood", "loglikelihood_rolling", "multiple_choice"}


def preflight(cfg: DictConfig) -> None:
    """Before any stage: tasks named and known (the shipped ones, else lm-eval's), the
    benchmark files they read there, an engine that lm-eval can score with, and the models
    to score there."""

    from crescent.infra.data import data_dir
    from crescent.infra.models import check_model
    from crescent.registry import ENGINES

    tasks = list(cfg.eval.tasks)
    if not tasks:
        raise CrescentError("eval.tasks: no tasks given")
    shipped = task_data(data_dir(cfg.eval.data_dir), cfg.eval.include_path)
    check_data(tasks, shipped)
    unknown = [task for task in tasks if task not in shipped]
    if unknown:  # indexing lm-eval's own tasks takes ~20 s: only when one is named
        unknown = [task for task in unknown if task not in lm_eval_tasks()]
        if unknown:
            raise CrescentError(f"eval.tasks: unknown lm-eval task(s): {', '.join(unknown)} "
                                f"(shipped: {', '.join(sorted(shipped))})")
    ENGINES.get(cfg.engine.name).lm_eval_model(cfg.engine, cfg.student.name, "float32")
    if cfg.eval.models:
        _named_models(cfg, check_model)
    else:
        check_model(cfg.student.name)


@functools.cache
def lm_eval_tasks() -> frozenset[str]:
    """lm-eval's own task names, indexed once a process (~20 s): a sweep's points are checked
    before its first job starts, and each job checks again in the same process."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def run(cfg: DictConfig, run_dir: Path) -> Path:
    out = Path(run_dir) / STAGE.name
    tasks = list(cfg.eval.tasks)
    from crescent.infra.data import data_dir

    tasks_dir, needs = render_tasks(data_dir(cfg.eval.data_dir), out / "tasks",
                                    cfg.eval.include_path)
    check_data(tasks, needs)
    models = models_to_score(cfg, Path(run_dir))

    seconds, reused = {}, {}
    for label, model in models.items():
        shared = _shared_base(cfg, Path(run_dir)) if label == BASE and not cfg.eval.models \
            else None
        score = functools.partial(_score_label, cfg, label, model, tasks, tasks_dir)
        took = score(out / label) if shared is None else shared.reuse_or_build(
            "evaluate: base", score, current=functools.partial(
                _scored, tasks=tasks, model=model, dtype=resolve_dtype(cfg.student.dtype)))
        if took is None:
            reused[label] = str((out / label).resolve())
        else:
            seconds[label] = took

    raw = {label: read_json(out / label / RESULTS) for label in models}
    metrics = {label: metrics_of(results) for label, results in raw.items()}
    for label in models:
        check_scores(label, raw[label], tasks, out / label / RESULTS)
    write_json(out / "metrics.json", metrics)
    lower = lower_is_better(raw)
    table = delta_table(metrics, tasks, lower)
    logger.info(table)
    atomic_write_text(out / "table.md", table)
    stats = headline_stats(metrics, tasks, raw, models, seconds)
    # label -> task -> answers cut at the cap and their mean length (generation tasks)
    stats["answer_lengths"] = {label: answer_lengths(out / label, raw[label], model)
                               for label, model in models.items()}
    stats["reused_scores"] = reused  # label -> where its scores were found already
    write_json(out / STATS, stats)
    return out


def outdated(cfg: DictConfig, run_dir: Path) -> str | None:
    """Why a finished evaluate dir no longer holds this config's scores (the runner then runs
    it again, and only what is missing is scored), or None: a fine-tune that did not exist
    when it scored base alone, a fine-tune trained anew since, or scores loaded in another
    precision (`auto` made on another machine)."""
    out, dtype = Path(run_dir) / STAGE.name, resolve_dtype(cfg.student.dtype)
    for label, model in models_to_score(cfg, Path(run_dir)).items():
        if not _scored(out / label, list(cfg.eval.tasks), model, dtype):
            return f"{label} ({model}) in {dtype} is not what it scored"
    return None


def _score_label(cfg: DictConfig, label: str, model: str, tasks: list[str], tasks_dir: Path,
                 label_dir: Path) -> float | None:
    """Score one model in a child process unless `label_dir` holds its scores; the seconds
    it took, or None when they were there."""
    if _scored(label_dir, tasks, model, resolve_dtype(cfg.student.dtype)):
        logger.info("crescent: evaluate: %s already scored in %s, skipped", label,
                    label_dir.resolve())
        return None
    label_dir.mkdir(parents=True, exist_ok=True)
    (label_dir / RESULTS).unlink(missing_ok=True)  # scored on other tasks: redo it whole
    spec = lm_eval_spec(cfg, label, model, tasks, tasks_dir, label_dir)
    spec["model_identity"] = model_identity(model)  # what `_scored` checks on reuse
    _keep_saved_answers(label_dir, spec)
    write_json(label_dir / SPEC, spec)
    atomic_write_text(label_dir / "command.txt", lm_eval_command(spec) + "\n")
    logger.info("crescent: evaluate: scoring %s (%s) on %s", label, model, ", ".join(tasks))
    started = time.time()
    _score_in_subprocess(label, label_dir)
    return round(time.time() - started, 2)


def _keep_saved_answers(label_dir: Path, spec: dict) -> None:
    """Answers a stopped scoring saved (scoring.REQUESTS) are kept for the same model, loaded
    the same way; lm-eval looks them up by prompt alone, so any other model's are deleted
    before they could stand for this one's."""
    before = read_json(label_dir / SPEC) if (label_dir / SPEC).is_file() else {}

    def loaded(s: dict) -> tuple:
        return s.get("model_identity"), [(r["model"], r["model_args"], r["batch_size"])
                                         for r in s.get("runs", [])], s.get("save_every")

    if loaded(before) != loaded(spec):
        for path in label_dir.glob(f"{REQUESTS}_rank*.db"):
            path.unlink()


def check_scores(label: str, results: dict, tasks: list[str], where: Path) -> None:
    """Every task has scores and none is NaN (a stderr may be: one document has none), or a
    one-line error naming the model and the task."""
    import math

    scored = {**results.get("results", {}), **results.get("groups", {})}
    for task in tasks:
        values = {k: v for k, v in scored.get(task, {}).items() if "," in k and "_stderr" not in k
                  and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if not values:
            raise CrescentError(f"evaluate: {label} has no score on {task} ({where})")
        bad = [k.removesuffix(",none") for k, v in values.items() if math.isnan(v)]
        if bad:
            raise CrescentError(f"evaluate: {label} scored NaN {', '.join(bad)} on {task} "
                                f"({where}): are its weights damaged?")


def _shared_base(cfg: DictConfig, run_dir: Path) -> cache.Entry | None:
    """With the cache on, `evaluate/base` links the base-scores entry (keyed by student,
    engine and eval alone); None when the cache is off or base was scored in the run dir."""
    shared = cache.entry(cfg, run_dir, BASE_ENTRY.name)
    here = run_dir / STAGE.name / BASE
    if shared is None or (here.is_dir() and not here.is_symlink()):  # scored here before
        return None
    cache.link(here, shared.open().dir)
    return shared


# ------------------------------------------------------------------ tasks and data


def render_tasks(data_dir: str | Path, dest: Path, include: list[str] = ()
                 ) -> tuple[Path, dict[str, list[Path]]]:
    """Copy the shipped task YAMLs (and their utils.py), then those of every `include` dir
    (`eval.include_path`: a domain's own tasks, their .py files too), to `dest`, data_files
    rewritten to absolute paths under `data_dir`. Returns `dest` and the data files each task
    reads."""
    dest.mkdir(parents=True, exist_ok=True)
    needs = {}
    for src, text, task, files in _task_files(data_dir, include):
        atomic_write_text(dest / src.name, text)
        if task:
            needs[task] = files
    for folder in (TASKS_SRC, *map(Path, include)):
        for code in sorted(folder.glob("*.py")):
            shutil.copyfile(code, dest / code.name)
    return dest, needs


def task_data(data_dir: str | Path, include: list[str] = ()) -> dict[str, list[Path]]:
    """task -> the data files it reads under `data_dir`, for the shipped tasks and those of
    every `include` dir, each task file checked to parse; nothing is written."""
    return {task: files for _, _, task, files in _task_files(data_dir, include) if task}


def _task_files(data_dir: str | Path, include: list[str]):
    """(task file, its text with data_files under `data_dir`, its task name or None, the data
    files it reads) for the shipped task YAMLs, then those of every `include` dir."""
    data_dir = Path(data_dir).expanduser().absolute()
    for folder in (TASKS_SRC, *map(Path, include)):
        if not folder.is_dir():
            raise CrescentError(f"eval.include_path: {folder} is not a directory")
        for src in sorted(folder.glob("*.yaml")):
            text = src.read_text(encoding="utf-8")
            _check_yaml(src, text)
            files = [data_dir / rel for rel in _DATA_FILE.findall(text)]
            # A JSON string is a valid YAML double-quoted scalar, whatever the path holds.
            text = _DATA_FILE.sub(lambda m: json.dumps(str(data_dir / m.group(1))), text)
            name = _TASK_NAME.search(text)
            yield src, text, name.group(1) if name else None, files


def _check_yaml(src: Path, text: str) -> None:
    """A task file that does not parse fails here, before any stage, naming its line (lm-eval
    would skip it and call the task unknown after the fine-tune). lm-eval's tags
    (`!function utils.f`) are accepted as they are."""
    import yaml

    class TaskLoader(yaml.SafeLoader):
        pass

    TaskLoader.add_multi_constructor("!", lambda loader, tag, node: None)
    try:
        yaml.load(text, Loader=TaskLoader)  # a SafeLoader: no code runs
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CrescentError(f"eval task file {src}{line}: not valid YAML ({problem})") from None


def check_data(tasks: list[str], needs: dict[str, list[Path]]) -> None:
    from crescent.infra.data import missing

    for task in tasks:
        for path in needs.get(task, []):
            if not path.is_file():
                raise CrescentError(f"eval.tasks: {task} reads {missing(path)}")


def shipped_output_types(tasks_dir: Path) -> dict[str, str]:
    """task -> lm-eval output type, for the task YAMLs in `tasks_dir`."""
    types = {}
    for path in tasks_dir.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        if match := _TASK_NAME.search(text):
            output_type = _OUTPUT_TYPE.search(text)
            types[match.group(1)] = output_type.group(1) if output_type else "generate_until"
    return types


def uses_stock_tasks(tasks: list[str], tasks_dir: Path) -> bool:
    """Whether lm-eval's own task index is needed (indexing it costs ~20 s on a small CPU)."""
    return not set(tasks) <= set(shipped_output_types(tasks_dir))


# ------------------------------------------------------------------ models


def models_to_score(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """label -> loadable model path: `eval.models` if given, else `base` (the student, the
    model that fine-tuning starts from) and `finetuned` (this run's finetune/model, if any)."""
    from crescent.infra.models import resolve_model

    if cfg.eval.models:
        return _named_models(cfg, resolve_model)
    models = {BASE: resolve_model(cfg.student.name)}
    finetuned = cache.input_path(cfg, run_dir, STAGE.name, MODEL_DIR)
    if (finetuned / "config.json").is_file():
        models[FINETUNED] = str(finetuned.resolve())
    else:
        logger.info(f"crescent: evaluate: no model in {finetuned}: scoring base only")
    return models


def _named_models(cfg: DictConfig, find) -> dict:
    """label -> `find(name)` for each `eval.models` entry; an error names its entry."""
    models = {}
    for label, name in cfg.eval.models.items():
        if not _LABEL.fullmatch(str(label)) or str(label) in (".", ".."):
            raise CrescentError(f"eval.models: label {str(label)!r} names a folder of the run's "
                                f"evaluate dir: letters, digits, '.', '_' and '-' only")
        try:
            models[str(label)] = find(str(name))
        except CrescentError as e:
            raise CrescentError(f"eval.models.{label}: {e}") from None
    return models


def lm_eval_spec(
    cfg: DictConfig, label: str, model: str, tasks: list[str], tasks_dir: Path, label_dir: Path
) -> dict:
    """Everything the child process passes to `lm_eval.simple_evaluate`, once per run: each
    run is a model as the engine loads it in lm-eval and the tasks it scores. Tasks that
    score given text go to the engine's `lm_eval_likelihood_model`, the others (and lm-eval's
    own tasks, whose types are not read here) to its `lm_eval_model`; one run when both are
    the same. Likelihood runs come first: vLLM keeps its memory until the process ends."""
    from crescent.registry import ENGINES

    engine, dtype = ENGINES.get(cfg.engine.name), resolve_dtype(cfg.student.dtype)
    # A base model loaded by name keeps the student's revision; local dirs have none.
    revision = cfg.student.revision if label == BASE and not cfg.eval.models else None
    types = shipped_output_types(tasks_dir)
    runs: list[dict] = []
    for likelihood in (True, False):
        mine = [t for t in tasks if (types.get(t) in LIKELIHOOD_TYPES) == likelihood]
        if not mine:
            continue
        loader = engine.lm_eval_likelihood_model if likelihood else engine.lm_eval_model
        loaded = loader(cfg.engine, model, dtype)
        if revision:
            loaded.args["revision"] = revision
        run = run_of(loaded, mine)
        same = next((r for r in runs if {**r, "tasks": mine} == run), None)
        if same is not None:
            same["tasks"] += mine
        else:
            runs.append(run)
    return {
        "label": label,
        "runs": runs,
        "tasks": tasks,
        "include_path": str(tasks_dir),
        "include_defaults": uses_stock_tasks(tasks, tasks_dir),
        "num_fewshot": cfg.eval.num_fewshot,
        "limits": task_limits(cfg, tasks),
        "apply_chat_template": cfg.eval.apply_chat_template,
        "fewshot_as_multiturn": cfg.eval.fewshot_as_multiturn and cfg.eval.apply_chat_template,
        "plugins": list(OmegaConf.select(cfg, "plugins", default=None) or []),
        "out_dir": str(label_dir),
        "save_every": cfg.eval.save_every,
    }


def task_limits(cfg: DictConfig, tasks: list[str]) -> dict[str, int | None]:
    """Documents per task: `eval.limits` where it names the task, else `eval.limit` (None: all)."""
    return {task: cfg.eval.limits.get(task, cfg.eval.limit) for task in tasks}


def lm_eval_command(spec: dict) -> str:
    """The `lm_eval` command lines that run the same evaluation, one per run (written beside
    the results)."""
    return "\n".join(_run_command(spec, run) for run in spec["runs"])


def _run_command(spec: dict, run: dict) -> str:
    args = ",".join(f"{k}={v}" for k, v in run["model_args"].items())
    # Crescent's own model types are known to lm-eval's command line as crescent-lm-eval.
    program = "crescent-lm-eval" if run["model"] in LM_EVAL_MODELS else "lm_eval"
    parts = [
        *(f"{k}={v}" for k, v in run["env"].items()),
        program, "--model", run["model"], "--model_args", args,
        "--tasks", ",".join(run["tasks"]), "--include_path", spec["include_path"],
        "--batch_size", str(run["batch_size"]),
    ]
    if run["device"]:
        parts += ["--device", run["device"]]
    if spec["num_fewshot"] is not None:
        parts += ["--num_fewshot", str(spec["num_fewshot"])]
    limits = {task: spec["limits"][task] for task in run["tasks"]}
    limit, samples = one_limit(limits), first_docs(limits)
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


def _scored(label_dir: Path, tasks: list[str], model: str, dtype: str) -> bool:
    """Whether `label_dir` holds scores of `model` (the same files), loaded in `dtype` (the
    student's, resolved here: `auto` is another precision on another machine, and a base
    scored in one against a fine-tune in the other is no contrast), on every task."""
    path, spec = label_dir / RESULTS, label_dir / SPEC
    if not (path.is_file() and spec.is_file()):
        return False
    asked = read_json(spec)
    if asked.get("model_identity") != model_identity(model):
        return False
    # A run loaded without a dtype (a served model) is the server's business.
    if any(run["model_args"].get("dtype", dtype) != dtype for run in asked.get("runs", [])):
        return False
    results = read_json(path)
    return set(tasks) <= set(results.get("results", {})) | set(results.get("groups", {}))


def model_identity(model: str) -> str:
    """What a scored model is: the sha256 of the file record its fine-tune saved beside it
    (MODEL_RECORD: every weight file's hash), else its path (a built-in or a local
    model, which Crescent does not rewrite)."""
    record = Path(model).parent / MODEL_RECORD
    return cache.content_hash(record, "evaluate") if record.is_file() else str(model)


def _score_in_subprocess(label: str, label_dir: Path) -> None:
    (label_dir / ERROR).unlink(missing_ok=True)
    env = dict(os.environ)
    # The child imports this package from where the parent did, installed or not.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "crescent.methods.scoring", str(label_dir / SPEC)],
        env=env,
        check=False,
    )
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode != 0:
        error = label_dir / ERROR
        if error.is_file():
            raise CrescentError(error.read_text(encoding="utf-8").strip())
        raise CrescentError(
            f"evaluate: scoring {label!r} failed with exit code {proc.returncode} (log above)"
        )
    if not (label_dir / RESULTS).is_file():
        raise CrescentError(f"evaluate: scoring {label!r} wrote no {label_dir / RESULTS}")


def headline(stats: dict) -> str:
    """The summary's line for this stage: each score, base -> fine-tuned (delta)."""
    from crescent.summary import scores

    return "; ".join(scores(stats)) or "no scores"
