"""``tuneloop inspect``: look at data before training on it.

  inspect data FILE        validate every record and summarise (format, records, token lengths); a bad
                           record (a missing field included) names file, line and field; exit 2
  inspect masks FILE       show which tokens are trained (green in a terminal, [[…]] otherwise)
  inspect batch-plan       how a config's batch becomes micro-batches, steps and epochs
"""

from __future__ import annotations

import sys

from tuneloop.data import load_records
from tuneloop.data.chat import render_prompt, render_with_mask
from tuneloop.data.formats import FORMATS, Message, detect_format, prompt_messages, sft_messages


def length_stats(lengths: list[int]) -> dict[str, int]:
    """min, median, 95th percentile and max of token lengths (nearest rank)."""
    ordered = sorted(lengths) or [0]
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "median": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def inspect_data(path: str, model_name: str, max_length: int, write=print) -> dict:
    """Validate every record of ``path`` (a DataError names the file, line and field) and summarise it."""
    from tuneloop.data.sft import tokenize_sft
    from tuneloop.models.loading import load_tokenizer

    records = load_records(path)
    fmt = detect_format(records)
    info: dict = {"file": path, "format": f"{fmt}: {FORMATS[fmt]}", "records": len(records)}
    if fmt.startswith("sft"):
        _, stats = tokenize_sft(records, load_tokenizer(model_name), max_length)
        info.update(stats.summary())
    elif fmt.startswith("prompt"):
        prompts = [prompt_messages(r) for r in records]
        tokenizer = load_tokenizer(model_name)
        info["prompt_tokens"] = length_stats([len(render_prompt(tokenizer, p)) for p in prompts])
    elif fmt.startswith("preference") or fmt == "ranking":
        info.update(_preference_summary(records, load_tokenizer(model_name), max_length))
    elif fmt == "unpaired":
        from tuneloop.data.preferences import unpaired_example

        examples = [unpaired_example(r) for r in records]
        info["desirable"] = sum(e.desirable for e in examples)
        info["undesirable"] = len(examples) - info["desirable"]
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        write(f"{key:>22}: {value}")
    return info


def _preference_summary(records, tokenizer, max_length: int) -> dict:
    """Pairs and rankings (validated all before tokenising), their prompts and token lengths.

    A reply's tokens are the trained (assistant) tokens of prompt + reply rendered with the chat
    template; ``over_max_length`` counts pairs or rankings whose prompt + longest reply exceeds
    ``max_length`` (training truncates them)."""
    from tuneloop.data.preferences import Ranking, is_ranking, preference_pair, ranking

    items = [ranking(r) if is_ranking(r) else preference_pair(r) for r in records]
    pairs = [x for x in items if not isinstance(x, Ranking)]
    rankings = [x for x in items if isinstance(x, Ranking)]
    prompt_tokens: dict[str, int] = {}

    def prompt_len(group: str, prompt: list[Message]) -> int:
        if group not in prompt_tokens:
            prompt_tokens[group] = len(render_prompt(tokenizer, prompt))
        return prompt_tokens[group]

    def reply(prompt: list[Message], response: list[Message]) -> tuple[int, int]:
        """(reply tokens, whole rendered length)."""
        doc = render_with_mask(tokenizer, prompt + response)
        return doc.trained_tokens, len(doc)

    out: dict = {}
    too_long = 0
    if pairs:
        chosen = [reply(p.prompt, p.chosen) for p in pairs]
        rejected = [reply(p.prompt, p.rejected) for p in pairs]
        too_long += sum(max(c[1], r[1]) > max_length for c, r in zip(chosen, rejected))
        out.update({"pairs": len(pairs), "ties": sum(p.tie for p in pairs),
                    "with_margin": sum(p.margin > 0 for p in pairs)})
        out["chosen_tokens"] = length_stats([c[0] for c in chosen])
        out["rejected_tokens"] = length_stats([r[0] for r in rejected])
    if rankings:
        completions = [[reply(k.prompt, c) for c in k.completions] for k in rankings]
        too_long += sum(max(length for _, length in row) > max_length for row in completions)
        out["rankings"] = len(rankings)
        out["completions_per_ranking"] = length_stats([len(k.completions) for k in rankings])
        out["completion_tokens"] = length_stats([n for row in completions for n, _ in row])
    out["prompts"] = len({x.group for x in items})
    out["prompt_tokens"] = length_stats([prompt_len(x.group, x.prompt) for x in items])
    out[f"over_max_length_{max_length}"] = too_long
    return out


def inspect_masks(path: str, model_name: str, count: int, color: bool | None = None, write=print) -> None:
    from tuneloop.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_name)
    color = sys.stdout.isatty() if color is None else color
    for record in load_records(path)[:count]:
        doc = render_with_mask(tokenizer, sft_messages(record))
        pieces, open_ = [], False
        for token, trained in zip(doc.input_ids, doc.loss_mask):
            text = tokenizer.decode([token])
            if color:
                pieces.append(f"\x1b[42;30m{text}\x1b[0m" if trained else f"\x1b[2m{text}\x1b[0m")
            else:
                if trained and not open_:
                    pieces.append("[[")
                if not trained and open_:
                    pieces.append("]]")
                open_ = bool(trained)
                pieces.append(text)
        if open_ and not color:
            pieces.append("]]")
        write(f"--- {record.path}:{record.line}  {doc.trained_tokens}/{len(doc)} tokens trained "
              f"({doc.trained_tokens / len(doc):.0%})")
        write("".join(pieces))


def inspect_batch_plan(config: str | None, overrides: list[str], world_size: int, write=print) -> None:
    from tuneloop.config import load_config
    from tuneloop.data.packing import pack_best_fit
    from tuneloop.data.sft import tokenize_sft
    from tuneloop.models.loading import load_tokenizer
    from tuneloop.train.batch_plan import make_batch_plan
    from tuneloop.train.sft import SFTConfig

    cfg = load_config(SFTConfig, config, overrides)
    tokenizer = load_tokenizer(cfg.model.name)
    docs, _ = tokenize_sft(load_records(cfg.data.train), tokenizer, cfg.data.max_length, cfg.data.too_long)
    units = len(pack_best_fit([len(d) for d in docs], cfg.data.max_length)) if cfg.data.packing else len(docs)
    plan = make_batch_plan(cfg.batch, units, world_size)
    write(f"{len(docs)} documents → {units} sequences{' (packed)' if cfg.data.packing else ''}\n"
          f"batch_size {plan.batch_size} = micro_batch_size {plan.micro_batch_size} × accumulation "
          f"{plan.accumulation_steps} × processes {world_size}\n"
          f"{plan.steps_per_epoch} steps per epoch, {plan.total_steps} optimizer steps in all")


def register(sub) -> None:
    p = sub.add_parser("inspect", help="validate and look at data, masks and batch plans")
    inner = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    d = inner.add_parser("data", help="validate a data file and summarise it")
    d.add_argument("file")
    d.add_argument("--model", default="smollm2-135m-instruct", help="tokenizer to count tokens with")
    d.add_argument("--max-length", type=int, default=512)
    d.set_defaults(handler=lambda a, _: inspect_data(a.file, a.model, a.max_length) and 0)
    m = inner.add_parser("masks", help="show which tokens of SFT examples are trained")
    m.add_argument("file")
    m.add_argument("--model", default="smollm2-135m-instruct")
    m.add_argument("-n", "--count", type=int, default=3)
    m.set_defaults(handler=lambda a, _: inspect_masks(a.file, a.model, a.count) or 0)
    b = inner.add_parser("batch-plan", help="show how an SFT config's batches are split")
    b.add_argument("--config")
    b.add_argument("--processes", type=int, default=1)
    b.set_defaults(handler=lambda a, extra: inspect_batch_plan(a.config, extra, a.processes) or 0, passes_extra=True)
