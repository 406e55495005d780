"""``tuneloop run pipeline.yaml``: named stages chained through their outputs, with content-hash caching.

A pipeline file::

  name: my-loop
  out_dir: runs/my-loop            # every stage writes into <out_dir>/<stage name>/
  vars: {policy: smollm2-135m-instruct, steps: 30}
  profiles: {quick: {policy: tiny-llama, steps: 4}}    # --profile quick overrides vars
  stages:
    sft:
      uses: sft                    # a stage kind (tuneloop.commands.stages.STAGE_KINDS)
      with: {model: {name: "${vars.policy}"}, data: {train: data/sft.jsonl},
             batch: {max_steps: "${vars.steps}"}}
    sample:
      uses: sample
      with: {model: "${sft.model}", prompts: data/prompts.jsonl, num_candidates: 4}

``${vars.x}`` is a variable, ``${stage.output}`` an output of an earlier stage (``tuneloop run --list``
shows each kind's outputs); a value that is only a reference keeps its type (numbers, booleans).

A stage's ``config: file.yaml`` (relative to the pipeline file) is a config file of that stage's command as
the base of its ``with`` (``with``'s keys win): a shipped example config runs as a stage unchanged but for
its inputs.

Optional parts. ``when: "${vars.dpo}"`` (a boolean, or a variable holding one) on a stage switches it
off when false; on a mapping inside a list of a stage's ``with`` (e.g. one of eval's policies) it
leaves that item out when false. ``when`` is removed before the stage sees its config. A stage that
reads a switched-off stage (outside such an item) is an error that names both.

Caching. A stage's key is the sha256 of its kind, its resolved config, the tuneloop version, the keys
of the stages it reads from, and the content of every file or folder its config names outside the
pipeline's folder. After a stage succeeds, ``<stage>/stage.json`` records its key, outputs and time (atomically). On the next run a
stage whose key matches a record whose outputs exist is skipped. So a second run runs nothing; changing
one stage's config changes its key and, through the references, the keys of the stages that read from
it, which run again; the others are skipped. A failed stage writes no record: running the pipeline again
skips what finished and resumes from the failed stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneloop.atomic import atomic_write_text
from tuneloop.config import merge_mappings, read_yaml_mapping

RECORD = "stage.json"
STATE = "pipeline.json"
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_-]+)\.([A-Za-z0-9_/-]+)\}")


class PipelineError(ValueError):
    """A pipeline file that cannot run: names the file and the stage or key."""


@dataclass
class Stage:
    name: str
    uses: str
    config: dict  # the 'with' mapping, references unresolved
    inputs: list[str] = field(default_factory=list)  # extra files/folders whose content is part of the key


@dataclass
class Pipeline:
    path: Path
    name: str
    out_dir: Path
    variables: dict
    stages: list[Stage]


@dataclass
class StageRecord:
    """What a finished stage left: the key it ran with, its outputs, its time."""

    name: str
    uses: str
    key: str
    outputs: dict[str, str]
    seconds: float
    cached: bool = False
    summary: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"name": self.name, "uses": self.uses, "key": self.key, "outputs": self.outputs,
                "seconds": self.seconds, "summary": self.summary}


@dataclass
class StageContext:
    """What a stage kind's run function gets besides its config."""

    pipeline: Pipeline
    stage: Stage
    folder: Path  # <out_dir>/<stage name>/, empty at the start of a run
    records: dict[str, StageRecord]  # the stages before it


# ---------------------------------------------------------------------------------------------
# Loading


def load_pipeline(path: str | Path, profile: str | None = None, overrides: dict | None = None,
                  out_dir: str | Path | None = None) -> Pipeline:
    """Parse and check a pipeline file; ``profile`` and then ``overrides`` replace variables."""
    from tuneloop.commands.stages import STAGE_KINDS

    path = Path(path)
    data = read_yaml_mapping(path, "pipeline", "a mapping with 'stages'", PipelineError)
    unknown = sorted(set(data) - {"name", "out_dir", "vars", "profiles", "stages"})
    if unknown:
        raise PipelineError(f"{path}: unknown top-level key {unknown[0]!r}; known: name, out_dir, vars, profiles, "
                            f"stages")
    variables = dict(data.get("vars") or {})
    profiles = data.get("profiles") or {}
    if profile is not None:
        if profile not in profiles:
            raise PipelineError(f"{path}: no profile {profile!r}; profiles: {', '.join(profiles) or 'none'}")
        variables.update(profiles[profile])
    for key, value in (overrides or {}).items():
        if key not in variables:
            raise PipelineError(f"{path}: --set {key}: no such variable; vars: {', '.join(variables)}")
        variables[key] = value
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, dict) or not raw_stages:
        raise PipelineError(f"{path}: 'stages' must be a non-empty mapping of stage name → {{uses, with}}")
    stages: list[Stage] = []
    switched_off: list[str] = []
    for name, body in raw_stages.items():
        where = f"{path}: stage {name!r}"
        if not isinstance(body, dict) or "uses" not in body:
            raise PipelineError(f"{where}: needs 'uses' (one of {', '.join(sorted(STAGE_KINDS))})")
        extra = sorted(set(body) - {"uses", "config", "with", "inputs", "when"})
        if extra:
            raise PipelineError(f"{where}: unknown key {extra[0]!r}; known: uses, config, with, inputs, when")
        if body["uses"] not in STAGE_KINDS:
            raise PipelineError(f"{where}: unknown stage kind {body['uses']!r}; known: {', '.join(sorted(STAGE_KINDS))}")
        if not _switch(body.get("when", True), variables, f"{where}: when"):
            switched_off.append(str(name))
            continue
        config = _drop_switched_off(_with_base_config(body, path, where), variables, where)
        stage = Stage(str(name), body["uses"], config, list(body.get("inputs") or []))
        _check_references(stage, stages, variables, where, switched_off)
        stages.append(stage)
    out = Path(out_dir) if out_dir is not None else Path(data.get("out_dir") or f"runs/{data.get('name', path.stem)}")
    return Pipeline(path, str(data.get("name", path.stem)), out, variables, stages)


def _with_base_config(body: dict, path: Path, where: str) -> dict:
    """The stage's ``with`` over the mapping of its ``config`` file (relative to the pipeline file), if any:
    the stage then runs exactly that config file with ``with``'s keys replaced (its key hashes the merge)."""
    with_ = body.get("with") or {}
    if "config" not in body:
        return with_
    base_path = path.parent / str(body["config"])
    if not base_path.is_file():
        raise PipelineError(f"{where}: config file {base_path} does not exist")
    return merge_mappings(read_yaml_mapping(base_path, "config", "a mapping of config sections", PipelineError), with_)


def _switch(value: Any, variables: dict, where: str) -> bool:
    """A ``when`` value: a boolean, or ``${vars.x}`` naming a boolean variable."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if not whole or whole.group(1) != "vars" or whole.group(2) not in variables:
            raise PipelineError(f"{where}: {value!r} must be true, false or ${{vars.<name>}} of a defined variable")
        value = variables[whole.group(2)]
    if not isinstance(value, bool):
        raise PipelineError(f"{where}: must be a boolean, got {value!r}")
    return value


def _drop_switched_off(value: Any, variables: dict, where: str) -> Any:
    """``value`` without the list items whose ``when`` is false (and without the ``when`` keys)."""
    if isinstance(value, dict):
        return {k: _drop_switched_off(v, variables, where) for k, v in value.items()}
    if isinstance(value, list):
        kept = []
        for i, item in enumerate(value):
            if isinstance(item, dict) and "when" in item:
                if not _switch(item["when"], variables, f"{where}: item {i + 1}'s when"):
                    continue
                item = {k: v for k, v in item.items() if k != "when"}
            kept.append(_drop_switched_off(item, variables, where))
        return kept
    return value


def _references(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return REFERENCE.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def _check_references(stage: Stage, earlier: list[Stage], variables: dict, where: str,
                      switched_off: list[str] = ()) -> None:
    from tuneloop.commands.stages import STAGE_KINDS

    kinds = {s.name: STAGE_KINDS[s.uses] for s in earlier}
    for source, key in _references([stage.config, stage.inputs]):
        if source == "vars":
            if key not in variables:
                raise PipelineError(f"{where}: ${{vars.{key}}} is not defined; vars: {', '.join(variables)}")
        elif source in switched_off:
            raise PipelineError(f"{where}: reads ${{{source}.{key}}}, but stage {source!r} is switched off by its "
                                f"'when'; give the reading item the same 'when'")
        elif source not in kinds:
            raise PipelineError(f"{where}: ${{{source}.{key}}} names no earlier stage; earlier: "
                                f"{', '.join(kinds) or 'none'}")
        elif key not in kinds[source].outputs:
            raise PipelineError(f"{where}: stage {source!r} has no output {key!r}; outputs: "
                                f"{', '.join(kinds[source].outputs)}")


# ---------------------------------------------------------------------------------------------
# Resolving and hashing


def resolve(value: Any, variables: dict, records: dict[str, StageRecord], for_key: bool = False) -> Any:
    """Replace references; with ``for_key`` an output becomes '<stage key>:<output>' (not its path)."""

    def lookup(source: str, key: str) -> Any:
        if source == "vars":
            return variables[key]
        return f"{records[source].key}:{key}" if for_key else records[source].outputs[key]

    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole:
            return lookup(*whole.groups())
        return REFERENCE.sub(lambda m: str(lookup(*m.groups())), value)
    if isinstance(value, dict):
        return {k: resolve(v, variables, records, for_key) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, variables, records, for_key) for v in value]
    return value


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file contents (sorted)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _external_paths(value: Any, root: Path) -> list[Path]:
    """Strings of a resolved config that name an existing file or folder outside the pipeline's folder."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _external_paths(v, root)]
    if isinstance(value, list):
        return [p for v in value for p in _external_paths(v, root)]
    # Only strings written like paths (a folder separator or a file suffix): a loss named 'dpo' is not the
    # folder ./dpo.
    if isinstance(value, str) and len(value) < 4096 and "\n" not in value and ("/" in value or Path(value).suffix):
        path = Path(value)
        try:
            if path.exists() and not path.resolve().is_relative_to(root.resolve()):
                return [path]
        except OSError:
            return []
    return []


def stage_key(stage: Stage, pipeline: Pipeline, records: dict[str, StageRecord]) -> str:
    from tuneloop.commands.stages import STAGE_KINDS

    config = resolve(stage.config, pipeline.variables, records, for_key=True)
    plain = resolve(stage.config, pipeline.variables, records)
    files = sorted({str(p) for p in _external_paths(plain, pipeline.out_dir)}
                   | {str(Path(resolve(i, pipeline.variables, records))) for i in stage.inputs})
    from tuneloop import __version__

    payload: dict[str, Any] = {"uses": stage.uses, "with": config, "tuneloop": __version__,
                               "files": {f: content_hash(Path(f)) for f in files if Path(f).exists()}}
    if STAGE_KINDS[stage.uses].reads_all_stages:
        payload["stages"] = {name: r.key for name, r in records.items()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Running


def _cached(folder: Path, key: str) -> StageRecord | None:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("key") != key or not all(Path(p).exists() for p in record.get("outputs", {}).values()):
        return None
    return StageRecord(record["name"], record["uses"], key, record["outputs"], record["seconds"], True,
                       record.get("summary") or {})


@contextlib.contextmanager
def quiet_output(log_path: Path):
    """Send a stage's own prints, progress bars, warnings and library logs to ``log_path``."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    with open(log_path, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        handler = logging.StreamHandler(log)
        logging.getLogger().addHandler(handler)
        try:
            yield
        finally:
            logging.getLogger().removeHandler(handler)
            hf_logging.enable_progress_bar()
            hf_logging.set_verbosity(level)


def run_pipeline(pipeline: Pipeline, verbose: bool = False, echo: Callable[[str], None] = print,
                 until: str | None = None) -> dict[str, StageRecord]:
    """Run every stage that is not cached, in order; returns each stage's record."""
    from tuneloop.commands.stages import STAGE_KINDS

    pipeline.out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, StageRecord] = {}
    started = time.time()
    width = max(len(s.name) for s in pipeline.stages)
    total = len(pipeline.stages)
    for index, stage in enumerate(pipeline.stages, 1):
        folder = pipeline.out_dir / stage.name
        key = stage_key(stage, pipeline, records)
        record = _cached(folder, key)
        if record is None:
            if folder.exists():
                shutil.rmtree(folder)  # a stale or half-finished run of this stage
            folder.mkdir(parents=True)
            kind = STAGE_KINDS[stage.uses]
            config = resolve(stage.config, pipeline.variables, records)
            context = StageContext(pipeline, stage, folder, records)
            t0 = time.time()
            try:
                if verbose:
                    echo(f"[{index}/{total}] {stage.name}: {kind.description} …")
                    outputs, summary = kind.run(context, config)
                else:
                    with quiet_output(folder / "log.txt"):
                        outputs, summary = kind.run(context, config)
            except Exception as err:
                with open(folder / "log.txt", "a", encoding="utf-8") as log:
                    log.write(traceback.format_exc())
                _write_state(pipeline, records, started, failed=stage.name)
                echo(f"[{index}/{total}] {stage.name:<{width}}  FAILED after {time.time() - t0:.1f}s: {err}")
                echo(f"      its output and traceback: {folder / 'log.txt'}; fix it and run again to resume from here")
                raise
            record = StageRecord(stage.name, stage.uses, key, {k: str(v) for k, v in outputs.items()},
                                 round(time.time() - t0, 2), False, summary)
            atomic_write_text(folder / RECORD, json.dumps(record.as_dict(), indent=2, default=str) + "\n")
        records[stage.name] = record
        line = STAGE_KINDS[stage.uses].headline(record.summary) if record.summary else ""
        state = "cached" if record.cached else f"{record.seconds:6.1f}s"
        echo(f"[{index}/{total}] {stage.name:<{width}}  {state:>7}  {line}".rstrip())
        if until == stage.name:
            break
    _write_state(pipeline, records, started)
    return records


def _write_state(pipeline: Pipeline, records: dict[str, StageRecord], started: float,
                 failed: str | None = None) -> None:
    state = {"name": pipeline.name, "file": str(pipeline.path), "variables": pipeline.variables,
             "wall_seconds": round(time.time() - started, 1), "failed": failed,
             "stages": [{**r.as_dict(), "cached": r.cached} for r in records.values()]}
    atomic_write_text(pipeline.out_dir / STATE, json.dumps(state, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------------------------
# Command line


def _parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise PipelineError(f"--set takes NAME=VALUE, got {item!r}")
        out[key] = yaml.safe_load(text)
    return out


def register(sub) -> None:
    import argparse

    p = sub.add_parser("run", help="run a pipeline file: stages chained, finished stages not redone",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", nargs="?", help="pipeline YAML file")
    p.add_argument("--list", action="store_true", help="list the stage kinds and their outputs, and exit")
    p.add_argument("--profile", help="a profile of the file's variables (e.g. quick)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="set a variable")
    p.add_argument("--out-dir", help="where the stage folders go (default: the file's out_dir)")
    p.add_argument("--verbose", action="store_true", help="show every stage's own output")
    p.add_argument("--until", metavar="STAGE", help="stop after this stage")
    p.set_defaults(handler=_run)


def _run(args, _extra) -> int:
    from tuneloop.commands.stages import STAGE_KINDS

    if args.list:
        for name, kind in STAGE_KINDS.items():
            print(f"{name:<15} {kind.description}; outputs: {', '.join(kind.outputs)}")
        return 0
    if args.pipeline is None:
        raise PipelineError("tuneloop run needs a pipeline file (or --list)")
    pipeline = load_pipeline(args.pipeline, args.profile, _parse_sets(args.set), args.out_dir)
    print(f"[tuneloop] pipeline {pipeline.name}: {len(pipeline.stages)} stages → {pipeline.out_dir}")
    try:
        run_pipeline(pipeline, verbose=args.verbose, until=args.until)
    except Exception as err:  # the failing stage was reported; the CLI prints the error once
        print(f"tuneloop run: stage failed: {err}", file=sys.stderr)
        return 1
    return 0
