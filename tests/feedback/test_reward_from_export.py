"""The export of a simulated session trains ``tuneloop reward`` with no conversion step.

Both ``pairs.jsonl`` and ``rankings.jsonl`` go straight into ``tuneloop.train.reward``. A tiny 2-layer
BERT on the bundled MiniLM tokenizer keeps it to seconds on CPU.
"""

import json
import os

import pytest
import torch
from labeldata import write_candidates

from tuneloop.feedback import export_all, simulate
from tuneloop.rewards import load_reward
from tuneloop.train import reward

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _tiny_bert(tmp_path) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tuneloop.models import bundled_encoder

    tokenizer = AutoTokenizer.from_pretrained(bundled_encoder.bundled_encoder_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    torch.manual_seed(0)
    folder = tmp_path / "tiny-bert"
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("what", ["pairs.jsonl", "rankings.jsonl"])
def test_reward_model_trains_on_the_export(tmp_path, what):
    from tuneloop.config import load_config

    db = tmp_path / "labels.db"
    mode = "pairwise" if what == "pairs.jsonl" else "ranking"
    simulate(db, write_candidates(tmp_path / "c.jsonl", 12, k=3), num_annotators=3, overlap=2, mode=mode)
    export_all(db, tmp_path / "export")
    backbone = _tiny_bert(tmp_path)
    cfg = load_config(reward.RewardConfig, None, [
        "--data.train", str(tmp_path / "export" / what), "--model.name", backbone,
        "--batch.max_steps", "2", "--batch.batch_size", "4", "--batch.micro_batch_size", "4",
        "--run.out_dir", str(tmp_path / "runs")])
    result = reward.train(cfg)
    # 2 optimizer steps of 4 units each were taken from the export, and units were held out from it.
    exported = [json.loads(line) for line in (tmp_path / "export" / what).read_text().splitlines()]
    assert result.summary["steps"] == 2 and result.summary["units_seen"] == 8
    assert 0 < result.summary["eval"]["eval_units"] < len(exported)
    # Training changed the backbone it started from.
    from safetensors.torch import load_file

    start = load_file(f"{backbone}/model.safetensors")
    trained = load_file(str(result.model_dir / "model.safetensors"))
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(start[name], trained[f"bert.{name}"])
    # The saved folder is a reward model that scores the export's own texts.
    first = exported[0]
    replies = [first["chosen"], first["rejected"]] if what == "pairs.jsonl" else first["completions"][:2]
    scores = load_reward(str(result.model_dir)).score([first["prompt"]] * 2, replies)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
