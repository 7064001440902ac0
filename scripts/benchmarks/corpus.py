"""Made-up text and records, the same on every run: a seeded vocabulary drawn Zipf-like
(fts, fts-share, sync, mirror) and what the records around it share.

How the words are drawn is part of what makes the data; changing it changes every
benchmark's input, so results before and after no longer compare.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

VOCABULARY_SIZE = 20_000
VOCABULARY_SEED = 1
TITLE_WORDS = 8
BODY_WORDS = 40
#: Rows drawn per `random.choices` call; part of what makes the text (keep it fixed).
DRAW_ROWS = 1_000
SYLLABLES = tuple(c + v for c in "bdfghjklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai",
                                                               "ou"))
#: Names of the equipment a made-up record is about (sync's titles, mirror's names).
EQUIPMENT = ("pump", "valve", "tank", "meter", "well", "pumphouse", "sensor", "gate")
#: Made-up records are stamped from here (2026-01-01T00:00:00Z), STEP_S apart by id.
EPOCH = 1_767_225_600
STEP_S = 12


class Corpus:
    """Deterministic made-up text: a vocabulary built from syllables, words drawn Zipf-like
    (the word of rank r with weight 1/r), 8 to a title and 40 to a body."""

    def __init__(self, seed: int = VOCABULARY_SEED, size: int = VOCABULARY_SIZE) -> None:
        rng = random.Random(seed)
        words: dict[str, None] = {}
        while len(words) < size:
            words.setdefault("".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))), None)
        #: By rank: words[0] is the most common.
        self.words = list(words)
        self.cum_weights = list(itertools.accumulate(1 / rank for rank in range(1, size + 1)))

    def word_rows(self, rng: random.Random, count: int, width: int) -> Iterator[list[str]]:
        """`count` rows of `width` words each, drawn from `rng` `DRAW_ROWS` rows at a time.
        Lazily: a caller that draws from `rng` between two rows does so between the
        same draws every time."""
        for start in range(0, count, DRAW_ROWS):
            n = min(DRAW_ROWS, count - start)
            drawn = rng.choices(self.words, cum_weights=self.cum_weights, k=n * width)
            for i in range(n):
                yield drawn[i * width:(i + 1) * width]

    def rows(self, seed: int, first_id: int, count: int) -> Iterator[tuple[int, str, str]]:
        """`count` rows (id, title, body) with ids from `first_id`; the same for the same seed."""
        words = self.word_rows(random.Random(seed), count, TITLE_WORDS + BODY_WORDS)
        for offset, row in enumerate(words):
            yield first_id + offset, " ".join(row[:TITLE_WORDS]), " ".join(row[TITLE_WORDS:])
