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
# A plot with one line per group draws the TOP_GROUPS groups with most records and one line OTHER
# for the rest together, so that 20 merchant categories stay readable on a 10-colour palette.
TOP_GROUPS = 7
OTHER = "(other)"
# Label delay bins (label_time - event_time), ms: [edge, next edge); the first bin also holds
# negative delays, the last everything from 30 days.
DELAY_EDGES_MS = (0, MINUTE_MS, 10 * MINUTE_MS, 60 * MINUTE_MS, 6 * 60 * MINUTE_MS, 24 * 60 * MINUTE_MS,
                  3 * 24 * 60 * MINUTE_MS, 7 * 24 * 60 * MINUTE_MS, 14 * 24 * 60 * MINUTE_MS, 30 * 24 * 60 * MINUTE_MS)
# Label outcomes in the order a label meets them, then the stages that dead-letter unreadable labels.
LABEL_OUTCOMES = ("applied", "duplicate", "contradicting", "expired", "unknown", "late", "label-decode",
                  "label-parse", "label-clean", "label-route")


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


def top_groups(sizes: Counter, top: int = TOP_GROUPS) -> dict[str, str]:
    """Each group of `sizes` (group -> records) -> the name it is drawn under: itself for the `top`
    largest (ties by name), OTHER for the rest. In the order drawn: largest first, OTHER last."""
    ranked = sorted(sizes, key=lambda group: (-sizes[group], group))
    return {group: group if rank < top else OTHER for rank, group in enumerate(ranked)}


def _drawn_order(names: dict[str, str]) -> dict[str, int]:
    return {name: rank for rank, name in enumerate(dict.fromkeys(names.values()))}


def fraud_rate_by_category(scores: Sequence[dict[str, Any]], window_ms: int, top: int = TOP_GROUPS) -> Table:
    """Per merchant category and tumbling event-time window: labelled scores, frauds among them,
    and the fraud rate. The `top` categories with most labelled scores each, the others together
    as OTHER (see top_groups); categories by labelled scores, largest first, then by window."""
    labelled = [s for s in scores if s["label"] is not None]
    names = top_groups(Counter(s["merchant_category"] for s in labelled), top)
    counts: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for s in labelled:
        count = counts[(names[s["merchant_category"]], s["event_time"] - s["event_time"] % window_ms)]
        count[0] += 1
        count[1] += s["label"]
    order = _drawn_order(names)
    return Table(("merchant_category", "window_start", "labelled", "frauds", "fraud_rate"),
                 [(category, start, labelled, frauds, frauds / labelled)
                  for (category, start), (labelled, frauds) in sorted(counts.items(),
                                                                      key=lambda item: (order[item[0][0]], item[0][1]))])


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
    """Labelled scores per currency (amounts in different currencies are never counted together;
    currencies by labelled scores, most first) and amount bin [low, high), split by label, from
    each currency's lowest bin holding one to its highest: bins are log-spaced,
    AMOUNT_BINS_PER_DECADE a decade, and amounts below 0.01 count in a bin [0, 0.01)."""
    counts: Counter = Counter()
    for s in scores:
        if s["label"] is not None:
            counts[(s["currency"], _amount_bin(s["amount"]), s["label"])] += 1
    per_currency = Counter()
    for (currency, _, _), n in counts.items():
        per_currency[currency] += n
    rows = []
    for currency in top_groups(per_currency, len(per_currency)):
        bins = [b for c, b, _ in counts if c == currency]
        rows += [(currency, 0.0 if b == 0 else _amount_edge(b), _amount_edge(b + 1), counts[(currency, b, 0)],
                  counts[(currency, b, 1)]) for b in range(min(bins), max(bins) + 1)]
    return Table(("currency", "low", "high", "not_fraud", "fraud"), rows)


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


def window_size_ms(window: str) -> int:
    """The size (ms) of an analytics line's `window` (`tumbling-<size>ms` or `sliding-<size>ms-<slide>ms`)."""
    return int(window.split("-")[1].removesuffix("ms"))


def plotted_window(lines: Iterable[dict[str, Any]]) -> str | None:
    """Of the windows the analytics lines name, the one the report draws: the smallest, a tumbling
    one before a sliding one of the same size (None without lines)."""
    windows = {line["window"] for line in lines}
    return min(windows, key=lambda window: (window_size_ms(window), not window.startswith("tumbling"), window),
               default=None)


def analytics_by_group(lines: Sequence[dict[str, Any]], top: int = TOP_GROUPS) -> Table:
    """The analytics lines of the `plotted_window`, per grouping field (`group_by`), group and window:
    transactions, labelled transactions, frauds and the fraud rate (null without labels). Per
    field the `top` groups with most transactions each, the others summed as OTHER."""
    window = plotted_window(lines)
    rows = []
    for group_by in sorted({line["group_by"] for line in lines if line["window"] == window}):
        mine = [line for line in lines if line["window"] == window and line["group_by"] == group_by]
        sizes: Counter = Counter()
        for line in mine:
            sizes[line["group"]] += line["transactions"]
        names = top_groups(sizes, top)
        sums: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
        for line in mine:
            summed = sums[(names[line["group"]], line["window_start"])]
            summed[0] += line["transactions"]
            summed[1] += line["labelled_transactions"]
            summed[2] += line["fraud_count"]
        order = _drawn_order(names)
        rows += [(group_by, group, window, start, n, labelled, frauds, frauds / labelled if labelled else None)
                 for (group, start), (n, labelled, frauds) in sorted(sums.items(),
                                                                     key=lambda item: (order[item[0][0]], item[0][1]))]
    return Table(("group_by", "group", "window", "window_start", "transactions", "labelled_transactions",
                  "fraud_count", "fraud_rate"), rows)


def analytics_amounts(lines: Sequence[dict[str, Any]]) -> Table:
    """Amounts per currency (never summed across currencies) and window of the `plotted_window`:
    their sum and largest, over the lines of one grouping field (the first by name; each field's
    groups split the same records, so any field gives the same figures). Currencies by their
    number of windows, most first, then by name."""
    window = plotted_window(lines)
    group_by = min((line["group_by"] for line in lines if line["window"] == window), default=None)
    sums: dict[tuple[str, int], list[float]] = {}
    for line in lines:
        if line["window"] == window and line["group_by"] == group_by:
            for currency, amount in line["amount"].items():
                summed = sums.setdefault((currency, line["window_start"]), [0.0, amount["max"]])
                summed[0] += amount["sum"]
                summed[1] = max(summed[1], amount["max"])
    order = _drawn_order(top_groups(Counter(currency for currency, _ in sums), len(sums)))
    return Table(("currency", "window", "window_start", "amount_sum", "amount_max"),
                 [(currency, window, start, total, largest)
                  for (currency, start), (total, largest) in sorted(sums.items(),
                                                                    key=lambda item: (order[item[0][0]], item[0][1]))])


def late_records(late: Iterable[dict[str, Any]], window_ms: int) -> Table:
    """Late lines per analytics window they were late for (`window`) and report window of the
    record's event time: how many, and the most any was late by (ms, over the windows it missed)."""
    counts: dict[tuple[str, int], list[int]] = {}
    for line in late:
        by = max(missed["late_by_ms"] for missed in line["missed"])
        count = counts.setdefault((line["window"], line["event_time"] - line["event_time"] % window_ms), [0, by])
        count[0] += 1
        count[1] = max(count[1], by)
    return Table(("window", "window_start", "late_lines", "max_late_by_ms"),
                 [(window, start, n, by) for (window, start), (n, by) in sorted(counts.items())])


def label_delays(learning: Iterable[dict[str, Any]]) -> Table:
    """Applied labels (learning lines) per delay bin [low_ms, high_ms) of DELAY_EDGES_MS, split by
    label; the first bin also holds negative delays, and the last has no high (null)."""
    counts = [[0, 0] for _ in DELAY_EDGES_MS]
    for line in learning:
        b = max(sum(1 for edge in DELAY_EDGES_MS if edge <= line["delay_ms"]) - 1, 0)
        counts[b][line["label"]] += 1
    highs = (*DELAY_EDGES_MS[1:], None)
    return Table(("low_ms", "high_ms", "not_fraud", "fraud"),
                 [(low, high, c[0], c[1]) for low, high, c in zip(DELAY_EDGES_MS, highs, counts)])


def label_outcomes(learning: Iterable[dict[str, Any]], label_letters: Iterable[dict[str, Any]]) -> Table:
    """Labels by what became of them: `applied` (learning lines), then each outcome or stage of
    the label dead letters, in LABEL_OUTCOMES order (others after, by name); only those that occur."""
    counts = Counter(letter.get("outcome") or letter["stage"] for letter in label_letters)
    counts["applied"] = sum(1 for _ in learning)
    shown = [name for name in LABEL_OUTCOMES if counts[name]] + sorted(set(counts) - set(LABEL_OUTCOMES))
    return Table(("outcome", "labels"), [(name, counts[name]) for name in shown])


def drift_events_per_window(events: Iterable[dict[str, Any]], window_ms: int) -> Table:
    """Drift events per tumbling event-time window (of the record at which each was detected),
    windows with events only: how many, and how many model keys they name."""
    keys: dict[int, list] = defaultdict(list)
    for event in events:
        keys[event["event_time"] - event["event_time"] % window_ms].append(event["model_key"])
    return Table(("window_start", "events", "model_keys"),
                 [(start, len(named), len(set(named))) for start, named in sorted(keys.items())])
