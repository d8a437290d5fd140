"""The built-in models' table: parts found by package, assembled in order, checked against the
pinned sha256 (a wrong or missing part is one line naming the install command), every
installed built-in's files hash to its pin, and the second one runs the loop (slow, long)."""

from __future__ import annotations

import hashlib
import sys

import pytest

from crescent.errors import CrescentError
from crescent.infra import models
from crescent.infra.io import read_json
from crescent.infra.models import BUILTIN, BuiltinModel
from tests.conftest import DATA


def _packages(root, blobs: list[bytes]) -> tuple:
    """Importable packages part_0.. under `root`, each holding one blob; their table rows."""
    parts = []
    for i, blob in enumerate(blobs):
        package = root / f"crescent_test_part_{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / "part.bin").write_bytes(blob)
        parts.append((package.name, "data/part.bin"))
    return tuple(parts)


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    blobs = [b"GGUF" + bytes(range(256)) * 40, b"second part" * 1000, b"last"]
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("crescent_test_part_")]:
        monkeypatch.delitem(sys.modules, name)
    sha = hashlib.sha256(b"".join(blobs)).hexdigest()
    row = BuiltinModel("fake.gguf", _packages(tmp_path, blobs), sha, "pip install fake-parts")
    monkeypatch.setitem(BUILTIN, "fake-model", row)
    return blobs, tmp_path


def test_parts_are_concatenated_in_order_and_checked(fake_model):
    blobs, root = fake_model
    out = root / "assembled.gguf"
    assert models._assemble("fake-model", models.part_paths("fake-model"), out) == out
    assert out.read_bytes() == b"".join(blobs)


def test_a_wrong_part_fails_naming_the_reinstall(fake_model, monkeypatch):
    _, root = fake_model
    (root / "crescent_test_part_1" / "data" / "part.bin").write_bytes(b"damaged")
    with pytest.raises(CrescentError, match="not the pinned .*reinstall it \\(pip install fake"):
        models._assemble("fake-model", models.part_paths("fake-model"), root / "a.gguf")


def test_a_missing_part_is_one_line_with_the_install_command(fake_model, monkeypatch):
    row = BUILTIN["fake-model"]
    monkeypatch.setitem(BUILTIN, "fake-model", BuiltinModel(
        row.gguf, (*row.parts, ("crescent_test_no_such_part", "x.bin")), row.sha256, row.install))
    for find in (models.resolve_model, models.check_model):  # check_model: before any stage
        with pytest.raises(CrescentError) as e:
            find("fake-model")
        assert str(e.value) == ("model 'fake-model' needs its GGUF parts installed "
                                "(crescent_test_no_such_part is missing): pip install fake-parts")


def test_checking_a_builtin_model_converts_nothing(fake_model, monkeypatch, tmp_path):
    monkeypatch.setenv("CRESCENT_CACHE", str(tmp_path / "cache"))
    models.check_model("fake-model")  # its parts are there: no error
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_installed_builtin_files_match_their_pins(name, tmp_path):
    parts = models.part_paths(name)  # `make test` installs every built-in's parts
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.read_bytes())
    assert digest.hexdigest() == BUILTIN[name].sha256


@pytest.mark.slow
@pytest.mark.long
def test_second_builtin_model_runs_the_loop_end_to_end(cli, tmp_path):
    """The smoke loop on Qwen2.5-Coder-0.5B (converted on first use), every stage in miniature;
    every answered question kept (floor 1) so that fine-tuning has data."""
    result = cli("experiment=smoke", "model=qwen_coder_05b", "questions.target=4",
                 "questions.max_candidates=16", "voting.k=2", "voting.min_votes=1",
                 "voting.min_agreement=0", "voting.tie_break=seeded", "finetune=lora",
                 "finetune.max_steps=2", "eval.limit=4", "logger=none", f"eval.data_dir={DATA}",
                 "hydra.run.dir=run", timeout=2400)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "run"
    assert read_json(run / "questions" / "stats.json")["accepted"] >= 1
    assert read_json(run / "answers" / "stats.json")["kept"] >= 1
    assert read_json(run / "finetune" / "stats.json")["steps"] == 2
    assert {"base", "finetuned"} <= set(read_json(run / "evaluate" / "metrics.json"))
    source = (models.converted(models.QWEN_CODER_05B) / "SOURCE").read_text()
    assert BUILTIN[models.QWEN_CODER_05B].sha256 in source
