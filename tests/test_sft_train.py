"""SFT training invariances: accumulation 1×8 ≡ 8×1, padding-free ≡ padded, stop + resume ≡ uninterrupted."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from adam_bounds import linear_adam_bound
from datafiles import write_jsonl
from tuneloop.config import load_config
from tuneloop.data.bundled import chatterbot_pairs
from tuneloop.train.sft import SFTConfig, train


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    rows = [{"prompt": p, "completion": c} for p, c in chatterbot_pairs()[:48]]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


def _cfg(train_file, out_dir, **overrides):
    base = {"model": {"name": "tiny-llama"}, "data": {"train": train_file, "eval_fraction": 0.0, "max_length": 64},
            "batch": {"batch_size": 8, "micro_batch_size": 8, "max_steps": 3},
            "optim": {"lr": 1e-3, "warmup_steps": 1}, "run": {"out_dir": str(out_dir), "seed": 3}}
    for key, value in overrides.items():
        if "__" in key:
            section, name = key.split("__")
            base.setdefault(section, {})[name] = value
        else:
            base[key] = value
    return load_config(SFTConfig, overrides=base)


def _weights(result):
    return load_file(result.model_dir / "model.safetensors")


def _assert_same(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


def _step_gradients(model, docs, micro_size):
    from accelerate import Accelerator

    from tuneloop.data.packing import collate_padding_free
    from tuneloop.train.accumulate import accumulate_gradients
    from tuneloop.train.sft import batch_loss_sum

    model.zero_grad(set_to_none=True)
    micro = [collate_padding_free(docs[i:i + micro_size]) for i in range(0, len(docs), micro_size)]
    totals = accumulate_gradients(model, micro, lambda m, b: batch_loss_sum(m, b, True), lambda b: b.trained_tokens,
                                  Accelerator(cpu=True))
    return totals, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_accumulated_gradients_1x8_equal_8x1(train_file, tiny_tokenizer):
    """Documents of different lengths: a per-micro-batch mean would weight a short document's tokens
    more when it sits alone in a micro-batch; normalising by the step's token count does not."""
    from tuneloop.data import load_records
    from tuneloop.data.sft import tokenize_sft
    from tuneloop.models import ModelConfig, load_causal_lm

    docs, _ = tokenize_sft(load_records(train_file)[:8], tiny_tokenizer, 64)
    assert len({d.trained_tokens for d in docs}) > 1, "documents must differ in length for the test to bite"
    model, _ = load_causal_lm(ModelConfig(name="tiny-llama"))
    whole, g_whole = _step_gradients(model, docs, 8)
    split, g_split = _step_gradients(model, docs, 1)
    assert whole.count == split.count == sum(d.trained_tokens for d in docs)
    assert abs(whole.loss - split.loss) < 1e-5
    for name in g_whole:
        torch.testing.assert_close(g_split[name], g_whole[name], atol=1e-6, rtol=1e-5)


def test_training_with_accumulation_1x8_matches_8x1(train_file, tmp_path):
    """End to end over 3 AdamW steps (ε = 1, see ``linear_adam_bound``): 8 micro-batches of 1 end with
    the weights of 1 micro-batch of 8 up to an fp32 bound derived from the summation order."""
    linear = {"optim__eps": 1.0, "optim__lr": 1.0}
    whole = train(_cfg(train_file, tmp_path / "a", batch__micro_batch_size=8, **linear))
    split = train(_cfg(train_file, tmp_path / "b", batch__micro_batch_size=1, **linear))
    assert whole.summary["tokens_seen"] == split.summary["tokens_seen"]
    initial = load_file(_initial_weights())
    a, b = _weights(whole), _weights(split)
    update, _, bound = linear_adam_bound(initial, a, steps=3, accumulated=8)
    diff = max((a[n] - b[n]).abs().max().item() for n in a)
    assert update > 1e-2, "training must move the weights for the comparison to mean anything"
    assert diff < bound, f"max weight difference {diff:.2e} vs fp32 bound {bound:.2e} (max update {update:.2e})"


def _initial_weights():
    from pathlib import Path

    from tuneloop.models.loading import resolve_model_name

    return Path(resolve_model_name("tiny-llama")) / "model.safetensors"


def test_padding_free_equals_padded(train_file, tmp_path):
    free = train(_cfg(train_file, tmp_path / "a", data__padding_free=True, batch__micro_batch_size=4))
    padded = train(_cfg(train_file, tmp_path / "b", data__padding_free=False, batch__micro_batch_size=4))
    _assert_same(_weights(free), _weights(padded), atol=1e-4)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora-dropout"])
def test_stop_mid_accumulation_then_resume_is_bit_identical(train_file, tmp_path, lora):
    """6 steps of 2 micro-batches, checkpoints every 2 steps; the run dies in the first micro-batch of
    step 4 (0-based 3): mid-epoch (6 steps per epoch) and mid-accumulation. Resuming replays steps
    3-6 from the step-2 checkpoint and must end with exactly the uninterrupted weights. With LoRA the
    adapters use dropout, so the restored torch RNG matters."""
    extra = {"batch__batch_size": 8, "batch__micro_batch_size": 4, "batch__max_steps": 6, "save_every": 2,
             "batch__epochs": 1}
    if lora:
        extra.update({"model__lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.1, "save": "merged"}})
    reference = train(_cfg(train_file, tmp_path / "ref", **extra))

    def die(step, micro):
        if (step, micro) == (3, 0):
            raise _Stop

    with pytest.raises(_Stop):
        train(_cfg(train_file, tmp_path / "cut", **extra), on_micro_batch=die)
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2"]
    assert not (run_dir / "model").exists(), "a crashed run must not leave a final model behind"
    resumed = train(_cfg(train_file, tmp_path / "cut", **extra), resume_dir=run_dir)
    a, b = _weights(reference), _weights(resumed)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"resumed weights differ from the uninterrupted run in {different[:5]}"
    assert resumed.summary["tokens_seen"] == reference.summary["tokens_seen"]


def test_interrupted_checkpoint_save_is_ignored_on_resume(train_file, tmp_path):
    from tuneloop.checkpoint import list_checkpoints

    cfg = _cfg(train_file, tmp_path, save_every=1, batch__max_steps=2)
    result = train(cfg)
    ckpts = result.run_dir / "checkpoints"
    (ckpts / ".step-3.tmp-abc").mkdir()  # what a kill during a save leaves behind
    (ckpts / ".step-3.tmp-abc" / "state.json").write_text("{")
    assert [p.name for p in list_checkpoints(ckpts)] == ["step-1", "step-2"]


def test_lora_run_writes_a_folder_transformers_loads(train_file, tmp_path):
    from transformers import AutoModelForCausalLM

    result = train(_cfg(train_file, tmp_path, model__lora={"enabled": True, "r": 4, "save": "both"},
                        batch__max_steps=2, data__eval_fraction=0.1))
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert not hasattr(model, "peft_config")
    assert (result.model_dir / "adapter" / "adapter_config.json").is_file()
    run = result.run_dir
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    assert any((run / "tensorboard").iterdir())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"split": "eval"' in lines[-1] and '"trained_fraction"' in lines[0]
