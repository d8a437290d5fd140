"""Structured config schema: one dataclass per config group, registered in Hydra's ConfigStore.

Every default lives here, once: a group YAML under `conf/` holds only what its option changes
(tests/test_config.py fails when a YAML repeats a default). A key that is not declared here, a
value of the wrong type, or a choice outside its Enum fails when the config is composed, before
any stage runs; `validate` checks the ranges that types cannot express, and the names of the
extension points (engine, vote rule, answer format, objective: crescent/registry.py), which
plug-ins can extend and an Enum therefore cannot list, and the selected component's own
settings (its group's `options` node, against the dataclass it registered).

A setting marked `operational` (`field(..., metadata=OPERATIONAL)`: where servers are, how
many requests are in flight, how often a checkpoint is written) changes how a run goes, never
what it writes: cache keys hold it at its default (`operational_defaults`), so moving servers
reuses every entry.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from crescent.options import OPERATIONAL, MinHashOptions, OpenAIOptions, SelfOptions, VLLMOptions

DEFAULT_STAGES = ["questions", "answers", "finetune", "evaluate"]
# Keys that never change what a run writes, each with every key under it. They and the
# settings marked operational are left out of run-dir names (`not_in_run_dir`, conf/config.yaml)
# and of the settings a report tells runs apart by (crescent/report/runs.py); no stage keys them.
NOT_OUTPUT = ("name", "experiment", "stages", "cache_dir", "verbose", "accept_stale", "plugins",
              "logger", "hydra")
# Inputs named by a path: their content is in cache keys, but a path is no dir name (a run dir
# that holds another input's output is refused: pipeline._check_key).
INPUT_PATHS = ("answers.input", "finetune.input")


class Choice(str, Enum):
    """A choice-valued setting. Members are strings (`cfg.engine.name == "hf"` holds, JSON and
    cache keys see the plain value) and print, format and repr as their value."""

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def _choice(name: str, *values: str) -> type[Choice]:
    # Member names equal their values: OmegaConf converts a string by member name.
    return Choice(name, {v: v for v in values}, module=__name__, qualname=name)


Dtype = _choice("Dtype", "auto", "bfloat16", "float16", "float32")
TieBreak = _choice("TieBreak", "drop", "seeded")
Representative = _choice("Representative", "first", "shortest", "canonical")
QuestionSource = _choice("QuestionSource", "bait", "magpie", "seed_aug")
FinetuneMode = _choice("FinetuneMode", "full", "lora")
Scheduler = _choice("Scheduler", "cosine", "linear", "constant")
SubsetDraw = _choice("SubsetDraw", "first", "seeded")
# Lightning's precision strings, and its accelerators and strategies (StrategyRegistry).
Precision = _choice("Precision", "auto", "32-true", "16-mixed", "bf16-mixed", "16-true",
                    "bf16-true", "64-true", "transformer-engine", "transformer-engine-float16")
Accelerator = _choice("Accelerator", "auto", "cpu", "gpu", "cuda", "mps", "tpu")
Strategy = _choice(
    "Strategy", "auto", "single_device", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook",
    "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false", "fsdp",
    "fsdp_cpu_offload", "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2",
    "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme", "xla", "single_xla")
LoggerName = _choice("LoggerName", "wandb", "none")
LoggerMode = _choice("LoggerMode", "offline", "online", "disabled")


@dataclass
class ModelConfig:
    name: str = MISSING  # built-in name, Hugging Face hub id or local directory
    revision: str | None = None  # hub branch, tag or commit; ignored for local dirs
    dtype: Dtype = Dtype.auto  # bfloat16, float16, float32, or auto: bfloat16 on GPU and on CPUs with amx_bf16/avx512_bf16, else float32 (crescent/infra/precision.py)


@dataclass
class EngineConfig:
    name: str = "vllm"  # backend (crescent/engines/): vllm (offline, requests streamed), ray_vllm (vLLM replicas on Ray), hf (transformers generate), openai (servers), or a plug-in's
    batch_size: int = 256  # samples in flight (all replicas together; n samples of a question count n); hf: per generate call
    max_model_len: int = 2048  # context window given to the engine (prompt + completion tokens)
    options: dict[str, Any] = field(default_factory=dict)  # the engine's own settings: VLLMOptions (vllm, ray_vllm), OpenAIOptions (openai), or a plug-in's
    # renamed (RENAMED): each engine's settings are its options, engine.options.<name>
    enforce_eager: Any = None
    tensor_parallel_size: Any = None
    data_parallel_size: Any = None
    ray_address: Any = None
    gpu_memory_utilization: Any = None
    cpu_kvcache_gib: Any = None
    endpoints: Any = None
    served_model: Any = None
    concurrency: Any = None
    max_retries: Any = None
    retry_backoff_s: Any = None
    request_timeout_s: Any = None


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
    answer_type: str = "math"  # answer format (crescent/domains/): how final answers are read and compared: math (numbers, LaTeX), text, or a plug-in's
    final_answer_line: str = "The answer is: {answer}"  # last line of every training response
    train_prompt: str = "{question}"  # the training pairs' user turn; {question} is filled in
    max_question_chars: int = 1000  # cleaned questions longer than this are rejected
    seed_prompt: str | None = None  # questions.source=seed_aug: user turn; {seed} is filled in
    magpie_system: str | None = None  # questions.source=magpie: system turn; None: the template's own
    input_prompt: str | None = None  # user turn asking for test inputs of a question ({question}), answered once, greedy, before the vote; None: none (an answer format that runs answers reads them: code)
    options: dict[str, Any] = field(default_factory=dict)  # a plug-in answer format's own settings


@dataclass
class DedupConfig:
    method: str = "minilm"  # embedder (crescent/methods/dedup.py): minilm, self, minhash, none, or a plug-in's
    threshold: float = 0.85  # similarity at or above which a candidate is a duplicate
    batch_size: int = 64  # texts embedded per forward pass
    options: dict[str, Any] = field(default_factory=dict)  # the embedder's own settings: MinHashOptions (minhash), SelfOptions (self) in crescent/options.py, or a plug-in's
    # renamed (RENAMED): each embedder's settings are its options, dedup.options.<name>
    num_perm: Any = None
    shingle: Any = None
    depth: Any = None


@dataclass
class VotingConfig:
    rule: str = "majority"  # vote rule (crescent/methods/voting.py): majority, or a plug-in's
    k: int = 4  # answers sampled per question
    min_agreement: float = 0.5  # share of the k samples the winning answer needs
    min_votes: int = 2  # absolute count the winning answer needs
    tie_break: TieBreak = TieBreak.drop  # drop: discard tied questions; seeded: pick one of the tied answers
    representative: Representative = Representative.first  # which response of the winning group becomes the training target: first, shortest, canonical
    drop_truncated: bool = True  # a sample cut at answers.sampling.max_tokens abstains (its answer was never written)
    pairs: int = 1  # preference pairs per kept question (prefs.jsonl): a winning sample chosen, a losing one rejected; 0: none
    options: dict[str, Any] = field(default_factory=dict)  # a plug-in vote rule's own settings
    # renamed (RENAMED): the study controls are the `control` group's now
    gold_control: Any = None
    rft: Any = None
    shuffle_labels: Any = None
    match_kept_of_k: Any = None


@dataclass
class ControlConfig:
    """A study's controls: what the answers stage trains on in place of the vote's kept pairs,
    to tell what the vote adds (conf/setting/: gold, rft, shuffled, no_vote). The samples are
    the same for every control: like the vote, they are out of the samples' key."""

    gold: str | None = None  # train on as many of this file's questions (GSM8K style: question, gold solution ending in `#### n`) as the vote keeps, with their gold solutions
    rft: bool = False  # rejection-sampling fine-tuning: every question of answers.input with a gold answer trains on the first of its first k samples whose answer is right; questions with none are dropped (the ceiling the vote could reach: the model's own style, right labels)
    shuffle_labels: bool = False  # each kept question trains on another kept question's response (seeded), so the data keep the vote's format and lose its answers
    match_kept_of_k: int | None = None  # keep at most as many questions as voting with this k (other settings as here) keeps from the same samples: the no-vote control at the consensus set's size


@dataclass
class QuestionsConfig:
    target: int = 1000  # accepted questions wanted
    max_candidates: int = 5000  # budget of generated candidates (bait + rewrites)
    max_rewrites: int = 2  # "make it different" rounds per rejected candidate
    source: QuestionSource = QuestionSource.bait  # fresh candidates: bait (domain.bait_prompt), magpie (bare pre-query chat template), seed_aug (rewrites of questions.seeds)
    seeds: str | None = None  # source=seed_aug: JSON Lines of seed questions (a `question` field each)
    batch_size: int = 64  # candidates decided together (one embedding pass and index search)
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.95, max_tokens=256)
    )


@dataclass
class AnswersConfig:
    input: str | None = None  # questions.jsonl to answer, or a stage's name; default: this run's questions stage. ${data:gsm8k/train.jsonl} names a benchmark file
    limit: int | None = None  # answer only the input's first N questions; None: all
    samples: int | None = None  # k_max: samples drawn per question (cached); the vote uses the first voting.k; None: voting.k
    decontaminate: list[str] = field(  # benchmark test sets (JSON Lines in the benchmark data dir)
        default_factory=lambda: ["gsm8k/test.jsonl", "math500/test.jsonl"]
    )
    ngram: int = 13  # word n-gram length of the contamination check
    max_overlap: float = 0.0  # share of a question's n-grams found in a benchmark above which it is dropped
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.95, max_tokens=512)
    )


@dataclass
class FinetuneConfig:
    objective: str = "sft"  # training objective (crescent/objectives/): sft, dpo, or a plug-in's
    options: dict[str, Any] = field(default_factory=dict)  # a plug-in objective's own settings
    init: str | None = None  # start from this config's fine-tune with that objective (sft: SFT then DPO); null: the student
    input: str | None = None  # sft.jsonl or a `datasets` save_to_disk dir, or a stage's name (its files); default: the answers stage's (or a filter's listed before finetune)
    max_examples: int | None = None  # train on the input's first N conversations; None: all
    fraction: float = 1.0  # then train on the first share of them (a data-volume point: 0.25, 0.5)
    # which conversations max_examples and fraction keep: the first (nested volume sets), or a
    # sample seeded by finetune.seed, so that replicas redraw the training subset from the pool
    subset: SubsetDraw = SubsetDraw.first
    seed: int | None = None  # shuffle, validation split and LoRA init; None: the run seed (a replica key that leaves the data cached)
    max_steps: int = 1000  # optimiser steps; -1: max_epochs alone decides
    max_epochs: int = -1  # passes over the training split; -1: max_steps alone decides
    lr: float = 1e-5  # peak learning rate
    batch_size: int = 8  # examples per micro-batch per device (before accumulation)
    accumulate_grad_batches: int = 1  # micro-batches per optimiser step
    max_length: int = 2048  # tokens per example (or packed row); longer ones are cut from the right
    packing: bool = False  # pack several examples into one row of max_length (position ids restart): fewer, fuller steps
    padding_free: bool = True  # sft: each micro-batch's examples run as one row, no padding (position ids restart, no attention across examples): the same steps and loss, no compute on padding
    val_fraction: float = 0.05  # share of examples held out for validation; 0: none
    val_every_n_steps: int = 0  # validate every N optimiser steps; 0: at epoch ends only
    shuffle: bool = True  # reshuffle the training split every epoch (seeded by the run seed)
    mode: FinetuneMode = FinetuneMode.full  # full: every weight; lora: low-rank adapters, merged into the saved model
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # dropout on the LoRA branch
    lora_base_dtype: Dtype = Dtype.auto  # lora: dtype the frozen base weights are held and multiplied in; the adapters, their optimiser and the residual stream stay float32. auto: student.dtype's (bfloat16 on GPU and on CPUs with bf16 units, else float32)
    lora_target_modules: list[str] = field(  # module names that get adapters; ["all-linear"] works too
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"]
    )
    # renamed (RENAMED): DPO's settings are its options, finetune.options.{beta,margin_weight,sft_weight}
    beta: float | None = None
    margin_weight: bool | None = None
    sft_weight: float | None = None
    weight_decay: float = 0.0  # AdamW decoupled weight decay (not on biases and norms)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    warmup_steps: int = 0  # linear warm-up steps; 0: warmup_ratio decides
    warmup_ratio: float = 0.03  # warm-up as a share of all optimiser steps, when warmup_steps is 0
    scheduler: Scheduler = Scheduler.cosine  # after warm-up: cosine, linear (both decay to min_lr_ratio) or constant
    min_lr_ratio: float = 0.0  # final learning rate as a share of lr
    gradient_clip_val: float = 1.0  # clip the gradient norm to this; 0: no clipping
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    fused_loss: bool = True  # LM head + cross-entropy in chunks on trained tokens only (no full logits)
    precision: Precision = Precision.auto  # Lightning precision; auto: bf16-mixed on GPU, 32-true on CPU (crescent/infra/precision.py)
    accelerator: Accelerator = Accelerator.auto  # Lightning accelerator: auto, cpu, gpu, cuda, mps, tpu
    devices: str = "auto"  # Lightning devices: auto, a count ("4") or a list ("0,1")
    strategy: Strategy = Strategy.auto  # Lightning strategy: auto, ddp, fsdp, deepspeed_stage_2, ...
    num_nodes: int = 1  # machines; devices x num_nodes processes in all
    checkpoint_every_n_steps: int = field(default=100, metadata=OPERATIONAL)  # write checkpoints/last.ckpt every N steps (resume point)
    keep_checkpoints: bool = field(default=False, metadata=OPERATIONAL)  # keep checkpoints/ once the model is saved
    log_every_n_steps: int = field(default=10, metadata=OPERATIONAL)  # logger cadence in optimiser steps
    num_workers: int = field(default=0, metadata=OPERATIONAL)  # DataLoader worker processes
    progress_bar: bool = field(default=True, metadata=OPERATIONAL)  # a bar over the fine-tune's optimiser steps, with the loss


@dataclass
class EvalConfig:
    # lm-eval tasks: the offline crescent_* ones (crescent/tasks/) or stock ones (need the hub)
    tasks: list[str] = field(default_factory=lambda: ["crescent_gsm8k_gold_bpb"])
    limit: int | None = None  # examples per task; None means all
    # task -> examples, in place of `limit` for that task (a generation task on fewer documents
    # than a cheap log-likelihood one); each task's first N documents, as `limit` takes them
    limits: dict[str, int | None] = field(default_factory=dict)
    num_fewshot: int | None = None  # few-shot examples for every task; None: each task's own
    # gsm8k/ and math500/ for the offline tasks and decontamination; None: $CRESCENT_DATA, else
    # the crescent cache's data/ (`crescent-data fetch`), resolved at run time (crescent/infra/data.py)
    data_dir: str | None = None
    # label -> model (built-in name, hub id or local dir) to score instead of the default pair:
    # `base` (the student) and `finetuned` (this run's finetune/model, when it exists)
    models: dict[str, str] = field(default_factory=dict)
    # dirs of lm-eval task YAMLs beside the shipped crescent/tasks/ (a domain's own benchmarks)
    include_path: list[str] = field(default_factory=list)
    apply_chat_template: bool = True  # prompts and few-shot turns in each model's chat template
    fewshot_as_multiturn: bool = True  # few-shot examples as user/assistant turns (with template)
    # requests answered between two saves of the answers: a stopped scoring resumes from the
    # last save (on 2 CPU cores 512 GSM8K answers take ~40 min). Each chunk is batched alone:
    # in bfloat16 that may flip a few greedy answers, as another engine.batch_size does.
    save_every: int = field(default=512, metadata=OPERATIONAL)


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.wandb  # wandb or none
    project: str = "crescent"  # W&B project
    mode: LoggerMode = LoggerMode.offline  # W&B mode: offline (sync later with `wandb sync`), online, disabled
    group: str | None = None  # W&B group; default: the multirun sweep dir, else the run name
    tags: list[str] = field(default_factory=list)  # W&B tags


@dataclass
class Config:
    name: str = "default"  # run name: the run dir is outputs/<name>/<overrides>
    seed: int = 0  # run seed: every sampling call derives its own seed from it
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))  # stages to run, in order
    cache_dir: str | None = "outputs/cache"  # stage outputs shared by config hash; null: none
    accept_stale: bool = False  # reuse a run-dir stage made by another stage version (pipeline.py)
    verbose: bool = False  # show vLLM/transformers/lm-eval/Lightning logs; off: crescent's lines only
    plugins: list[str] = field(default_factory=list)  # modules imported first: they register engines, vote rules, answer formats, objectives, stages
    stage_options: dict[str, Any] = field(default_factory=dict)  # a plug-in stage's own settings, by stage name
    model: ModelConfig = field(default_factory=ModelConfig)  # the generator
    student: ModelConfig = field(default_factory=ModelConfig)  # the model fine-tuned
    engine: EngineConfig = field(default_factory=EngineConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    voting: VotingConfig = field(default_factory=VotingConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    questions: QuestionsConfig = field(default_factory=QuestionsConfig)
    answers: AnswersConfig = field(default_factory=AnswersConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


# Ranges that types cannot express: (key, test, what is expected). Checked before any stage.
_SHARE = (lambda v: 0 <= v <= 1, "a share in [0, 1]")
_POSITIVE = (lambda v: v >= 1, "an integer >= 1")
_COUNT = (lambda v: v >= 0, "an integer >= 0")
_OPTIONAL_POSITIVE = (lambda v: v is None or v >= 1, "null or an integer >= 1")
_SAMPLING = [("temperature", lambda v: v >= 0, "a number >= 0"),
             ("top_p", lambda v: 0 < v <= 1, "a share in (0, 1]"),
             ("max_tokens", *_POSITIVE)]
RANGES = [
    ("engine.batch_size", *_POSITIVE), ("engine.max_model_len", *_POSITIVE),
    ("eval.save_every", *_POSITIVE),
    ("domain.max_question_chars", *_POSITIVE),
    ("dedup.threshold", *_SHARE), ("dedup.batch_size", *_POSITIVE),
    ("voting.k", *_POSITIVE), ("voting.min_agreement", *_SHARE), ("voting.min_votes", *_POSITIVE),
    ("questions.target", *_POSITIVE), ("questions.max_candidates", *_POSITIVE),
    ("questions.max_rewrites", *_COUNT), ("questions.batch_size", *_POSITIVE),
    *[(f"questions.sampling.{key}", test, what) for key, test, what in _SAMPLING],
    ("answers.samples", *_OPTIONAL_POSITIVE), ("answers.limit", *_OPTIONAL_POSITIVE),
    ("answers.ngram", *_POSITIVE), ("answers.max_overlap", *_SHARE),
    *[(f"answers.sampling.{key}", test, what) for key, test, what in _SAMPLING],
    ("control.match_kept_of_k", *_OPTIONAL_POSITIVE), ("voting.pairs", *_COUNT),
    ("finetune.max_examples", *_OPTIONAL_POSITIVE),
    ("finetune.fraction", lambda v: 0 < v <= 1, "a share in (0, 1]"),
    ("finetune.max_steps", lambda v: v == -1 or v >= 1, "-1 or an integer >= 1"),
    ("finetune.max_epochs", lambda v: v == -1 or v >= 1, "-1 or an integer >= 1"),
    ("finetune.lr", lambda v: v > 0, "a number > 0"),
    ("finetune.batch_size", *_POSITIVE),
    ("finetune.accumulate_grad_batches", *_POSITIVE), ("finetune.max_length", *_POSITIVE),
    ("finetune.val_fraction", lambda v: 0 <= v < 1, "a share in [0, 1)"),
    ("finetune.val_every_n_steps", *_COUNT), ("finetune.lora_r", *_POSITIVE),
    ("finetune.lora_dropout", lambda v: 0 <= v < 1, "a share in [0, 1)"),
    ("finetune.warmup_steps", *_COUNT), ("finetune.warmup_ratio", *_SHARE),
    ("finetune.min_lr_ratio", *_SHARE), ("finetune.gradient_clip_val", lambda v: v >= 0,
                                         "a number >= 0 (0: no clipping)"),
    ("finetune.num_nodes", *_POSITIVE), ("finetune.checkpoint_every_n_steps", *_COUNT),
    ("finetune.num_workers", *_COUNT), ("eval.limit", *_OPTIONAL_POSITIVE),
]


def samples_per_question(cfg: DictConfig) -> int:
    """k_max: the samples drawn per question (`answers.samples`, default `voting.k`); the vote
    takes the first voting.k of them, so voting.k above it is an error."""
    from crescent.errors import CrescentError

    k = OmegaConf.select(cfg, "voting.k", default=None)
    k_max = OmegaConf.select(cfg, "answers.samples", default=None) or k
    if k is not None and k > k_max:
        raise CrescentError(f"voting.k={k} is more than answers.samples={k_max}: "
                            f"the vote takes the first voting.k of the samples drawn")
    return k_max


# Settings that moved, old key -> where they live now. An old key still works: its value moves
# to the new place, with a one-line warning (the options' dataclasses: above for engines and
# embedders, crescent/objectives for DPO; the study controls: ControlConfig).
RENAMED = {"finetune.beta": "finetune.options.beta",
           "finetune.margin_weight": "finetune.options.margin_weight",
           "finetune.sft_weight": "finetune.options.sft_weight",
           **{f"engine.{name}": f"engine.options.{name}" for name in (
               *(f.name for f in dataclasses.fields(VLLMOptions)),
               *(f.name for f in dataclasses.fields(OpenAIOptions)))},
           **{f"dedup.{name}": f"dedup.options.{name}" for name in (
               *(f.name for f in dataclasses.fields(MinHashOptions)),
               *(f.name for f in dataclasses.fields(SelfOptions)))},
           "voting.gold_control": "control.gold", "voting.rft": "control.rft",
           "voting.shuffle_labels": "control.shuffle_labels",
           "voting.match_kept_of_k": "control.match_kept_of_k"}


def rename(cfg: DictConfig) -> None:
    """Move every old key that is set (RENAMED) to its new place, unless that is set too
    (given, or other than its default)."""
    import logging

    defaults = OmegaConf.structured(Config)
    for old, new in RENAMED.items():
        value = OmegaConf.select(cfg, old)
        if value is None:
            continue
        if OmegaConf.select(cfg, new) == OmegaConf.select(defaults, new, default=None):
            OmegaConf.update(cfg, new, value, force_add=True)
        OmegaConf.update(cfg, old, None)
        logging.getLogger(__name__).warning(
            "crescent: warning: %s is %s now (moved there for this run)", old, new)


def validate(cfg: DictConfig) -> None:
    """Fail before the first stage on a value that would fail (or silently do nothing) later.

    Choice-valued keys are Enums, checked by OmegaConf when the config is composed; this
    checks ranges and the relations between keys."""
    from crescent.errors import CrescentError

    if not cfg.stages:
        raise CrescentError(f"stages: none given; name some of {', '.join(DEFAULT_STAGES)}")
    for key, test, expected in RANGES:
        value = OmegaConf.select(cfg, key)
        if not test(value):
            raise CrescentError(f"{key}={value}: expected {expected}")
    from crescent.registry import COMPONENTS, OBJECTIVES, STAGES

    rename(cfg)
    for registry in COMPONENTS:
        name = OmegaConf.select(cfg, registry.key)
        registry.check(name)  # one line naming the known ones
        # The component reads its settings, defaults filled in, from its group's options.
        options = registry.options(name, OmegaConf.select(cfg, registry.options_key))
        OmegaConf.update(cfg, registry.options_key, options, merge=False)
    for name in dict.fromkeys([*cfg.stages, *(cfg.get("stage_options") or {})]):
        where = STAGES.options_key_of(name)
        options = STAGES.options(name, OmegaConf.select(cfg, where), where)
        if options:
            OmegaConf.update(cfg, where, options, merge=False)
    if OmegaConf.select(cfg, "finetune.init"):
        OBJECTIVES.check(cfg.finetune.init)
    voting, finetune = cfg.voting, cfg.finetune
    if voting.min_votes > voting.k:
        raise CrescentError(f"voting.min_votes={voting.min_votes} is more than voting.k="
                            f"{voting.k}: no question could be kept")
    k_max = samples_per_question(cfg)
    match = cfg.control.match_kept_of_k
    if match is not None and match > k_max:
        raise CrescentError(f"control.match_kept_of_k={match} is more than the samples drawn "
                            f"per question (answers.samples={k_max})")
    for task, limit in cfg.eval.limits.items():
        if not _OPTIONAL_POSITIVE[0](limit):
            raise CrescentError(f"eval.limits.{task}={limit}: expected {_OPTIONAL_POSITIVE[1]}")
    if finetune.max_steps == -1 and finetune.max_epochs == -1:
        raise CrescentError("finetune.max_steps and finetune.max_epochs are both -1: "
                            "set one of them")


def changes_no_output(key: str, cfg: DictConfig | None = None) -> bool:
    """Whether setting `key` (as an override names it: `+`/`~` allowed) leaves what a run
    writes as it is: a NOT_OUTPUT key or one under it, or a setting marked operational (with
    `cfg`, the options of the components it selects too)."""
    key = key.lstrip("+~")
    if key.split(".")[0] in NOT_OUTPUT:
        return True
    return key in (operational_defaults(cfg) if cfg is not None else dict(_schema_operational()))


def _not_in_run_dir(*, _root_: DictConfig) -> list[str]:
    """The keys of this command's overrides that its run dir's name leaves out (Hydra's
    `override_dirname.exclude_keys`): those that change no output, and INPUT_PATHS."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # As typed: an override's value (`answers.input=${data:...}`) is not resolved here.
    overrides = OmegaConf.to_container(_root_.hydra.overrides.task, resolve=False)
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)]
    return [key for key in keys if key in INPUT_PATHS or changes_no_output(key, _root_)]


def operational_defaults(cfg: DictConfig) -> dict[str, Any]:
    """Dotted key -> default of every setting marked operational, in the schema and in the
    options of the components `cfg` selects."""
    from crescent.registry import COMPONENTS, STAGES

    found = dict(_schema_operational())
    for registry in COMPONENTS:
        name = OmegaConf.select(cfg, registry.key, default=None)
        schema = registry.options_schema(name) if name else None
        if schema is not None:
            found.update(_operational(schema(), f"{registry.options_key}."))
    for name in OmegaConf.select(cfg, "stage_options", default=None) or {}:
        schema = STAGES.options_schema(name)
        if schema is not None:
            found.update(_operational(schema(), f"{STAGES.options_key_of(name)}."))
    return found


@functools.cache
def _schema_operational() -> tuple:
    """The schema's operational settings: walked once a process (every cache key asks)."""
    return tuple(_operational(Config(), ""))


def _operational(defaults, prefix: str):
    for f in dataclasses.fields(defaults):
        value = getattr(defaults, f.name)
        if f.metadata.get("operational"):
            yield prefix + f.name, value
        elif dataclasses.is_dataclass(value):
            yield from _operational(value, f"{prefix}{f.name}.")


def register_configs() -> None:
    """Register the schema that `conf/config.yaml` puts first in its defaults list, the
    `path_safe` resolver that keeps run-dir names one directory deep, `not_in_run_dir`, the
    overrides they leave out, `data`, which
    names a benchmark file where this run finds its data (`${data:gsm8k/train.jsonl}`), and
    `humaneval`, HumanEval's problems as questions with their tests (`${humaneval:}`)."""
    ConfigStore.instance().store(name="crescent_schema", node=Config)
    # `model.name=/data/llama3` in a run-dir name would otherwise nest directories.
    OmegaConf.register_new_resolver("path_safe", lambda text: text.replace("/", "_"),
                                    replace=True)
    OmegaConf.register_new_resolver("data", _data_file, replace=True)
    OmegaConf.register_new_resolver("humaneval", _humaneval_questions, replace=True)
    OmegaConf.register_new_resolver("not_in_run_dir", _not_in_run_dir, replace=True)


def _humaneval_questions() -> str:
    from crescent.tasks.code import humaneval_questions

    return str(humaneval_questions())


def _data_file(rel: str, *, _root_: DictConfig) -> str:
    from crescent.infra.data import require

    return str(require(OmegaConf.select(_root_, "eval.data_dir", default=None), rel))
