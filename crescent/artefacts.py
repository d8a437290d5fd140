"""The files stages hand each other, each named once (the artefact contract: docs/files.md):
a stage writes them into `<run dir>/<stage>/`, and later stages, objectives, the report and
tools read them by these names, never by importing the stage that writes them."""

from __future__ import annotations

from pathlib import Path

from crescent.errors import CrescentError
from crescent.infra.io import numbered_jsonl

# questions stage
QUESTIONS = "questions.jsonl"  # accepted, numbered by id
REJECTED = "rejected.jsonl"  # every rejected candidate, with its reason
# answers stage
SAMPLES = "samples.jsonl"  # every question once: its samples (or why it was not sampled)
NOT_SAMPLED = ("contaminated", "too_long")  # why a question in samples.jsonl has no samples
INPUTS = "inputs.jsonl"  # every sampled question once: the test inputs the model wrote for it
VOTES = "votes.jsonl"  # every question once: the vote over its first voting.k samples
QA = "qa.jsonl"  # the kept questions: answer, chosen response, votes, agreement
SFT = "sft.jsonl"  # the kept questions as chat conversations, ready for fine-tuning
PREFS = "prefs.jsonl"  # preference pairs from the same votes: a winner chosen, a loser rejected
# finetune stage
MODEL_DIR = "model"  # the trained student, a Hugging Face save_pretrained dir
MODEL_RECORD = "model_files.json"  # size and sha256 of each saved model file, before DONE


def load_questions(path: Path, limit: int | None = None, keep: tuple[str, ...] = ()) -> list[dict]:
    """The first `limit` (None: all) questions, with unique ids; rows without an `id` take
    their line number - 1. The fields named in `keep` are copied where a row has them."""
    if not path.exists():
        raise CrescentError(f"answers.input: {path} does not exist (run the questions stage "
                            f"or point answers.input at a questions.jsonl)")
    questions, seen = [], set()
    for line, row in numbered_jsonl(path):
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise CrescentError(f"{path}:{line}: no 'question' text")
        qid = row.get("id", line - 1)
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise CrescentError(f"{path}:{line}: id {qid!r} is not a string or an integer")
        if qid in seen:
            raise CrescentError(f"{path}:{line}: duplicate id {qid!r}")
        seen.add(qid)
        questions.append({"id": qid, "question": row["question"],
                          **{field: row[field] for field in keep if field in row}})
        if len(questions) == limit:
            break
    if not questions:
        raise CrescentError(f"{path}: no questions to answer (the file is empty)")
    return questions
