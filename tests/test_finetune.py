"""Finetune stage: the assistant-only label mask, batching, resumable sampling, and end to end
on the embedded SmolLM2 (full, LoRA, kill-and-resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from crescent.__main__ import CONF_DIR
from crescent.errors import CrescentError
from crescent.infra.io import read_json, read_jsonl
from crescent.methods.sft_data import (
    IGNORE_INDEX,
    ResumableBatchSampler,
    collate,
    encode_conversation,
    load_conversations,
    pack,
    padding_free,
)
from tests.conftest import run_cli
from tests.killing import kill_points, kill_then_finish, lines, whole_records

ASSETS = Path(__file__).parent / "assets"
SFT32 = ASSETS / "sft32.jsonl"
ONE_TURN = [{"role": "user", "content": "What is 14 + 15?"},
            {"role": "assistant", "content": "14 + 15 = 29. The answer is 29."}]
TWO_TURNS = [{"role": "system", "content": "Be brief."},
             {"role": "user", "content": "What is 2 + 2?"},
             {"role": "assistant", "content": "4"},
             {"role": "user", "content": "And 3 * 3?"},
             {"role": "assistant", "content": "3 * 3 = 9"}]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from crescent.infra.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))


def _ids(tokenizer, messages, **kw) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


# --- label mask ------------------------------------------------------------------------------


def test_label_mask_is_exactly_the_prompt_for_the_embedded_template(tokenizer):
    enc = encode_conversation(tokenizer, ONE_TURN, max_length=2048)
    ids, labels = enc["input_ids"], enc["labels"]
    prompt = _ids(tokenizer, ONE_TURN[:1], add_generation_prompt=True)
    full = _ids(tokenizer, ONE_TURN)
    assert ids == full  # the same tokens the template gives the whole conversation
    assert ids[: len(prompt)] == prompt
    end = ids.index(tokenizer.eos_token_id, len(prompt))  # the assistant's <|im_end|>
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt) : end + 1] == ids[len(prompt) : end + 1]
    assert labels[end + 1 :] == [IGNORE_INDEX] * (len(ids) - end - 1)  # template's newline
    trained = [t for t in labels if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == ONE_TURN[1]["content"] + "<|im_end|>"


def test_every_assistant_turn_is_trained_and_every_other_turn_masked(tokenizer):
    enc = encode_conversation(tokenizer, TWO_TURNS, max_length=2048)
    ids, labels = enc["input_ids"], enc["labels"]
    trained_positions = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
    expected = []
    for i, m in enumerate(TWO_TURNS):
        if m["role"] == "assistant":
            start = len(_ids(tokenizer, TWO_TURNS[:i], add_generation_prompt=True))
            expected += range(start, ids.index(tokenizer.eos_token_id, start) + 1)
    assert trained_positions == expected
    assert all(labels[i] == ids[i] for i in trained_positions)
    assert tokenizer.decode([labels[i] for i in trained_positions]) == "4<|im_end|>3 * 3 = 9<|im_end|>"


def test_truncation_keeps_the_start_and_drops_examples_without_assistant_tokens(tokenizer):
    prompt_len = len(_ids(tokenizer, ONE_TURN[:1], add_generation_prompt=True))
    cut = encode_conversation(tokenizer, ONE_TURN, max_length=prompt_len + 3)
    assert len(cut["input_ids"]) == prompt_len + 3
    assert sum(t != IGNORE_INDEX for t in cut["labels"]) == 3
    assert encode_conversation(tokenizer, ONE_TURN, max_length=prompt_len) is None


# --- batching, sampling, schedule ------------------------------------------------------------


def test_collate_pads_and_masks():
    a = {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}
    b = {"input_ids": [8], "labels": [8]}
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["num_tokens"] == 4 and batch["num_loss_tokens"] == 3


def test_packing_restarts_positions_and_keeps_whole_examples():
    exs = [{"input_ids": [1] * n, "labels": [2] * n} for n in (3, 4, 2, 6)]
    rows = pack(exs, max_length=7)
    assert [len(r["input_ids"]) for r in rows] == [7, 2, 6]
    assert rows[0]["position_ids"] == [0, 1, 2, 0, 1, 2, 3]
    batch = collate(rows[:2], pad_id=0)
    assert "attention_mask" not in batch  # boundaries come from the position ids
    # The padding after the second row's example is a document of its own.
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4]]
    assert batch["labels"][1].tolist() == [2, 2] + [IGNORE_INDEX] * 5


def test_sampler_resumes_mid_epoch_and_reshuffles_per_epoch():
    s = ResumableBatchSampler(10, 3, shuffle=True, seed=0)
    s.set_epoch(1)
    full = list(s)
    assert sorted(i for b in full for i in b) == list(range(10)) and len(s) == len(full) == 4
    it = iter(s)
    next(it), next(it)
    state = s.state_dict()
    resumed = ResumableBatchSampler(10, 3, shuffle=True, seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == full[2:]  # exactly the batches not yet trained on
    assert list(resumed) == full  # the skip applies once
    resumed.set_epoch(2)
    assert list(resumed) != full
    shards = [list(ResumableBatchSampler(10, 2, True, 0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 2
    assert not {i for b in shards[0] for i in b} & {i for b in shards[1] for i in b}


def test_schedule_matches_transformers_cosine_with_warmup():
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from crescent.methods.training import lr_factor

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=20)
    for step in range(20):
        assert lr_factor(step, 3, 20, "cosine") == pytest.approx(ref.lr_lambdas[0](step))
    assert lr_factor(20, 3, 20, "linear", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(7, 0, 20, "constant") == 1.0


# --- the loss --------------------------------------------------------------------------------


def test_chunked_linear_cross_entropy_matches_the_plain_loss_and_its_gradients():
    import torch

    from crescent.methods.fused_loss import linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    ours = linear_cross_entropy(hidden, weight, targets, chunk_elements=50 * 8)  # 5 chunks
    (2.0 * ours).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (2.0 * plain).backward()
    assert torch.allclose(ours, plain, rtol=1e-5)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-5)
    assert torch.allclose(grads[1], weight.grad, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(hidden, weight, targets, 50 * 8), plain,
                              rtol=1e-5)


def _tiny_llama(path: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_module_loss_is_the_same_with_and_without_the_fused_head(tmp_path, mode):
    module = _tiny_sft(tmp_path, mode)
    assert module.fused_head
    rows = [{"input_ids": [1, 5, 9, 13, 2, 7], "labels": [IGNORE_INDEX] * 3 + [13, 2, 7]},
            {"input_ids": [1, 4, 4, 2], "labels": [IGNORE_INDEX, 4, 4, 2]}]
    batch = collate(rows, pad_id=0)
    results = []
    for fused in (True, False):
        module.fused_head = fused
        results.append(_loss_and_gradients(module, batch))
    _assert_same(*results, n=6)


def _tiny_sft(tmp_path: Path, mode: str):
    """The sft objective's module on a 2-layer random model, built as the stage builds it."""
    from omegaconf import OmegaConf

    from crescent.config import FinetuneConfig
    from crescent.objectives.sft import SFTModule

    fcfg = OmegaConf.structured(FinetuneConfig(mode=mode, lora_dropout=0.0))
    module = SFTModule(fcfg, _tiny_llama(tmp_path / "m"), "float32")
    module.configure_model()
    return module


def _loss_and_gradients(module, batch) -> tuple[float, int, dict]:
    module.model.zero_grad()
    loss, n = module.compute_loss(batch)
    loss.backward()
    return float(loss.detach()), int(n), {
        k: p.grad.clone() for k, p in module.model.named_parameters() if p.requires_grad}


def _assert_same(first: tuple, second: tuple, n: int) -> None:
    (a, n_a, grads_a), (b, n_b, grads_b) = first, second
    assert n_a == n_b == n and abs(a - b) < 1e-5
    assert grads_a.keys() == grads_b.keys() and grads_a
    for k in grads_a:
        assert (grads_a[k] - grads_b[k]).abs().max() < 1e-5, k


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_padding_free_batches_give_the_padded_loss_and_gradients(tmp_path, mode):
    from crescent.methods.packed_attention import NAME

    module = _tiny_sft(tmp_path, mode)
    assert module.base.config._attn_implementation == NAME  # example by example, not a mask
    # The second row is labelled from its first token: in one row its left neighbour (the
    # first row's last token) must not be trained to predict it.
    rows = [{"input_ids": [1, 5, 9, 13, 2, 7], "labels": [IGNORE_INDEX] * 3 + [13, 2, 7]},
            {"input_ids": [3, 4, 4, 2], "labels": [3, 4, 4, 2]},
            {"input_ids": [1, 8], "labels": [IGNORE_INDEX, 8]}]
    batch = collate(rows, pad_id=0)
    results = []
    for free in (True, False):
        module.fcfg.padding_free = free
        results.append(_loss_and_gradients(module, batch))
    _assert_same(*results, n=7)
    one_row = padding_free(batch)
    assert one_row["input_ids"].tolist() == [[1, 5, 9, 13, 2, 7, 3, 4, 4, 2, 1, 8]]
    assert one_row["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1]]


def test_lora_on_a_bfloat16_base_keeps_float32_where_training_needs_it(tmp_path):
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from crescent.config import FinetuneConfig
    from crescent.methods.training import LowPrecisionLinear, save_model
    from crescent.objectives.sft import SFTModule

    path = _tiny_llama(tmp_path / "m")
    fcfg = OmegaConf.structured(FinetuneConfig(mode="lora", lora_dropout=0.0, lr=1e-2))
    batch = collate([{"input_ids": [1, 5, 9, 13, 2, 7], "labels": [IGNORE_INDEX] * 3 + [13, 2, 7]},
                     {"input_ids": [1, 4, 4, 2], "labels": [IGNORE_INDEX, 4, 4, 2]}], pad_id=0)
    losses = {}
    for base in (None, "bfloat16"):
        torch.manual_seed(0)  # the same adapters
        module = SFTModule(fcfg, path, "float32", base_dtype=base)
        module.configure_model()
        low = [m for m in module.model.modules() if isinstance(m, LowPrecisionLinear)]
        assert len(low) == (42 if base else 0)  # 7 projections x 2 layers, base + 2 adapters
        held = [m for m in low if not m.weight.requires_grad]
        assert len(held) == len(low) // 3 and all(m.weight.dtype == torch.bfloat16 for m in held)
        trained = [p for p in module.model.parameters() if p.requires_grad]
        assert trained and all(p.dtype == torch.float32 for p in trained)
        optimizer = torch.optim.AdamW(trained, lr=fcfg.lr)
        losses[base] = []
        for _ in range(4):
            loss, _ = module.compute_loss(batch)
            loss.backward()
            assert all(p.grad.dtype == torch.float32 for p in trained)
            optimizer.step()
            optimizer.zero_grad()
            losses[base].append(float(loss.detach()))
        with torch.no_grad():  # validation: the head multiplies in bfloat16 here too
            losses[base].append(float(module.compute_loss(batch)[0]))
    # The adapters' updates reach the output in float32: the losses go down together.
    assert losses["bfloat16"][-1] < losses["bfloat16"][0] - 0.01
    for ours, reference in zip(losses["bfloat16"], losses[None]):
        assert abs(ours - reference) < 0.01 * reference
    # Merged into the bfloat16 base and saved: the saved model computes what was trained.
    with torch.no_grad():
        module.model.eval()
        trained_logits = module.model(input_ids=batch["input_ids"][:1]).logits
    save_model(module.model, _tokenizer_stub(tmp_path), tmp_path / "out", "lora", "bfloat16")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    with torch.no_grad():
        logits = saved(input_ids=batch["input_ids"][:1]).logits
    assert (logits - trained_logits).abs().max() < 0.05 * trained_logits.abs().max()


def test_cpu_dropout_drops_at_its_rate_reproducibly_and_passes_gradients_through_its_mask():
    import torch

    from crescent.methods.training import CpuDropout

    drop = CpuDropout(0.05)
    x = torch.ones(400, 500, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.95) < 0.003  # 200k draws: the standard error is 0.0005
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.95))  # the expectation is kept
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # torch's seed decides the mask
    assert not torch.equal(drop(x), y)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(sum)/dx is the scaled mask
    drop.eval()
    assert torch.equal(drop(x), x)


def _tokenizer_stub(tmp_path):
    class Stub:  # save_model saves a tokenizer beside the weights; the tiny model has none
        def save_pretrained(self, where):
            (Path(where) / "tokenizer_config.json").write_text("{}")
    return Stub()


# --- input and config errors -----------------------------------------------------------------


def test_a_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": ONE_TURN}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(CrescentError, match=rf"{path}:2: no assistant message"):
        load_conversations(path)
    assert load_conversations(SFT32)[0][0]["role"] == "user"


def test_missing_input_is_a_one_line_error(cli, tmp_path):
    result = cli("stages=[finetune]", f"finetune.input={tmp_path}/nope.jsonl", "logger=none")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("crescent: error: finetune.input: ") and f"{tmp_path}/nope.jsonl" in last


def test_a_saved_model_is_sealed_only_as_its_stats_recorded_it(tmp_path):
    # A deleted DONE beside a model: resealed unchecked before; now the model must be the one
    # the stage saved (its file record), or it is trained anew.
    from crescent import cache
    from crescent.infra.io import write_json
    from crescent.stages import finetune

    model = tmp_path / finetune.MODEL_DIR
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights" * 1000)
    write_json(tmp_path / "stats.json", {"steps": 3})
    write_json(tmp_path / finetune.MODEL_RECORD, cache.fingerprints(model))
    assert finetune._saved(tmp_path)
    with open(model / "model.safetensors", "r+b") as f:
        f.write(b"XX")
    assert not finetune._saved(tmp_path)
    assert not model.exists() and not (tmp_path / "stats.json").exists()
    model.mkdir()  # a model and stats but no record of what was saved
    (model / "model.safetensors").write_bytes(b"weights")
    write_json(tmp_path / "stats.json", {"steps": 3})
    (tmp_path / finetune.MODEL_RECORD).unlink()
    assert not finetune._saved(tmp_path)


def test_lora_is_one_override():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        full = compose(config_name="config")
        lora = compose(config_name="config", overrides=["finetune=lora"])
    assert (full.finetune.mode, lora.finetune.mode) == ("full", "lora")
    assert lora.finetune.lora_r == 16 and lora.finetune.lr > full.finetune.lr


# --- end to end on the embedded model ---------------------------------------------------------

TINY = ["stages=[finetune]", f"finetune.input={SFT32}", "logger=none", "finetune.batch_size=8",
        "finetune.val_fraction=0.0625", "finetune.progress_bar=false", "seed=0"]


def _reload_and_generate(model_dir: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 5?"}],
                                     add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:]
    assert len(new) > 0
    return tok.decode(new, skip_special_tokens=True)


@pytest.mark.slow
def test_full_finetune_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    # 30 training examples in batches of 8: the 4 steps are one epoch. Every answer has the
    # same shape ("a + b = c. The answer is c."), which the model picks up within it.
    result = run_cli(*TINY, "finetune.max_steps=4", "finetune.lr=1e-4", "hydra.run.dir=run",
                     "finetune.progress_bar=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # One bar over the 4 optimiser steps, ending with the last loss and the validation loss.
    last = result.stderr.replace("\r", "\n").splitlines()[-1]
    assert last.startswith("finetune: 100%") and "| 4/4 [" in last and "loss=" in last, last
    out = tmp_path / "run" / "finetune"
    assert (out / "DONE").exists() and not (out / "checkpoints").exists()
    stats = read_json(out / "stats.json")
    assert stats["examples"] == 30 and stats["val_examples"] == 2 and stats["steps"] == 4
    assert stats["epochs"] == pytest.approx(1.067, abs=0.01)
    assert stats["tokens"] == stats["train_tokens_per_epoch"]
    assert stats["tokens_per_s"] > 0 and stats["peak_rss_mib"] > 0
    assert stats["val_loss_final"] is not None
    rows = list(read_jsonl(out / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    first, last = (rows[0]["loss"] + rows[1]["loss"]) / 2, (rows[2]["loss"] + rows[3]["loss"]) / 2
    assert last < 0.6 * first, [r["loss"] for r in rows]
    assert stats["val_loss_final"] < first
    print("generated:", _reload_and_generate(out / "model"))


@pytest.mark.slow
def test_lora_merges_into_a_plain_model_that_reloads(tmp_path):
    from safetensors.torch import load_file

    from crescent.infra.models import resolve_model

    result = run_cli(*TINY, "finetune=lora", "finetune.max_steps=2", "finetune.lr=1e-3",
                     "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "run" / "finetune"
    stats = read_json(out / "stats.json")
    assert stats["mode"] == "lora" and 0 < stats["trainable_params"] < stats["total_params"] / 10
    model_dir = out / "model"
    assert not (model_dir / "adapter_config.json").exists()
    merged = load_file(model_dir / "model.safetensors")
    base = load_file(Path(resolve_model("smollm2-135m-instruct")) / "model.safetensors")
    assert set(merged) == set(base)  # plain weight names: no lora_A/lora_B left
    key = "model.layers.0.self_attn.q_proj.weight"
    assert (merged[key].float() - base[key].float()).abs().max() > 0  # the adapter was merged
    _reload_and_generate(model_dir)


@pytest.mark.slow
def test_killed_three_times_resumes_from_its_checkpoints(tmp_path):
    steps = 14
    run_dir = tmp_path / "run"
    out = run_dir / "finetune"
    args = [*TINY, "finetune=lora", f"finetune.max_steps={steps}", "finetune.batch_size=2",
            "finetune.checkpoint_every_n_steps=2", f"hydra.run.dir={run_dir}"]
    seen = kill_then_finish(args, tmp_path, out, lambda: lines(out / "metrics.jsonl"),
                            kill_points(seed=6, low=1, high=12), seed=6)
    stats = read_json(out / "stats.json")
    assert stats["steps"] == steps and 0 < stats["resumed_from_step"] < steps
    assert stats["resumed_from_step"] % 2 == 0  # a checkpoint's step, never a step lost after it
    assert stats["steps_this_run"] == steps - stats["resumed_from_step"]
    assert whole_records(out / "metrics.jsonl", "step") == list(range(1, steps + 1))
    rows = list(read_jsonl(out / "metrics.jsonl"))
    attempts = [r["attempt"] for r in rows]
    assert attempts == sorted(attempts) and attempts[-1] > 1  # the last steps came after a kill
    # The schedule went on from the checkpoints, not from step 0 (warm-up would restart at 0).
    assert rows[-1]["lr"] < rows[0]["lr"]
    assert not (out / "checkpoints").exists()
    _reload_and_generate(out / "model")
    print(f"\nfinetune killed at {seen} steps logged, last resumed from step "
          f"{stats['resumed_from_step']}")


PREFS16 = ASSETS / "prefs16.jsonl"  # sft32's first 16 questions: right answer chosen, off by one rejected


@pytest.mark.slow
@pytest.mark.long
def test_dpo_killed_three_times_resumes_and_reads_its_reference_back(tmp_path):
    steps = 10
    run_dir = tmp_path / "run"
    out = run_dir / "finetune"
    args = ["stages=[finetune]", f"finetune.input={PREFS16}", "logger=none", "seed=0",
            "finetune.objective=dpo", "+finetune.options.sft_weight=0.1", "finetune=lora",
            f"finetune.max_steps={steps}", "finetune.batch_size=2", "finetune.lr=5e-5",
            "finetune.val_fraction=0", "finetune.checkpoint_every_n_steps=2",
            "finetune.progress_bar=false", f"hydra.run.dir={run_dir}"]
    seen = kill_then_finish(args, tmp_path, out, lambda: lines(out / "metrics.jsonl"),
                            kill_points(seed=7, low=1, high=8), seed=7)
    stats = read_json(out / "stats.json")
    assert stats["objective"] == "dpo" and stats["pairs"] == 16
    assert stats["steps"] == steps and 0 < stats["resumed_from_step"] < steps
    assert whole_records(out / "metrics.jsonl", "step") == list(range(1, steps + 1))
    reference = read_json(out / "reference_logps.json")  # computed once, before any step
    assert len(reference) == 16 and all(c < 0 and r < 0 for c, r in reference)
    assert not (out / "checkpoints").exists()
    _reload_and_generate(out / "model")
    print(f"\ndpo killed at {seen} steps logged, last resumed from step "
          f"{stats['resumed_from_step']}")


@pytest.mark.slow
@pytest.mark.long
def test_sft_then_dpo_starts_from_the_sft_rows_own_entry(tmp_path):
    # Two runs over the same answers (real files): the SFT row, then SFT-then-DPO, whose SFT
    # part is that row's cache entry, reused and not trained again.
    import shutil

    for run in ("sft", "sft_dpo"):
        (tmp_path / run / "answers").mkdir(parents=True)
        shutil.copyfile(SFT32, tmp_path / run / "answers" / "sft.jsonl")
        shutil.copyfile(PREFS16, tmp_path / run / "answers" / "prefs.jsonl")
    common = ["stages=[finetune]", "logger=none", "seed=0", "finetune.max_steps=2",
              "finetune.batch_size=2", "finetune.val_fraction=0", "finetune.progress_bar=false",
              f"cache_dir={tmp_path / 'cache'}"]
    first = run_cli(*common, "hydra.run.dir=sft", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    sft_entry = (tmp_path / "sft" / "finetune").resolve()
    trained = (sft_entry / "metrics.jsonl").read_bytes()
    second = run_cli(*common, "setting=sft_dpo", "hydra.run.dir=sft_dpo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    stats = read_json(tmp_path / "sft_dpo" / "finetune" / "stats.json")
    assert stats["objective"] == "dpo" and stats["start"] == str(sft_entry / "model")
    assert (sft_entry / "metrics.jsonl").read_bytes() == trained  # reused, not trained again
    assert f"starting from {sft_entry / 'model'}" in second.stdout + second.stderr
    reference = read_json(tmp_path / "sft_dpo" / "finetune" / "reference_logps.json")
    assert len(reference) == 16  # the reference is the SFT model, the student of this fine-tune


@pytest.mark.slow
@pytest.mark.long
def test_ddp_on_two_cpu_processes_trains_as_one_and_resumes_after_a_kill(tmp_path):
    # The same global batch of 8: one process with 2 micro-batches of 4 accumulated, or two
    # gloo ranks with 4 each (rank r takes batches r, r + 2, ...: the same 8 rows a step).
    # float32 throughout, so the two differ only by the order of the sums.
    steps = 6
    common = [*TINY, "finetune.val_fraction=0", "finetune.precision=32-true",
              f"finetune.max_steps={steps}", "finetune.lr=1e-4", "finetune.batch_size=4",
              "finetune.accelerator=cpu"]
    one = run_cli(*common, "finetune.accumulate_grad_batches=2", "hydra.run.dir=one",
                  cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    out = tmp_path / "ddp" / "finetune"
    ddp = [*common, "finetune.strategy=ddp", "finetune.devices=2",
           "finetune.checkpoint_every_n_steps=2", "hydra.run.dir=ddp"]
    seen = kill_then_finish(ddp, tmp_path, out, lambda: lines(out / "metrics.jsonl"),
                            kill_points(seed=8, low=3, high=5, count=1), seed=8)
    stats = read_json(out / "stats.json")
    assert stats["world_size"] == 2 and stats["steps"] == steps
    assert 0 < stats["resumed_from_step"] < steps
    assert whole_records(out / "metrics.jsonl", "step") == list(range(1, steps + 1))
    single = [r["loss"] for r in read_jsonl(tmp_path / "one" / "finetune" / "metrics.jsonl")]
    double = [r["loss"] for r in read_jsonl(out / "metrics.jsonl")]
    assert double == pytest.approx(single, rel=1e-3), (single, double)
    assert single[-1] < single[0]
    _reload_and_generate(out / "model")
    print(f"\nDDP killed at {seen} steps logged; losses, 1 process: {single}; 2 processes: "
          f"{double}")


@pytest.mark.slow
def test_a_checkpoint_that_does_not_load_is_one_line(tmp_path):
    last = tmp_path / "run" / "finetune" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"not a checkpoint")
    result = run_cli(*TINY, "finetune.max_steps=1", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"crescent: error: finetune: {last.resolve()} does not load ("), line
    assert line.endswith(f"delete it to train from the start: rm {last.resolve()}"), line


def test_empty_turns_are_trained_on_with_a_warning(tmp_path, caplog):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in [("2 + 2?", "4"), ("", "5"), ("3 + 3?", " ")]))
    assert len(load_conversations(path)) == 3
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.endswith("2 conversations have an empty user or assistant turn (first: "
                            "conversation 2); they are trained on as they are")


def test_a_seeded_subset_redraws_per_replica_and_the_first_stays_nested():
    from omegaconf import OmegaConf

    from crescent.stages.finetune import _select

    pool = list(range(100))
    first = OmegaConf.create({"max_examples": 10, "fraction": 0.5, "subset": "first"})
    assert _select(first, pool, 0) == [0, 1, 2, 3, 4] == _select(first, pool, 1)
    seeded = OmegaConf.merge(first, {"subset": "seeded"})
    draws = [_select(seeded, pool, seed) for seed in (0, 0, 1)]
    assert draws[0] == draws[1] != draws[2]  # the same seed draws the same subset
    assert all(len(d) == 5 and d == sorted(d) for d in draws)  # kept in input order
    everything = OmegaConf.create({"max_examples": None, "fraction": 1.0, "subset": "seeded"})
    assert _select(everything, pool, 3) == pool  # nothing to draw: all of them, in order
