"""The ``hf`` backend: transformers' ``generate()`` as the reference decode loop.

Prompts × candidates are sorted by prompt length and cut into fixed chunks of ``batch_size`` rows,
left-padded; transformers runs the loop (dynamic KV cache, per-row stop at EOS). The token is drawn by
tuneloop's own sampler (``sampling.sample_next``, installed as the only logits processor, returning a
one-hot score that greedy selection then takes), with the same per-sequence generators as the engine:
for a given seed both backends draw the same samples, and the process's global RNG is never touched.
Log-probs are recomputed from the raw logits transformers returns, under softmax(logits / T).
"""

from __future__ import annotations

import torch

from tuneloop.data.padding import pad_rows, padding_mask
from tuneloop.generation.config import Generation, SamplingConfig, finish_generation, stop_token_ids
from tuneloop.generation.sampling import draw_uniforms, sample_next, sequence_generator


class _SeededSampler:
    """A logits processor that draws each row's token with the row's own generator."""

    def __init__(self, cfg: SamplingConfig, generators: list[torch.Generator], jobs: list[tuple[int, int]],
                 stops: list[int], on_token=None):
        self.cfg, self.generators, self.jobs, self.stops, self.on_token = cfg, generators, jobs, stops, on_token
        self.stopped: set[int] = set()  # rows that drew a stop token (transformers pads them from then on)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniforms = draw_uniforms(self.generators)
        tokens, _ = sample_next(scores, self.cfg.temperature, self.cfg.top_k, self.cfg.top_p, uniforms)
        if self.on_token is not None:
            for row, token in enumerate(tokens.tolist()):
                if row not in self.stopped:
                    self.on_token(*self.jobs[row], token)
                    if token in self.stops:
                        self.stopped.add(row)
        chosen = torch.full_like(scores, float("-inf"))
        chosen[torch.arange(len(tokens)), tokens.to(scores.device)] = 0.0
        return chosen


@torch.no_grad()
def generate_hf(model, tokenizer, prompts: list[list[int]], cfg: SamplingConfig, num_candidates: int, seed: int,
                rank: int, on_token=None, prompt_keys: list[int] | None = None) -> list[list[Generation]]:
    """result[i][k]: prompt i's k-th candidate, decoded by transformers in fixed chunks."""
    from transformers import LogitsProcessorList

    stops = stop_token_ids(model, tokenizer)
    keys = list(range(len(prompts))) if prompt_keys is None else prompt_keys
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    jobs = [(i, k) for i in range(len(prompts)) for k in range(num_candidates)]
    jobs.sort(key=lambda job: (-len(prompts[job[0]]), job))  # similar lengths together: less padding
    results: list[list[Generation | None]] = [[None] * num_candidates for _ in prompts]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in range(0, len(jobs), cfg.batch_size):
            chunk = jobs[start:start + cfg.batch_size]
            input_ids = pad_rows([prompts[i] for i, _ in chunk], pad_id, "left")  # (B, P)
            attention = padding_mask([len(prompts[i]) for i, _ in chunk], "left")
            width = input_ids.shape[1]
            sampler = _SeededSampler(cfg, [sequence_generator(seed, rank, keys[i], k) for i, k in chunk], chunk, stops,
                                     on_token)
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=False,
                logits_processor=LogitsProcessorList([sampler]), max_new_tokens=cfg.max_new_tokens,
                eos_token_id=stops, pad_token_id=pad_id, output_logits=True, return_dict_in_generate=True,
                temperature=None, top_p=None, top_k=None,
            )
            new_tokens = out.sequences[:, width:].cpu()  # (B, A)
            logits = torch.stack(out.logits, dim=1).float().cpu()  # (B, A, V) raw, before any processor
            scale = cfg.temperature or 1.0
            logprobs = torch.log_softmax(logits / scale, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
            for row, (i, k) in enumerate(chunk):
                results[i][k] = finish_generation(prompts[i], new_tokens[row].tolist(), logprobs[row].tolist(),
                                                  stops, tokenizer)
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]
