"""What every engine shares: requests, generations, seeds, and the engine base class.

An engine takes chat conversations (or raw prompts) and returns `n` sampled completions of
each. Engines are registered in `crescent.registry.ENGINES` under their `engine.name` and
opened by `crescent.engines.make_engine`.

Seed policy: every request carries a seed that the caller derives from the run seed and what
the request is (`derive_seed`: a candidate's number, a question's id); a `chat` call over many
gives request i `derive_seed(seed, i)`, because the same seed on identical prompts returns
identical samples. The same run seed therefore reproduces the same samples on the same engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from crescent.config import EngineConfig, ModelConfig, SamplingConfig
from crescent.errors import CrescentError

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


@dataclass
class LmEvalModel:
    """How lm-eval loads a model to score it as this engine would run it: `--model`,
    `--model_args`, `--batch_size`, `--device` and the environment of the scoring process."""

    type: str
    args: dict
    batch_size: int | str
    device: str | None = None
    env: dict[str, str] = field(default_factory=dict)


class Engine:
    """The interface the stages generate through. A subclass registered with
    `@ENGINES.register(name)` is built as `open(engine_cfg, model_cfg)`; one that can stream
    requests also has `session(sampling, n)` (crescent/engines/streaming.py)."""

    model_path: str  # the local model dir (or the served model's name)

    @classmethod
    def open(cls, engine: EngineConfig, model: ModelConfig) -> Engine:
        return cls(engine, model)

    @classmethod
    def preflight(cls, engine: EngineConfig) -> None:
        """Before any stage that generates: what can be checked of the settings here (a
        server's address, an endpoint that answers), each mistake one line."""

    def chat(self, conversations: Sequence[Conversation], sampling: SamplingConfig, n: int,
             seed: int) -> list[Generation]:
        raise NotImplementedError

    def complete(self, prompts: Sequence[str], sampling: SamplingConfig, n: int,
                 seed: int) -> list[Generation]:
        """Raw text continued as it is, no chat template applied (the Magpie baseline's
        pre-query template); generation stops at the model's end-of-sequence token."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the engine holds (called by `release_engines`)."""

    @classmethod
    def lm_eval_model(cls, engine: EngineConfig, pretrained: str, dtype: str) -> LmEvalModel:
        """The lm-eval model type that scores `pretrained` as this engine runs it."""
        raise CrescentError(
            f"engine.name={engine.name!r}: this engine does not load models itself, and the "
            f"evaluate stage scores with lm-eval inside this job; run the evaluate stage with "
            f"an engine that does (vllm, ray_vllm or hf)")

    @classmethod
    def lm_eval_likelihood_model(cls, engine: EngineConfig, pretrained: str,
                                 dtype: str) -> LmEvalModel:
        """The lm-eval model type for tasks that score given text (log-likelihood, multiple
        choice, bits per byte) rather than generate it: the same as `lm_eval_model` unless
        the engine knows a faster one."""
        return cls.lm_eval_model(engine, pretrained, dtype)


def derive_seed(*parts: object) -> int:
    """A stable seed from any parts (run seed, stage, round, index), never Python's hash().

    62 bits: vLLM seeds the j-th of `n` parallel samples with `seed + j`, so requests with
    nearby seeds would share samples; a wide space makes such overlaps vanishingly rare.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2
