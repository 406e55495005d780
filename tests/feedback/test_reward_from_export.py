"""The export of a simulated session trains ``tuneloop reward`` with no conversion step.

Both ``pairs.jsonl`` and ``rankings.jsonl`` go straight into ``tuneloop.train.reward``. A tiny 2-layer
BERT on the bundled MiniLM tokenizer keeps it to seconds on CPU (skipped only if that package is absent).
"""

import os

import pytest
from labeldata import write_candidates

from tuneloop.feedback import export_all, simulate

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
    reward = pytest.importorskip("tuneloop.train.reward")
    from tuneloop.config import load_config

    db = tmp_path / "labels.db"
    mode = "pairwise" if what == "pairs.jsonl" else "ranking"
    simulate(db, write_candidates(tmp_path / "c.jsonl", 12, k=3), num_annotators=3, overlap=2, mode=mode)
    export_all(db, tmp_path / "export")
    cfg = load_config(reward.RewardConfig, None, [
        "--data.train", str(tmp_path / "export" / what), "--model.name", _tiny_bert(tmp_path),
        "--batch.max_steps", "2", "--batch.batch_size", "4", "--batch.micro_batch_size", "4",
        "--run.out_dir", str(tmp_path / "runs")])
    result = reward.train(cfg)
    assert (result.model_dir / "config.json").is_file()
