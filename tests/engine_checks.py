"""Engine checks run as a script, so that several tests share one engine start-up (vLLM must
start under `if __name__ == "__main__"`, and a vLLM start-up costs about 40 s on CPU). Prints one
line, `RESULT <json>`:

    engine_checks.py hf 32:0 8:7    samples of one identical bait prompt, for each COUNT:SEED
    engine_checks.py vllm 32:0      the same on offline vLLM, then that engine's own checks:
                                    one engine per configuration, memory back on release,
                                    streamed requests, a seeded batch over one scheduler step,
                                    top-p samples against vLLM's own top-p
"""

from __future__ import annotations

import json
import sys

from crescent.config import EngineConfig, ModelConfig, SamplingConfig
from crescent.engines import Request, generate_in_order, make_engine, release_engines
from crescent.infra.models import SMOLLM2

BAIT = [{"role": "user", "content": "Write one new math word problem. Reply with the problem only."}]
SAMPLING = SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=48)  # questions stage, short


def bait_samples(engine, count: int, seed: int) -> list[str]:
    """`count` samples of the bait prompt: half as separate identical requests, half as n
    samples of one request (both must vary)."""
    separate = engine.chat([BAIT] * (count // 2), SAMPLING, n=1, seed=seed)
    together = engine.chat([BAIT], SAMPLING, n=count - count // 2, seed=seed + 1)
    return [g.texts[0] for g in separate] + together[0].texts


def rss_mib() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) // 1024


def streamed_against_one_call(engine) -> dict:
    """5 requests in flight, refilled as each finishes, against all 24 in one `LLM.chat` call."""
    from crescent.engines.vllm_offline import sampling_params

    requests = [Request([{"role": "user", "content": f"Write a math problem about {i} apples."}],
                        seed=1000 + i) for i in range(24)]
    streamed, order = {}, []

    def take(i, generation):
        order.append(i)
        streamed[i] = generation.texts
        return True

    generate_in_order(engine, SAMPLING, 2, 5,
                      lambda i: requests[i] if i < len(requests) else None, take)
    together = engine.llm.chat([r.input for r in requests],
                               [sampling_params(SAMPLING, 2, r.seed) for r in requests],
                               use_tqdm=False)
    same = sum(streamed[i] == [c.text for c in out.outputs] for i, out in enumerate(together))
    return {"in_order": order == list(range(len(requests))), "same": same,
            "requests": len(requests)}


def seeded_batch_over_one_step(engine) -> dict:
    """120 seeded samples whose prompts overflow one scheduler step."""
    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    text = "Solve this problem step by step and explain every step carefully. " * 12
    conversations = [[{"role": "user", "content": f"{i}: {text}"}] for i in range(40)]
    gens = engine.chat(conversations, SamplingConfig(max_tokens=4), n=3, seed=1)
    return {"prompt_tokens": 3 * sum(g.prompt_tokens for g in gens), "budget": budget,
            "samples": sum(len(g.texts) for g in gens)}


def top_p_against_vllm_sort(engine) -> dict:
    """The same seeded top-p samples through crescent's nucleus (crescent/engines/cpu_top_p.py)
    and through vLLM's own sort."""
    from vllm.v1.sample.ops import topk_topp_sampler as ops

    patched = ops.apply_top_k_top_p
    conversations = [[{"role": "user", "content": f"Write a math problem about {i} pears."}]
                     for i in range(16)]
    calls = []

    def counted(logits, k, p):
        calls.append(p is not None and bool((p < 1).any()))
        return patched(logits, k, p)

    ops.apply_top_k_top_p = counted
    try:
        ours = engine.chat(conversations, SAMPLING, n=2, seed=5)
        ops.apply_top_k_top_p = patched.original
        theirs = engine.chat(conversations, SAMPLING, n=2, seed=5)
    finally:
        ops.apply_top_k_top_p = patched
    return {"patched": getattr(patched, "crescent_nucleus", False), "requests": 16,
            "steps_with_top_p": sum(calls),
            "same": sum(a.texts == b.texts for a, b in zip(ours, theirs))}


def main(engine_name: str, jobs: list[str]) -> dict:
    # float32: in bfloat16 a request's samples also depend on what shares its batch (the
    # rounding follows the batch's shape), so streamed requests drift from one chat call.
    config = EngineConfig(name=engine_name, batch_size=32)
    model = ModelConfig(name=SMOLLM2, dtype="float32")
    before = rss_mib()
    engine = make_engine(config, model)
    result = {"samples": {}}
    loaded = rss_mib()
    for job in jobs:
        count, seed = map(int, job.split(":"))
        result["samples"][job] = bait_samples(engine, count, seed)
    if engine_name == "vllm":
        result["same_engine"] = make_engine(config, model) is engine
        result["streamed"] = streamed_against_one_call(engine)
        result["over_budget"] = seeded_batch_over_one_step(engine)
        result["top_p"] = top_p_against_vllm_sort(engine)
        del engine
        release_engines()
        result["rss_mib"] = {"before": before, "loaded": loaded, "released": rss_mib()}
    return result


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2:])))
