"""Prequential evaluation (pure Python, no Flink): the quality metrics of a stream's scores, each
taken before the model learned from the record, over the whole stream and over a part of it
(`riskstream evaluate`, docs/evaluation.md), and the stream itself read with the job's own code.

Every metric takes parallel arrays of probabilities in [0, 1] and labels 0 / 1 (unlabelled
records left out) and returns nan where it is undefined (no records; ROC AUC and PR AUC without
both classes):
- `log_loss`: mean negative log-likelihood in nats, probabilities clipped to [1e-15, 1 - 1e-15];
- `roc_auc`: exact area under the ROC curve (ties count half); `roc_auc_thresholds`: the same
  area with the curve taken at 1,000 evenly spaced thresholds as River's `ROCAUC(n_thresholds)`
  computes it (the issue's reference figures use it);
- `average_precision`: PR AUC as the step-wise sum over distinct scores, sum_n (R_n - R_n-1) P_n
  (scikit-learn's definition);
- `expected_calibration_error`: over ECE_BINS equal-width bins of [0, 1],
  sum_b (n_b / N) |mean score_b - fraud rate_b|.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from udfs.metrics import log_loss as _log_loss
from udfs.metrics import roc_auc as _roc_auc
from udfs.reading import TransactionReader
from udfs.wire import RecordBatch

ECE_BINS = 10  # equal-width bins of the expected calibration error
ROC_THRESHOLDS = 1_000  # roc_auc_thresholds' default, as the issue's reference figures
READ_CHUNK = 1_000  # records read per call of the job's columnar reading code


def _arrays(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if p.shape != y.shape:
        raise ValueError(f"scores and labels differ in length ({p.shape} vs {y.shape})")
    return p, y


def log_loss(scores, labels) -> float:
    """udfs.metrics.log_loss (nats, scores clipped to [1e-15, 1 - 1e-15]) on arrays or sequences."""
    p, y = _arrays(scores, labels)
    return _log_loss(p.tolist(), y.tolist())


def roc_auc(scores, labels) -> float:
    """udfs.metrics.roc_auc (exact, ties counting half) on arrays or sequences."""
    p, y = _arrays(scores, labels)
    return _roc_auc(p.tolist(), y.tolist())


def roc_auc_thresholds(scores, labels, thresholds: int = ROC_THRESHOLDS) -> float:
    """ROC AUC from the curve at `thresholds` (>= 2) cut points i / (thresholds - 1) (the first
    lowered and the last raised by 1e-7), a record counting as flagged when its score is above the
    cut, integrated by the trapezoid rule: River 0.26's `ROCAUC(n_thresholds=thresholds)`. nan
    unless both classes are present."""
    p, y = _arrays(scores, labels)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    cuts = np.arange(thresholds, dtype=np.float64) / (thresholds - 1)
    cuts[0] -= 1e-7
    cuts[-1] += 1e-7
    # Records flagged at cut c are those with score > c: count them from the sorted scores.
    flagged_positive = len(p[y == 1]) - np.searchsorted(np.sort(p[y == 1]), cuts, side="right")
    flagged_negative = len(p[y == 0]) - np.searchsorted(np.sort(p[y == 0]), cuts, side="right")
    tpr = flagged_positive / positives
    fpr = flagged_negative / negatives
    return float(-np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision(scores, labels) -> float:
    """PR AUC as average precision: sum over distinct scores, highest first, of the recall gained
    at that score times the precision there (records with equal scores enter together); nan
    without a positive or without records."""
    p, y = _arrays(scores, labels)
    positives = int(y.sum())
    if len(p) == 0 or positives == 0:
        return math.nan
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    last_of_score = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the last record of each distinct score
    true_positives = np.cumsum(y)[last_of_score]
    flagged = last_of_score + 1
    recall = true_positives / positives
    precision = true_positives / flagged
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def expected_calibration_error(scores, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error over `bins` equal-width bins of [0, 1] (bin b holds scores in
    [b / bins, (b + 1) / bins); the last one includes 1): the record-weighted mean of
    |mean score - fraud rate| per bin, in [0, 1]; nan if empty."""
    p, y = _arrays(scores, labels)
    if len(p) == 0:
        return math.nan
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    score_sums = np.bincount(which, weights=p, minlength=bins)
    label_sums = np.bincount(which, weights=y.astype(np.float64), minlength=bins)
    return float(np.sum(np.abs(score_sums - label_sums)) / len(p))


METRICS: dict[str, Callable[..., float]] = {
    "log_loss": log_loss, "roc_auc": roc_auc_thresholds, "roc_auc_exact": roc_auc,
    "pr_auc": average_precision, "ece": expected_calibration_error,
}


def metrics(scores, labels) -> dict[str, float]:
    """Every metric of METRICS on the labelled records given (see the module docstring)."""
    return {name: metric(scores, labels) for name, metric in METRICS.items()}


def part_metrics(scores, labels, positions, starts: dict[str, int]) -> dict[str, dict[str, float]]:
    """`metrics` of each part of a stream: part name -> metrics over the labelled records (label
    0 or 1; -1 is unlabelled) whose position (0-based, among the records read) is at least the
    part's start. `base_rate` scores are taken per part: see `base_rate_scores`."""
    p, y = _arrays(scores, labels)
    where = np.asarray(positions, dtype=np.int64)
    return {name: metrics(p[(where >= start) & (y >= 0)], y[(where >= start) & (y >= 0)])
            for name, start in starts.items()}


def base_rate_part_metrics(labels, positions, starts: dict[str, int]) -> dict[str, dict[str, float]]:
    """`part_metrics` of the hindsight base-rate predictor: in each part, every record scored
    with that part's own fraud share (`base_rate_scores`)."""
    y = np.asarray(labels, dtype=np.int64)
    where = np.asarray(positions, dtype=np.int64)
    results = {}
    for name, start in starts.items():
        part = y[(where >= start) & (y >= 0)]
        results[name] = metrics(base_rate_scores(part), part)
    return results


def base_rate_scores(labels) -> np.ndarray:
    """The hindsight base-rate predictor's scores: each record scored with the fraud share of all
    `labels` (known only afterwards; the yardstick a model must beat)."""
    y = np.asarray(labels, dtype=np.float64)
    return np.full(len(y), y.mean() if len(y) else math.nan)


def rolling_curve(scores, labels, window: int, points: int = 200) -> list[tuple[int, int, float, float]]:
    """A learning curve: at up to `points` evenly spaced ends along the labelled records, the log
    loss and ROC AUC (1,000 thresholds) of the last `window` of them. Rows (end: records up to and
    including it, records in the window, log loss, ROC AUC); nan where undefined."""
    p, y = _arrays(scores, labels)
    n = len(p)
    if n == 0:
        return []
    ends = np.unique(np.linspace(min(window, n), n, num=min(points, n)).astype(np.int64))
    rows = []
    for end in ends.tolist():
        start = max(0, end - window)
        rows.append((end, end - start, log_loss(p[start:end], y[start:end]),
                     roc_auc_thresholds(p[start:end], y[start:end])))
    return rows


class StreamChunk(NamedTuple):
    """A chunk of the cleaned, encoded records of a stream, in file order, and where they were."""

    batch: RecordBatch  # every record of the chunk that was not dead-lettered, in order
    positions: np.ndarray  # int64: each record's 0-based position among all records read


class StreamSummary(NamedTuple):
    records_read: int
    dead_letters: Counter  # by stage


def read_stream(reader: TransactionReader, records: Iterable[bytes], chunk: int = READ_CHUNK
                ) -> tuple[list[StreamChunk], StreamSummary]:
    """Reads a stream's records (bytes, in order) with the job's columnar reading code
    (`TransactionReader.read_columns`, one shard), `chunk` records at a time: the chunks of
    scorable records in order, and how many were read and dead-lettered (by stage)."""
    chunks: list[StreamChunk] = []
    dead_letters: Counter = Counter()
    read = 0
    for raws in _chunks(records, chunk):
        rejected: list[int] = []

        def source_of(position: int, rejected=rejected, start=read) -> dict:
            rejected.append(start + position)
            return {"line": start + position + 1}

        by_shard, letters = reader.read_columns(raws, source_of, 1, 0)
        dead_letters.update(letter.stage for letter in letters)
        kept = np.setdiff1d(np.arange(read, read + len(raws), dtype=np.int64), np.array(rejected, np.int64))
        if by_shard:
            chunks.append(StreamChunk(by_shard[0], kept))
        read += len(raws)
    return chunks, StreamSummary(read, dead_letters)


def _chunks(records: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
