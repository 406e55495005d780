"""CLI smoke runs on a tiny model: sft → sample → inspect → chat; user errors are one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from datafiles import write_jsonl
from tuneloop.cli import main
from tuneloop.data.bundled import chatterbot_pairs

TINY = ["--model.name", "tiny-llama"]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    train = write_jsonl(folder / "train.jsonl", [{"prompt": p, "completion": c} for p, c in chatterbot_pairs()[:40]])
    prompts = write_jsonl(folder / "prompts.jsonl", [{"prompt": "Tell me about movies."},
                                                     {"messages": [{"role": "user", "content": "hello"}]}])
    return folder, train, prompts


@pytest.fixture(scope="module")
def trained_run(sft_data):
    folder, train, _ = sft_data
    out = folder / "runs"
    code = main(["sft", *TINY, "--data.train", train, "--batch.max_steps", "2", "--batch.batch_size", "4",
                 "--run.out_dir", str(out), "--save_every", "1"])
    assert code == 0
    (run,) = out.iterdir()
    return run


def test_sft_writes_a_complete_run_folder(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "model", "tensorboard", "checkpoints"} <= names
    assert "max_steps: 2" in (trained_run / "config.yaml").read_text()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(trained_run / "model").config.model_type == "llama"


def test_resume_continues_from_the_newest_checkpoint_to_the_same_weights(trained_run, tmp_path, capsys):
    """The run took 2 steps with a checkpoint after each. A copy that lost its step-2 checkpoint and its
    model (as if killed during the final save) resumes from step-1, takes step 2 again and must end with
    exactly the weights of the uninterrupted run."""
    import shutil

    import torch
    from safetensors.torch import load_file

    cut = tmp_path / trained_run.name
    shutil.copytree(trained_run, cut)
    shutil.rmtree(cut / "checkpoints" / "step-2")
    shutil.rmtree(cut / "model")
    assert main(["sft", "--resume", str(cut)]) == 0
    assert f"resuming {cut} from step-1" in capsys.readouterr().out
    steps = [r["step"] for r in map(json.loads, (cut / "metrics.jsonl").read_text().splitlines())
             if r["split"] == "train"]
    assert steps[-1] == 2
    whole, resumed = load_file(trained_run / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, f"resumed weights differ in {different[:3]}"


def test_sample_writes_candidates_with_provenance(trained_run, sft_data, tmp_path):
    _, _, prompts = sft_data
    out = tmp_path / "candidates.jsonl"
    code = main(["sample", "--model", str(trained_run / "model"), "--prompts", prompts, "--num-candidates", "3",
                 "--out", str(out), "--max-new-tokens", "5", "--seed", "7"])
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    first = records[0]
    assert first["prompt"] == "Tell me about movies." and len(first["completions"]) == 3
    assert all(n <= 5 for n in first["completion_tokens"])
    assert set(first["finish_reasons"]) <= {"eos", "length"}
    prov = first["provenance"]
    assert prov["seed"] == 7 and prov["sampling"]["max_new_tokens"] == 5 and len(prov["model_hash"]) == 64
    assert first["prompt_id"].startswith("p-") and first["prompt_id"] != records[1]["prompt_id"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file may remain"


def test_bad_data_is_one_line_no_run_folder(sft_data, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": ""}\n')
    code = main(["sft", *TINY, "--data.train", str(bad), "--run.out_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2: field 'completion': is empty" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists(), "a failed start must not leave a run folder"


def test_bad_config_key_is_named(capsys):
    assert main(["sft", "--optim.lrate", "0.1"]) == 2
    assert "unknown config key 'optim.lrate'" in capsys.readouterr().err


def test_impossible_batch_plan_names_the_numbers(sft_data, tmp_path, capsys):
    _, train, _ = sft_data
    code = main(["sft", *TINY, "--data.train", train, "--batch.batch_size", "6", "--batch.micro_batch_size", "4",
                 "--run.out_dir", str(tmp_path)])
    assert code == 2
    assert "batch.batch_size=6 is not a multiple of batch.micro_batch_size=4" in capsys.readouterr().err


def test_help_config_lists_documented_keys(capsys):
    assert main(["sft", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "--optim.lr  (float, default 2e-05)" in out and "--data.packing" in out


def test_inspect_data_and_masks(sft_data, tmp_path, capsys):
    _, train, _ = sft_data
    assert main(["inspect", "data", train, "--model", "tiny-llama"]) == 0
    out = capsys.readouterr().out
    assert "sft-prompt-completion" in out and "records: 40" in out and "trained_fraction" in out
    assert main(["inspect", "masks", train, "--model", "tiny-llama", "-n", "1"]) == 0
    out = capsys.readouterr().out
    first_answer = chatterbot_pairs()[0][1]
    assert f"[[{first_answer}<|im_end|>]]" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "x", "completion": "y"}\n{"prompt": "x", "completion": "y"')
    assert main(["inspect", "data", str(bad), "--model", "tiny-llama"]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err


def test_inspect_batch_plan(sft_data, capsys):
    _, train, _ = sft_data
    assert main(["inspect", "batch-plan", *TINY, "--data.train", train, "--batch.batch_size", "8",
                 "--batch.micro_batch_size", "2", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "batch_size 8 = micro_batch_size 2 × accumulation 2 × processes 2" in out
    assert "5 steps per epoch" in out


def test_console_script_chat_and_error_exit(trained_run):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    chat = subprocess.run([sys.executable, "-m", "tuneloop.cli", "chat", "--model", str(trained_run / "model"),
                           "--max-new-tokens", "4"], input="hello\n/reset\n/exit\n", capture_output=True, text=True,
                          env=env, timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert "model>" in chat.stdout and "[conversation cleared]" in chat.stdout
    missing = subprocess.run([sys.executable, "-m", "tuneloop.cli", "sample", "--model", "tiny-llama", "--prompts",
                              "nope.jsonl", "--out", "x.jsonl"], capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip() == "tuneloop sample: error: nope.jsonl: file not found"


def test_help_and_argument_errors_do_not_import_torch_or_the_database_layer():
    """``tuneloop --help`` and every subcommand's parser build from light modules: torch (~2.5 s to
    import) and SQLAlchemy load only when a command runs. A bad prompts file fails before either loads."""
    probe = ("import sys\n"
             "from tuneloop.cli import build_parser, main\n"
             "build_parser()\n"
             "assert main(['sample', '--model', 'tiny-llama', '--prompts', 'nope.jsonl', '--out', 'x.jsonl']) == 2\n"
             "print(sorted(m for m in ('torch', 'sqlalchemy', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
    assert "nope.jsonl: file not found" in out.stderr
