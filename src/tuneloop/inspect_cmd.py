"""``tuneloop inspect``: look at data before training on it.

  inspect data FILE        validate and summarise (format, records, token lengths); exit 2 if invalid
  inspect masks FILE       show which tokens are trained (green in a terminal, [[…]] otherwise)
  inspect batch-plan       how a config's batch becomes micro-batches, steps and epochs
"""

from __future__ import annotations

import sys

from tuneloop.data import load_records
from tuneloop.data.chat import render_with_mask
from tuneloop.data.formats import detect_format, prompt_messages, sft_messages


def inspect_data(path: str, model_name: str, max_length: int, write=print) -> dict:
    from tuneloop.data.sft import tokenize_sft
    from tuneloop.models.loading import load_tokenizer

    records = load_records(path)
    fmt = detect_format(records)
    info: dict = {"file": path, "format": fmt, "records": len(records)}
    if fmt.startswith("sft"):
        tokenizer = load_tokenizer(model_name)
        _, stats = tokenize_sft(records, tokenizer, max_length)
        info.update(stats.summary())
    elif fmt.startswith("prompt"):
        from tuneloop.data.chat import render_prompt
        from tuneloop.models.loading import load_tokenizer

        tokenizer = load_tokenizer(model_name)
        lengths = sorted(len(render_prompt(tokenizer, prompt_messages(r))) for r in records)
        info.update({"prompt_tokens_min": lengths[0], "prompt_tokens_median": lengths[len(lengths) // 2],
                     "prompt_tokens_max": lengths[-1]})
    for key, value in info.items():
        write(f"{key:>18}: {value}")
    return info


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
