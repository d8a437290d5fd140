"""Fine-tuning objectives, registered in `crescent.registry.OBJECTIVES` by `finetune.objective`.

An objective is a subclass of `crescent.methods.training.CausalLMModule` (TRL's layout: one
trainer per objective over shared bases, `compute_loss` the difference). It supplies
  input_file                 the answers-stage file it trains on by default (`sft.jsonl`)
  load_examples(path)        the examples of `finetune.input` (or of that file)
  data_module(examples, tokenizer, fcfg, seed)   a LightningDataModule serving batches
  compute_loss(batch)        (loss, weight): the loss and its weight in the validation mean
  reads                      other config keys it reads (`("voting", "domain")`): they join
                             finetune's cache key, so changing them trains anew
and, before training, `context` (an `ObjectiveContext`, on the module and on its data module):
the run's config, its answer format, the vote over any responses, the answers stage's samples
(every question's k samples, not only the kept ones) and an engine for online objectives. The
data module is a `crescent.methods.training.TrainData`. An objective inherits the model (full or LoRA), the optimiser and schedule, the checkpoint contents, and
from the stage the per-step metrics, resume, W&B logging and the merged save. `sft.py` is the
built-in one; a subclass of `SFTModule` that overrides only `compute_loss` reuses its data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ObjectiveContext:
    """What an objective sees besides `finetune.*`. It reads only the keys its `reads`
    declares (they are in finetune's cache key; others may change without a retrain)."""

    cfg: Any  # the run's composed config
    run_dir: Path
    answer_format: Any  # the domain's (crescent/domains/): extract, equal, for_question

    def reader(self, question: dict):
        """The answer format as it reads answers to `question` (a record: id, question)."""
        from crescent.domains import for_question

        return for_question(self.answer_format, question)

    def vote(self, question: dict, responses: list[str], seed: int = 0, **voting):
        """The vote (`voting.rule`, `voting.*` with `voting` overriding) over `responses`
        to `question`, their answers read by the domain's format: a `Vote`."""
        from omegaconf import OmegaConf

        from crescent.methods.voting import vote

        reader = self.reader(question)
        answers = [reader.extract(r) for r in responses]
        return vote(answers, responses, OmegaConf.merge(self.cfg.voting, voting), seed, reader)

    def samples(self) -> list[dict]:
        """The answers stage's samples of this run as its vote read them: per question its
        samples, their extracted answers and whether each was cut (samples.jsonl), and with
        `domain.input_prompt` the test inputs the vote ran the programs on (inputs.jsonl):
        `vote` on such a record runs what the stage's vote ran."""
        from crescent import cache
        from crescent.artefacts import INPUTS, NOT_SAMPLED, SAMPLES
        from crescent.infra.io import read_jsonl
        from crescent.stages.answers import read_samples

        def path(name: str):
            return cache.input_path(self.cfg, self.run_dir, "finetune", name)

        records = [r for r in read_jsonl(path(SAMPLES)) if r.get("reason") not in NOT_SAMPLED]
        return read_samples(records, self.answer_format,
                            path(INPUTS) if self.cfg.domain.input_prompt else None)

    def engine(self):
        """The run's generation engine (`engine.*`, `model.*`), for objectives that sample."""
        from crescent.engines import make_engine

        return make_engine(self.cfg.engine, self.cfg.model)
