"""``tuneloop chat``: talk to a model in the terminal. Commands: /reset, /exit (or Ctrl-D).

Answers come from ``generate()`` like every other stage (``--backend``: the tuneloop engine by default,
or transformers' generate), streamed to the terminal token by token.
"""

from __future__ import annotations

import sys

from tuneloop.data.chat import render_prompt
from tuneloop.generation import Backend, SamplingConfig, generate


class _Streamer:
    """Writes the answer's new text as tokens arrive (decoding the whole answer each time, so that
    multi-byte characters split over tokens come out whole)."""

    def __init__(self, tokenizer, out=sys.stdout):
        self.tokenizer, self.out, self.tokens, self.shown = tokenizer, out, [], ""

    def __call__(self, prompt_index: int, candidate_index: int, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a split character
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text


def chat_loop(model_name: str, system: str | None, temperature: float, max_new_tokens: int,
              read=input, write=print, backend: str = SamplingConfig.backend.value, seed: int = 0) -> None:
    from tuneloop.models import ModelConfig, load_causal_lm

    model, tokenizer = load_causal_lm(ModelConfig(name=model_name), trainable=False)
    sampling = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, batch_size=1, backend=backend)
    base = [{"role": "system", "content": system}] if system else []
    messages = list(base)
    turn = 0  # each answer draws with its own seed
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
        sys.stdout.write("model> ")
        (answers,) = generate(model, tokenizer, [render_prompt(tokenizer, messages)], sampling, seed=seed + turn,
                              on_token=_Streamer(tokenizer), log=lambda line: None)
        sys.stdout.write("\n")
        turn += 1
        messages.append({"role": "assistant", "content": answers[0].text})


def register(sub) -> None:
    p = sub.add_parser("chat", help="talk to a model in the terminal")
    p.add_argument("--model", required=True, help="model folder, bundled name or hub id")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--backend", choices=[b.value for b in Backend], default=SamplingConfig.backend.value,
                   help="decode loop: tuneloop (the engine) or hf (transformers' generate)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=lambda args, _: chat_loop(args.model, args.system, args.temperature,
                                                     args.max_new_tokens, backend=args.backend, seed=args.seed) or 0)
