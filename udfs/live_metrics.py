"""The figures the job reports as Flink metrics while it runs (pure Python; streaming/job/
registers them, README "Monitoring" lists them).

They are counted once per bundle or batch, never per record, so that the hot path pays a few
operations per bundle. Flink's Python gauges carry integers only, so a fractional figure is
published in micro-units: `micro(x)` is round(x * 1e6).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

import numpy as np

from udfs.metrics import SCORE_CLIP

MICRO = 1_000_000

# How many of the latest labelled records `RecentLogLoss` averages over, by default.
RECENT_LABELLED = 1000

# The stages at which the preparing step dead-letters a record (udfs.cleaning.Rejected); the job
# registers a counter for each up front, so that a stage without dead letters shows 0.
DEAD_LETTER_STAGES = ("decode", "parse", "clean", "features")



def micro(value: float) -> int:
    """`value` in micro-units, rounded to the nearest integer (e.g. 0.0712345678 -> 71235)."""
    return int(round(value * MICRO))


def records_in_bundle(records: str) -> int:
    """How many records a bundle's text holds (records joined by newlines): as many as
    TransactionReader.read_bundle_columns reads from it, each of which it scores or dead-letters."""
    return records.count("\n") + 1


def dead_letters_by_stage(dead_letters: Iterable) -> dict[str, int]:
    """{stage: how many} of dead letters that carry their `stage` (udfs.records.DeadLetter)."""
    return dict(Counter(letter.stage for letter in dead_letters))


class RecentLogLoss:
    """The prequential log loss (mean negative log-likelihood, natural log, per record) of the last
    `window` labelled records added: a sliding window over records, not time, kept as a ring
    buffer of per-record losses. Unlabelled records do not count. Scores are clipped as in
    udfs.metrics.log_loss, which gives the same figure for the same pairs (to rounding)."""

    def __init__(self, window: int = RECENT_LABELLED):
        if window < 1:
            raise ValueError(f"window must be >= 1 (got {window})")
        self.window = window
        self._losses = np.zeros(window)
        self._next = 0  # where the next loss goes
        self._filled = 0  # how many of _losses hold a loss

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Adds a batch's records in order: `scores` are probabilities of fraud (0..1, before
        learning), `labels` 0 or 1, or -1 for a record without a label (as RecordBatch.labels)."""
        labelled = labels >= 0
        if not labelled.any():
            return
        p = np.clip(np.asarray(scores, np.float64)[labelled], SCORE_CLIP, 1 - SCORE_CLIP)
        losses = -np.log(np.where(labels[labelled] == 1, p, 1 - p))[-self.window:]
        count = len(losses)
        first = min(count, self.window - self._next)  # up to the end of the ring, then from its start
        self._losses[self._next:self._next + first] = losses[:first]
        self._losses[:count - first] = losses[first:]
        self._next = (self._next + count) % self.window
        self._filled = min(self.window, self._filled + count)

    @property
    def labelled(self) -> int:
        """How many labelled records the figure is over (0..window)."""
        return self._filled

    def value(self) -> float:
        """The mean log loss of the last labelled records (>= 0); nan before the first one."""
        if not self._filled:
            return float("nan")
        return float(self._losses[:self._filled].mean())

    def value_micro(self) -> int:
        """`value()` in micro-units (an integer gauge); 0 before the first labelled record, which
        `labelled` tells apart from a perfect 0."""
        return micro(self.value()) if self._filled else 0
