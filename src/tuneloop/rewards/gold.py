"""Gold scorers: fixed judges the policy never trains against, for evaluation and simulated raters.

- ``vader``: VADER sentiment (Hutto & Gilbert 2014), the compound score in [−1, 1] of the response;
  lexicon-based, offline (``vaderSentiment``). The demo's task (positive movie reviews) is judged by it.
- ``readability``: Flesch reading ease of the response (``textstat==0.7.8``; later versions try to
  download data and fail offline). Higher is easier; an empty response scores 0.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache


@cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_sentiment(text: str) -> float:
    """VADER compound sentiment of ``text`` in [−1, 1] (0 for empty text)."""
    return float(_vader().polarity_scores(text)["compound"])


def readability(text: str) -> float:
    """Flesch reading ease of ``text`` (0 for text without words)."""
    import textstat

    if not text.strip():
        return 0.0
    return float(textstat.flesch_reading_ease(text))


GOLD_PREFIX = "gold:"  # optional in a spec: "gold:vader" and "vader" name the same scorer
GOLD_SCORERS: dict[str, Callable[[str], float]] = {"vader": vader_sentiment, "readability": readability}
