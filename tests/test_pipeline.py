"""``tuneloop run``: content-hash caching, re-running exactly the changed stage and those after it,
resuming from a failed stage, and errors that name the file and stage."""

from __future__ import annotations

import json

import pytest
import yaml

from tuneloop.commands import stages as stage_kinds
from tuneloop.pipeline import PipelineError, load_pipeline, run_pipeline

CALLS: list[str] = []


def _write(context, config):
    """A cheap stage: writes ``text`` (plus what it reads from ``source``) to out.txt."""
    CALLS.append(context.stage.name)
    if config.get("fail"):
        raise RuntimeError(f"{context.stage.name} was told to fail")
    text = config["text"] + (open(config["source"]).read() if "source" in config else "")
    path = context.folder / "out.txt"
    path.write_text(text)
    return {"text": path}, {"length": len(text)}


@pytest.fixture(autouse=True)
def fake_kind(monkeypatch):
    monkeypatch.setitem(stage_kinds.STAGE_KINDS, "write", stage_kinds.StageKind("test stage", ("text",), _write))
    CALLS.clear()


def _pipeline(tmp_path, stages: dict, variables: dict | None = None, name="p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"name": "t", "out_dir": str(tmp_path / "out"), "vars": variables or {},
                                    "stages": stages}, sort_keys=False))
    return path


def _chain(tmp_path, a="A", b="B", c="C", extra=None):
    """a → b → c chained through outputs, plus an independent stage d reading an external file."""
    stages = {"a": {"uses": "write", "with": {"text": a}},
              "b": {"uses": "write", "with": {"text": b, "source": "${a.text}"}},
              "c": {"uses": "write", "with": {"text": c, "source": "${b.text}"}}}
    stages.update(extra or {})
    return _pipeline(tmp_path, stages)


def _run(path, **kwargs):
    lines: list[str] = []
    records = run_pipeline(load_pipeline(path, **kwargs), echo=lines.append)
    return records, lines


def test_second_run_runs_nothing(tmp_path):
    path = _chain(tmp_path)
    records, _ = _run(path)
    assert CALLS == ["a", "b", "c"] and (tmp_path / "out/c/out.txt").read_text() == "CBA"
    CALLS.clear()
    records2, lines = _run(path)
    assert CALLS == [] and all(r.cached for r in records2.values())
    assert all("cached" in line for line in lines)
    assert {n: r.key for n, r in records.items()} == {n: r.key for n, r in records2.items()}
    state = json.loads((tmp_path / "out/pipeline.json").read_text())
    assert [s["name"] for s in state["stages"]] == ["a", "b", "c"] and state["failed"] is None


def test_changing_one_stage_reruns_it_and_those_after_it_only(tmp_path):
    _run(_chain(tmp_path))
    CALLS.clear()
    _run(_chain(tmp_path, b="B2"))
    assert CALLS == ["b", "c"]
    assert (tmp_path / "out/c/out.txt").read_text() == "CB2A"
    CALLS.clear()
    _run(_chain(tmp_path, b="B2", c="C2"))
    assert CALLS == ["c"]


def test_an_external_input_file_is_hashed_by_content(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("x")
    extra = {"d": {"uses": "write", "with": {"text": "D", "source": str(data)}}}
    _run(_chain(tmp_path, extra=extra))
    CALLS.clear()
    data.write_text("y")
    _run(_chain(tmp_path, extra=extra))
    assert CALLS == ["d"]


def test_a_failed_pipeline_resumes_from_the_failed_stage(tmp_path):
    failing = {"b": {"uses": "write", "with": {"text": "B", "source": "${a.text}", "fail": True}}}
    path = _pipeline(tmp_path, {"a": {"uses": "write", "with": {"text": "A"}}, **failing,
                                "c": {"uses": "write", "with": {"text": "C", "source": "${b.text}"}}})
    with pytest.raises(RuntimeError, match="told to fail"):
        _run(path)
    assert CALLS == ["a", "b"] and not (tmp_path / "out/b/stage.json").exists()
    assert "Traceback" in (tmp_path / "out/b/log.txt").read_text()
    assert json.loads((tmp_path / "out/pipeline.json").read_text())["failed"] == "b"
    CALLS.clear()
    _run(_chain(tmp_path))  # the fix: same a, b without the failure
    assert CALLS == ["b", "c"]


def test_variables_profiles_and_sets(tmp_path):
    path = _pipeline(tmp_path, {"a": {"uses": "write", "with": {"text": "${vars.word}"}}}, {"word": "long"})
    raw = yaml.safe_load(path.read_text())
    raw["profiles"] = {"quick": {"word": "short"}}
    path.write_text(yaml.safe_dump(raw))
    _run(path, profile="quick")
    assert (tmp_path / "out/a/out.txt").read_text() == "short"
    _run(path, overrides={"word": "set"})
    assert (tmp_path / "out/a/out.txt").read_text() == "set"


@pytest.mark.parametrize("stages, message", [
    ({"a": {"uses": "nope"}}, "unknown stage kind 'nope'"),
    ({"a": {"uses": "write", "with": {"text": "${b.text}"}}}, "names no earlier stage"),
    ({"a": {"uses": "write", "with": {"text": "x"}}, "b": {"uses": "write", "with": {"text": "${a.model}"}}},
     "has no output 'model'"),
    ({"a": {"uses": "write", "with": {"text": "${vars.missing}"}}}, "is not defined"),
    ({"a": {"uses": "write", "wiht": {}}}, "unknown key 'wiht'"),
    ({"a": {"uses": "write", "with": {"text": "x"}, "when": "yes"}}, "must be true, false or"),
    ({"a": {"uses": "write", "with": {"text": "x"}, "when": False},
      "b": {"uses": "write", "with": {"text": "${a.text}"}}}, "stage 'a' is switched off"),
    ({"a": {"uses": "write", "config": "missing.yaml"}}, "config file .*missing.yaml does not exist"),
])
def test_bad_pipeline_files_name_the_stage(tmp_path, stages, message):
    with pytest.raises(PipelineError, match=message) as err:
        load_pipeline(_pipeline(tmp_path, stages))
    assert "p.yaml" in str(err.value)


def test_when_switches_a_stage_and_list_items_off_and_on(tmp_path):
    seen = []
    stage_kinds.STAGE_KINDS["collect"] = stage_kinds.StageKind(
        "collects its config", ("text",), lambda context, config: (seen.append(config) or _write(context, {"text": "x"})))
    try:
        stages = {"a": {"uses": "write", "with": {"text": "A"}, "when": "${vars.extra}"},
                  "b": {"uses": "write", "with": {"text": "B"}},
                  "c": {"uses": "collect", "with": {"items": [
                      {"name": "a", "path": "${a.text}", "when": "${vars.extra}"}, {"name": "b", "path": "${b.text}"}]}}}
        path = _pipeline(tmp_path, stages, {"extra": False})
        _run(path)
        assert CALLS == ["b", "c"] and seen[-1] == {"items": [{"name": "b", "path": str(tmp_path / "out/b/out.txt")}]}
        CALLS.clear()
        _run(path, overrides={"extra": True})
        assert CALLS == ["a", "c"] and [item["name"] for item in seen[-1]["items"]] == ["a", "b"]
        assert "when" not in seen[-1]["items"][0]
    finally:
        del stage_kinds.STAGE_KINDS["collect"]


def test_a_stage_config_file_is_the_base_of_its_with(tmp_path):
    """``config: base.yaml`` (next to the pipeline file): its keys, with ``with``'s replacing them section by
    section; editing the file re-runs the stage (the merged config is its key)."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"text": "base", "source": "${a.text}"}))
    path = _pipeline(tmp_path, {"a": {"uses": "write", "with": {"text": "A"}},
                                "b": {"uses": "write", "config": "base.yaml", "with": {"text": "B"}}})
    _run(path)
    assert (tmp_path / "out/b/out.txt").read_text() == "BA"
    CALLS.clear()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"text": "base"}))
    _run(path)
    assert CALLS == ["b"] and (tmp_path / "out/b/out.txt").read_text() == "B"


def test_cli_run_twice(tmp_path, capsys):
    from tuneloop.cli import main

    path = _chain(tmp_path)
    assert main(["run", str(path)]) == 0
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.count("cached") == 3 and CALLS == ["a", "b", "c"]
    assert main(["run", "--list"]) == 0 and "eval " in capsys.readouterr().out
    assert main(["run"]) == 2


def test_shipped_pipelines_and_example_configs_load():
    """The demo pipeline (both profiles), the example pipeline and every stage's example config are valid."""
    from pathlib import Path

    from tuneloop.config import load_config
    from tuneloop.demo import DEMO_PIPELINE
    from tuneloop.evaluate.config import EvalConfig
    from tuneloop.train.dpo_config import DPOConfig
    from tuneloop.train.reward import RewardConfig
    from tuneloop.train.sft import SFTConfig

    examples = Path(__file__).parents[1] / "examples"
    loop = ["data", "sft", "sample", "label", "reward", "ppo", "eval", "report"]
    for profile, overrides, dpo in ((None, {}, False), (None, {"dpo": True}, True), ("quick", {}, True)):
        demo = load_pipeline(DEMO_PIPELINE, profile=profile, overrides=overrides)
        assert [s.name for s in demo.stages] == loop[:5] + ["dpo"] * dpo + loop[5:]
        policies = [p["name"] for p in next(s for s in demo.stages if s.name == "eval").config["policies"]]
        assert policies == ["sft"] + ["dpo"] * dpo + ["ppo"]
    assert load_pipeline(examples / "pipeline-small.yaml", profile="quick").variables["base"] == "tiny-llama"
    task = load_pipeline(examples / "rl-task.yaml")
    assert [s.name for s in task.stages] == ["data", "sft", "sample", "label", "reward", "ppo", "eval", "report"]
    for name, cls in (("sft-reviews", SFTConfig), ("reward-demo", RewardConfig), ("dpo-demo", DPOConfig),
                      ("eval-demo", EvalConfig)):
        load_config(cls, examples / f"{name}.yaml")


def test_an_rl_stage_runs_in_a_pipeline_and_is_cached(tmp_path):
    """A ``ppo`` stage (tiny model, a programmatic reward) trains, hands its model to a later stage, prints
    its progress line, and is not run again when nothing changed."""
    from rl_helpers import spec

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Say hello.", "What is a robot?"]))
    ppo = {"model": {"name": "tiny-llama"}, "reward": spec("e_share"), "steps": 2, "micro_batch_size": 2,
           "rollout": {"prompts": str(prompts), "prompts_per_step": 2, "samples_per_prompt": 2,
                       "sampling": {"max_new_tokens": 4, "batch_size": 4}},
           "run": {"seed": 0}}
    path = _pipeline(tmp_path, {"ppo": {"uses": "ppo", "with": ppo},
                                "after": {"uses": "write", "with": {"text": "${ppo.model}"}}})
    records, lines = _run(path)
    model_dir = tmp_path / "out/ppo/run/model"
    assert (model_dir / "config.json").is_file()
    assert (tmp_path / "out/after/out.txt").read_text() == str(model_dir)
    line = next(line for line in lines if "ppo" in line)
    assert "2 rounds, score" in line and "KL" in line, line
    CALLS.clear()
    _, lines = _run(path)
    assert CALLS == [] and sum("cached" in line for line in lines) == 2, lines
