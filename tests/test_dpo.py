"""The dpo objective agrees with TRL's DPOTrainer (a peer): on one batch of the same tiny model,
pairs and beta, the loss, the chosen and rejected rewards and every gradient are the same."""

from __future__ import annotations

import pytest

PAIRS = [
    {"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
     "chosen": [{"role": "assistant", "content": "2 + 2 = 4.\nThe answer is: 4"}],
     "rejected": [{"role": "assistant", "content": "The answer is: 5"}]},
    {"prompt": [{"role": "user", "content": "A box holds 12 pencils. How many in 3 boxes?"}],
     "chosen": [{"role": "assistant", "content": "12 * 3 = 36.\nThe answer is: 36"}],
     "rejected": [{"role": "assistant", "content": "12 + 3 = 15.\nThe answer is: 15"}]},
]
BETA = 0.1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-layer random Llama with the embedded model's tokenizer and chat template (the
    reference), and the same with every weight moved a little (the policy being trained)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from crescent.infra.models import SMOLLM2, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    paths = {}
    for role in ("reference", "policy"):
        paths[role] = tmp_path_factory.mktemp(role)
        model.save_pretrained(paths[role])
        tokenizer.save_pretrained(paths[role])
        with torch.no_grad():
            for weight in model.parameters():
                weight.add_(0.05 * torch.randn_like(weight))
    return str(paths["reference"]), str(paths["policy"]), tokenizer


def _trl(reference, policy, tokenizer, out):
    """TRL's loss, rewards and gradients on its first batch of PAIRS."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    policy = AutoModelForCausalLM.from_pretrained(policy)
    args = DPOConfig(output_dir=str(out), beta=BETA, per_device_train_batch_size=len(PAIRS),
                     max_length=256, report_to="none", use_cpu=True, loss_type=["sigmoid"],
                     precompute_ref_log_probs=False, bf16=False)  # float32, as ours
    trainer = DPOTrainer(model=policy, ref_model=AutoModelForCausalLM.from_pretrained(reference),
                         args=args,
                         train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = trainer._metrics["train"]
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return float(loss), metrics["rewards/chosen"][-1], metrics["rewards/rejected"][-1], grads


def _ours(reference, policy, tokenizer, fused: bool):
    import torch
    from omegaconf import OmegaConf

    from crescent.config import FinetuneConfig
    from crescent.objectives.dpo import DPOModule, reference_logps

    fcfg = OmegaConf.structured(FinetuneConfig(
        objective="dpo", max_length=256, val_fraction=0.0, batch_size=len(PAIRS),
        options={"beta": BETA, "margin_weight": False, "sft_weight": 0.0}))
    data = DPOModule.data_module([dict(p, margin=1.0) for p in PAIRS], tokenizer, fcfg, 0)
    data.setup("fit")
    module = DPOModule(fcfg, policy, "float32")
    module.configure_model()
    assert module.fused_head  # the default path for this model: the LM head on labels only
    module.fused_head = fused
    module.reference = reference_logps(reference, "float32", data.train, data.collate, 8, None)
    batch = data.collate(sorted(data.train, key=lambda e: e["index"]))
    loss, _ = module.compute_loss(batch)
    loss.backward()
    chosen, rejected = module.rewards
    grads = {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}
    return float(loss), float(chosen.mean()), float(rejected.mean()), grads, torch


def test_dpo_loss_rewards_and_gradients_equal_trls(tiny, tmp_path):
    reference, policy, tokenizer = tiny
    trl_loss, trl_chosen, trl_rejected, trl_grads = _trl(reference, policy, tokenizer, tmp_path)
    for fused in (True, False):  # the fused LM head and the full logits agree with TRL alike
        loss, chosen, rejected, grads, torch = _ours(reference, policy, tokenizer, fused)
        print(f"TRL: loss {trl_loss:.6f} rewards {trl_chosen:.6f} {trl_rejected:.6f}; "
              f"crescent (fused={fused}): loss {loss:.6f} rewards {chosen:.6f} {rejected:.6f}")
        assert loss == pytest.approx(trl_loss, abs=1e-5)
        assert chosen == pytest.approx(trl_chosen, abs=1e-5)
        assert rejected == pytest.approx(trl_rejected, abs=1e-5)
        assert chosen != rejected  # the batch is not degenerate: the comparison means something
        assert grads.keys() == trl_grads.keys() and grads
        for name in grads:
            assert torch.allclose(grads[name], trl_grads[name], atol=1e-6, rtol=1e-4), name


def test_dpo_settings_are_its_options_and_the_old_keys_still_work(caplog):
    import pytest as _pytest

    from crescent import cache
    from crescent.config import validate
    from crescent.errors import CrescentError
    from tests.conftest import compose

    new = compose("finetune.objective=dpo", "+finetune.options.beta=0.2")
    old = compose("finetune.objective=dpo", "finetune.beta=0.2")
    validate(new)
    with caplog.at_level("WARNING"):
        validate(old)
    assert "finetune.beta is finetune.options.beta now" in caplog.text
    assert old.finetune.options == new.finetune.options == {
        "beta": 0.2, "margin_weight": False, "sft_weight": 0.0}
    assert cache.stage_key(old, "finetune") == cache.stage_key(new, "finetune")
    with _pytest.raises(CrescentError, match=r"^finetune.options.beta=0.0: expected a number > 0$"):
        validate(compose("finetune.objective=dpo", "+finetune.options.beta=0"))
    bare = compose("finetune.objective=dpo")  # no option given: the defaults are filled
    validate(bare)
    assert bare.finetune.options == {"beta": 0.1, "margin_weight": False, "sft_weight": 0.0}
    # on an objective that has no beta, the old key no longer passes unseen
    with _pytest.raises(CrescentError, match="objective 'sft' takes no options"):
        validate(compose("finetune.beta=0.2"))
