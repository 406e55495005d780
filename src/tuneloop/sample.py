"""``tuneloop sample``: K candidate answers per prompt, written with full provenance.

Output (JSONL, one record per prompt; the labelling app imports it as is)::

  {"prompt_id": "p-…", "prompt": "last user turn", "messages": [...],
   "completions": [...], "completion_tokens": [...], "finish_reasons": ["eos" | "length", ...],
   "provenance": {"model", "model_hash", "backend", "sampling", "seed", "tuneloop_version", "created"}}

"length" means the answer was cut at max_new_tokens (truncated). The file is written under a
temporary name and renamed when complete. ``backend`` is the decode loop that sampled
(``sampling.backend``: the tuneloop engine, transformers' generate or vLLM; see tuneloop.generation).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tuneloop.atomic import atomic_write_jsonl
from tuneloop.data import load_records
from tuneloop.data.chat import render_prompt
from tuneloop.data.formats import prompt_messages
from tuneloop.generation import Backend, SamplingConfig, generate


def prompt_id(messages: list[dict]) -> str:
    return "p-" + hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12]


def sample_candidates(model_name: str, prompts_path: str, out_path: str | Path, num_candidates: int,
                      sampling: SamplingConfig, seed: int = 0, limit: int | None = None) -> list[dict]:
    """Generate and write candidates; returns the records. Raises DataError on a bad prompts file."""
    from tuneloop import __version__

    records = load_records(prompts_path)
    conversations = [prompt_messages(r) for r in records]  # validate all before loading the model
    if limit is not None:
        conversations = conversations[:limit]
    from tuneloop.models import ModelConfig, load_causal_lm  # torch loads here, not for --help or a bad file
    from tuneloop.models.loading import model_fingerprint, resolve_model_name

    model, tokenizer = load_causal_lm(ModelConfig(name=model_name), trainable=False)
    prompt_ids = [render_prompt(tokenizer, m) for m in conversations]
    model_hash = model_fingerprint(model)
    if sampling.backend == Backend.VLLM:
        from tuneloop.generation.vllm import VLLMEngine

        del model
        model = VLLMEngine.load(resolve_model_name(model_name))
    started = time.time()
    generations = generate(model, tokenizer, prompt_ids, sampling, num_candidates, seed)
    provenance = {"model": model_name, "model_hash": model_hash, "backend": sampling.backend.value,
                  "sampling": sampling.as_dict(),
                  "seed": seed, "tuneloop_version": __version__,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = []
    for messages, ids, gens in zip(conversations, prompt_ids, generations):
        out.append({"prompt_id": prompt_id(messages), "prompt": messages[-1]["content"], "messages": messages,
                    "completions": [g.text for g in gens], "completion_tokens": [len(g.token_ids) for g in gens],
                    "finish_reasons": [g.finish_reason for g in gens], "prompt_tokens": len(ids),
                    "provenance": provenance})
    atomic_write_jsonl(out_path, out)
    tokens = sum(sum(r["completion_tokens"]) for r in out)
    truncated = sum(r["finish_reasons"].count("length") for r in out)
    print(f"[tuneloop] sample: {len(out)} prompts × {num_candidates} candidates, {tokens} tokens in "
          f"{time.time() - started:.1f}s ({tokens / max(time.time() - started, 1e-9):.1f} tok/s, "
          f"backend {sampling.backend.value}), "
          f"{truncated} truncated → {out_path}")
    return out


def register(sub) -> None:
    p = sub.add_parser("sample", help="sample K candidate answers per prompt, with provenance")
    p.add_argument("--model", required=True, help="model folder, bundled name or hub id")
    p.add_argument("--prompts", required=True, help="prompts file ({'prompt'} or {'messages'}) or bundled:<name>")
    p.add_argument("--num-candidates", type=int, default=4)
    p.add_argument("--out", required=True, help="output candidates JSONL")
    p.add_argument("--temperature", type=float, default=SamplingConfig.temperature)
    p.add_argument("--top-p", type=float, default=SamplingConfig.top_p)
    p.add_argument("--top-k", type=int, default=SamplingConfig.top_k)
    p.add_argument("--max-new-tokens", type=int, default=SamplingConfig.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=SamplingConfig.batch_size)
    p.add_argument("--backend", choices=[b.value for b in Backend], default=SamplingConfig.backend.value,
                   help="decode loop: tuneloop (the engine), hf (transformers' generate, the reference), vllm (GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--best-of", type=int, default=None, metavar="N",
                   help="sample N per kept candidate and keep the one --reward scores highest (best-of-n)")
    p.add_argument("--reward", help="reward spec for --best-of: reward-model folder, vader, module:function, URL")
    p.set_defaults(handler=_run)


def _run(args, _extra) -> int:
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, backend=args.backend)
    if args.num_candidates < 1:
        raise ValueError(f"--num-candidates must be ≥ 1, got {args.num_candidates}")
    if (args.best_of is None) != (args.reward is None) or (args.best_of is not None and args.best_of < 1):
        raise ValueError("--best-of N (N ≥ 1) and --reward SPEC go together")
    n = args.best_of or 1
    sample_candidates(args.model, args.prompts, args.out, args.num_candidates * n, sampling, args.seed, args.limit)
    if args.best_of is not None:
        from tuneloop.evaluate.best_of_n import best_of_n_file

        best_of_n_file(args.out, args.reward, n)
        print(f"[tuneloop] sample: kept the best of each {n} by {args.reward} → {args.out}")
    return 0
