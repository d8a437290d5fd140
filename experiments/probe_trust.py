"""The trust probe: Crescent driven the way a careless user or a hostile input would, case by case
through the command line, each judged on what it did: one line before any work, a damaged entry
detected (or rebuilt), a right result, or a wrong one (exit 0 with a number that is not what it
says), a traceback, or no answer within the case's time.

    python experiments/probe_trust.py                 # this checkout
    python experiments/probe_trust.py --root DIR      # another checkout (a git worktree of an
                                                      # older commit), with this interpreter
    python experiments/probe_trust.py --only S1 L2    # some cases

Tiny runs on SmolLM2 with `engine=hf` (1 fine-tune step, 2 documents scored); served-engine cases
against stub OpenAI servers on 127.0.0.1 started here; a table on stdout and
outputs/probe_trust[_<label>].json. Each case runs in its own fresh directory.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CRESCENT_DATA", ROOT.parent / "shared" / "data"))
TINY = ["logger=none", "engine=hf", f"eval.data_dir={DATA}", "cache_dir=cache",
        "eval.tasks=[crescent_gsm8k_gold_bpb]", "eval.limit=2", "finetune.max_steps=1",
        "finetune.batch_size=2", "finetune.val_fraction=0", "voting.k=2", "voting.min_votes=1",
        "voting.min_agreement=0", "answers.sampling.max_tokens=24", "hydra.run.dir=run"]


@dataclass
class Case:
    id: str
    what: str
    steps: list[list[str]]  # crescent commands (overrides); the last one is judged
    # run between steps (after step i): damage a file, start a server, ...
    between: dict[int, Callable[[Path], None]] = field(default_factory=dict)
    # exit 0: None when right, else why (given the run dir and the command's output)
    right: Callable[[Path, str], str | None] | None = None
    timeout: float = 120


# ------------------------------------------------------------------ inputs and damage


def write_inputs(work: Path) -> None:
    train = (DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:3]
    (work / "questions.jsonl").write_text(
        "".join(json.dumps({"id": i, **json.loads(line)}) + "\n" for i, line in enumerate(train)))
    (work / "sft.jsonl").write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} + {i}?"},
        {"role": "assistant", "content": f"{i} + {i} = {2 * i}.\nThe answer is: {2 * i}"}]}) + "\n"
        for i in range(4)))
    (work / "tasks").mkdir()
    (work / "tasks" / "broken.yaml").write_text("task: mine\noutput_type: generate_until\n"
                                                "metric_list: [a\n")
    (work / "a_dir").mkdir()


def entry_of(work: Path, stage: str) -> Path:
    return (work / "run" / stage).resolve()


def overwrite_weights(work: Path) -> None:
    with open(entry_of(work, "finetune") / "model" / "model.safetensors", "r+b") as f:
        f.seek(100 << 20)
        f.write(b"\xff" * 4096)


def drop_a_sample_line(work: Path) -> None:
    samples = (work / "run" / "answers" / "samples.jsonl").resolve()
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[1:]))


def garble_done(work: Path) -> None:
    (entry_of(work, "answers") / "DONE").write_text("2026-12-06T00:00:00\n")


def unseal_and_swap_weights(work: Path) -> None:
    (entry_of(work, "finetune") / "DONE").unlink()
    overwrite_weights(work)


def garbage_checkpoint(work: Path) -> None:
    last = work / "run" / "finetune" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"not a checkpoint")


# ------------------------------------------------------------------ judging a finished command


def scored_the_fine_tune(work: Path, _: str) -> str | None:
    metrics = json.loads((work / "run" / "evaluate" / "metrics.json").read_text())
    return None if "finetuned" in metrics else f"scored {sorted(metrics)} only"


def audit_on_every_question(work: Path, _: str) -> str | None:
    audit = json.loads((work / "run" / "audit" / "audit.json").read_text())
    return None if audit["questions"] == 3 else f"audited {audit['questions']} of 3 questions"


def retrained(_: Path, stderr: str) -> str | None:
    return None if "training it anew" in stderr else "resealed the swapped weights unchecked"


def warned(word: str):
    return lambda _, stderr: None if word in stderr else "no warning"


# ------------------------------------------------------------------ stub OpenAI servers


def serve(reply: Callable[[dict], dict]) -> str:
    """A server on 127.0.0.1 that answers /v1/models and every completion with `reply(body)`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send({"data": [{"id": "m"}]})

        def do_POST(self):
            self._send(reply(json.loads(self.rfile.read(int(self.headers["content-length"])))))

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_port}/v1"


def one_choice(_: dict) -> dict:  # ignores `n`
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "2 + 2 = 4.\nThe answer is: 4"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}


ONE_CHOICE = serve(one_choice)
NO_CHOICES = serve(lambda _: {"id": "x", "object": "chat.completion"})
SERVED = ["engine=openai", "+engine.options.served_model=m", "+engine.options.max_retries=0"]


def cases() -> list[Case]:
    answers = ["stages=[answers]", "answers.input=questions.jsonl"]
    return [
        Case("S1", "evaluate entry made before the fine-tune existed, then fine-tune + evaluate",
             [[*TINY, "stages=[evaluate]", "finetune.input=sft.jsonl"],
              [*TINY, "stages=[finetune,evaluate]", "finetune.input=sft.jsonl"]],
             right=scored_the_fine_tune, timeout=400),
        Case("S2", "4 KiB overwritten in the fine-tune's weights (over 64 MiB), then rerun",
             [[*TINY, "stages=[finetune,evaluate]", "finetune.input=sft.jsonl"],
              [*TINY, "stages=[finetune,evaluate]", "finetune.input=sft.jsonl"]],
             between={0: overwrite_weights}, right=lambda *_: "reused the damaged weights",
             timeout=400),
        Case("S3", "audit after a line of the samples entry was removed",
             [[*TINY, *answers], [*TINY, "stages=[answers,audit]",
                                  "answers.input=questions.jsonl"]],
             between={0: drop_a_sample_line}, right=audit_on_every_question, timeout=400),
        Case("S4", "a server that ignores n (one choice whatever is asked)",
             [[*TINY, *answers, *SERVED, f"+engine.options.endpoints=[{ONE_CHOICE}]"]],
             right=lambda *_: "sealed 1 sample a question where 2 were asked"),
        Case("S5a", "a DONE that does not parse",
             [[*TINY, *answers], [*TINY, *answers]], between={0: garble_done},
             right=lambda *_: "reused an entry its DONE does not vouch for", timeout=400),
        Case("S5b", "finetune DONE deleted and its weights swapped",
             [[*TINY, "stages=[finetune]", "finetune.input=sft.jsonl"],
              [*TINY, "stages=[finetune]", "finetune.input=sft.jsonl"]],
             between={0: unseal_and_swap_weights}, right=retrained, timeout=400),
        Case("L1", "+stage_options.<stage>=5", [[*TINY, *answers, "+stage_options.answers=5"]]),
        Case("L2", "answers.input=answers", [[*TINY, "stages=[answers]", "answers.input=answers"]]),
        Case("L3", "finetune.input=finetune",
             [[*TINY, "stages=[finetune]", "finetune.input=finetune"]]),
        Case("L4", "answers.input=evaluate",
             [[*TINY, "stages=[answers]", "answers.input=evaluate"]]),
        Case("L5", "a task YAML with a syntax error in eval.include_path",
             [[*TINY, "stages=[finetune,evaluate]", "finetune.input=sft.jsonl",
               "eval.include_path=[tasks]"]], timeout=300),
        Case("L6", "finetune.precision=transformer-engine",
             [[*TINY, "stages=[answers,finetune]", "answers.input=questions.jsonl",
               "finetune.precision=transformer-engine"]], timeout=300),
        Case("L7", "hydra/launcher=slurm_cpu with no Slurm controller",
             [["-m", *TINY[:-1], "stages=[answers]", "answers.input=questions.jsonl",
               "hydra/launcher=slurm_cpu", "hydra.sweep.dir=sweep", "voting.k=2,3"]]),
        Case("L8", "+engine.options.ray_address=127.0.0.1:9 (nothing there)",
             [[*TINY, *answers, "engine=ray_vllm", "+engine.options.ray_address=127.0.0.1:9"]], timeout=60),
        Case("L9", "+engine.options.ray_address=garbage",
             [[*TINY, *answers, "engine=ray_vllm", "+engine.options.ray_address=garbage"]], timeout=60),
        Case("L10", "a served endpoint answering 200 without choices",
             [[*TINY, *answers, *SERVED, f"+engine.options.endpoints=[{NO_CHOICES}]"]]),
        Case("L11", "a last.ckpt that does not load",
             [[*TINY, "stages=[finetune]", "finetune.input=sft.jsonl"]],
             between={-1: garbage_checkpoint}, timeout=300),
        Case("L14", "a stage order that cannot work: stages=[finetune,answers]",
             [[*TINY, "stages=[finetune,answers]", "answers.input=questions.jsonl"]]),
        Case("W1", "an eval.models label containing ../",
             [[*TINY, "stages=[evaluate]", "+eval.models={../../escaped: smollm2-135m-instruct}"]],
             right=lambda work, _: "wrote outside the run dir"
             if (work / "escaped").exists() or Path("/escaped").exists() else None, timeout=300),
        Case("M1", "a plug-in option out of range: cap=-5",
             [[*TINY, *answers, "plugins=[tests.plugins.capped_engine]",
               "engine.name=capped_hf", "+engine.options.cap=-5"]]),
        Case("M2", "a stage option out of range: min_agreement=5",
             [[*TINY, "plugins=[tests.plugins.agreement_filter]", "answers.input=questions.jsonl",
               "stages=[answers,agreement_filter,finetune]",
               "+stage_options.agreement_filter.min_agreement=5"]], timeout=300),
        Case("M3", "a directory as answers.input", [[*TINY, "stages=[answers]", "answers.input=a_dir"]]),
        Case("M4", "an endpoint without http://",
             [[*TINY, *answers, *SERVED, "+engine.options.endpoints=[127.0.0.1:9/v1]"]]),
        Case("M5", "+engine.options.request_timeout_s=-1",
             [[*TINY, *answers, *SERVED, f"+engine.options.endpoints=[{ONE_CHOICE}]",
               "+engine.options.request_timeout_s=-1"]]),
        Case("M6", "a closed endpoint (seconds to the error)",
             [[*TINY, *answers, "engine=openai", "+engine.options.served_model=m",
               "+engine.options.endpoints=[http://127.0.0.1:9/v1]"]]),
        Case("M7", "empty user and assistant content trained on",
             [[*TINY, "stages=[finetune]", "finetune.input=empty_sft.jsonl"]],
             between={-1: lambda w: (w / "empty_sft.jsonl").write_text(json.dumps({"messages": [
                 {"role": "user", "content": ""}, {"role": "assistant", "content": ""}]}) + "\n"
                 + (w / "sft.jsonl").read_text())},
             right=warned("empty user or assistant turn"), timeout=300),
    ]


# ------------------------------------------------------------------ running and judging


def run_case(case: Case, root: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    write_inputs(work)
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{ROOT}", WANDB_MODE="offline",
               HF_HUB_OFFLINE="1", CRESCENT_DATA=str(DATA))
    if -1 in case.between:
        case.between[-1](work)
    for i, step in enumerate(case.steps):
        started = time.time()
        try:
            proc = subprocess.run([sys.executable, "-m", "crescent", *step], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=case.timeout,
                                  check=False)
            rc, stderr = proc.returncode, proc.stdout + proc.stderr  # logs go to stdout
        except subprocess.TimeoutExpired:
            rc, stderr = None, ""
        seconds = round(time.time() - started, 1)
        if i < len(case.steps) - 1:
            if rc != 0:
                return {"verdict": f"setup step {i} failed", "rc": rc, "s": seconds,
                        "line": _last(stderr)}
            case.between.get(i, lambda w: None)(work)
    return {"verdict": _verdict(case, work, rc, stderr), "rc": rc, "s": seconds,
            "line": _last(stderr)}


def _last(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def _verdict(case: Case, work: Path, rc, stderr: str) -> str:
    if rc is None:
        return f"no answer in {case.timeout:.0f} s"
    if "Traceback" in stderr:
        return "traceback"
    if rc != 0:
        return "detected" if "damaged" in stderr else "one line"
    wrong = case.right(work, stderr) if case.right else "exit 0"
    return "right" if wrong is None else f"WRONG: {wrong}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to probe")
    parser.add_argument("--label", default="", help="suffix of the JSON file")
    parser.add_argument("--only", nargs="*", help="case ids")
    args = parser.parse_args()
    work = ROOT / "outputs" / f"probe_trust{'_' + args.label if args.label else ''}"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    commit = subprocess.run(["git", "-C", str(args.root), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    print(f"probing {args.root} at {commit}")
    print("| case | what | verdict | exit | s | last line |\n|---|---|---|---|---|---|")
    rows = []
    for case in cases():
        if args.only and case.id not in args.only:
            continue
        row = {"id": case.id, "what": case.what, **run_case(case, args.root, work / case.id)}
        rows.append(row)
        print(f"| {case.id} | {case.what} | {row['verdict']} | {row['rc']} | {row['s']} | "
              f"{row['line'].replace('|', '/')} |", flush=True)
    out = work.with_suffix(".json")
    out.write_text(json.dumps({"root": str(args.root), "commit": commit, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
