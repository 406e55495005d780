"""Offline scorers for the simulated panel's aspects on the demo task (a short review of a movie described
by a Rotten Tomatoes plot snippet). Each maps (prompt, response) to a value in [0, 1]; the panel puts it
on the aspect's scale and adds each rater's bias and noise (panel.py).

- ``quality``: VADER's compound sentiment, (c + 1) / 2. The demo's task asks for a positive review, so
  how positive it reads is the quality the task defines (Ziegler et al. 2019's sentiment task).
- ``relevance``: cosine similarity of the bundled MiniLM (all-MiniLM-L6-v2) sentence embeddings of the
  prompt (which holds the plot) and the review, mean-pooled and normalised as the model was trained
  (sentence-transformers' recipe), clipped to [0, 1]. A review about the movie shares its content words
  and topic with the plot; a generic or off-topic one does not.
- ``safety``: 1 / (1 + p), p = the number of words from better-profanity's list (≈ 900 profanities,
  slurs and sexual terms, with leetspeak variants such as "sh1t"). Why this one: it runs offline with
  no model to download (a learned toxicity classifier such as Detoxify needs weights from the Hub); it
  is deterministic and explainable (an annotator-facing guideline can say exactly what lowers the
  score); and the unsafe outputs a small model writing movie reviews actually produces are profanity
  and insults, which a lexicon catches. What it misses: harm without bad words (dangerous advice,
  veiled insults), which matters for open-ended assistants; swap in a classifier there with
  ``simulate(aspect_scorers={"safety": your_scorer})``. Install: ``pip install 'tuneloop[label]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

AspectScorer = Callable[[str, str], float]  # (prompt, response) → [0, 1]


def vader_quality() -> AspectScorer:
    from tuneloop.rewards.gold import vader_sentiment  # the one VADER scorer

    return lambda prompt, text: (vader_sentiment(text) + 1) / 2


def profanity_safety() -> AspectScorer:
    try:
        from better_profanity import profanity
    except ImportError:
        raise ImportError("the simulated panel's safety scorer needs better-profanity: "
                          "pip install 'tuneloop[label]'") from None
    profanity.load_censor_words()
    marker = "\u2063"  # an invisible separator that no review contains: each censored word becomes one

    def score(prompt: str, text: str) -> float:
        found = profanity.censor(text, censor_char=marker).count(marker * 4)
        return 1.0 / (1.0 + found)
    return score


class MiniLMRelevance:
    """Cosine similarity of mean-pooled, normalised MiniLM embeddings of prompt and response; cached."""

    def __init__(self, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from tuneloop.models.bundled_encoder import bundled_encoder_path

        path = bundled_encoder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size, self.torch = batch_size, torch
        self._cache: dict[str, object] = {}

    def embed(self, texts: Sequence[str]) -> None:
        """Embed (and cache) many texts at once: one forward per batch instead of per call."""
        todo = sorted({t for t in texts if t not in self._cache})
        torch = self.torch
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            for text, vector in zip(chunk, torch.nn.functional.normalize(pooled, dim=-1)):
                self._cache[text] = vector

    def __call__(self, prompt: str, text: str) -> float:
        self.embed([prompt, text])
        cosine = float(self._cache[prompt] @ self._cache[text])
        return min(1.0, max(0.0, cosine))


def default_aspect_scorers() -> dict[str, AspectScorer]:
    """The demo task's scorers for the default aspects (quality, relevance, safety)."""
    return {"quality": vader_quality(), "relevance": MiniLMRelevance(), "safety": profanity_safety()}
