"""vLLM replicas as Ray actors: `engine.options.data_parallel_size` offline engines, requests
dealt out."""

from __future__ import annotations

from crescent.config import EngineConfig, ModelConfig
from crescent.engines.base import Engine, Generation
from crescent.engines.streaming import through_session
from crescent.engines.vllm_offline import VLLMEngine
from crescent.errors import CrescentError
from crescent.infra.load import core_share
from crescent.infra.models import resolve_model
from crescent.options import VLLMOptions
from crescent.registry import ENGINES


class _Replica(VLLMEngine):
    """A VLLMEngine in a Ray actor: holds the one session its driver streams through."""

    def start(self, sampling, n) -> None:
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

        ray.get([r.start.remote(sampling, n) for r in replicas])
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


@ENGINES.register("ray_vllm")
class RayVLLMEngine(Engine):
    """`data_parallel_size` offline vLLM replicas as Ray actors, each on `tensor_parallel_size`
    GPUs (on CPU: one core each), on this node or on a running Ray cluster
    (`ray_address=auto`): engine.options, VLLMOptions. Request i of a call goes to replica
    i % data_parallel_size with the seed it would have had in one engine, and the results come
    back in request order: a run's samples do not depend on how many replicas drew them."""

    @classmethod
    def preflight(cls, engine: EngineConfig) -> None:
        """`engine.options.ray_address`: none (a Ray instance of this process), `auto`, or
        [ray://]host:port of a head that accepts a connection within 5 s."""
        import re
        import socket

        address = VLLMOptions(**engine.options).ray_address
        if address in (None, "auto", "local"):
            return
        match = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d{1,5})", str(address))
        if not match:
            raise CrescentError(f"engine.options.ray_address={address!r}: expected auto or "
                                f"[ray://]host:port (a Ray head)")
        try:
            socket.create_connection((match[1], int(match[2])), timeout=5).close()
        except OSError as e:
            raise CrescentError(f"engine.options.ray_address={address}: no Ray head answers there "
                                f"({e.strerror or e})") from None

    def __init__(self, engine: EngineConfig, model: ModelConfig):
        import ray
        import torch

        # Converted once here, so that the replicas find the built-in model in the cache.
        self.model_path = resolve_model(model.name)
        options = VLLMOptions(**engine.options)
        if not ray.is_initialized():
            # None starts a Ray instance for this process; "auto" joins the running cluster.
            ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False)
        gpus = options.tensor_parallel_size if torch.cuda.is_available() else 0
        # Inside an actor that already holds its GPUs, tensor parallelism uses processes:
        # vLLM's Ray executor would ask the cluster for GPUs a second time and wait forever.
        replica = ray.remote(num_cpus=1, num_gpus=gpus)(_Replica)
        executor = "mp" if gpus > 1 else None
        count = options.data_parallel_size
        self.replicas = []
        for r in range(count):
            env = {}
            if not gpus:
                # Each CPU replica binds its threads to its own cores: bound to all of them,
                # two replicas spin against each other many times slower than one.
                env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, core_share(r, count)))
            self.replicas.append(replica.options(runtime_env={"env_vars": env})
                                 .remote(engine, model, executor))

    def close(self) -> None:
        import ray

        for replica in self.replicas:
            ray.kill(replica)
        self.replicas = []

    # lm-eval runs the replicas on Ray itself
    lm_eval_model = VLLMEngine.lm_eval_model
    lm_eval_likelihood_model = VLLMEngine.lm_eval_likelihood_model

    def session(self, sampling, n):
        return RaySession(self.replicas, sampling, n)

    def chat(self, conversations, sampling, n, seed):
        return through_session(self, list(conversations), sampling, n, seed)

    def complete(self, prompts, sampling, n, seed):
        return through_session(self, list(prompts), sampling, n, seed)
