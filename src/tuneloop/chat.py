"""``tuneloop chat``: talk to a model in the terminal. Commands: /reset, /exit (or Ctrl-D)."""

from __future__ import annotations

import sys

import torch

from tuneloop.data.chat import render_prompt
from tuneloop.generation import stop_token_ids


def chat_loop(model_name: str, system: str | None, temperature: float, max_new_tokens: int,
              read=input, write=print) -> None:
    from transformers import TextStreamer

    from tuneloop.models import ModelConfig, load_causal_lm

    model, tokenizer = load_causal_lm(ModelConfig(name=model_name), trainable=False)
    stops = stop_token_ids(model, tokenizer)
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    write(f"[tuneloop] chatting with {model_name}; /reset clears the conversation, /exit leaves")
    while True:
        try:
            text = read("you> ").strip()
        except EOFError:
            write("")
            return
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            messages = list(base)
            write("[conversation cleared]")
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        ids = torch.tensor([render_prompt(tokenizer, messages)])
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        sys.stdout.write("model> ")
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=temperature > 0, temperature=temperature or None, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, streamer=streamer)
        answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": answer})


def register(sub) -> None:
    p = sub.add_parser("chat", help="talk to a model in the terminal")
    p.add_argument("--model", required=True, help="model folder, bundled name or hub id")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.set_defaults(handler=lambda args, _: chat_loop(args.model, args.system, args.temperature,
                                                     args.max_new_tokens) or 0)
