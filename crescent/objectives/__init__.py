"""Fine-tuning objectives, registered in `crescent.registry.OBJECTIVES` by `finetune.objective`.

An objective is a subclass of `crescent.methods.training.CausalLMModule` (TRL's layout: one
trainer per objective over shared bases, `compute_loss` the difference). It supplies
  input_file                 the answers-stage file it trains on by default (`sft.jsonl`)
  load_examples(path)        the examples of `finetune.input` (or of that file)
  data_module(examples, tokenizer, fcfg, seed)   a LightningDataModule serving batches
  compute_loss(batch)        (loss, weight): the loss and its weight in the validation mean
  settings                   the finetune.* keys only it reads (left out of a finetune.init run)
and inherits the model (full or LoRA), the optimiser and schedule, the checkpoint contents, and
from the stage the per-step metrics, resume, W&B logging and the merged save. `sft.py` is the
built-in one; a subclass of `SFTModule` that overrides only `compute_loss` reuses its data.
"""
