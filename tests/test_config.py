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


def test_a_run_dir_is_named_by_the_overrides_that_change_its_output(cli):
    # Left out: the study, the stages, a key under logger, an operational option of the
    # selected engine (its KV cache), an input path; kept: what changes the output.
    result = cli("experiment=smoke", "stages=[questions]", "voting.k=3", "logger.project=x",
                 "+engine.options.cpu_kvcache_gib=3", "answers.input=/tmp/q.jsonl",
                 "+engine.options.enforce_eager=false", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "override_dirname: +engine.options.enforce_eager=false,voting.k=3\n" in result.stdout


def test_conflicting_hydra_flags_are_one_line(cli):
    result = cli("-m", "--cfg", "job")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "crescent: error: Only one of --run, --multirun, --cfg, --info and --shell_completion "
        "can be specified"]


def test_help_lists_the_config_groups(cli):
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("crescent is powered by Hydra.")  # not `__main__`
    groups = dict(line.strip().split(": ", 1) for line in result.stdout.splitlines()
                  if line.startswith(("dedup: ", "engine: ")))
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


# Which schema node each config group fills in.
GROUP_SCHEMA = {"model": "model", "student": "student", "engine": "engine", "domain": "domain",
                "dedup": "dedup", "voting": "voting", "finetune": "finetune", "eval": "eval",
                "logger": "logger"}


def _leaves(node, prefix=""):
    for key, value in node.items():
        if key == "defaults":
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, f"{path}.")
        else:
            yield path, value


@pytest.mark.parametrize("group", sorted(GROUP_SCHEMA))
def test_group_yamls_hold_only_what_differs_from_the_schema(group):
    # One home per default: the schema in crescent/config.py. A YAML that repeats a default
    # would keep its copy when the schema's changes, and the edit would silently do nothing.
    from pathlib import Path

    import yaml
    from omegaconf import OmegaConf

    from crescent.config import Config

    schema = OmegaConf.structured(Config)[GROUP_SCHEMA[group]]
    repeats = []
    for path in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
        for key, value in _leaves(yaml.safe_load(path.read_text()) or {}):
            default = OmegaConf.select(schema, key, throw_on_missing=False)
            if not OmegaConf.is_missing(schema, key.split(".")[0]) and default == value:
                repeats.append(f"{path.name}: {key}: {value!r}")
    assert not repeats, f"these repeat the schema default: {repeats}"


def test_default_composition_is_the_schema_with_the_default_options():
    # The schema's values are what a run gets: the default group options change nothing but the
    # MISSING fields (model and domain are filled by their YAMLs).
    from omegaconf import OmegaConf

    from crescent.config import Config

    composed = OmegaConf.to_container(_compose(), resolve=True)
    schema = OmegaConf.to_container(OmegaConf.structured(Config), resolve=False)
    changed = {group: {k: v for k, v in composed[group].items() if schema[group].get(k) != v}
               for group in GROUP_SCHEMA}
    assert changed == {
        "model": {"name": "smollm2-135m-instruct"},
        "student": {"name": "smollm2-135m-instruct"},
        "engine": {}, "dedup": {}, "voting": {}, "finetune": {}, "eval": {}, "logger": {},
        "domain": {k: v for k, v in composed["domain"].items()
                   if schema["domain"].get(k) != v},
    }


@pytest.mark.parametrize("typo, allowed", [
    ("finetune.mode=lroa", "[full, lora]"),
    ("finetune.scheduler=cosin", "[cosine, linear, constant]"),
    ("voting.tie_break=coin", "[drop, seeded]"),
])
@pytest.mark.parametrize("experiment", ["experiment=smoke", "experiment=self_improve"])
def test_a_choice_typo_fails_at_composition_in_one_line(cli, tmp_path, typo, allowed, experiment):
    # Before any stage: the run dir is never made, with --cfg job as with a real run.
    key, value = typo.split("=")
    for extra in ([], ["--cfg", "job"]):
        result = cli(experiment, typo, "hydra.run.dir=run", *extra)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"crescent: error: {key}: Invalid value '{value}', expected one of {allowed}"]
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("typo, known", [
    ("engine.name=vlm", "hf, openai, ray_vllm, vllm"),
    ("voting.rule=majorty", "execution, majority"),
    ("domain.answer_type=maths", "code, math, text"),
    ("finetune.objective=stf", "dpo, sft"),
    ("dedup.method=bert", "minhash, minilm, none, self"),
])
def test_an_extension_point_typo_fails_before_any_stage_in_one_line(cli, tmp_path, typo, known):
    # Plug-ins can add names, so these are checked after they are imported, not by an Enum.
    key, value = typo.split("=")
    result = cli("experiment=smoke", typo, "hydra.run.dir=run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"crescent: error: {key}={value!r}: no such {_WHAT[key]} (known: {known}; a plug-in "
        f"registers more: the `plugins` key)")
    assert not any((tmp_path / "run").glob("*/DONE"))


_WHAT = {"engine.name": "engine", "voting.rule": "vote rule",
         "domain.answer_type": "answer format", "finetune.objective": "objective",
         "dedup.method": "dedup method"}


def test_a_missing_plugin_module_is_one_line(cli):
    result = cli("experiment=smoke", "plugins=[no_such_plugin]", "hydra.run.dir=run")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "crescent: error: plugins: no module named 'no_such_plugin'")


@pytest.mark.slow
def test_the_wheel_ships_the_config_tree(tmp_path):
    # `pip install .` (not editable) must run from any directory: conf/ is package data.
    import zipfile
    from pathlib import Path

    root = Path(CONF_DIR).parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(root)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("crescent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(root)) for p in Path(CONF_DIR).rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)
