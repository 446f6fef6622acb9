"""The global model's arithmetic over columns of records (pure Python and numpy, no Flink): what
udfs/global_model.py does one record at a time (`GlobalModel.standardize`, `compute_partial`), for a
batch at once, as the job needs it per shard batch. The unit tests hold both to each other (1e-12).

Records are in the sparse layout of udfs.wire.RecordBatch: record r's features are entries
indptr[r]..indptr[r+1] of `indices` / `values`, its numeric features first and all present, so a
standardized feature i (one of `positions`) is its entry i.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from udfs.global_model import GlobalModel, GradientPartial, Statistics


class VersionArrays(NamedTuple):
    """A version's parameters as arrays by feature index: weights, and the standardization
    (subtract `centre`, divide by `scale`; an `unknown` feature reads as 0.0)."""

    weights: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    unknown: np.ndarray


_last: tuple[GlobalModel, VersionArrays] | None = None


def arrays_of(model: GlobalModel) -> VersionArrays:
    """`model`'s VersionArrays, kept for the last model asked about: a shard scores batch after
    batch with the version it holds, and a held version is never changed in place."""
    global _last
    if _last is not None and _last[0] is model:
        return _last[1]
    size = len(model.feature_names)
    positions = list(model.positions)
    centre, scale, unknown = np.zeros(size), np.ones(size), np.zeros(size, np.bool_)
    stats = model.statistics
    if stats.count < 2:
        unknown[positions] = True
    else:
        variance = np.asarray(stats.m2, np.float64) / stats.count
        centre[positions] = stats.mean
        scale[positions] = np.sqrt(np.where(variance > 0, variance, 1.0))
        unknown[positions] = ~(variance > 0)
    arrays = VersionArrays(np.asarray(model.regression.weights, np.float64), centre, scale, unknown)
    _last = (model, arrays)
    return arrays


def standardized_entries(model: GlobalModel, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each entry's value as the version's model reads it: a standardized feature's
    (value - mean) / std by the version's statistics, or 0.0 while its scale is unknown (fewer
    than two records counted, or it never varied: Statistics.standardize); others as they are."""
    arrays = arrays_of(model)
    return np.where(arrays.unknown[indices], 0.0, (values - arrays.centre[indices]) / arrays.scale[indices])


def sigmoid(margins: np.ndarray) -> np.ndarray:
    """udfs.model.sigmoid of each margin, by the same two formulas (no overflow)."""
    e = np.exp(-np.abs(margins))
    return np.where(margins >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass
class Pending:
    """Records kept for a shard's next partial, as columns: indptr (int64, records + 1), indices
    (int32), raw values (float64), labels (int8, -1: none or not learned from), whether each
    counts in the statistics (`counted`: a record as scored does; a label from the label stream
    comes back as the same record again, labelled and not counted) and each one's offset (float64:
    `Example.offset`, model.blend sum's key margin the record was scored with; 0.0 otherwise)."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    counted: np.ndarray
    offsets: np.ndarray

    @classmethod
    def empty(cls) -> "Pending":
        return cls(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0), np.zeros(0, np.int8),
                   np.zeros(0, np.bool_), np.zeros(0))

    def __len__(self) -> int:
        return len(self.labels)

    def appended(self, indptr, indices, values, labels, counted: bool = True, offsets=None) -> "Pending":
        """These records followed by the given ones (a RecordBatch's columns; `offsets` None: 0.0 each)."""
        indptr = np.asarray(indptr, np.int64)
        labels = np.asarray(labels, np.int8)
        offsets = np.zeros(len(labels)) if offsets is None else np.asarray(offsets, np.float64)
        return Pending(np.concatenate((self.indptr, self.indptr[-1] + indptr[1:] - indptr[0])),
                       np.concatenate((self.indices, np.asarray(indices, np.int32))),
                       np.concatenate((self.values, np.asarray(values, np.float64))),
                       np.concatenate((self.labels, labels)),
                       np.concatenate((self.counted, np.full(len(labels), counted, np.bool_))),
                       np.concatenate((self.offsets, offsets)))

    def split(self, count: int) -> tuple["Pending", "Pending"]:
        """(the first `count` records, the rest)."""
        cut = int(self.indptr[count])
        return (Pending(self.indptr[:count + 1], self.indices[:cut], self.values[:cut], self.labels[:count],
                        self.counted[:count], self.offsets[:count]),
                Pending(self.indptr[count:] - cut, self.indices[cut:], self.values[cut:], self.labels[count:],
                        self.counted[count:], self.offsets[count:]))

    def cut(self, share: int) -> int | None:
        """How many records hold the next `share` labelled ones, or None while fewer."""
        labelled = np.flatnonzero(self.labels >= 0)
        return None if len(labelled) < share else int(labelled[share - 1]) + 1

    def plain(self) -> dict[str, Any]:
        """The columns as JSON-ready lists (Flink state: `of_plain` reads them back). `offsets` only
        when one is not 0.0, so that a segment without them is written as before."""
        plain = {"indptr": self.indptr.tolist(), "indices": self.indices.tolist(), "values": self.values.tolist(),
                 "labels": self.labels.tolist(), "counted": self.counted.tolist()}
        if np.any(self.offsets != 0.0):
            plain["offsets"] = self.offsets.tolist()
        return plain

    @classmethod
    def of_plain(cls, d: dict[str, Any]) -> "Pending":
        """The records `plain` gave; a segment written without offsets (an earlier release's state)
        has offset 0.0 for each record."""
        labels = np.asarray(d["labels"], np.int8)
        return cls(np.asarray(d["indptr"], np.int64), np.asarray(d["indices"], np.int32),
                   np.asarray(d["values"], np.float64), labels, np.asarray(d["counted"], np.bool_),
                   np.asarray(d["offsets"], np.float64) if "offsets" in d else np.zeros(len(labels)))


def partial_of(model: GlobalModel, pending: Pending, instance: int) -> GradientPartial:
    """`compute_partial(model, examples, instance)` of the pending records (udfs/global_model.py):
    the statistics of every record's standardized features, and over the labelled ones the sums of
    (p - y) x and (p - y), x standardized by the version's statistics, p = sigmoid(w . x + b + offset)."""
    n = len(pending)
    statistics = Statistics.empty(len(model.positions))
    counted = int(pending.counted.sum())
    if counted:
        # (records, standardized features): the numeric features lead every record, all present,
        # so feature i is entry i (as Statistics.add reads values[i]).
        starts = pending.indptr[:-1][pending.counted]
        block = pending.values[starts[:, None] + np.asarray(model.positions, np.int64)]
        mean = block.mean(axis=0)
        statistics = Statistics(counted, mean.tolist(), ((block - mean) ** 2).sum(axis=0).tolist())
    labelled = pending.labels >= 0
    count = int(labelled.sum())
    if not count:
        return GradientPartial(instance, model.version, 0, {}, 0.0, statistics)
    rows = np.repeat(np.arange(n), np.diff(pending.indptr))
    x = standardized_entries(model, pending.indices.astype(np.int64), pending.values)
    margins = model.regression.bias + np.bincount(rows, weights=arrays_of(model).weights[pending.indices] * x,
                                                  minlength=n)
    error = np.where(labelled, sigmoid(margins + pending.offsets) - pending.labels, 0.0)
    used = labelled[rows]
    features = pending.indices[used]
    sums = np.bincount(features, weights=(error[rows] * x)[used], minlength=len(model.feature_names))
    present = np.unique(features)
    return GradientPartial(instance, model.version, count, dict(zip(present.tolist(), sums[present].tolist())),
                           float(error.sum()), statistics)
