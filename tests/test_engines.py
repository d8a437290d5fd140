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


def _sample(engine: str, count: int, seed: int) -> list[str]:
    result = subprocess.run(
        [sys.executable, str(HERE / "sample_engine.py"), engine, str(count), str(seed)],
        capture_output=True,
        text=True,
        timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])["texts"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_identical_prompts_give_distinct_samples(engine):
    texts = _sample(engine, 32, seed=0)
    assert len(texts) == 32
    assert len(set(texts)) >= 28, f"only {len(set(texts))} distinct of 32"


@pytest.mark.slow
def test_hf_same_seed_same_samples():
    # 8 samples: one batch of separate requests and one of n samples, as with 32, at a quarter
    # of the decoding.
    first = _sample("hf", 8, seed=7)
    assert _sample("hf", 8, seed=7) == first
    assert _sample("hf", 8, seed=8) != first


_OVER_BUDGET = """
from crescent.config import EngineConfig, ModelConfig, SamplingConfig
from crescent.engines.vllm_offline import VLLMEngine
from crescent.infra.models import SMOLLM2
engine = VLLMEngine(EngineConfig(), ModelConfig(name=SMOLLM2))
budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
text = "Solve this problem step by step and explain every step carefully. " * 12
conversations = [[{"role": "user", "content": f"{i}: {text}"}] for i in range(40)]
gens = engine.chat(conversations, SamplingConfig(max_tokens=4), n=3, seed=1)
print("RESULT", 3 * sum(g.prompt_tokens for g in gens), budget, sum(len(g.texts) for g in gens))
"""


@pytest.mark.slow
def test_vllm_seeded_batch_larger_than_one_step():
    # 120 seeded samples whose prompts overflow one scheduler step: on CPU vLLM crashed when
    # it split a seeded prompt over two steps.
    result = subprocess.run([sys.executable, "-c", _OVER_BUDGET], capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    prompt_tokens, budget, samples = map(int, result.stdout.split("RESULT ")[1].split())
    assert prompt_tokens > budget
    assert samples == 120


_SHARED = """
from crescent.config import EngineConfig, ModelConfig
from crescent.engines import make_engine, release_engines
from crescent.infra.models import SMOLLM2
def rss_mib():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024
before = rss_mib()
engine = make_engine(EngineConfig(), ModelConfig(name=SMOLLM2))
loaded = rss_mib()
same = make_engine(EngineConfig(), ModelConfig(name=SMOLLM2)) is engine
del engine
release_engines()
print("RESULT", same, before, loaded, rss_mib())
"""


@pytest.mark.slow
def test_one_vllm_engine_per_process_whose_memory_comes_back_on_release():
    # The questions and answers stages get the same engine; the fine-tune after them gets its
    # memory (a dropped vLLM engine kept all of it: a second one doubled the process).
    result = subprocess.run([sys.executable, "-c", _SHARED], capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    same, *mib = result.stdout.split("RESULT ")[1].split()
    before, loaded, released = map(int, mib)
    assert same == "True"
    assert loaded - before > 2000, mib  # the KV cache and the weights
    assert loaded - released > 0.6 * (loaded - before), mib


_STREAMED = """
from crescent.config import EngineConfig, ModelConfig, SamplingConfig
from crescent.engines import Request, make_engine
from crescent.engines.vllm_offline import sampling_params
from crescent.infra.models import SMOLLM2
from crescent.engines.streaming import generate_in_order
engine = make_engine(EngineConfig(), ModelConfig(name=SMOLLM2))
sampling = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=48)
requests = [Request([{"role": "user", "content": f"Write a math problem about {i} apples."}],
                    seed=1000 + i) for i in range(24)]
streamed, order = {}, []
def take(i, generation):
    order.append(i)
    streamed[i] = generation.texts
    return True
generate_in_order(engine, sampling, 2, 5, lambda i: requests[i] if i < 24 else None, take)
together = engine.llm.chat([r.input for r in requests],
                           [sampling_params(sampling, 2, r.seed) for r in requests], use_tqdm=False)
same = sum(streamed[i] == [c.text for c in out.outputs] for i, out in enumerate(together))
print("RESULT", order == list(range(24)), same)
"""


@pytest.mark.slow
def test_streamed_requests_sample_what_one_chat_call_samples():
    # 5 requests in flight, refilled as each finishes, against all 24 in one LLM.chat call:
    # each request's own seed decides its samples, whatever else shares the engine with it.
    result = subprocess.run([sys.executable, "-c", _STREAMED], capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    in_order, same = result.stdout.split("RESULT ")[1].split()
    assert in_order == "True"
    assert int(same) == 24, f"{same} of 24 requests sampled the same"


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
