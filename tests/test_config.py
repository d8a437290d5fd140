"""The config tree composes, typos and wrong types fail loudly, and start-up stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from crescent.__main__ import CONF_DIR


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_defaults_run_on_the_embedded_model_with_vllm():
    cfg = _compose()
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.engine.name == "vllm"
    assert list(cfg.stages) == ["questions", "answers", "finetune", "evaluate"]
    assert cfg.student.name == cfg.model.name  # self-improvement by default
    assert "{question}" in cfg.domain.answer_prompt


@pytest.mark.parametrize(
    "override, key",
    [("engine=hf", "engine.name"), ("dedup=none", "dedup.method"), ("logger=none", "logger.name"),
     ("domain=logic", "domain.name")],
)
def test_group_swap_is_one_override(override, key):
    cfg = _compose(override)
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == override.split("=")[1]


def test_smoke_experiment_makes_every_stage_tiny():
    cfg = _compose("experiment=smoke")
    assert cfg.name == "smoke"
    assert cfg.questions.target <= 32 and cfg.finetune.max_steps <= 20 and cfg.eval.limit <= 20


def test_student_follows_the_generator_unless_swapped():
    assert _compose("model.name=/some/dir").student.name == "/some/dir"
    assert _compose("model.name=/some/dir", "student=smollm2").student.name == "smollm2-135m-instruct"


def test_unknown_key_fails_naming_it(cli):
    result = cli("dedup.thresold=0.9")
    assert result.returncode != 0
    assert "dedup.thresold" in result.stderr


def test_wrong_type_fails_naming_key(cli):
    result = cli("voting.k=abc", "--cfg", "job")
    assert result.returncode != 0
    assert "voting.k" in result.stderr and "abc" in result.stderr


def test_cfg_job_prints_composed_config(cli):
    result = cli("--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m-instruct" in result.stdout and "threshold: 0.85" in result.stdout


def test_help_lists_the_config_groups(cli):
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    groups = dict(line.strip().split(": ", 1) for line in result.stdout.splitlines()
                  if line.startswith("dedup: ") or line.startswith("engine: "))
    assert "minilm" in groups["dedup"].split(", ") and "hf" in groups["engine"].split(", ")


@pytest.mark.parametrize("flag", ["--help", "--cfg"])
def test_start_up_imports_no_heavy_module(flag, tmp_path):
    # What keeps `crescent --help` and `--cfg job` instant: nothing heavy is imported.
    probe = (
        "import sys\n"
        f"sys.argv = ['crescent', {flag!r}] + (['job'] if {flag!r} == '--cfg' else [])\n"
        "from crescent.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'vllm', 'transformers', 'lightning', 'lm_eval', 'wandb', 'faiss'}\n"
        "print('LOADED', sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "LOADED []" in out, out
