"""The tables behind the run report's plots, computed from a run's output lines (no Flink, no
plotting): each is a header and rows, written beside its plot as CSV. Times are epoch ms; a
window is [start, start + window_ms)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Iterable, NamedTuple, Sequence

from udfs.metrics import labelled, log_loss, none_if_nan, roc_auc

MINUTE_MS = 60_000
# Report windows are the smallest of these that cuts the run's event time into at most
# MAX_WINDOWS windows.
WINDOW_SIZES_MS = (MINUTE_MS, 5 * MINUTE_MS, 15 * MINUTE_MS, 60 * MINUTE_MS, 6 * 60 * MINUTE_MS,
                   24 * 60 * MINUTE_MS, 7 * 24 * 60 * MINUTE_MS)
MAX_WINDOWS = 60
SCORE_BINS = 20  # of width 0.05 over [0, 1]
AMOUNT_BINS_PER_DECADE = 4  # log-spaced amount bins, from 0.01


class Table(NamedTuple):
    header: tuple[str, ...]
    rows: list[tuple]


def report_window_ms(event_times: Iterable[int]) -> int:
    """The window size (ms) for plots over event time: see WINDOW_SIZES_MS."""
    times = list(event_times)
    span = max(times) - min(times) + 1 if times else 1
    for size in WINDOW_SIZES_MS:
        if span / size <= MAX_WINDOWS:
            return size
    return WINDOW_SIZES_MS[-1]


def learning_curve(scores: Sequence[dict[str, Any]], window_ms: int, top_keys: int = 5) -> Table:
    """Prequential log loss (nats) and ROC AUC of the labelled scores per tumbling event-time
    window, over all keys ("(all)") and for the `top_keys` model keys with most labelled scores;
    null where a window has no labels (AUC: fewer than two classes)."""
    labelled = [s for s in scores if s["label"] is not None]
    by_key = Counter(s["model_key"] for s in labelled)
    keys = [key for key, _ in sorted(by_key.items(), key=lambda item: (-item[1], item[0]))[:top_keys]]
    rows = []
    for key in ("(all)", *keys):
        windows: dict[int, tuple[list, list]] = defaultdict(lambda: ([], []))
        for s in labelled:
            if key == "(all)" or s["model_key"] == key:
                probabilities, labels = windows[s["event_time"] - s["event_time"] % window_ms]
                probabilities.append(s["score"])
                labels.append(s["label"])
        rows += [(key, start, len(labels), none_if_nan(log_loss(probabilities, labels)),
                  none_if_nan(roc_auc(probabilities, labels)))
                 for start, (probabilities, labels) in sorted(windows.items())]
    return Table(("model_key", "window_start", "labelled", "log_loss", "roc_auc"), rows)


def fraud_rate_by_category(scores: Sequence[dict[str, Any]], window_ms: int) -> Table:
    """Per merchant category and tumbling event-time window: labelled scores, frauds among them,
    and the fraud rate (null without labels)."""
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for s in scores:
        if s["label"] is not None:
            count = counts[(s["merchant_category"], s["event_time"] - s["event_time"] % window_ms)]
            count[0] += 1
            count[1] += s["label"]
    return Table(("merchant_category", "window_start", "labelled", "frauds", "fraud_rate"),
                 [(category, start, labelled, frauds, frauds / labelled)
                  for (category, start), (labelled, frauds) in sorted(counts.items())])


def score_distribution(scores: Sequence[dict[str, Any]]) -> Table:
    """Labelled scores per score bin [low, high) of width 1 / SCORE_BINS (the last bin includes
    1.0), split by label."""
    counts = [[0, 0] for _ in range(SCORE_BINS)]
    for s in scores:
        if s["label"] is not None:
            counts[min(int(s["score"] * SCORE_BINS), SCORE_BINS - 1)][s["label"]] += 1
    return Table(("low", "high", "not_fraud", "fraud"),
                 [(i / SCORE_BINS, (i + 1) / SCORE_BINS, c[0], c[1]) for i, c in enumerate(counts)])


def amount_distribution(scores: Sequence[dict[str, Any]]) -> Table:
    """Labelled scores per amount bin [low, high), split by label, from the lowest bin holding one
    to the highest: bins are log-spaced, AMOUNT_BINS_PER_DECADE a decade, and amounts below 0.01
    count in a bin [0, 0.01)."""
    counts: Counter = Counter()
    for s in scores:
        if s["label"] is not None:
            counts[(_amount_bin(s["amount"]), s["label"])] += 1
    if not counts:
        return Table(("low", "high", "not_fraud", "fraud"), [])
    bins = range(min(b for b, _ in counts), max(b for b, _ in counts) + 1)
    return Table(("low", "high", "not_fraud", "fraud"),
                 [(0.0 if b == 0 else _amount_edge(b), _amount_edge(b + 1), counts[(b, 0)], counts[(b, 1)])
                  for b in bins])


def _amount_edge(bin_index: int) -> float:
    return 0.01 * 10 ** (bin_index / AMOUNT_BINS_PER_DECADE)


def _amount_bin(amount: float) -> int:
    if amount < 0.01:
        return 0
    b = int(math.floor(math.log10(amount / 0.01) * AMOUNT_BINS_PER_DECADE))
    # log10 may land a hair below an edge: the bin is the one whose [low, high) holds the amount
    while _amount_edge(b + 1) <= amount:
        b += 1
    while b > 0 and _amount_edge(b) > amount:
        b -= 1
    return b


def records_per_minute(scores: Sequence[dict[str, Any]]) -> Table:
    """Scored records per event-time minute, every minute from the first to the last (0 where none)."""
    counts = Counter(s["event_time"] - s["event_time"] % MINUTE_MS for s in scores)
    if not counts:
        return Table(("minute_start", "records"), [])
    return Table(("minute_start", "records"),
                 [(minute, counts[minute]) for minute in range(min(counts), max(counts) + 1, MINUTE_MS)])


def dead_letters_by_stage(letters: Iterable[dict[str, Any]]) -> Table:
    """Dead letters per stage, in the order records pass the stages."""
    counts = Counter(letter["stage"] for letter in letters)
    order = ["decode", "parse", "clean", "features"]
    stages = [stage for stage in order if stage in counts] + sorted(set(counts) - set(order))
    return Table(("stage", "dead_letters"), [(stage, counts[stage]) for stage in stages])


def headline(scores: Sequence[dict[str, Any]], letters: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The report's headline figures: counts, the prequential log loss and ROC AUC over every
    labelled score (null when undefined), and the event-time span."""
    probabilities, labels = labelled((s["score"], s["label"]) for s in scores)
    times = [s["event_time"] for s in scores]
    return {
        "records scored": len(scores),
        "records dead-lettered": len(letters),
        "labelled scores": len(labels),
        "frauds among them": sum(labels),
        "model keys": len({s["model_key"] for s in scores}),
        "log loss": none_if_nan(log_loss(probabilities, labels)),
        "ROC AUC": none_if_nan(roc_auc(probabilities, labels)),
        "first event time": min(times) if times else None,
        "last event time": max(times) if times else None,
    }
