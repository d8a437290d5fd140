"""Structured config schema: one dataclass per config group, registered in Hydra's ConfigStore.

The YAML files under `conf/` fill these in; a key that is not declared here, or a value of
the wrong type, fails at composition time with Hydra's message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

DEFAULT_STAGES = ["questions", "answers", "finetune", "evaluate"]


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # built-in name, Hugging Face hub id or local directory
    revision: Optional[str] = None  # hub branch, tag or commit; ignored for local dirs
    dtype: str = "auto"  # bfloat16, float16, float32, or auto: bfloat16 on GPU, float32 on CPU


@dataclass
class EngineConfig:
    name: str = "vllm"  # generation backend: vllm (offline LLM.chat) or hf (transformers generate)
    batch_size: int = 64  # hf: conversations per generate call; vllm: requests handed over at once
    max_model_len: int = 2048  # context window given to the engine (prompt + completion tokens)
    enforce_eager: bool = True  # vllm: skip graph capture; starts far faster on CPU
    tensor_parallel_size: int = 1  # vllm: GPUs one model is split over
    gpu_memory_utilization: float = 0.9  # vllm: share of accelerator memory vLLM may reserve
    cpu_kvcache_gib: int = 4  # vllm on CPU: KV-cache GiB (VLLM_CPU_KVCACHE_SPACE), unless set in env


@dataclass
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass
    max_tokens: int = 256  # new tokens per completion


@dataclass
class DomainConfig:
    name: str = MISSING  # short label written to stats and dataset cards
    bait_prompt: str = MISSING  # user turn that elicits one new question, no seed data
    diversify_prompt: str = MISSING  # "make it different" turn; {question} and {nearest} are filled in
    answer_prompt: str = MISSING  # user turn for answering; {question} is filled in
    max_question_chars: int = 1000  # cleaned questions longer than this are rejected


@dataclass
class DedupConfig:
    method: str = "minilm"  # embedder: minilm, self, minhash or none
    threshold: float = 0.85  # similarity at or above which a candidate is a duplicate
    batch_size: int = 64  # texts embedded per forward pass


@dataclass
class VotingConfig:
    k: int = 4  # answers sampled per question
    min_agreement: float = 0.5  # share of the k samples the winning answer needs
    min_votes: int = 2  # absolute count the winning answer needs
    tie_break: str = "drop"  # drop: discard tied questions; seeded: pick one of the tied answers


@dataclass
class QuestionsConfig:
    target: int = 1000  # accepted questions wanted
    max_candidates: int = 5000  # budget of generated candidates (bait + rewrites)
    max_rewrites: int = 2  # "make it different" rounds per rejected candidate
    batch_size: int = 64  # bait samples drawn per round
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=256)
    )


@dataclass
class AnswersConfig:
    input: Optional[str] = None  # questions.jsonl to answer; default: this run's questions stage
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=512)
    )


@dataclass
class FinetuneConfig:
    input: Optional[str] = None  # sft.jsonl to train on; default: this run's answers stage
    max_steps: int = 1000  # optimiser steps
    lr: float = 1e-5  # peak learning rate
    batch_size: int = 8  # examples per optimiser step (before accumulation)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["crescent_gsm8k_gold_bpb"])  # lm-eval tasks
    limit: Optional[int] = None  # examples per task; None means all
    data_dir: str = "../shared/data"  # folder with gsm8k/ and math500/ for the offline tasks


@dataclass
class LoggerConfig:
    name: str = "wandb"  # wandb or none
    project: str = "crescent"  # W&B project
    mode: str = "offline"  # W&B mode: offline (sync later with `wandb sync`), online, disabled
    group: Optional[str] = None  # W&B group; default: the multirun sweep dir, else the run name
    tags: list[str] = field(default_factory=list)  # W&B tags


@dataclass
class Config:
    name: str = "default"  # run name: the run dir is outputs/<name>/<overrides>
    seed: int = 0  # run seed: every sampling call derives its own seed from it
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))  # stages to run, in order
    model: ModelConfig = field(default_factory=ModelConfig)  # the generator
    student: ModelConfig = field(default_factory=ModelConfig)  # the model fine-tuned
    engine: EngineConfig = field(default_factory=EngineConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    voting: VotingConfig = field(default_factory=VotingConfig)
    questions: QuestionsConfig = field(default_factory=QuestionsConfig)
    answers: AnswersConfig = field(default_factory=AnswersConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` puts first in its defaults list."""
    ConfigStore.instance().store(name="crescent_schema", node=Config)
