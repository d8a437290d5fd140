"""Engines: identical prompts give independent samples; the same seed gives the same samples."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crescent.config import EngineConfig, ModelConfig
from crescent.engines import derive_seed, make_engine
from crescent.errors import CrescentError
from crescent.infra.models import SMOLLM2, resolve_model

HERE = Path(__file__).parent


def test_derive_seed_is_stable_and_spreads():
    assert derive_seed(0, "questions", 3) == derive_seed(0, "questions", 3)
    seeds = {derive_seed(0, "questions", i) for i in range(1000)}
    assert len(seeds) == 1000
    # vLLM seeds the j-th parallel sample with seed + j: neighbouring requests must not overlap.
    ordered = sorted(seeds)
    assert min(b - a for a, b in itertools.pairwise(ordered)) > 64


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(CrescentError, match="engine.name='vlm': no such engine"):
        make_engine(EngineConfig(name="vlm"), ModelConfig(name=SMOLLM2))


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CrescentError, match="no such directory"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(CrescentError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_hub_ids_pass_through():
    assert resolve_model("meta-llama/Meta-Llama-3-8B-Instruct") == "meta-llama/Meta-Llama-3-8B-Instruct"


def _engine_checks(*args: str) -> dict:
    """Runs tests/engine_checks.py in a fresh process (see its docstring) and returns its result."""
    result = subprocess.run([sys.executable, str(HERE / "engine_checks.py"), *args],
                            capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# One process per engine serves all of its checks: a vLLM start-up costs about 40 s on CPU.
@pytest.fixture(scope="module")
def vllm_checks() -> dict:
    return _engine_checks("vllm", "32:0")


@pytest.fixture(scope="module")
def hf_checks() -> dict:
    # 8 samples: one batch of separate requests and one of n samples, as with 32, at a quarter
    # of the decoding.
    return _engine_checks("hf", "32:0", "8:7", "8:8")


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_identical_prompts_give_distinct_samples(engine, request):
    texts = request.getfixturevalue(f"{engine}_checks")["samples"]["32:0"]
    assert len(texts) == 32
    assert len(set(texts)) >= 28, f"only {len(set(texts))} distinct of 32"


@pytest.mark.slow
def test_hf_same_seed_same_samples(hf_checks):
    # Another process, after no other sampling: each call's seed alone decides its samples.
    first = hf_checks["samples"]["8:7"]
    assert _engine_checks("hf", "8:7")["samples"]["8:7"] == first
    assert hf_checks["samples"]["8:8"] != first


@pytest.mark.slow
def test_vllm_seeded_batch_larger_than_one_step(vllm_checks):
    # 120 seeded samples whose prompts overflow one scheduler step: on CPU vLLM crashed when
    # it split a seeded prompt over two steps.
    over = vllm_checks["over_budget"]
    assert over["prompt_tokens"] > over["budget"]
    assert over["samples"] == 120


@pytest.mark.slow
def test_one_vllm_engine_per_process_whose_memory_comes_back_on_release(vllm_checks):
    # The questions and answers stages get the same engine; the fine-tune after them gets its
    # memory (a dropped vLLM engine kept all of it: a second one doubled the process).
    assert vllm_checks["same_engine"]
    mib = vllm_checks["rss_mib"]
    assert mib["loaded"] - mib["before"] > 2000, mib  # the KV cache and the weights
    assert mib["loaded"] - mib["released"] > 0.6 * (mib["loaded"] - mib["before"]), mib


@pytest.mark.slow
def test_streamed_requests_sample_what_one_chat_call_samples(vllm_checks):
    # Each request's own seed decides its samples, whatever else shares the engine with it.
    streamed = vllm_checks["streamed"]
    assert streamed["in_order"]
    assert streamed["same"] == streamed["requests"] == 24, streamed


@pytest.mark.slow
def test_vllm_top_p_without_the_vocabulary_sort_samples_what_vllm_samples(vllm_checks):
    top_p = vllm_checks["top_p"]
    assert top_p["patched"] and top_p["steps_with_top_p"] >= 40  # one a decoding step
    assert top_p["same"] == top_p["requests"] == 16, top_p


@pytest.mark.parametrize("candidates", [1024, 8])  # 8: most rows go on past the candidates
def test_nucleus_keeps_the_tokens_a_full_sort_keeps(candidates, monkeypatch):
    """Against top-p's definition by a full sort (vLLM's rule: a token is dropped when it and
    every less likely token hold at most 1 - p; the most likely always stays)."""
    import torch

    from crescent.engines import cpu_top_p

    def by_sort(logits, k, p):
        assert k is None
        ordered, index = logits.sort(dim=-1)
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - p.unsqueeze(1)
        drop[:, -1] = False
        return logits.scatter(1, index, ordered.masked_fill(drop, -float("inf")))

    monkeypatch.setattr(cpu_top_p, "CANDIDATES", candidates)
    generator = torch.Generator().manual_seed(0)
    # Peaked and flat rows, and rows that sample without top-p (p = 1).
    logits = torch.randn(12, 5000, generator=generator) * torch.tensor(
        [8.0, 4.0, 2.0, 1.0, 0.5, 0.1] * 2).unsqueeze(1)
    p = torch.tensor([0.95, 0.9, 0.5, 0.95, 0.99, 0.95, 1.0, 0.8, 0.95, 0.3, 0.95, 1.0])
    ours = cpu_top_p.nucleus(logits.clone(), None, p, by_sort)
    reference = by_sort(logits.clone(), None, p)
    assert torch.equal(ours.isfinite(), reference.isfinite())
    assert torch.equal(ours[ours.isfinite()], logits[ours.isfinite()])  # kept ones untouched
    kept = ours.isfinite().sum(dim=1)
    assert kept[6] == kept[11] == 5000 and kept[0] < kept[3] < kept[5]  # p=1 rows keep all
    # No top-p, or a top-k: vLLM's own function.
    assert cpu_top_p.nucleus(logits, None, None, lambda *args: "vllm's") == "vllm's"
    assert cpu_top_p.nucleus(logits, torch.tensor([5] * 12), p, lambda *args: "vllm's") == "vllm's"


_CONVERT = (
    "from crescent.infra import logs; from crescent.infra.models import resolve_model; "
    "logs.setup(); print('PATH', resolve_model('smollm2-135m-instruct'))"
)


@pytest.mark.slow
def test_concurrent_conversions_publish_one_whole_model(tmp_path):
    env = dict(__import__("os").environ, CRESCENT_CACHE=str(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", _CONVERT], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    paths = {line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("PATH")}
    assert paths == {str(tmp_path / "models" / "smollm2-135m-instruct")}
    # Exactly one conversion ran; no temp dir is left behind.
    assert sum("converting" in out for out, _ in outs) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "smollm2-135m-instruct", "smollm2-135m-instruct.lock"]
    from transformers import AutoConfig, AutoTokenizer

    model_dir = tmp_path / "models" / "smollm2-135m-instruct"
    assert AutoConfig.from_pretrained(model_dir).model_type == "llama"
    assert AutoTokenizer.from_pretrained(model_dir).chat_template
